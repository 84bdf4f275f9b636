#!/usr/bin/env python3
"""Where does GMSD come from? Per image, and by how steep the photo is there.

GMSD (Xue et al. 2014) is the standard deviation of the gradient-magnitude similarity map
  GMS = (2 m_sr m_hr + c) / (m_sr^2 + m_hr^2 + c),  c = 170,
with m the Prewitt gradient magnitude of luma (0..255) on the 2 x 2-averaged grid, as
../shared/tools/sr_score.py computes it. This script prints, for each upscaler, each held-out
image's GMSD, and then the mean of 1 - GMS over the pixels binned by the photo's own gradient
magnitude m_hr (flat < 5, 5-20, 20-60, edges >= 60), with the ratio mean(m_sr) / mean(m_hr) in the
bin: below 1, softer than the photo there; above 1, gradients the photo does not have.

--unsharp SIGMA:AMOUNT adds, for each upscaler, its output sharpened by an unsharp mask
(x + AMOUNT (x - gauss_SIGMA(x)), RGB, rounded to 8 bits): whether edge strength alone is what a
softer output lacks.

The upscalers: `flowmapsr eval --save` at the given presets or weights, and the GAN peer
(../shared/tools/upscalerjs_peer/peer.py gans, on the reference scorer's LR) with --peer.

Usage: scripts/gmsd_where.py [--bin BIN] [--peer] [--unsharp S:A ...] LABEL=PRESET|WEIGHTS@W ...
       e.g. scripts/gmsd_where.py --peer --unsharp 1:0.6 faithful=faithful realistic=realistic
"""
import argparse
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from holdout import holdout  # noqa: E402

ROOT = os.path.dirname(HERE)
BINS = [(0, 5), (5, 20), (20, 60), (60, float("inf"))]
SCALE = 4


def gms_map(sr_y, hr_y):
    """GMS on the 2 x 2-averaged grid, and both gradient magnitudes (sr_score.py's gmsd)."""
    k2 = np.ones((2, 2)) / 4
    a = cv2.filter2D(sr_y, -1, k2)[::2, ::2]
    b = cv2.filter2D(hr_y, -1, k2)[::2, ::2]
    hx = np.array([[1, 0, -1]] * 3, np.float64) / 3
    g = lambda x: np.sqrt(cv2.filter2D(x, -1, hx) ** 2 + cv2.filter2D(x, -1, hx.T) ** 2)
    ma, mb = g(a), g(b)
    c = 170.0
    return (2 * ma * mb + c) / (ma ** 2 + mb ** 2 + c), ma, mb


def unsharp(rgb, sigma, amount):
    x = rgb.astype(np.float64)
    x = x + amount * (x - cv2.GaussianBlur(x, (0, 0), sigma))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"gmsd_where.py: {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ups", nargs="+", metavar="LABEL=PRESET|WEIGHTS@W")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "flowmapsr"))
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--peer", action="store_true", help="add the GAN peer (node)")
    ap.add_argument("--unsharp", action="append", default=[], metavar="SIGMA:AMOUNT")
    a = ap.parse_args()
    tools = os.path.join(a.shared, "tools")
    sys.path.insert(0, tools)
    from sr_score import rgb2y as luma  # the reference scorer's Y, not a copy of it
    with tempfile.TemporaryDirectory() as tmp:
        hr_dir = holdout(os.path.join(a.shared, "data", "train"), os.path.join(tmp, "hr"))
        outs = []
        for i, spec in enumerate(a.ups):
            if "=" not in spec:
                sys.exit(f"gmsd_where.py: {spec!r}: expected LABEL=PRESET or LABEL=WEIGHTS@W")
            label, what = spec.split("=", 1)
            save = os.path.join(tmp, f"u{i}")
            cmd = [a.bin, "eval", "--data", hr_dir, "--scale", str(SCALE), "--save", save]
            if "@" in what:
                weights, w = what.rsplit("@", 1)
                cmd += ["--weights", weights, "--guidance", w]
            else:
                cmd += ["--preset", what]
            run(cmd)
            outs.append((label, save, None))
        if a.peer:
            lr = os.path.join(tmp, "lr")
            run([sys.executable, os.path.join(tools, "sr_score.py"), "make-lr", hr_dir, lr,
                 "--scale", str(SCALE)])
            run([sys.executable, os.path.join(tools, "upscalerjs_peer", "peer.py"), "gans", lr,
                 os.path.join(tmp, "peer")])
            outs.append(("peer (gans)", os.path.join(tmp, "peer"), None))
        for u in a.unsharp:
            s, amt = (float(v) for v in u.split(":"))
            outs += [(f"{l} + unsharp {s:g}:{amt:g}", d, (s, amt)) for l, d, f in list(outs) if f is None]

        names = sorted(os.path.splitext(f)[0] for f in os.listdir(hr_dir))
        per = {o[0]: [] for o in outs}
        bins = {o[0]: [] for o in outs}
        for n in names:
            src = next(os.path.join(hr_dir, f) for f in os.listdir(hr_dir) if f.startswith(n + "."))
            hr = np.array(Image.open(src).convert("RGB"))
            h, w = hr.shape[0] - hr.shape[0] % SCALE, hr.shape[1] - hr.shape[1] % SCALE
            hr_y = luma(hr[:h, :w])[SCALE:-SCALE, SCALE:-SCALE]
            for label, d, usm in outs:
                sr = np.array(Image.open(os.path.join(d, n + ".png")).convert("RGB"))[:h, :w]
                if usm:
                    sr = unsharp(sr, *usm)
                m, ms, mh = gms_map(luma(sr)[SCALE:-SCALE, SCALE:-SCALE], hr_y)
                per[label].append(float(m.std()))
                row = []
                for lo, hi in BINS:
                    sel = (mh >= lo) & (mh < hi)
                    row.append((sel.mean(), (1 - m[sel]).mean(), ms[sel].mean() / max(mh[sel].mean(), 1e-9))
                               if sel.any() else (0.0, 0.0, 0.0))
                bins[label].append(row)

        print(f"x{SCALE}, held-out (10 images), GMSD per image (sr_score.py's, shave {SCALE})\n")
        print("| image | " + " | ".join(o[0] for o in outs) + " |")
        print("|---|" + "---|" * len(outs))
        for i, n in enumerate(names):
            print(f"| {n} | " + " | ".join(f"{per[o[0]][i]:.4f}" for o in outs) + " |")
        print("| **mean** | " + " | ".join(f"**{np.mean(per[o[0]]):.4f}**" for o in outs) + " |")
        print("\nBy the photo's gradient magnitude m_hr (2 x 2-averaged grid): share of pixels; "
              "mean 1 - GMS / mean(m_sr) / mean(m_hr), image mean\n")
        hdr = " | ".join(f"m_hr {lo:g}-{hi:g}" if hi != float("inf") else f"m_hr >= {lo:g}" for lo, hi in BINS)
        print(f"| | {hdr} |")
        print("|---|" + "---|" * len(BINS))
        share = np.array(bins[outs[0][0]]).mean(0)[:, 0]
        print("| share of pixels | " + " | ".join(f"{s:.2f}" for s in share) + " |")
        for label, _, _ in outs:
            b = np.array(bins[label]).mean(0)
            print(f"| {label} | " + " | ".join(f"{g:.3f} / {r:.2f}" for _, g, r in b) + " |")


if __name__ == "__main__":
    main()
