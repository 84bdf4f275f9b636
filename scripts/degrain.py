#!/usr/bin/env python3
"""How much of an output's detail is the 2-px grain, and what does it cost? (docs/realistic-training.md,
"The grain is error")

The grain is the luma's 2-D spectrum where both frequencies are at least CORNER (0.4 cycles/px;
scripts/pattern_ratio.py's checkerboard corner). Photos hold little there. This cuts that corner
from each RGB channel of every SR image (whole-image FFT: an analysis, not a filter that tiles)
and scores the SR folder before and after the cut with the reference scorer
(../shared/tools/sr_score.py: PSNR-Y, GMSD, HF ratio) and scripts/pattern_ratio.py (pattern,
checker, HF ratio without the grain). If the grain were detail of the photo, the cut would lower
PSNR; where it raises PSNR, the grain is error.

SR images are PNGs named after the HR stems (`flowmapsr eval --save DIR`, or the peer's
../shared/tools/upscalerjs_peer/peer.py on the LR that `sr_score.py make-lr` writes).

`--fir TAPS`: the cut a tiled pipeline could run instead, a separable filter: x - (h x h) * x,
h the high-pass (-1)^n (Kaiser-windowed sinc low-pass of cutoff 0.1), TAPS long, whose gain is
0.5 at 0.4 cycles/px; it cuts some of the detail below the corner too.

Usage: scripts/degrain.py SR_DIR HR_DIR OUT_DIR [--fir TAPS] [--shared DIR]
       (OUT_DIR: where the cut PNGs go; it must not be SR_DIR)
"""
import argparse
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pattern_ratio  # noqa: E402

CORNER = pattern_ratio.CORNER


def cut(x):
    """x (H x W x 3, 0..255) with every channel's spectrum zeroed where both |f| >= CORNER
    (pattern_ratio.py's cut of the luma, per channel)."""
    return np.stack([pattern_ratio._without_corner(x[..., c]) for c in range(x.shape[2])], -1)


def fir_cut(x, taps):
    """x minus its (h x h)-filtered self, h the high-pass that `--fir` describes."""
    from scipy.ndimage import convolve1d
    n = np.arange(taps) - taps // 2
    lp = 0.2 * np.sinc(0.2 * n) * np.kaiser(taps, 8.0)
    h = lp / lp.sum() * (-1.0) ** n
    c = convolve1d(convolve1d(x, h, axis=0, mode="reflect"), h, axis=1, mode="reflect")
    return x - c


def cut_dir(src, dst, fir=None):
    """Every PNG of `src`, cut (`cut`, or `fir_cut` with `fir` taps), as a PNG of the same name in
    `dst`."""
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if not name.lower().endswith(".png"):
            continue
        x = np.asarray(Image.open(os.path.join(src, name)).convert("RGB"), dtype=np.float64)
        y = cut(x) if fir is None else fir_cut(x, fir)
        Image.fromarray(np.clip(np.round(y), 0, 255).astype(np.uint8)).save(os.path.join(dst, name))


def score(sr, hr, shared):
    """(PSNR-Y, GMSD, HF ratio) from sr_score.py's MEAN line, then pattern, checker, HF w/o grain."""
    tool = os.path.join(shared, "tools", "sr_score.py")
    out = subprocess.run([sys.executable, tool, "score", sr, hr, "--scale", "4"],
                         capture_output=True, text=True, check=True).stdout
    mean = next(l for l in out.splitlines() if l.startswith("MEAN"))
    v = dict(re.findall(r"([A-Z]+)\s+([0-9.]+)", mean))
    return (float(v["PSNR"]), float(v["GMSD"]), float(v["HF"]), pattern_ratio.pattern(sr, hr),
            pattern_ratio.checker(sr, hr), pattern_ratio.hf_ratio(sr, hr))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sr")
    ap.add_argument("hr")
    ap.add_argument("out")
    ap.add_argument("--fir", type=int, metavar="TAPS", help="a separable FIR cut, TAPS long (odd)")
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    a = ap.parse_args()
    if os.path.abspath(a.out) == os.path.abspath(a.sr):
        sys.exit("degrain.py: OUT_DIR must not be SR_DIR (the outputs would be overwritten)")
    if a.fir is not None and (a.fir < 3 or a.fir % 2 == 0):
        sys.exit(f"degrain.py: --fir {a.fir}: an odd number of taps, at least 3")
    cut_dir(a.sr, a.out, a.fir)
    print("| | PSNR-Y | GMSD | HF ratio | pattern | checker | HF w/o grain |")
    print("|---|---|---|---|---|---|---|")
    for label, d in (("as drawn", a.sr), ("grain cut" if a.fir is None else f"{a.fir}-tap cut", a.out)):
        p, g, h, pat, chk, ng = score(d, a.hr, a.shared)
        print(f"| {label} | {p:.3f} | {g:.4f} | {h:.3f} | {pat:.2f} | {chk:.2f} | {ng:.3f} |")


if __name__ == "__main__":
    main()
