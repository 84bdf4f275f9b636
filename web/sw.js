// Offline support: the app shell is network-first (fresh when online, cached for offline), the
// weights cache-first (large, and versioned with the app). VERSION is a hash of the shipped weights
// (web/src/lib.rs test `sw_cache_version_follows_the_weights` computes it and fails when it is
// stale), so new weights get a new cache: old caches are deleted on activation.
const VERSION = "w-05a611a2731a156a";
const APP = `flowmapsr-app-${VERSION}`;
const WEIGHTS = `flowmapsr-weights-${VERSION}`;
// The SIMD worker (what every current browser runs); the plain one is cached when a browser without
// wasm SIMD first fetches it (the fetch handler below), not downloaded by everyone.
const SHELL = ["./", "index.html", "app.js", "app_bg.wasm", "worker_simd.js", "worker_simd_bg.wasm",
  "worker_simd_loader.js", "sw.js"];
const MODEL = ["weights/config.json", "weights/model.bin"];
// The adversarial LoRA adapter, when one ships beside the weights (the worker runs without it),
// and the realistic preset's weights (fetched on the first realistic job otherwise).
const OPTIONAL = ["weights/lora.json", "weights/lora.bin", "weights/realistic/config.json",
  "weights/realistic/model.bin"];

self.addEventListener("install", (ev) => {
  ev.waitUntil((async () => {
    const css = (await (await fetch("index.html", { cache: "no-store" })).text())
      .match(/href="([^"]+\.css)"/g)?.map((m) => m.slice(6, -1)) ?? [];
    await (await caches.open(APP)).addAll([...SHELL, ...css]);
    const weights = await caches.open(WEIGHTS);
    await weights.addAll(MODEL);
    for (const f of OPTIONAL) {
      try { await weights.add(f); } catch (e) { /* not shipped: the worker does without */ }
    }
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (ev) => {
  ev.waitUntil((async () => {
    for (const k of await caches.keys()) {
      if (k.startsWith("flowmapsr-") && k !== APP && k !== WEIGHTS) await caches.delete(k);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname.includes("/weights/")) {
    ev.respondWith((async () => {
      const hit = await caches.match(ev.request, { cacheName: WEIGHTS });
      if (hit) return hit;
      const resp = await fetch(ev.request);
      if (resp.ok) (await caches.open(WEIGHTS)).put(ev.request, resp.clone());
      return resp;
    })());
    return;
  }
  ev.respondWith((async () => {
    try {
      const resp = await fetch(ev.request);
      if (resp.ok) (await caches.open(APP)).put(ev.request, resp.clone());
      return resp;
    } catch (e) {
      const hit = await caches.match(ev.request, { ignoreSearch: true });
      if (hit) return hit;
      throw e;
    }
  })());
});
