#!/usr/bin/env python3
"""Pattern ratio of upscaled images against their HR originals (docs/tradeoff.md, "pattern").

For each HR image: the luma's power at periods of 2 to 2.5 px (frequencies above 0.4 cycles/px),
along columns and along rows, each averaged over the other axis; SR / HR per axis, the larger of
the two; then the mean over the images. 1 = as much energy at the finest scale as the photos;
above 1 = more (a 2-px pattern such as alternating rows, or per-pixel noise), which the HF ratio
would count as detail. SR images are PNGs named after the HR stems (`flowmapsr eval --save DIR`).

Usage: scripts/pattern_ratio.py SR_DIR HR_DIR
       (prints "pattern X.XX (along columns C.CC, along rows R.RR)")
"""
import functools
import os
import sys

import numpy as np
from PIL import Image


def nyquist(y, axis):
    # Power at periods 2 to 2.5 px along `axis`, averaged over the other axis.
    d = y - y.mean(axis=axis, keepdims=True)
    p = (np.abs(np.fft.rfft(d, axis=axis)) ** 2).mean(axis=1 - axis)
    f = np.arange(p.shape[0]) / ((p.shape[0] - 1) * 2)
    return p[f > 0.4].sum()


def _luma(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


# The HR photos are scored against every setting's outputs: decode each once.
_hr_luma = functools.lru_cache(maxsize=None)(_luma)


def pattern_axes(sr_dir, hr_dir):
    """Means over the images of (the larger ratio, the ratio along columns, along rows), or None
    when an SR image is missing."""
    ratios = []
    for f in sorted(os.listdir(hr_dir)):
        p = os.path.join(sr_dir, os.path.splitext(f)[0] + ".png")
        if not os.path.exists(p):
            return None
        h, y = _hr_luma(os.path.join(hr_dir, f)), _luma(p)
        a, b = min(h.shape[0], y.shape[0]), min(h.shape[1], y.shape[1])
        h, y = h[:a, :b], y[:a, :b]
        cols, rows = (nyquist(y, ax) / max(nyquist(h, ax), 1e-12) for ax in (0, 1))
        ratios.append((max(cols, rows), cols, rows))
    return tuple(np.mean(ratios, axis=0)) if ratios else None


def pattern(sr_dir, hr_dir):
    """The pattern ratio (the first of `pattern_axes`), or None when an SR image is missing."""
    r = pattern_axes(sr_dir, hr_dir)
    return None if r is None else float(r[0])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    r = pattern_axes(sys.argv[1], sys.argv[2])
    if r is None:
        sys.exit(f"pattern_ratio.py: {sys.argv[1]} lacks a PNG for some image of {sys.argv[2]}")
    print(f"pattern {r[0]:.2f} (along columns {r[1]:.2f}, along rows {r[2]:.2f})")
