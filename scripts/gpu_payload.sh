#!/usr/bin/env bash
# What a device call carries, against the device's 64 MiB: the working tree's files that git
# tracks or does not ignore (the tree that travels), less the paths given (taken out before the
# call and restored from git after), plus .gpu/ (carried: the binary, the training images and the
# kernel cache when it is there). docs/training.md (On a GPU) quotes its totals.
#
# Usage: scripts/gpu_payload.sh [PATH...]
#   e.g. scripts/gpu_payload.sh checkpoints docs/img                          # a run from weights/
#        scripts/gpu_payload.sh weights checkpoints/realistic-critic checkpoints/ctl docs/img # RESUME=checkpoints/gl43
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - "$@" <<'EOF'
import os, subprocess, sys

out = [p.rstrip("/") for p in sys.argv[1:]]
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       check=True, capture_output=True).stdout.decode().split("\0")
def dropped(f):
    return any(f == p or f.startswith(p + "/") for p in out)
tree = sum(os.path.getsize(f) for f in set(files) if f and os.path.isfile(f) and not dropped(f))

def size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)

MiB = 1 << 20
rows = [("tree" + (" without " + " ".join(out) if out else ""), tree)]
if os.path.isdir(".gpu"):
    for name in sorted(os.listdir(".gpu")):
        rows.append((".gpu/" + name, size(os.path.join(".gpu", name))))
else:
    rows.append((".gpu/ (missing: docs/training.md says what goes in it)", 0))
total = sum(b for _, b in rows)
for label, b in rows:
    print(f"{b / MiB:8.1f} MiB  {label}")
print(f"{total / MiB:8.1f} MiB  in all, of 64 MiB ({(64 * MiB - total) / MiB:+.1f} MiB left)")
sys.exit(0 if total <= 64 * MiB else 1)
EOF
