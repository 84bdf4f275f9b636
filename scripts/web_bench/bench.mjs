// Browser benchmark: ms per 128x128 input tile, x4, NFE 1, of the flowmapsr page on WebGPU and
// on its CPU fallback, next to UpscalerJS esrgan-slim and esrgan-thick (TF.js: WebGL beside our
// WebGPU, wasm beside our CPU fallback) in the same headless chromium on the same image.
// Usage: (cd scripts/web_bench && npm ci) && trunk build --release &&
//        node scripts/web_bench/bench.mjs [--reps 3] [--json] [--no-peers]
// Prints a table of ms per tile and the ratios peer / flowmapsr (> 1: flowmapsr is faster).
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const argv = process.argv.slice(2);
const reps = Number(argv[argv.indexOf("--reps") + 1] || 3) || 3;
const json = argv.includes("--json");
// Only this project's two paths (UpscalerJS esrgan-thick on SwiftShader takes minutes a tile).
const peers = argv.includes("--no-peers") ? [] : ["esrgan-slim", "esrgan-thick"];
const dist = path.join(root, "dist");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flowmapsr-bench-"));
const input = path.join(tmp, "input.png");
const MIME = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css",
  ".json": "application/json", ".png": "image/png" };

const server = http.createServer((req, res) => {
  const p = decodeURIComponent(new URL(req.url, "http://x").pathname);
  let file;
  if (p === "/peer.html") file = path.join(here, "peer.html");
  else if (p === "/bench/input.png") file = input;
  else if (p === "/bench/source.png") file = path.join(root, "samples/coffee_lr.png");
  else if (p.startsWith("/nm/")) file = path.join(here, "node_modules", p.slice(4));
  else file = path.join(dist, p.endsWith("/") ? p + "index.html" : p);
  fs.readFile(file, (err, body) => {
    if (err) { res.writeHead(404).end(); return; }
    res.writeHead(200, { "content-type": MIME[path.extname(file)] ?? "application/octet-stream" });
    res.end(body);
  });
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}`;

async function browser(webgpu) {
  const dir = fs.mkdtempSync(path.join(tmp, "profile-"));
  return chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true,
    args: ["--no-sandbox", "--no-first-run", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--disable-quic", ...(webgpu ? ["--enable-unsafe-webgpu"] : [])],
  });
}

// The 128x128 input: the sample photo, scaled to 192x128 and cropped, drawn in the browser.
async function makeInput(ctx) {
  const page = await ctx.newPage();
  await page.goto(`${base}/bench/source.png`);
  const b64 = await page.evaluate(async () => {
    const bmp = await createImageBitmap(await (await fetch("/bench/source.png")).blob());
    const c = document.createElement("canvas"); c.width = 128; c.height = 128;
    c.getContext("2d").drawImage(bmp, -32, 0, 192, 128);
    return c.toDataURL("image/png").split(",")[1];
  });
  fs.writeFileSync(input, Buffer.from(b64, "base64"));
  await page.close();
}

async function ours(ctx) {
  const page = await ctx.newPage();
  await page.goto(`${base}/`);
  await page.waitForFunction(() => document.querySelector("#backend")?.dataset.backend, null, { timeout: 180_000 });
  const backend = await page.$eval("#backend", (e) => e.dataset.backend);
  await page.setInputFiles("#file", input);
  await page.selectOption("#scale", "4");
  await page.selectOption("#tile", "128");
  const times = [];
  for (let i = 0; i <= reps; i++) {
    await page.waitForSelector("#upscale:not([disabled])", { timeout: 60_000 });
    await page.click("#upscale");
    await page.waitForFunction(() => ["done", "failed"].includes(document.querySelector("#status").dataset.state), null, { timeout: 600_000 });
    const text = await page.$eval("#status", (e) => e.textContent);
    const m = text.match(/done in (\d+) ms/);
    if (!m) throw new Error(`flowmapsr: ${text}`);
    if (i > 0) times.push(Number(m[1])); // the first run compiles shaders and warms caches
  }
  await page.close();
  return { backend, ms: times.reduce((a, b) => a + b) / times.length };
}

async function peer(ctx, name, backend) {
  const page = await ctx.newPage();
  await page.goto(`${base}/peer.html`);
  const r = await page.evaluate(([n, b, k]) => window.benchPeer(n, b, k), [name, backend, reps]);
  await page.close();
  return r;
}

const rows = [];
try {
  let ctx = await browser(false);
  await makeInput(ctx);
  const cpu = await ours(ctx);
  rows.push({ system: "flowmapsr", path: "cpu", backend: cpu.backend, ms: cpu.ms });
  for (const name of peers) {
    const r = await peer(ctx, name, "wasm");
    rows.push({ system: `UpscalerJS ${name}`, path: "cpu", backend: `tfjs-${r.backend}`, ms: r.ms });
  }
  await ctx.close();
  ctx = await browser(true);
  const gpu = await ours(ctx);
  rows.push({ system: "flowmapsr", path: "gpu", backend: gpu.backend, ms: gpu.ms });
  for (const name of peers) {
    const r = await peer(ctx, name, "webgl");
    rows.push({ system: `UpscalerJS ${name}`, path: "gpu", backend: `tfjs-${r.backend}`, ms: r.ms });
  }
  await ctx.close();
} finally {
  server.close();
}
for (const r of rows) {
  const mine = rows.find((o) => o.system === "flowmapsr" && o.path === r.path);
  r.ratio_vs_flowmapsr = r.ms / mine.ms;
}
if (json) console.log(JSON.stringify({ tile: 128, scale: 4, reps, rows }));
console.log(`ms per 128x128 input tile, x4 (mean of ${reps} after a warm-up), headless chromium`);
console.log("| system | path | backend | ms / tile | peer ms / flowmapsr ms |");
console.log("|---|---|---|---|---|");
for (const r of rows) console.log(`| ${r.system} | ${r.path} | ${r.backend} | ${r.ms.toFixed(0)} | ${r.ratio_vs_flowmapsr.toFixed(2)} |`);
