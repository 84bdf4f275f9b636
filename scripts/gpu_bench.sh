#!/usr/bin/env bash
# GPU benchmark, one prepared command for a lent GPU (issue: GPU training at scale).
# Build here first:  cargo build --release -p flowmapsr --features cuda
# then carry target/release/flowmapsr to the GPU machine and run:  scripts/gpu_bench.sh [BIN]
# Prints: a cuda smoke run, training steps/s (batch 32, 128 px HR crops, Shortcut objective)
# and inference output MP/s at NFE 1 (x4, 256 px input tiles), as JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/flowmapsr}
DEV=${DEVICE:-cuda:0}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$BIN" upscale samples/coffee_lr.png -o /tmp/flowmapsr_cuda_smoke.png --device "$DEV"
echo "smoke: ok ($(stat -c %s /tmp/flowmapsr_cuda_smoke.png) bytes)"
"$BIN" bench --train --batch 32 --crop 128 --reps 20 --device "$DEV" --json
for tile in 128 256; do
  "$BIN" bench --tile "$tile" --steps 1 --reps 20 --device "$DEV" --json
done
# f32 only: mixed precision is not implemented yet (see docs/distributed.md).
