#!/usr/bin/env python3
"""Does a candidate move past the reference's frontier, or along it?

Guidance w trades fidelity for detail along a curve: a higher w gives a higher HF ratio and a
lower PSNR. Comparing two weights at one w mixes a move along that curve with a move past it.
This script traces the reference's curve on the held-out images: PSNR-Y, GMSD, HF ratio, the HF
ratio without the 2-px grain (scripts/pattern_ratio.py: the detail a checkerboard does not make
up), pattern and checkerboard ratios at each of its w values. Then, for each candidate point, it
gives the reference's PSNR and GMSD at the candidate's HF ratio, by linear interpolation between
the two nearest reference points (marked * where it extrapolates, by at most EXTRA in HF; further
out it says "outside"), and the candidate's difference from them. dPSNR > 0 and dGMSD < 0 is past
the frontier.

The held-out images are the 10 that `train --holdout 10` keeps out (scripts/holdout.py). Each
point is `flowmapsr eval --scale 4 --save` (its MEAN line; eval agrees with
../shared/tools/sr_score.py to 0.01 dB) and scripts/pattern_ratio.py.

Measured points are cached (--cache; keyed by a hash of the binary, the weights, the images, w and
pattern_ratio.py), so the reference's curve is measured once per binary.

With --grain-cut every point, reference and candidate alike, is measured on its outputs with the
2-px grain cut (scripts/degrain.py; PSNR-Y, GMSD and HF ratio then come from
../shared/tools/sr_score.py): for a run that trains with `adversarial.grain_cut`, whose grain
nothing judged.

Usage: scripts/frontier.py [--ref DIR] [--ref-w W...] [--cand LABEL=DIR@W ...] [--bin BIN] [--cache DIR]
                           [--grain-cut] [--shared DIR]
       e.g. scripts/frontier.py --cand step500=runs/x/val/500@2 --cand step500=runs/x/val/500@2.3
"""
import argparse
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pattern_ratio  # noqa: E402
from holdout import holdout  # noqa: E402

ROOT = os.path.dirname(HERE)
# How far beyond the reference's HF range a comparison may extrapolate.
EXTRA = 0.02


@functools.lru_cache(maxsize=None)
def file_hash(path):
    """sha256 of a file, once per run: the binary and the images are in every point's key."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(binary, data, weights, w, cut=False):
    """What a point depends on: the binary, the weights (model and config), the images, w, the
    pattern measure (scripts/pattern_ratio.py), and with `cut` the cut (scripts/degrain.py)."""
    h = hashlib.sha256(f"w={w!r}".encode() + (b" cut" if cut else b""))
    files = [binary, os.path.join(HERE, "pattern_ratio.py")]
    if cut:
        files.append(os.path.join(HERE, "degrain.py"))
    files += [os.path.join(weights, f) for f in ("model.bin", "config.json")]
    files += sorted(os.path.join(data, f) for f in os.listdir(data))
    for f in files:
        h.update(os.path.basename(f).encode())
        h.update(file_hash(f).encode())
    return h.hexdigest()


def point(binary, data, weights, w, save, cache, cut_with=None):
    """One point, from the cache when nothing it depends on changed: the reference's curve is the
    same for every candidate, and each point costs ~45 s on 2 cores. `cut_with`: the shared
    folder, to measure the point with the grain cut."""
    key = cache_key(binary, data, weights, w, cut_with is not None)
    path = os.path.join(cache, key + ".json") if cache else None
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    p = measure(binary, data, weights, w, save, cut_with)
    if path:
        os.makedirs(cache, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(p, f)
        os.replace(path + ".tmp", path)
    return p


def measure(binary, data, weights, w, save, cut_with=None):
    """One point: `flowmapsr eval` saves the outputs; its MEAN line and pattern_ratio.py score them,
    or with `cut_with` (the shared folder) the outputs with the grain cut (scripts/degrain.py),
    scored by sr_score.py and pattern_ratio.py."""
    out = subprocess.run([binary, "eval", "--data", data, "--scale", "4", "--weights", weights,
                          "--guidance", str(w), "--save", save],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"frontier.py: eval of {weights} at w {w} failed:\n{out.stderr[-2000:]}")
    if cut_with is not None:
        import degrain
        degrain.cut_dir(save, save + "-cut")
        psnr, gmsd, hf, pattern, checker, hf_ng = degrain.score(save + "-cut", data, cut_with)
        return {"psnr": psnr, "gmsd": gmsd, "hf": hf, "pattern": pattern, "checker": checker,
                "hf_ng": hf_ng}
    mean = next(l for l in out.stdout.splitlines() if l.startswith("MEAN"))
    v = dict(re.findall(r"([A-Z]+)\s+([0-9.]+)", mean))
    return {"psnr": float(v["PSNR"]), "gmsd": float(v["GMSD"]), "hf": float(v["HF"]),
            "pattern": pattern_ratio.pattern(save, data), "checker": pattern_ratio.checker(save, data),
            "hf_ng": pattern_ratio.hf_ratio(save, data)}


def at_hf(ref, hf):
    """The reference's (PSNR, GMSD) at HF ratio `hf`, and whether that extrapolates; None beyond
    EXTRA outside the reference's range."""
    pts = sorted(ref, key=lambda p: p["hf"])
    if len(pts) < 2:
        sys.exit("frontier.py: the reference needs at least two w values")
    inside = pts[0]["hf"] <= hf <= pts[-1]["hf"]
    if not pts[0]["hf"] - EXTRA <= hf <= pts[-1]["hf"] + EXTRA:
        return None
    i = 0
    while i < len(pts) - 2 and pts[i + 1]["hf"] < hf:
        i += 1
    a, b = pts[i], pts[i + 1]
    t = (hf - a["hf"]) / max(b["hf"] - a["hf"], 1e-9)
    return (a["psnr"] + t * (b["psnr"] - a["psnr"]), a["gmsd"] + t * (b["gmsd"] - a["gmsd"]), inside)


def row(label, p):
    return (f"| {label} | {p['w']:g} | {p['psnr']:.3f} | {p['gmsd']:.4f} | "
            f"{p['hf']:.3f} | {p['hf_ng']:.3f} | {p['pattern']:.2f} | {p['checker']:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", default=os.path.join(ROOT, "weights", "realistic"))
    ap.add_argument("--ref-w", nargs="+", type=float, default=[1.6, 1.8, 2.0, 2.2, 2.4])
    ap.add_argument("--cand", action="append", default=[], metavar="LABEL=DIR@W")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "flowmapsr"))
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    ap.add_argument("--cache", default=os.path.join(xdg, "flowmapsr", "frontier"),
                    help="where measured points are kept (keyed by a hash of binary, weights, "
                         "images, w and pattern_ratio.py); '' measures every point afresh")
    ap.add_argument("--grain-cut", action="store_true",
                    help="measure every point with the 2-px grain cut (scripts/degrain.py)")
    a = ap.parse_args()
    cut_with = a.shared if a.grain_cut else None
    cands = []
    for c in a.cand:
        m = re.fullmatch(r"([^=]+)=(.+)@([0-9.]+)", c)
        if not m:
            sys.exit(f"frontier.py: --cand {c!r}: expected LABEL=DIR@W")
        cands.append((m[1], m[2], float(m[3])))
    with tempfile.TemporaryDirectory() as tmp:
        data = holdout(os.path.join(a.shared, "data", "train"), os.path.join(tmp, "holdout"))
        ref = [dict(point(a.bin, data, a.ref, w, os.path.join(tmp, f"r{i}"), a.cache, cut_with),
                    w=w)
               for i, w in enumerate(a.ref_w)]
        cut = ", every output with the grain cut (scripts/degrain.py)" if a.grain_cut else ""
        print(f"x4, held-out (10 images){cut}. Reference: {a.ref}\n")
        print("| | w | PSNR-Y | GMSD | HF ratio | HF w/o grain | pattern | checker "
              "| ref. PSNR / GMSD at this HF | dPSNR | dGMSD |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for p in ref:
            print(row("reference", p) + " | | |")
        for i, (label, d, w) in enumerate(cands):
            p = dict(point(a.bin, data, d, w, os.path.join(tmp, f"c{i}"), a.cache, cut_with), w=w)
            at = at_hf(ref, p["hf"])
            if at is None:
                print(row(label, p) + " outside | | |")
                continue
            rp, rg, inside = at
            star = "" if inside else "*"
            print(row(label, p) + f" {rp:.3f} / {rg:.4f}{star} | {p['psnr'] - rp:+.3f} | {p['gmsd'] - rg:+.4f} |")
        lo, hi = min(p["hf"] for p in ref), max(p["hf"] for p in ref)
        print(f"\n* extrapolated beyond the reference's HF range ({lo:.3f}-{hi:.3f}); "
              f"outside: more than {EXTRA} beyond it.")


if __name__ == "__main__":
    main()
