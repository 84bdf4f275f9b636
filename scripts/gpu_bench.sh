#!/usr/bin/env bash
# GPU benchmark, one prepared command for a lent GPU.
# Build here first:  cargo build --release -p flowmapsr --features cuda
# then carry target/release/flowmapsr to the GPU machine and run:  scripts/gpu_bench.sh [BIN]
# Prints: a cuda smoke run, then for f32 and bf16 compute (f32 master weights): training steps/s
# (batch 32, 128 px HR crops, Shortcut objective, Adam) and inference output MP/s at NFE 1
# (x4, 128 and 256 px input tiles), one JSON line each; copies them to $OUT/gpu_bench.jsonl
# when $OUT is set (the device tool's output folder).
# On a CPU (a check that the script itself works): DEVICE=cpu BATCH=2 CROP=32 TILES=16 REPS=1 scripts/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/flowmapsr}
DEV=${DEVICE:-cuda:0}
BATCH=${BATCH:-32}
CROP=${CROP:-128}
TILES=${TILES:-128 256}
REPS=${REPS:-20}
LOG=$(mktemp)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
"$BIN" upscale samples/coffee_lr.png -o /tmp/flowmapsr_smoke.png --device "$DEV"
echo "smoke: ok ($(stat -c %s /tmp/flowmapsr_smoke.png) bytes)"
for p in f32 bf16; do
  "$BIN" bench --train --batch "$BATCH" --crop "$CROP" --reps "$REPS" --precision "$p" --device "$DEV" --json | tee -a "$LOG"
  for tile in $TILES; do
    "$BIN" bench --tile "$tile" --steps 1 --reps "$REPS" --precision "$p" --device "$DEV" --json | tee -a "$LOG"
  done
done
if [ -n "${OUT:-}" ]; then cp "$LOG" "$OUT/gpu_bench.jsonl"; fi
rm -f "$LOG"
