#!/usr/bin/env python3
"""Builds docs/ablation.md from the run folders written by scripts/ablation.sh."""
import json
import math
import os
import re
import sys

out, max_side = sys.argv[1], sys.argv[2]
OBJ = ["shortcut", "lagrangian", "eulerian", "flow-matching"]
W = ["uniform", "learned"]
SD_TERM = {"shortcut": "shortcut", "lagrangian": "lagrangian", "eulerian": "eulerian"}
STEP = re.compile(r"step (\d+) lr \S+ (.*?) \| ([\d.]+) s/step")


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def state(run):
    try:
        latest = open(os.path.join(run, "latest")).read().strip()
    except OSError:
        return None
    return load(os.path.join(run, latest, "state.json"))


def log_terms(path):
    """[(step, {term: value})] from the training log."""
    rows = []
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return rows
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    for m in STEP.finditer(text):
        toks = m.group(2).split()
        rows.append((int(m.group(1)), {toks[i]: float(toks[i + 1]) for i in range(0, len(toks) - 1, 2)}))
    return rows


def stability(obj, run):
    if os.path.exists(os.path.join(run, "diverged")):
        return "diverged: " + open(os.path.join(run, "diverged")).read().strip()[-120:]
    rows = log_terms(run + ".log")
    if not rows:
        return "no log"
    term = SD_TERM.get(obj, "diag")
    vals = [r[term] for _, r in rows if term in r]
    if not vals or any(not math.isfinite(v) for v in vals):
        return "non-finite"
    tail = vals[-max(1, len(vals) // 5):]
    ratio = (sum(tail) / len(tail)) / max(min(vals), 1e-12)
    verdict = "yes" if ratio < 3 else "no"
    return f"{verdict} ({term}: first {vals[0]:.4g}, last {vals[-1]:.4g}, max {max(vals):.4g})"


def f(v, fmt):
    return "n/a" if v is None else format(v, fmt)


print("# Ablation: objective x loss weighting x NFE")
print()
print("Produced by `scripts/ablation.sh` (this file is its output; rerun it to reproduce). Every run:")
print("`configs/ablation.json` (UNet widths 16/32/48, batch 8 of 64 px HR crops, x2/x4/x8 mix,")
print("cosine lr 1e-3 -> 1e-5, EMA 0.995, no fidelity anchor, 25% of each batch on the")
print("self-distillation term), the same seed, the same number of steps, from scratch, on")
print("T91 + SunHays80; `flowmapsr train --objective O --weighting W`. Scores are of the EMA weights.")
print()
print("- Fidelity columns: `flowmapsr eval --scale 4 --steps N` on whole images (deterministic mode).")
print(f"- Agreement: `flowmapsr eval --consistency --max-side {max_side}` (stochastic mode, seed 0,")
print(f"  centre crops of at most {max_side} px): PSNR-Y between the NFE-N flow map and the 64-step")
print("  Euler ODE of the model's own diagonal velocity, from the same source noise; HF ratios of both.")
print()
print("The reference rows are the weights the script was given (the shipped ones by default: docs/model.md),")
print("scored the same way; they are not an equal budget.")
print()
print("## Training")
print()
print("Time is the run's own training time (state.json); on this 2-core machine some runs shared the")
print("cores with other jobs (builds, evaluations), so s/step is only roughly comparable between rows.")
print("Stable: the run finished with finite losses and its self-distillation term (diagonal loss for")
print("flow-matching) ended below 3x its minimum.")
print()
print("| objective | weighting | steps | time (s) | s/step | stable (self-distillation term over the run) |")
print("|---|---|---|---|---|---|")
for o in OBJ:
    for w in W:
        run = os.path.join(out, f"{o}-{w}")
        st = state(run)
        steps = st["step"] if st else None
        secs = st["train_secs"] if st else None
        sps = secs / steps if st and steps else None
        print(f"| {o} | {w} | {f(steps, 'd')} | {f(secs, '.0f')} | {f(sps, '.2f')} | {stability(o, run)} |")
for s in ["Set5", "Set14"]:
    print()
    print(f"## {s}, x4")
    print()
    print("| objective | weighting | NFE | PSNR-Y | SSIM-Y | GMSD | HF ratio | agreement with ODE (dB) | HF ratio, stochastic | HF ratio, ODE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = [(o, w, os.path.join(out, f"{o}-{w}")) for o in OBJ for w in W]
    rows.append(("shipped weights (reference)", "uniform", os.path.join(out, "shipped")))
    for o, w, run in rows:
            c = load(os.path.join(run, f"consistency-{s}.json")) or {}
            for n in [1, 2, 4]:
                e = load(os.path.join(run, f"eval-{s}-nfe{n}.json")) or {}
                print(
                    f"| {o} | {w} | {n} | {f(e.get('psnr_y'), '.3f')} | {f(e.get('ssim_y'), '.4f')} | "
                    f"{f(e.get('gmsd'), '.4f')} | {f(e.get('hf_ratio'), '.3f')} | "
                    f"{f(c.get(f'agreement_psnr_nfe{n}'), '.2f')} | {f(c.get(f'hf_ratio_nfe{n}'), '.3f')} | "
                    f"{f(c.get('hf_ratio_ode'), '.3f')} |"
                )

print()
print("## Gate lines, computed from the tables above")
print()


def gate(c):
    """NFE 1 agreement with the ODE and the HF-ratio gap, in words."""
    a, h, ho = c["agreement_psnr_nfe1"], c["hf_ratio_nfe1"], c["hf_ratio_ode"]
    rel = abs(h - ho) / max(ho, 1e-12)
    return (
        f"NFE 1 agrees with the ODE at {a:.2f} dB ({'>=' if a >= 30 else '<'} 30), HF ratio {h:.3f} "
        f"vs ODE {ho:.3f} ({100 * rel:.1f}% apart, {'within' if rel <= 0.15 else 'outside'} 15%)"
    )


for s in ["Set5", "Set14"]:
    sh = load(os.path.join(out, "shipped", f"consistency-{s}.json"))
    if sh:
        print(f"- {s}, shipped weights (shortcut): {gate(sh)}.")
    for w in W:
        sc = load(os.path.join(out, f"shortcut-{w}", f"consistency-{s}.json"))
        fm = load(os.path.join(out, f"flow-matching-{w}", f"consistency-{s}.json"))
        if not sc or not fm:
            continue
        d = fm["agreement_psnr_nfe1"] - sc["agreement_psnr_nfe1"]
        print(f"- {s}, {w} weighting: shortcut {gate(sc)}; flow-matching {gate(fm)}: {d:+.2f} dB against shortcut.")
print()
cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
print(f"Machine: {os.cpu_count()} cores, {cpu} (burn flex CPU backend).")
