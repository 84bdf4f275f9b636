#!/usr/bin/env bash
# The `cuda` feature builds without a CUDA toolkit (burn 0.21's cuda backend loads the driver and
# NVRTC at run time). On a machine without a driver, `--device cuda` must be a clear error, not
# a panic. Run by .ci/run after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p flowmapsr --features cuda
BIN=target/release/flowmapsr
if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so'; then
  echo "a CUDA driver is installed: skipping the no-driver error check"
  exit 0
fi
set +e
OUT=$("$BIN" upscale samples/coffee_lr.png -o /tmp/flowmapsr_nocuda.png --device cuda 2>&1)
RC=$?
set -e
echo "$OUT"
if [ "$RC" -ne 1 ] || ! grep -q "cannot load the CUDA driver" <<<"$OUT" || [ -e /tmp/flowmapsr_nocuda.png ]; then
  echo "expected exit 1 with 'cannot load the CUDA driver' and no output file, got exit $RC" >&2
  exit 1
fi
echo "cuda build: ok (clean error without a driver)"
