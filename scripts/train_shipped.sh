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
# Stage 2: a second cosine schedule from stage 1 (rerun after an interruption with --resume
# in place of --init).
if [ ! -e runs/cont/final/model.bin ]; then
  target/release/flowmapsr train --config configs/shipped_cont.json \
    --data "$S/data/train/T91" "$S/data/train/SunHays80" --val "$S/data/eval/Set5" \
    --out runs/cont --init runs/shipped/final
fi
for set in Set5 Set14; do
  target/release/flowmapsr eval --data "$S/data/eval/$set" --scale 4 --weights runs/cont/final
done
echo "to ship: cp runs/cont/final/{config.json,model.bin} weights/ (only if eval beats the current weights)"
