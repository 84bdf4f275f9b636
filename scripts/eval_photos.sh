#!/usr/bin/env bash
# Score the shipped model against bicubic (x4, standard protocol) on photographs that are NOT in
# ../shared: the public-domain / CC0 photos bundled with scikit-image (pip install scikit-image).
# Usage: scripts/eval_photos.sh [extra flowmapsr eval flags]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
python3 - "$dir" <<'PY'
import sys, skimage.data as d
from PIL import Image
for name in ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]:
    Image.fromarray(getattr(d, name)()).save(f"{sys.argv[1]}/{name}.png")
PY
bin=${BIN:-target/release/flowmapsr}
[ -x "$bin" ] || cargo build --release --bin flowmapsr
echo "== bicubic"; "$bin" eval --data "$dir" --scale 4 --method bicubic "$@"
echo "== flowmapsr (shipped weights, NFE 1)"; "$bin" eval --data "$dir" --scale 4 "$@"
rm -rf "$dir"
