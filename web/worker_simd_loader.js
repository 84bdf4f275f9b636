// Starts the SIMD build of the worker (scripts/build_simd_worker.sh); the page uses it when the
// browser validates a WebAssembly SIMD module, and the lead worker starts its pool from it too.
importScripts("./worker_simd.js");
wasm_bindgen({ module_or_path: "./worker_simd_bg.wasm" });
