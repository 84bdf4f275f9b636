#!/usr/bin/env bash
# The flow-map ablation: objective (shortcut, lagrangian, eulerian, flow-matching) x
# weighting (uniform, learned), every run with the same config and budget (configs/ablation.json),
# scored at NFE 1, 2, 4 on Set5 and Set14 (fidelity mode, whole images) and against the 64-step
# ODE of its own diagonal velocity (stochastic mode, centre crops of --max-side px). Writes
# docs/ablation.md. Resumable: rerun it and finished runs and scores are kept.
# Usage: scripts/ablation.sh   (env: SHARED=../shared, OUT=runs/ablation, MAX_SIDE=256)
set -euo pipefail
cd "$(dirname "$0")/.."
S=${SHARED:-../shared}
OUT=${OUT:-runs/ablation}
MAX_SIDE=${MAX_SIDE:-256}
BIN=target/release/flowmapsr
# Reuse a binary built by the test command (a plain `cargo build` unifies other features and recompiles).
[ -x "$BIN" ] || cargo build --release --bin flowmapsr
mkdir -p "$OUT"
for obj in shortcut lagrangian eulerian flow-matching; do
  for w in uniform learned; do
    run="$OUT/$obj-$w"
    if [ ! -e "$run/final/model.bin" ] && [ ! -e "$run/diverged" ]; then
      echo "== train $obj / $w"
      if ! "$BIN" train --config configs/ablation.json --objective "$obj" --weighting "$w" \
        --data "$S/data/train/T91" "$S/data/train/SunHays80" --out "$run" --resume \
        2>>"$run.log"; then
        tail -1 "$run.log" >"$run/diverged"
        echo "   $obj / $w stopped: $(cat "$run/diverged")"
        continue
      fi
    fi
    [ -e "$run/diverged" ] && continue
    for set in Set5 Set14; do
      for n in 1 2 4; do
        f="$run/eval-$set-nfe$n.json"
        [ -s "$f" ] || "$BIN" eval --data "$S/data/eval/$set" --scale 4 --steps "$n" \
          --weights "$run/final" --json >"$f"
      done
      f="$run/consistency-$set.json"
      [ -s "$f" ] || "$BIN" eval --data "$S/data/eval/$set" --scale 4 --consistency \
        --max-side "$MAX_SIDE" --weights "$run/final" --json >"$f"
    done
    echo "== scored $obj / $w"
  done
done
# Reference row: the shipped weights (longer training, with the fidelity anchor; not an equal budget).
mkdir -p "$OUT/shipped"
for set in Set5 Set14; do
  for n in 1 2 4; do
    f="$OUT/shipped/eval-$set-nfe$n.json"
    [ -s "$f" ] || "$BIN" eval --data "$S/data/eval/$set" --scale 4 --steps "$n" --json >"$f"
  done
  f="$OUT/shipped/consistency-$set.json"
  [ -s "$f" ] || "$BIN" eval --data "$S/data/eval/$set" --scale 4 --consistency \
    --max-side "$MAX_SIDE" --json >"$f"
done
python3 scripts/ablation_table.py "$OUT" "$MAX_SIDE" >docs/ablation.md
echo "wrote docs/ablation.md"
