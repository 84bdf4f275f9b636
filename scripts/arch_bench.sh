#!/usr/bin/env bash
# Per-tile inference time of deeper generators, before any of them is trained: each block list
# is the realistic network ([3, 10, 10] at widths [32, 64, 96]) grown by Net2Net identity blocks
# (`train --init weights/realistic` for one step on one crop; the step barely moves the weights
# and the time does not depend on them), then timed by `flowmapsr bench --tile 128` at the
# realistic preset's knobs, beside the faithful and realistic presets themselves. The issue's
# browser budget is 2x the faithful preset's time per 128-px tile.
# Usage: scripts/arch_bench.sh [BLOCKS...]   (each like 3,10,40; default "3,10,32 3,10,40 3,43,10")
# Run it on an otherwise idle machine: the times are wall-clock.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/flowmapsr}
[ -x "$BIN" ] || cargo build --release --bin flowmapsr
SHAPES=${*:-3,10,32 3,10,40 3,43,10}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
bench() { "$BIN" bench --tile 128 --reps 3 "$@" 2>/dev/null | grep -o '[0-9.]* ms/tile\|[0-9]* FLOP/output px' | paste -sd' '; }
echo "| generator | FLOP per output px | ms per 128-px tile |"
echo "|---|---|---|"
for p in faithful realistic; do
  read -r ms _ flop _ <<<"$(bench --preset "$p")"
  echo "| --preset $p | $flop | $ms |"
done
for s in $SHAPES; do
  python3 - "$s" "$W/$s.json" <<'PY'
import json, sys
c = json.load(open("configs/realistic-ldl.json"))
c["model"]["unet"]["blocks"] = [int(b) for b in sys.argv[1].split(",")]
c.update(crop=64, batch=1, val_every=10**6, ckpt_every=1, log_every=1)
json.dump(c, open(sys.argv[2], "w"))
PY
  "$BIN" train --config "$W/$s.json" --init weights/realistic --data ../shared/data/train/T91 \
    --out "$W/run-$s" --max-steps 1 >/dev/null 2>&1
  mkdir -p "$W/w-$s"
  python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["model"], open(sys.argv[2], "w"))' \
    "$W/$s.json" "$W/w-$s/config.json"
  cp "$W/run-$s/ckpt-00000001/model.bin" "$W/w-$s/model.bin"
  read -r ms _ flop _ <<<"$(bench --preset realistic --weights "$W/w-$s")"
  echo "| blocks [$s] | $flop | $ms |"
done
