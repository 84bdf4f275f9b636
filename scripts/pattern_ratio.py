#!/usr/bin/env python3
"""Pattern ratio of upscaled images against their HR originals (docs/tradeoff.md, "pattern").

For each HR image: the luma's power in five bands of period, 2-2.5, 2.5-2.86, 2.86-3.33, 3.33-4
and 4-5 px (frequencies 0.4-0.5, 0.35-0.4, 0.3-0.35, 0.25-0.3, 0.2-0.25 cycles/px), along columns
and along rows, each averaged over the other axis; SR / HR per band and axis, the largest of the
ten; then the mean over the images. 1 = no more energy at any fine scale than the photos; above 1
= more: a 2-px pattern such as alternating rows, per-pixel noise, or the 3-5 px hatching an
over-driven adversarial adapter draws on skin and cloth, all of
which the HF ratio would count as detail. The 2-2.5 px band alone is blind
to that hatching (its Set5 outputs at w 3, LoRA 3: 1.86 there, 2.57 with the five bands).
`local_pattern`: the same in 32-px windows (see WINDOW), for a grid on one region only.
SR images are PNGs named after the HR stems (`flowmapsr eval --save DIR`).

Usage: scripts/pattern_ratio.py SR_DIR HR_DIR
       (prints "pattern X.XX (along columns C.CC, along rows R.RR; by period: ...); local L.LL;
       checker K.KK; HF ratio H.HHH, without the grain G.GGG")
"""
import functools
import os
import sys

import numpy as np
from PIL import Image

# (label, lowest frequency, highest frequency) in cycles per pixel; 0.5 is Nyquist.
BANDS = [("2-2.5px", 0.4, 0.5), ("2.5-2.9px", 0.35, 0.4), ("2.9-3.3px", 0.3, 0.35),
         ("3.3-4px", 0.25, 0.3), ("4-5px", 0.2, 0.25)]


def _sum_bands(p, f):
    """Spectra p [..., frequencies f] summed over each of BANDS: [..., bands]."""
    return np.stack([p[..., (f > lo) & (f <= hi)].sum(axis=-1) for _, lo, hi in BANDS], -1)


def band_power(y, axis):
    """Power in each of BANDS along `axis`, averaged over the other axis."""
    d = y - y.mean(axis=axis, keepdims=True)
    p = (np.abs(np.fft.rfft(d, axis=axis)) ** 2).mean(axis=1 - axis)
    return _sum_bands(p, np.fft.rfftfreq(y.shape[axis]))


def _luma(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


# The HR photos are scored against every setting's outputs: decode each once.
_hr_luma = functools.lru_cache(maxsize=None)(_luma)


# tradeoff.sh asks for both ratios of one folder in a row: decode its outputs once.
@functools.lru_cache(maxsize=1)
def _pairs(sr_dir, hr_dir):
    """(HR luma, SR luma) per HR image, cropped to their common size; None when an SR is missing."""
    pairs = []
    for f in sorted(os.listdir(hr_dir)):
        p = os.path.join(sr_dir, os.path.splitext(f)[0] + ".png")
        if not os.path.exists(p):
            return None
        h, y = _hr_luma(os.path.join(hr_dir, f)), _luma(p)
        a, b = min(h.shape[0], y.shape[0]), min(h.shape[1], y.shape[1])
        pairs.append((h[:a, :b], y[:a, :b]))
    return pairs


def pair_ratios(h, y):
    """One image's per-band SR/HR ratios (columns, rows): arrays over BANDS."""
    return tuple(band_power(y, ax) / np.maximum(band_power(h, ax), 1e-12) for ax in (0, 1))


def pattern_axes(sr_dir, hr_dir):
    """Means over the images of (the largest ratio, the largest along columns, along rows, the
    per-band ratios (the larger axis) as an array), or None when an SR image is missing."""
    pairs = _pairs(sr_dir, hr_dir)
    if pairs is None:
        return None
    per = []
    for h, y in pairs:
        cols, rows = pair_ratios(h, y)
        per.append((max(cols.max(), rows.max()), cols.max(), rows.max(), np.maximum(cols, rows)))
    if not per:
        return None
    return (float(np.mean([r[0] for r in per])), float(np.mean([r[1] for r in per])),
            float(np.mean([r[2] for r in per])), np.mean([r[3] for r in per], axis=0))


# The local pattern ratio: the same bands in 32 x 32 windows (Hann-tapered), each window's SR power
# over max(its HR power, a quarter of the HR's mean over windows) so that flat regions of the photo
# do not divide by ~0; the 90th percentile over windows of the largest ratio, then the mean over the
# images. It sees a grid drawn on one region (skin, plumage) that the whole-image average dilutes.
WINDOW, FLOOR, PERCENTILE = 32, 0.25, 90


def _window_band_power(y):
    """[windows, 2 axes, bands] powers of the WINDOW x WINDOW tiles of y."""
    nh, nw = y.shape[0] // WINDOW, y.shape[1] // WINDOW
    t = y[: nh * WINDOW, : nw * WINDOW].reshape(nh, WINDOW, nw, WINDOW).transpose(0, 2, 1, 3)
    t = t.reshape(-1, WINDOW, WINDOW)
    hann = np.hanning(WINDOW)
    f = np.arange(WINDOW // 2 + 1) / WINDOW
    out = []
    for ax in (1, 2):  # along columns, along rows
        d = t - t.mean(axis=ax, keepdims=True)
        d = d * (hann[None, :, None] if ax == 1 else hann[None, None, :])
        p = (np.abs(np.fft.rfft(d, axis=ax)) ** 2).mean(axis=3 - ax)
        out.append(_sum_bands(p, f))
    return np.stack(out, 1)


def local_pattern(sr_dir, hr_dir):
    """The local pattern ratio (see WINDOW), or None when an SR image is missing."""
    pairs = _pairs(sr_dir, hr_dir)
    if pairs is None:
        return None
    per = []
    for h, y in pairs:
        if min(h.shape) < WINDOW:
            continue
        ph, py = _window_band_power(h), _window_band_power(y)
        floor = ph.mean(axis=0, keepdims=True) * FLOOR
        r = (py / np.maximum(np.maximum(ph, floor), 1e-12)).max(axis=(1, 2))
        per.append(np.percentile(r, PERCENTILE))
    return float(np.mean(per)) if per else None


# The checkerboard ratio: the 2-D power of 64 x 64 tiles (each tile's mean removed) where both
# frequencies are at least 0.4 cycles/px, the 2-px diagonal pattern that the five bands along one
# axis at a time dilute with the edges'; SR over HR per image, then the mean over the images.
TILE, CORNER = 64, 0.4


def _corner_power(y):
    nh, nw = y.shape[0] // TILE, y.shape[1] // TILE
    t = y[: nh * TILE, : nw * TILE].reshape(nh, TILE, nw, TILE).transpose(0, 2, 1, 3)
    t = t.reshape(-1, TILE, TILE)
    p = np.abs(np.fft.fft2(t - t.mean(axis=(1, 2), keepdims=True))) ** 2
    f = np.abs(np.fft.fftfreq(TILE))
    return p[:, f >= CORNER][:, :, f >= CORNER].sum()


def checker(sr_dir, hr_dir):
    """The checkerboard ratio (see TILE), or None when an SR image is missing."""
    pairs = _pairs(sr_dir, hr_dir)
    if pairs is None:
        return None
    per = [_corner_power(y) / max(_corner_power(h), 1e-12) for h, y in pairs if min(h.shape) >= TILE]
    return float(np.mean(per)) if per else None


# The HF ratio without the grain: sr_score.py's HF ratio (the 4-neighbour Laplacian's energy, SR
# over HR, the mean over the images) on luma whose 2-D spectrum is zeroed where both frequencies
# are at least CORNER, in SR and HR alike. The Laplacian's gain is 64 at the checkerboard, so a
# faint 2-px grain can make up most of the HF ratio; this is the detail that is left (the photos'
# own energy in that corner is small, and both sides lose it).
SHAVE = 4


def _without_corner(y):
    f = np.fft.fft2(y)
    fy, fx = np.abs(np.fft.fftfreq(y.shape[0])), np.abs(np.fft.fftfreq(y.shape[1]))
    f[np.ix_(fy >= CORNER, fx >= CORNER)] = 0
    return np.fft.ifft2(f).real


def _laplacian_energy(y):
    y = y[SHAVE:-SHAVE, SHAVE:-SHAVE]
    lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4 * y[1:-1, 1:-1]
    return float(np.mean(lap ** 2))


def hf_ratio(sr_dir, hr_dir, grain=False):
    """The HF ratio without the grain (see SHAVE), or with it (`grain`: sr_score.py's own, to
    check this one against), or None when an SR image is missing."""
    pairs = _pairs(sr_dir, hr_dir)
    if pairs is None:
        return None
    cut = (lambda y: y) if grain else _without_corner
    per = [_laplacian_energy(cut(y)) / max(_laplacian_energy(cut(h)), 1e-12) for h, y in pairs]
    return float(np.mean(per)) if per else None


def pattern(sr_dir, hr_dir):
    """The pattern ratio (the first of `pattern_axes`), or None when an SR image is missing."""
    r = pattern_axes(sr_dir, hr_dir)
    return None if r is None else r[0]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    r = pattern_axes(sys.argv[1], sys.argv[2])
    if r is None:
        sys.exit(f"pattern_ratio.py: {sys.argv[1]} lacks a PNG for some image of {sys.argv[2]}")
    bands = ", ".join(f"{label} {v:.2f}" for (label, _, _), v in zip(BANDS, r[3]))
    print(f"pattern {r[0]:.2f} (along columns {r[1]:.2f}, along rows {r[2]:.2f}; by period: {bands}); "
          f"local {local_pattern(sys.argv[1], sys.argv[2]):.2f}; "
          f"checker {checker(sys.argv[1], sys.argv[2]):.2f}; "
          f"HF ratio {hf_ratio(sys.argv[1], sys.argv[2], grain=True):.3f}, "
          f"without the grain {hf_ratio(sys.argv[1], sys.argv[2]):.3f}")
