#!/usr/bin/env bash
# Train the shipped weights exactly as recorded in docs/training.md, then score them.
# Resumable: run it again after an interruption and it continues from the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${SHARED:-../shared}
cargo build --release --bin flowmapsr
target/release/flowmapsr train --config configs/shipped.json \
  --data "$S/data/train/T91" "$S/data/train/SunHays80" --val "$S/data/eval/Set5" \
  --out runs/shipped --resume "$@"
for set in Set5 Set14; do
  target/release/flowmapsr eval --data "$S/data/eval/$set" --scale 4 --weights runs/shipped/final
done
echo "to ship: cp runs/shipped/final/{config.json,model.bin} weights/ (only if eval beats the current weights)"
