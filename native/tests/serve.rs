//! The real server on 127.0.0.1 (ephemeral port), driven with real HTTP requests.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowmapsr"))
            .args(["serve", "--addr", "127.0.0.1:0", "--dist", "/nonexistent"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting flowmapsr serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .expect("address line")
            .to_string();
        Server { child, base }
    }

    fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 9 % 256) as u8,
            (y * 7 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let mut v = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png)
        .unwrap();
    v
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

/// (status, content type, body) for a POST, whatever the status.
fn post(url: &str, ctype: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let r = match agent()
        .post(url)
        .set("Content-Type", ctype)
        .send_bytes(body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url} ({ctype}, {} bytes): {e}", body.len()),
    };
    let status = r.status();
    let ct = r.content_type().to_string();
    let mut b = Vec::new();
    r.into_reader().read_to_end(&mut b).unwrap();
    (status, ct, b)
}

/// POST /v1/upscale announcing `len` body bytes but sending none; returns the raw reply.
fn raw_post_headers_only(base: &str, len: usize) -> String {
    use std::io::Write;
    let addr = base.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(c, "POST /v1/upscale HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/png\r\nContent-Length: {len}\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("}") {
        let n = c.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).to_string()
}

/// The body of a GET that must succeed.
fn get(base: &str, path: &str) -> String {
    agent()
        .get(&format!("{base}{path}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

fn json_error(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn good_requests_health_metrics_and_landing_page() {
    use flowmapsr_core::request::Preset;
    let s = Server::start(&[]);
    let (st, ct, body) = post(
        &format!("{}/v1/upscale?scale=2", s.base),
        "image/png",
        &png(20, 12),
    );
    assert_eq!(st, 200);
    assert_eq!(ct, "image/png");
    let img = image::load_from_memory(&body).unwrap();
    assert_eq!((img.width(), img.height()), (40, 24));
    let (st, ct, body) = post(
        &format!("{}/v1/upscale?scale=4&format=webp", s.base),
        "application/octet-stream",
        &png(8, 8),
    );
    assert_eq!((st, ct.as_str()), (200, "image/webp"));
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 32);
    // The dial: the shipped guidance range and LoRA adapter, one request each way.
    let dial = |q: &str| {
        let (st, _, body) = post(
            &format!("{}/v1/upscale?scale=2{q}", s.base),
            "image/png",
            &png(20, 12),
        );
        assert_eq!(st, 200, "{q}: {}", String::from_utf8_lossy(&body));
        image::load_from_memory(&body).unwrap().to_rgb8().into_raw()
    };
    let fidelity = dial("");
    assert_ne!(fidelity, dial("&guidance=2&lora=1"));
    // The realistic preset runs its own weights (its w on the faithful ones is something else).
    let realistic = dial("&preset=realistic");
    assert_ne!(fidelity, realistic);
    let w = flowmapsr_core::request::Preset::Realistic.knobs().1;
    assert_ne!(realistic, dial(&format!("&guidance={w}")));
    // The grain cut: off in the preset unless asked for.
    assert_eq!(
        realistic,
        dial(&format!(
            "&preset=realistic&grain_cut={}",
            Preset::Realistic.grain_cut()
        ))
    );
    assert_ne!(
        dial("&preset=realistic&grain_cut=true"),
        dial("&preset=realistic&grain_cut=false")
    );
    // The LR projection: auto (the default) is on for a PNG.
    assert_eq!(fidelity, dial("&projection=on"));
    assert_eq!(fidelity, dial("&projection=auto"));
    assert_ne!(fidelity, dial("&projection=off"));
    // Temperature scales the source noise: 0 is the fidelity map, lower than 1 changes the grain.
    assert_eq!(fidelity, dial("&mode=stochastic&temperature=0"));
    assert_ne!(
        dial("&mode=stochastic"),
        dial("&mode=stochastic&temperature=0.3")
    );
    let h = get(&s.base, "/healthz");
    assert!(h.contains("ok"));
    let m = get(&s.base, "/metrics");
    assert!(
        m.contains("flowmapsr_requests_total{status=\"200\"} 15"),
        "{m}"
    );
    assert!(m.contains("flowmapsr_queue_depth 0"));
    let page = get(&s.base, "/");
    assert!(page.contains("trunk build --release"));
}

#[test]
fn multipart_upload() {
    let s = Server::start(&[]);
    let img = png(10, 10);
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    body.extend_from_slice(&img);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let (st, _, out) = post(
        &format!("{}/v1/upscale?scale=2", s.base),
        "multipart/form-data; boundary=XyZ",
        &body,
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&out));
    assert_eq!(image::load_from_memory(&out).unwrap().width(), 20);
}

#[test]
fn client_mistakes_are_4xx_with_json() {
    let s = Server::start(&["--max-body", "200000", "--max-pixels", "10000"]);
    let u = |q: &str| format!("{}/v1/upscale{q}", s.base);
    let good = png(16, 16);
    let cases: Vec<(String, &str, Vec<u8>, u16, &str)> = vec![
        (
            u("?scale=3"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?scale=four"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?steps=0"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        // Tiles: at least 16 input pixels, the overlap below the tile.
        (
            u("?tile=0"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?tile=32&overlap=32"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?format=gif"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?colour=red"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        // The shipped weights know w in [1, 3] and LoRA scales in [0, 3].
        (
            u("?guidance=9"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?guidance=0.5"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?lora=-1"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?lora=9"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        // The realistic weights have no adapter.
        (
            u("?preset=realistic&lora=1"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?projection=maybe"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?grain_cut=maybe"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        // Temperature is in [0, 1] and only for the stochastic mode.
        (
            u("?mode=stochastic&temperature=2"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u("?temperature=0.5"),
            "image/png",
            good.clone(),
            400,
            "bad_parameter",
        ),
        (
            u(""),
            "application/json",
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (u(""), "image/png", b"".to_vec(), 422, "bad_image"),
        (
            u(""),
            "image/png",
            b"definitely not a png".to_vec(),
            422,
            "bad_image",
        ),
        (
            u(""),
            "image/png",
            good[..good.len() / 2].to_vec(),
            422,
            "bad_image",
        ),
        (u(""), "image/png", png(200, 200), 413, "image_too_large"),
    ];
    for (url, ct, body, code, kind) in cases {
        let (st, rct, b) = post(&url, ct, &body);
        assert_eq!(st, code, "{url} {ct}: {}", String::from_utf8_lossy(&b));
        assert!(rct.starts_with("application/json"), "{url}: {rct}");
        assert_eq!(json_error(&b), kind, "{url}");
    }
    // An oversized body is refused from its Content-Length, before it is read. (Sent by hand:
    // a client that keeps writing a body the server will never read can see its connection reset.)
    let reply = raw_post_headers_only(&s.base, 300_000);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("body_too_large"), "{reply}");
    // Still alive.
    assert_eq!(post(&u("?scale=2"), "image/png", &good).0, 200);
    let m = get(&s.base, "/metrics");
    assert!(
        m.contains("flowmapsr_errors_total{kind=\"bad_image\"} 3"),
        "{m}"
    );
    assert!(!m.contains("status=\"500\""), "{m}");
}

#[test]
fn overload_gets_503_and_memory_stays_bounded() {
    // One slot, one waiting place: 4x that concurrency at once must see only images and 503s.
    let s = Server::start(&["--concurrency", "1", "--queue", "1"]);
    let url = format!("{}/v1/upscale?scale=4&steps=2", s.base);
    let body = png(96, 96);
    let warm = post(&url, "image/png", &body);
    assert_eq!(warm.0, 200);
    let rss0 = s.rss_kb();
    let mut peak = rss0;
    let mut codes = Vec::new();
    for _round in 0..3 {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (url, body) = (url.clone(), body.clone());
                std::thread::spawn(move || {
                    let (st, _, b) = post(&url, "image/png", &body);
                    if st == 503 {
                        assert_eq!(json_error(&b), "overloaded");
                    }
                    st
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        peak = peak.max(s.rss_kb());
        codes.extend(handles.into_iter().map(|h| h.join().unwrap()));
        peak = peak.max(s.rss_kb());
    }
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    assert!(codes.contains(&200) && codes.contains(&503), "{codes:?}");
    // Bounded: at most two requests' working sets beyond the warmed-up server.
    assert!(
        peak < rss0 + 400 * 1024,
        "RSS grew from {rss0} kB to {peak} kB"
    );
    assert_eq!(post(&url, "image/png", &png(8, 8)).0, 200, "still serving");
}
