#!/usr/bin/env python3
"""How much HF ratio any texture can add within #5's PSNR bound (docs/tradeoff.md, "Texture bound").

A texture t added to the fidelity output m (y = m + t) whose phase is independent of the missing
detail r = HR - m adds its whole energy to the error: MSE(y) = MSE(m) + |t|^2 (no cross term; for
the exact conditional mean E[HR | LR] this holds for every t the LR image can tell, since r is then
uncorrelated with anything computed from the LR image). A PSNR drop of at most D dB therefore
allows |t|^2 <= (10^(D/10) - 1) MSE(m), whatever network draws t. The HF ratio (sr_score.py:
Laplacian energy, kernel [[0,1,0],[1,-4,1],[0,1,0]], gain G(u,v) = (2cos 2pi u + 2cos 2pi v - 4)^2
at frequency (u, v) cycles/px) gains sum G P_t / |Lap HR|^2 for a texture of power spectrum P_t.
The most HF per unit of error: fill the frequencies of highest G first. Three bounds per image:

  checkerboard  all of the budget at Nyquist (G = 64): no limit but the PSNR one (a 1-px pattern);
  capped        P_t(k) <= max(0, c P_HR(k) - P_m(k)) at every frequency k (after a 5 x 5 average
                of the periodograms; c = 0.95, the margin that keeps a drawn texture's pattern
                ratio under 1): the output nowhere has more power than the photo, a texture as a
                photograph has it (the gate's pattern ratio <= 1), filled greedily by G;
  residual      P_t = a^2 P_r: the missing detail's own spectrum, at the a the budget allows.

`added()` measures a real setting the same way: where its difference from the fidelity output sits
(mean frequency, mean Laplacian gain) and how much error it adds per unit of its energy.

It also draws the capped texture (random phase) and scores it with the scorer's own functions
(PSNR-Y, GMSD, HF ratio, pattern ratio): a check that the bound is met in pixels, and what GMSD does.

Usage: scripts/texture_bound.py SR_DIR HR_DIR [--scale 4] [--drop 1.5] [--cap 0.95] [--seed 0]
       (SR_DIR: `flowmapsr eval --save SR_DIR` outputs of the fidelity setting)
"""
import argparse
import functools
import importlib.util
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from pattern_ratio import pair_ratios  # noqa: E402


@functools.lru_cache(maxsize=1)
def load_scorer():
    path = os.environ.get("SR_SCORE", os.path.join(HERE, "..", "..", "shared", "tools", "sr_score.py"))
    spec = importlib.util.spec_from_file_location("sr_score", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def periodogram(y):
    """Power per frequency, normalised so that it sums to the mean square of y - mean(y)."""
    p = np.abs(np.fft.fft2(y - y.mean())) ** 2 / y.size ** 2
    # A 5 x 5 circular average: a spectrum, not one realisation's speckle.
    k = np.zeros_like(p)
    k[:3, :3] = k[-2:, :3] = k[:3, -2:] = k[-2:, -2:] = 1
    k /= k.sum()
    return np.real(np.fft.ifft2(np.fft.fft2(p) * np.fft.fft2(k)))


def lap_gain(shape):
    u = np.fft.fftfreq(shape[0])[:, None]
    v = np.fft.fftfreq(shape[1])[None, :]
    return (2 * np.cos(2 * np.pi * u) + 2 * np.cos(2 * np.pi * v) - 4) ** 2


def radial(shape):
    """|frequency| in cycles per pixel."""
    u = np.fft.fftfreq(shape[0])[:, None]
    v = np.fft.fftfreq(shape[1])[None, :]
    return np.sqrt(u ** 2 + v ** 2)


def capped_spectrum(cap, g, budget):
    """The spectrum of at most `budget` energy, under `cap`, with the most sum(g * P)."""
    order = np.argsort(-g, axis=None)
    c = cap.ravel()[order]
    cum = np.cumsum(c)
    take = np.minimum(c, np.maximum(budget - (cum - c), 0))
    t = np.zeros(cap.size)
    t[order] = take
    return t.reshape(cap.shape)


def draw(spectrum, rng):
    """A real field with this power spectrum and random phase."""
    n = rng.standard_normal(spectrum.shape)
    f = np.fft.fft2(n) / np.sqrt(n.size)  # unit power per frequency, Hermitian
    t = np.real(np.fft.ifft2(f * np.sqrt(spectrum) * n.size))
    return t


def sr_path(sr_dir, name):
    """SR_DIR/NAME.png, or a clear exit when it is missing."""
    p = os.path.join(sr_dir, name + ".png")
    if not os.path.exists(p):
        sys.exit(f"texture_bound.py: no {p} (SR PNGs named after the HR stems: flowmapsr eval --save)")
    return p


def luma(sc, rgb, gray, scale):
    """The scorer's Y of an RGB array (the gray level itself for a grayscale HR), `scale` pixels
    shaved from every border, as sr_score.py's y_metrics scores it."""
    y = sc.rgb2y(rgb)
    y = (y - 16) * 255 / 219 if gray else y
    return y[scale:-scale, scale:-scale]


def per_image(sr_dir, hr_dir, scale=4, drop=1.5, seed=0, cap=0.95, sc=None):
    """One dict per HR image (see the module doc); SR PNGs named after the HR stems."""
    import cv2

    sc = sc or load_scorer()
    rng = np.random.default_rng(seed)
    factor = 10 ** (drop / 10) - 1
    rows = []
    for name, hr, gray in sc.load_set(hr_dir, scale):
        sr = np.array(Image.open(sr_path(sr_dir, name)).convert("RGB"))
        ys, yh = luma(sc, sr, gray, scale), luma(sc, hr, gray, scale)
        lap_hr = np.mean(cv2.Laplacian(yh, cv2.CV_64F) ** 2)
        hf0 = sc.hf_ratio(ys, yh)
        budget = factor * np.mean((yh - ys) ** 2)
        g = lap_gain(ys.shape)
        p_hr, p_m, p_r = periodogram(yh), periodogram(ys), periodogram(yh - ys)
        spec = capped_spectrum(np.maximum(cap * p_hr - p_m, 0), g, budget)
        y = ys + draw(spec, rng)
        pat = max(r.max() for r in pair_ratios(yh, y))
        rows.append(dict(
            name=name, psnr0=sc.psnr(ys, yh), hf0=hf0, gmsd0=sc.gmsd(ys, yh),
            checker=hf0 + 64 * budget / lap_hr,
            capped=hf0 + np.sum(g * spec) / lap_hr,
            residual=hf0 + factor * np.sum(g * p_r) / lap_hr,
            filled=np.sum(spec) / budget,
            freq=np.sum(radial(ys.shape) * spec) / np.sum(spec),
            geff=np.sum(g * spec) / np.sum(spec),
            psnr=sc.psnr(y, yh), gmsd=sc.gmsd(y, yh), hf=sc.hf_ratio(y, yh), pattern=pat,
        ))
    return rows


def added(sr_dir, fid_dir, hr_dir, scale=4, sc=None):
    """Where a setting's outputs differ from the fidelity setting's, d = y - m, per image: the
    power-weighted mean |frequency| of d (cycles/px) and mean Laplacian gain (HF per unit of
    energy), the error it adds per unit of its energy ((MSE(y) - MSE(m)) / |d|^2: 1 when it is
    blind to the missing detail r, less when it correlates with it) and corr(d, r); set means."""
    sc = sc or load_scorer()
    out = []
    for name, hr, gray in sc.load_set(hr_dir, scale):
        def y_of(d):
            return luma(sc, np.array(Image.open(sr_path(d, name)).convert("RGB")), gray, scale)
        yh = luma(sc, hr, gray, scale)
        m, y = y_of(fid_dir), y_of(sr_dir)
        d, r = y - m, yh - m
        p = np.abs(np.fft.fft2(d)) ** 2
        e = max(np.mean(d ** 2), 1e-12)
        out.append(dict(
            freq=np.sum(radial(d.shape) * p) / max(np.sum(p), 1e-12),
            geff=np.sum(lap_gain(d.shape) * p) / max(np.sum(p), 1e-12),
            cost=(np.mean((y - yh) ** 2) - np.mean(r ** 2)) / e,
            corr=np.mean(d * r) / np.sqrt(e * np.mean(r ** 2)),
        ))
    return {k: float(np.mean([o[k] for o in out])) for k in out[0]}


KEYS = ["psnr0", "hf0", "checker", "capped", "residual", "filled", "psnr", "gmsd", "hf", "pattern",
        "freq", "geff"]


def means(rows):
    """The set's means of every number in `rows` (as the scorer's MEAN line)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in KEYS}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sr")
    ap.add_argument("hr")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--drop", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap", type=float, default=0.95)
    a = ap.parse_args()
    rows = per_image(a.sr, a.hr, a.scale, a.drop, a.seed, a.cap)
    factor = 10 ** (a.drop / 10) - 1
    print(f"PSNR drop allowed {a.drop} dB: texture energy <= {factor:.3f} x MSE of the fidelity output")
    hdr = ("image", "PSNR", "HF", "checkerboard", "capped", "residual", "filled",
           "drawn PSNR", "GMSD", "HF", "pattern", "mean freq", "mean gain")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    fmt = ["{:.3f}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.2f}", "{:.3f}", "{:.4f}", "{:.3f}", "{:.2f}",
           "{:.3f}", "{:.1f}"]
    for r in rows + [dict(means(rows), name="MEAN")]:
        print("| " + " | ".join([r["name"]] + [f.format(r[k]) for k, f in zip(KEYS, fmt)]) + " |")


if __name__ == "__main__":
    main()
