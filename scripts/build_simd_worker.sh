#!/usr/bin/env bash
# trunk post_build hook (Trunk.toml): the upscaler worker again, with WebAssembly SIMD.
#
# trunk builds the page and the plain worker without SIMD (a browser without wasm SIMD refuses a
# module that has any SIMD instruction, so these must have none: patches/gemm-common). This
# builds the same worker with `+simd128` — burn flex's kernels and LLVM's vectoriser use it
# (docs/web.md, Speed) — into its own target folder (the flags differ, so sharing trunk's would
# rebuild both every time) and puts it beside the other files as worker_simd.js +
# worker_simd_bg.wasm; the page loads it when the browser validates a SIMD module.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TRUNK_STAGING_DIR:?run by trunk: see Trunk.toml [[hooks]]}"
[ "${TRUNK_PROFILE:-release}" = release ] && profile=(--release) dir=release || profile=() dir=debug
tdir=target/wasm-simd
CARGO_ENCODED_RUSTFLAGS="-Ctarget-feature=+simd128" RUSTFLAGS="" \
  cargo build "${profile[@]}" --offline --locked --target wasm32-unknown-unknown \
  --manifest-path web/Cargo.toml --bin worker --target-dir "$tdir"
wasm-bindgen --target no-modules --no-typescript --out-dir "$out" --out-name worker_simd \
  "$tdir/wasm32-unknown-unknown/$dir/worker.wasm"
if [ "$dir" = release ]; then
  # As trunk does for the other modules (Trunk.toml: wasm-opt 132 on PATH).
  wasm-opt -Oz "$out/worker_simd_bg.wasm" -o "$out/worker_simd_bg.wasm"
fi
