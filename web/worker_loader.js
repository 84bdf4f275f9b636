// Starts the plain (SIMD-free) build of the worker, for browsers without WebAssembly SIMD. trunk's
// generated loader passes the module path the way wasm-bindgen 0.2.130 warns about; this is the
// current form. The lead worker starts its pool from the same loader.
importScripts("./worker.js");
wasm_bindgen({ module_or_path: "./worker_bg.wasm" });
