// Browser benchmark: ms per 128x128 input tile, x4, NFE 1, of the flowmapsr page's CPU path with
// one worker and with its pool (one worker per core), next to `flowmapsr bench --tile 128 --steps 1`
// (native, all cores) run in the same invocation; then the page on WebGPU and UpscalerJS
// esrgan-slim and esrgan-thick (TF.js: WebGL beside our WebGPU, wasm beside our CPU path) in the
// same headless chromium.
// The page is timed on a 352x240 crop (x4 with 128 px tiles and the page's 16 px overlap: 3 x 2
// full tiles, so that the pool has tiles to share): ms per tile = the page's "done in N ms" / 6.
// Usage: (cd scripts/web_bench && npm ci) && trunk build --release &&
//        node scripts/web_bench/bench.mjs [--reps 3] [--json] [--no-peers] [--no-gpu] [--plain]
//        [--native target/release/flowmapsr]
// Prints a table of ms per tile, the ratios peer / flowmapsr (> 1: flowmapsr is faster) and the
// CPU path's ratio to native (the web issue's gate: at most 1.5).
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import { spawnSync } from "node:child_process";
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
const gpu = !argv.includes("--no-gpu");
// The plain build (what browsers without wasm SIMD run), forced with ?simd=0.
const plain = argv.includes("--plain");
const nativeBin = path.resolve(root, argv.includes("--native") ? argv[argv.indexOf("--native") + 1] : "target/release/flowmapsr");
const dist = path.join(root, "dist");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flowmapsr-bench-"));
const input = path.join(tmp, "input.png");
const big = path.join(tmp, "tiles6.png");
const MIME = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css",
  ".json": "application/json", ".png": "image/png" };

const server = http.createServer((req, res) => {
  const p = decodeURIComponent(new URL(req.url, "http://x").pathname);
  let file;
  if (p === "/peer.html") file = path.join(here, "peer.html");
  else if (p === "/bench/input.png") file = input;
  else if (p === "/bench/tiles6.png") file = big;
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

// The inputs, drawn in the browser from the sample photo: 128x128 (the peers' tile) and 352x240
// (six of our tiles).
async function makeInputs(ctx) {
  const page = await ctx.newPage();
  await page.goto(`${base}/bench/source.png`);
  const [small, large] = await page.evaluate(async () => {
    const bmp = await createImageBitmap(await (await fetch("/bench/source.png")).blob());
    const draw = (w, h, dx, dw, dh) => {
      const c = document.createElement("canvas"); c.width = w; c.height = h;
      c.getContext("2d").drawImage(bmp, dx, 0, dw, dh);
      return c.toDataURL("image/png").split(",")[1];
    };
    return [draw(128, 128, -32, 192, 128), draw(352, 240, 0, 360, 240)];
  });
  fs.writeFileSync(input, Buffer.from(small, "base64"));
  fs.writeFileSync(big, Buffer.from(large, "base64"));
  await page.close();
}

async function ours(ctx, query) {
  const page = await ctx.newPage();
  await page.goto(`${base}/${query}`);
  await page.waitForFunction(() => document.querySelector("#backend")?.dataset.backend, null, { timeout: 300_000 });
  const backend = await page.$eval("#backend", (e) => e.dataset.backend);
  const workers = Number(await page.$eval("#backend", (e) => e.dataset.workers));
  const detail = await page.$eval("#backend", (e) => e.textContent);
  await page.setInputFiles("#file", big);
  await page.selectOption("#scale", "4");
  await page.$eval("#advanced", (e) => { e.open = true; }); // the expert knobs
  await page.selectOption("#tile", "128");
  const times = [];
  let tiles = 0;
  for (let i = 0; i <= reps; i++) {
    await page.waitForSelector("#upscale:not([disabled])", { timeout: 60_000 });
    await page.click("#upscale");
    await page.waitForFunction(() => ["done", "failed"].includes(document.querySelector("#status").dataset.state), null, { timeout: 1_200_000 });
    const text = await page.$eval("#status", (e) => e.textContent);
    const m = text.match(/done in (\d+) ms/);
    if (!m) throw new Error(`flowmapsr: ${text}`);
    tiles = Number((await page.$eval("#progress", (e) => e.textContent)).match(/\/ (\d+)/)[1]);
    if (i > 0) times.push(Number(m[1])); // the first run warms caches and grows memory
  }
  await page.close();
  return { backend, workers, detail, tiles, ms: times.reduce((a, b) => a + b) / times.length / tiles };
}

function native() {
  const r = spawnSync(nativeBin, ["bench", "--tile", "128", "--steps", "1", "--json"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${nativeBin} bench: ${r.stderr}`);
  const line = r.stdout.trim().split("\n").filter((l) => l.startsWith("{")).pop();
  return JSON.parse(line).ms_per_tile;
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
  await makeInputs(ctx);
  const one = await ours(ctx, "?device=cpu&workers=1");
  rows.push({ system: "flowmapsr", path: "cpu", backend: "CPU, 1 worker", ms: one.ms });
  const pool = await ours(ctx, "?device=cpu");
  rows.push({ system: "flowmapsr", path: "cpu", backend: `CPU, ${pool.workers} workers`, ms: pool.ms });
  if (plain) {
    const p = await ours(ctx, "?device=cpu&simd=0");
    rows.push({ system: "flowmapsr", path: "cpu", backend: `CPU, ${p.workers} workers, no SIMD (plain build)`, ms: p.ms });
  }
  for (const name of peers) {
    const r = await peer(ctx, name, "wasm");
    rows.push({ system: `UpscalerJS ${name}`, path: "cpu", backend: `tfjs-${r.backend}`, ms: r.ms });
  }
  await ctx.close();
  const nat = native();
  rows.push({ system: "flowmapsr native", path: "native", backend: `bench, ${os.cpus().length} cores`, ms: nat });
  if (gpu) {
    ctx = await browser(true);
    const g = await ours(ctx, "?device=webgpu");
    rows.push({ system: "flowmapsr", path: "gpu", backend: g.backend, ms: g.ms });
    for (const name of peers) {
      const r = await peer(ctx, name, "webgl");
      rows.push({ system: `UpscalerJS ${name}`, path: "gpu", backend: `tfjs-${r.backend}`, ms: r.ms });
    }
    await ctx.close();
  }
} finally {
  server.close();
}
// Our reference on each path: the pool on the CPU.
const mineOf = (p) => (p === "cpu" ? rows[1] : rows.find((o) => o.system === "flowmapsr" && o.path === p));
for (const r of rows) {
  const mine = mineOf(r.path);
  r.ratio_vs_flowmapsr = mine ? r.ms / mine.ms : null;
}
const nat = rows.find((r) => r.path === "native").ms;
const gate = { pool_vs_native: rows[1].ms / nat, one_worker_vs_native: rows[0].ms / nat };
if (json) console.log(JSON.stringify({ tile: 128, scale: 4, reps, rows, ...gate }));
console.log(`ms per 128x128 input tile, x4, NFE 1 (mean of ${reps} after a warm-up), headless chromium, ${os.cpus().length} cores (${os.cpus()[0].model})`);
console.log("| system | path | backend | ms / tile | peer ms / flowmapsr ms |");
console.log("|---|---|---|---|---|");
for (const r of rows) console.log(`| ${r.system} | ${r.path} | ${r.backend} | ${r.ms.toFixed(0)} | ${r.ratio_vs_flowmapsr?.toFixed(2) ?? "-"} |`);
console.log(`CPU path / native: pool ${gate.pool_vs_native.toFixed(2)}x, 1 worker ${gate.one_worker_vs_native.toFixed(2)}x`);
