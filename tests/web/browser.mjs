// The web app in a real browser: Debian's chromium, headless, driven by playwright-core.
// Usage: node tests/web/browser.mjs --dist DIR --image LR.png --native NATIVE.png [--tile 64]
//        [--scale 4] [--gpu-tol 2] [--screenshots DIR]
//        [--native-dial NATIVE_W_L_G.png --guidance W --lora L --grain G]
//        [--native-realistic NATIVE_REALISTIC.png (made with --grain-cut true)]
// The image goes in by file picker, then paste (offline run), then drop (WebGPU run).
// Runs (1) without WebGPU: the CPU path must be chosen, say why and with how many workers (one per
// core: the pool), show a time estimate, and match the native output within 1/255 per pixel; so
// must the Realistic result (its own weights, fetched on that job, with "No hatching" checked)
// against `--preset realistic --grain-cut true` when --native-realistic is given, and the plain (SIMD-free) build, forced with ?simd=0; the viewer zooms, fits and splits; a
// cancel mid-run clears the partial result, a rejected file after a good one clears the image and
// disables Upscale; then, with the server stopped, a reload must still load the app, its wasm and
// the weights (service worker) and give the same pixels; (2) with WebGPU (--enable-unsafe-webgpu:
// SwiftShader on a CPU-only machine): Auto must prefer the CPU over the software adapter and say
// so; chosen under Advanced, WebGPU must then run and match within --gpu-tol levels, at guidance
// W, LoRA scale L and grain G (the stochastic mode at temperature G, seed 0) when --native-dial is
// given (the guidance and LoRA sliders must be enabled: the shipped weights have guidance and an
// adapter). Prints one JSON line per run; exits non-zero on any failure.
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const dist = path.resolve(args.dist ?? "dist");
const image = path.resolve(args.image);
const native = path.resolve(args.native);
const tile = args.tile ?? "64";
const scale = args.scale ?? "4";
const gpuTol = Number(args["gpu-tol"] ?? 2);
const shots = args.screenshots ? path.resolve(args.screenshots) : null;
const exe = process.env.CHROMIUM ?? "/usr/bin/chromium";
const realistic = args["native-realistic"] ? { native: path.resolve(args["native-realistic"]), preset: "realistic", grainCut: true } : null;
const dial = args["native-dial"]
  ? { native: path.resolve(args["native-dial"]), guidance: args.guidance ?? "1", lora: args.lora ?? "0",
      grain: args.grain ?? "0" } : null;

const MIME = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm",
  ".css": "text/css", ".json": "application/json", ".png": "image/png", ".bin": "application/octet-stream" };

function serve() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const p = decodeURIComponent(url.pathname);
    const file = path.join(dist, p.endsWith("/") ? p + "index.html" : p);
    if (!file.startsWith(dist)) { res.writeHead(403).end(); return; }
    fs.readFile(file, (err, body) => {
      if (err) { res.writeHead(404).end(); return; }
      res.writeHead(200, { "content-type": MIME[path.extname(file)] ?? "application/octet-stream", "cache-control": "no-cache" });
      res.end(body);
    });
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

const fail = (msg) => { throw new Error(msg); };

// The three ways in: the file picker, a drop on the drop zone, a paste anywhere.
async function feed(page, how) {
  if (how === "file") return page.setInputFiles("#file", image);
  const b64 = fs.readFileSync(image).toString("base64");
  await page.evaluate(([data, kind]) => {
    const bytes = Uint8Array.from(atob(data), (ch) => ch.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], "lr.png", { type: "image/png" }));
    const init = { bubbles: true, cancelable: true };
    if (kind === "drop") document.querySelector(".drop").dispatchEvent(new DragEvent("drop", { ...init, dataTransfer: dt }));
    else window.dispatchEvent(new ClipboardEvent("paste", { ...init, clipboardData: dt }));
  }, [b64, how]);
}

async function upscaleAndCompare(page, label, how = "file", knobs = null) {
  await page.waitForFunction(() => document.querySelector("#backend")?.dataset.backend, null, { timeout: 180_000 });
  const backend = await page.$eval("#backend", (e) => ({ name: e.dataset.backend, text: e.textContent,
    workers: Number(e.dataset.workers) }));
  await feed(page, how);
  await page.waitForSelector("#upscale:not([disabled])", { timeout: 60_000 });
  await page.selectOption("#scale", scale);
  await page.$eval("#advanced", (e) => { e.open = true; }); // the expert knobs
  await page.selectOption("#tile", tile);
  await page.selectOption("#preset", knobs?.preset ?? "faithful");
  if (knobs?.grainCut !== undefined) await page.setChecked("#grain-cut", knobs.grainCut);
  if (knobs) {
    for (const [id, v] of [["guidance", knobs.guidance], ["lora", knobs.lora], ["grain", knobs.grain]]) {
      if (v === undefined) continue;
      if (await page.$eval(`#${id}`, (e) => e.disabled)) fail(`${label}: the #${id} slider is disabled (the shipped weights have it)`);
      await page.$eval(`#${id}`, (e, v) => { e.value = v; e.dispatchEvent(new Event("input", { bubbles: true })); }, v);
      const shown = await page.$eval(`#${id}-value`, (e) => e.textContent);
      if (Number(shown) !== Number(v)) fail(`${label}: #${id} shows ${shown}, set ${v}`);
    }
  }
  // The expected time shows before the job (the worker measured its speed while loading).
  await page.waitForFunction(() => /Expected time: .+ on this device/.test(document.querySelector("#estimate").textContent),
    null, { timeout: 10_000 }).catch(() => fail(`${label}: no time estimate before upscaling`));
  const estimate = await page.$eval("#estimate", (e) => e.textContent);
  const t0 = Date.now();
  await page.click("#upscale");
  let midShot = false;
  // Wait for the end, taking a screenshot once some (not all) tiles are in.
  for (;;) {
    const st = await page.$eval("#status", (e) => ({ state: e.dataset.state, text: e.textContent }));
    if (st.state === "done") break;
    if (st.state === "failed") fail(`${label}: ${st.text}`);
    if (Date.now() - t0 > 600_000) fail(`${label}: no result after 600 s`);
    if (shots && !midShot) {
      const prog = await page.$eval("#progress", (e) => e.textContent);
      const [d, t] = prog.split(" ")[0] === "0" ? [0, 0] : prog.match(/\d+/g).map(Number);
      if (d > 0 && d < t) { await page.screenshot({ path: path.join(shots, `web-${label}-mid.png`), fullPage: true }); midShot = true; }
    }
    await page.waitForTimeout(100);
  }
  const seconds = (Date.now() - t0) / 1000;
  const progress = await page.$eval("#progress", (e) => e.textContent);
  const blend = (await page.$eval("#status", (e) => e.textContent)).match(/blended on the (\w+)/)?.[1];
  if (shots) await page.screenshot({ path: path.join(shots, `web-${label}-done.png`), fullPage: true });
  const cmp = await page.evaluate(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
    const blob = new Blob([bytes], { type: "image/png" });
    const bmp = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const c = document.createElement("canvas");
    c.width = bmp.width; c.height = bmp.height;
    const ctx = c.getContext("2d");
    ctx.drawImage(bmp, 0, 0);
    const a = ctx.getImageData(0, 0, c.width, c.height).data;
    const out = document.querySelector("#out");
    const b = out.getContext("2d").getImageData(0, 0, out.width, out.height).data;
    let max = 0, over1 = 0, sum = 0;
    if (a.length === b.length) for (let i = 0; i < a.length; i++) {
      const d = Math.abs(a[i] - b[i]); sum += d; if (d > max) max = d; if (d > 1) over1++;
    }
    return { native: [c.width, c.height], browser: [out.width, out.height], max, over1, mean: sum / a.length };
  }, fs.readFileSync(knobs ? knobs.native : native).toString("base64"));
  if (cmp.native[0] !== cmp.browser[0] || cmp.native[1] !== cmp.browser[1]) fail(`${label}: sizes differ ${JSON.stringify(cmp)}`);
  return { label, input: how, backend, blend, seconds, estimate, progress, knobs: knobs && { preset: knobs.preset, guidance: knobs.guidance, lora: knobs.lora, grain: knobs.grain,
    grainCut: knobs.grainCut }, ...cmp };
}

async function session(webgpu, work) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flowmapsr-chromium-"));
  const argsList = ["--no-sandbox", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", ...(webgpu ? ["--enable-unsafe-webgpu"] : [])];
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: exe, headless: true, args: argsList,
    viewport: { width: 1280, height: 860 } });
  try {
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    page.on("console", (m) => { if (m.type() === "error") console.error(`[page] ${m.text()}`); });
    page.on("pageerror", (e) => console.error(`[page error] ${e.message}`));
    page.on("worker", (w) => w.on("console", (m) => { if (m.type() === "error") console.error(`[worker] ${m.text()}`); }));
    return await work(page);
  } finally {
    await ctx.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

let failed = false;
try {
  let server = await serve();
  const base = `http://127.0.0.1:${server.address().port}/`;
  // 1. CPU fallback (no --enable-unsafe-webgpu: no adapter), then offline.
  await session(false, async (page) => {
    await page.goto(base);
    const r = await upscaleAndCompare(page, "cpu");
    console.log(JSON.stringify(r));
    if (r.backend.name !== "CPU") fail(`expected the CPU fallback, got ${r.backend.name}`);
    if (r.blend !== "CPU") fail(`the CPU fallback blends on the CPU, got ${r.blend}`);
    if (!/adapter|navigator\.gpu/.test(r.backend.text)) fail(`the page must say why WebGPU is not used: ${r.backend.text}`);
    if (r.max > 1) fail(`CPU fallback differs from native by ${r.max}/255`);
    // The pool: one worker per core (the 2 x 2 tiles above ran on it and matched native).
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    if (cores >= 2 && r.backend.workers < 2) fail(`${cores} cores but ${r.backend.workers} CPU worker(s): ${r.backend.text}`);
    if (!new RegExp(`${r.backend.workers} workers?, wasm SIMD`).test(r.backend.text)) fail(`the page must say which CPU path: ${r.backend.text}`);
    // Realistic: its own weights, loaded by the lead and the pool on this first realistic job.
    if (realistic) {
      const rr = await upscaleAndCompare(page, "realistic", "file", realistic);
      console.log(JSON.stringify(rr));
      if (rr.max > 1) fail(`Realistic differs from native --preset realistic by ${rr.max}/255`);
      await page.selectOption("#preset", "faithful");
    }
    // The viewer: Before/After labels and the divider on the image; wheel zoom, double-click fit,
    // dragging the divider moves the split.
    const layers = () => page.$eval(".layers", (e) => e.style.transform);
    const box = await (await page.$(".stage")).boundingBox();
    await page.mouse.move(box.x + box.width * 0.3, box.y + box.height * 0.5);
    await page.mouse.wheel(0, -400);
    await page.waitForFunction(() => /scale\((?!1\))/.test(document.querySelector(".layers").style.transform), null, { timeout: 5_000 })
      .catch(() => {});
    const zoomed = await layers();
    await page.dblclick(".stage", { position: { x: box.width * 0.9, y: 10 } });
    const fitted = await layers();
    const handle = await (await page.$(".divider .handle")).boundingBox();
    const clip0 = await page.$eval("#before", (e) => e.style.clipPath);
    await page.mouse.move(handle.x + handle.width / 2, handle.y + handle.height / 2);
    await page.mouse.down();
    await page.mouse.move(handle.x - box.width * 0.2, handle.y + handle.height / 2, { steps: 4 });
    await page.mouse.up();
    const viewer = await page.evaluate(() => ({ before: getComputedStyle(document.querySelector(".label.left")).display,
      after: getComputedStyle(document.querySelector(".label.right")).display,
      divider: getComputedStyle(document.querySelector(".divider")).display,
      clip: document.querySelector("#before").style.clipPath }));
    console.log(JSON.stringify({ label: "viewer", zoomed, fitted, clip0, ...viewer }));
    if (!/scale\((?!1\))[\d.]+\)/.test(zoomed)) fail(`the wheel must zoom the image: ${zoomed}`);
    if (!/scale\(1\)/.test(fitted)) fail(`a double-click must fit the image again: ${fitted}`);
    if (viewer.before === "none" || viewer.after === "none" || viewer.divider === "none") fail(`labels and divider must show with a result: ${JSON.stringify(viewer)}`);
    if (viewer.clip === clip0) fail(`dragging the divider must move the split: ${clip0} -> ${viewer.clip}`);
    // Cancel mid-run: the worker is replaced, the page is ready again, and no result appears.
    await page.click("#upscale");
    await page.waitForFunction(() => document.querySelector("#status").dataset.state === "running"
      && /^[1-9]/.test(document.querySelector("#progress").textContent), null, { timeout: 60_000 });
    await page.click("#cancel");
    await page.waitForFunction(() => document.querySelector("#status").dataset.state === "idle", null, { timeout: 120_000 });
    const after = await page.evaluate(() => {
      const out = document.querySelector("#out");
      const px = out.width && out.height ? out.getContext("2d").getImageData(0, 0, out.width, out.height).data : [];
      return { download: document.querySelector("#download").disabled,
        progress: document.querySelector("#progress").textContent, painted: px.some((v) => v !== 0) };
    });
    console.log(JSON.stringify({ label: "cancel", ...after }));
    if (!after.download) fail("after a cancel there must be no result to download");
    if (!after.progress.startsWith("0 / 0")) fail(`progress must reset after a cancel: ${after.progress}`);
    if (after.painted) fail("after a cancel the half-painted result must be cleared");
    // A rejected file after a good one: the old image goes, Upscale is disabled, the error shows.
    const bad = path.join(os.tmpdir(), `flowmapsr-not-an-image-${process.pid}.png`);
    fs.writeFileSync(bad, "definitely not a png");
    await page.setInputFiles("#file", bad);
    await page.waitForFunction(() => document.querySelector("#status").dataset.state === "failed", null, { timeout: 30_000 });
    const rejected = await page.evaluate(() => ({ upscale: document.querySelector("#upscale").disabled,
      before: document.querySelector("#before").width, out: document.querySelector("#out").width,
      message: document.querySelector("#status").textContent }));
    fs.rmSync(bad, { force: true });
    console.log(JSON.stringify({ label: "rejected file", ...rejected }));
    if (!rejected.upscale) fail("after a rejected file Upscale must be disabled");
    if (rejected.before !== 0 || rejected.out !== 0) fail("after a rejected file the previous image must be cleared");
    if (!/not an image/.test(rejected.message)) fail(`the rejected file's error must say why: ${rejected.message}`);
    // The plain build (no wasm SIMD; what a browser without it gets), forced with ?simd=0.
    const plainPage = await page.context().newPage();
    await plainPage.goto(base + "?simd=0");
    const plain = await upscaleAndCompare(plainPage, "plain");
    await plainPage.close();
    console.log(JSON.stringify(plain));
    if (plain.backend.name !== "CPU" || !/no wasm SIMD/.test(plain.backend.text)) fail(`?simd=0 must run the plain CPU build and say so: ${plain.backend.text}`);
    if (plain.max > 1) fail(`the plain build differs from native by ${plain.max}/255`);
    // Offline: wait until the service worker controls the page and has cached everything,
    // stop the server, reload.
    await page.evaluate(async () => { await navigator.serviceWorker.ready; });
    await page.reload();
    await page.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 30_000 });
    await new Promise((ok) => { server.closeAllConnections(); server.close(ok); });
    const offline = await upscaleAndCompareAfterReload(page, base);
    console.log(JSON.stringify(offline));
    if (offline.server !== "unreachable") fail("the server should be gone for the offline run");
    if (offline.max > 1) fail(`offline result differs from native by ${offline.max}/255`);
  });
  // Restart the server for the WebGPU run.
  server = await serve();
  const base2 = `http://127.0.0.1:${server.address().port}/`;
  // 2. WebGPU (SwiftShader here): Auto prefers the CPU over a software adapter and says why; the
  // visitor can still choose WebGPU (Advanced > Device).
  await session(true, async (page) => {
    await page.goto(base2);
    await page.waitForFunction(() => document.querySelector("#backend")?.dataset.backend, null, { timeout: 180_000 });
    const auto = await page.$eval("#backend", (e) => ({ label: "software adapter", backend: e.dataset.backend, text: e.textContent }));
    console.log(JSON.stringify(auto));
    if (auto.backend !== "CPU" || !/software/.test(auto.text)) fail(`on a software adapter Auto must take the CPU and say why: ${auto.text}`);
    await page.$eval("#advanced", (e) => { e.open = true; });
    await page.selectOption("#device", "webgpu");
    await page.waitForFunction(() => document.querySelector("#backend")?.dataset.backend === "", null, { timeout: 10_000 });
    const r = await upscaleAndCompare(page, "webgpu", "drop", dial);
    console.log(JSON.stringify(r));
    if (r.backend.name !== "WebGPU") fail(`expected WebGPU with --enable-unsafe-webgpu, got ${r.backend.name}: ${r.backend.text}`);
    if (r.blend !== "GPU") fail(`WebGPU must blend with our WGSL kernels, got ${r.blend}`);
    if (r.max > gpuTol) fail(`WebGPU differs from native by ${r.max}/255 (tolerance ${gpuTol})`);
  });
  server.close();
} catch (e) {
  console.error(`FAIL: ${e.message}`);
  failed = true;
}
process.exit(failed ? 1 : 0);

async function upscaleAndCompareAfterReload(page, base) {
  // Nothing listens on the port any more: check that, then reload from the service worker.
  const server = await page.evaluate(async (u) => {
    try { await fetch(u + "?probe=" + Math.random(), { cache: "no-store", mode: "no-cors" }); return "reachable"; } catch { return "unreachable"; }
  }, base + "nothing-cached-here");
  await page.reload();
  const r = await upscaleAndCompare(page, "offline", "paste");
  return { ...r, server };
}
