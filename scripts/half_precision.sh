#!/usr/bin/env bash
# The shipped weights in f16 against the f32 weights they were rounded from (the last commit with
# f32 weights, REV): `flowmapsr export --format f16` rounds each preset's f32 weights, and
# `flowmapsr eval` scores both at the preset's knobs, x4, on each folder. Prints a markdown table
# (configs/realistic-logs/half-precision.md is its output) and whether the rounding gives back the
# shipped files byte for byte.
# Usage: scripts/half_precision.sh [HR_FOLDER...] (default: ../shared/data/eval/Set5 and Set14)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/flowmapsr}
REV=${REV:-1f7c5d1}
[ -x "$BIN" ] || cargo build --release --bin flowmapsr
[ $# -gt 0 ] || set -- ../shared/data/eval/Set5 ../shared/data/eval/Set14
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/f32/faithful" "$W/f32/realistic"
for f in config.json model.bin lora.json lora.bin; do git show "$REV:weights/$f" >"$W/f32/faithful/$f"; done
for f in config.json model.bin; do git show "$REV:weights/realistic/$f" >"$W/f32/realistic/$f"; done
for p in faithful realistic; do
  "$BIN" export --format f16 --weights "$W/f32/$p" -o "$W/f16/$p" >/dev/null
done
same() { cmp -s "$1" "$2" && echo "the same bytes as the shipped" || echo "NOT the shipped"; }
echo "f16 rounding of $REV's f32 weights: faithful model.bin $(same "$W/f16/faithful/model.bin" weights/model.bin)," \
  "lora.bin $(same "$W/f16/faithful/lora.bin" weights/lora.bin), realistic model.bin" \
  "$(same "$W/f16/realistic/model.bin" weights/realistic/model.bin)"
echo
echo "| preset | weights | bytes (model.bin + lora.bin) | folder | PSNR-Y | SSIM | GMSD | HF ratio | pattern |"
echo "|---|---|---|---|---|---|---|---|---|"
bytes() { local n=0; for f in "$1"/model.bin "$1"/lora.bin; do [ -e "$f" ] && n=$((n + $(stat -c %s "$f"))); done; echo $n; }
for p in faithful realistic; do
  for d in "$@"; do
    for prec in f32 f16; do
      # --weights replaces the preset's weights and keeps its knobs (w, steps, LoRA).
      "$BIN" eval --data "$d" --scale 4 --preset $p --weights "$W/$prec/$p" --json 2>/dev/null |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('| $p | $prec | $(bytes "$W/$prec/$p") | $(basename "$d") | %.4f | %.4f | %.4f | %.3f | %.2f |' % (r['psnr_y'], r['ssim_y'], r['gmsd'], r['hf_ratio'], r['pattern']))"
    done
  done
done
