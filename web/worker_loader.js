// Starts the worker's wasm (trunk's generated loader passes the module path the way
// wasm-bindgen 0.2.130 warns about; this is its current form). The lead worker and the workers
// of its CPU pool all start here.
importScripts("./worker.js");
wasm_bindgen({ module_or_path: "./worker_bg.wasm" });
