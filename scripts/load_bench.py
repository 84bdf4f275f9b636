#!/usr/bin/env python3
"""Bounded load benchmark of `flowmapsr serve` on 127.0.0.1 (standard library only).

Starts the server on an ephemeral port, then for each input size sends a fixed number of
POST /v1/upscale requests (scale 4, NFE 1) from a fixed number of client threads, and prints
throughput and p50/p99 latency. Never talks to anything but 127.0.0.1.

  python3 scripts/load_bench.py [--bin target/release/flowmapsr] [--requests 24] [--clients 2]
                                [--concurrency 1] [--queue 8] [--sizes 64 128] [--json]
"""
import argparse, io, json, os, platform, statistics, struct, subprocess, sys, threading, time, urllib.error, urllib.request, zlib


def png(w, h):
    """A textured RGB PNG written with zlib only."""
    rows = b"".join(b"\x00" + bytes(((x * 9 + y * 3) % 256 if c == 0 else (x * y) % 256 if c == 1 else (x ^ y) % 256)
                                     for x in range(w) for c in range(3)) for y in range(h))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/flowmapsr")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    srv = subprocess.Popen([a.bin, "serve", "--addr", "127.0.0.1:0", "--concurrency", str(a.concurrency),
                            "--queue", str(a.queue), "--dist", "/nonexistent"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        base = srv.stdout.readline().strip().removeprefix("listening on ")
        assert base.startswith("http://127.0.0.1:"), base
        results = []
        for size in a.sizes:
            body = png(size, size)
            url = f"{base}/v1/upscale?scale=4&steps=1"
            def one():
                req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
                t = time.perf_counter()
                try:
                    with urllib.request.urlopen(req, timeout=600) as r:
                        r.read(); code = r.status
                except urllib.error.HTTPError as e:
                    code = e.code
                return code, time.perf_counter() - t
            one()  # warm-up
            lat, codes, lock = [], [], threading.Lock()
            todo = list(range(a.requests))
            def client():
                while True:
                    with lock:
                        if not todo: return
                        todo.pop()
                    c, dt = one()
                    with lock:
                        codes.append(c)
                        if c == 200: lat.append(dt)
            t0 = time.perf_counter()
            ts = [threading.Thread(target=client) for _ in range(a.clients)]
            [t.start() for t in ts]; [t.join() for t in ts]
            wall = time.perf_counter() - t0
            results.append({"input": f"{size}x{size}", "output": f"{4*size}x{4*size}", "requests": a.requests,
                            "clients": a.clients, "ok": codes.count(200), "rejected_503": codes.count(503),
                            "throughput_rps": round(codes.count(200) / wall, 3),
                            "output_mp_per_s": round(codes.count(200) * 16 * size * size / wall / 1e6, 3),
                            "p50_ms": round(1e3 * pct(lat, 50), 1), "p99_ms": round(1e3 * pct(lat, 99), 1)})
        machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
        if a.json:
            print(json.dumps({"machine": machine, "concurrency": a.concurrency, "results": results}))
        else:
            print(f"machine: {machine}; server --concurrency {a.concurrency} --queue {a.queue}; scale 4, NFE 1, CPU (flex)")
            print("| input | output | requests | clients | ok | 503 | req/s | output MP/s | p50 ms | p99 ms |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for r in results:
                print(f"| {r['input']} | {r['output']} | {r['requests']} | {r['clients']} | {r['ok']} | {r['rejected_503']} | "
                      f"{r['throughput_rps']} | {r['output_mp_per_s']} | {r['p50_ms']} | {r['p99_ms']} |")
    finally:
        srv.terminate(); srv.wait(timeout=60)


if __name__ == "__main__":
    main()
