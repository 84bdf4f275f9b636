//! flowmapsr-web: the browser demo. The UI (bin `app`, Leptos) runs on the main thread; the
//! upscaler (bin `worker`) runs core's sampler in a dedicated web worker, on WebGPU (burn wgpu)
//! or on the CPU (burn flex) when WebGPU is missing or fails, so the page never freezes.
//!
//! This file holds what both sides share, plain Rust so it is tested natively: the messages
//! between page and worker, and the pixel conversions, which mirror `flowmapsr upscale`'s (8-bit
//! RGBA in, alpha upscaled on its own with bicubic, rounded 8-bit out) so both give one answer.

use flowmapsr_core::request::{Limits, SampleRequest};
use flowmapsr_core::sampler::{tile_plan, SampleOptions};
use flowmapsr_core::{Error, Image, Result};
use serde::{Deserialize, Serialize};

/// Largest output the worker accepts (float buffers of a few times this many pixels live in
/// wasm memory, which is limited to 4 GiB and often much less on phones).
pub const MAX_OUTPUT_PIXELS: usize = 16 << 20;
/// Largest input the page decodes.
pub const MAX_INPUT_PIXELS: usize = 16 << 20;

/// The width and height a PNG, JPEG or WebP file's header declares, without decoding it (so a
/// 20000 x 20000 image gets the size limit's message, not a failed decode). None: not one of
/// those, or a header this does not follow.
pub fn header_size(b: &[u8]) -> Option<(usize, usize)> {
    let be16 = |i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize);
    let le16 = |i: usize| Some(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize);
    let le24 = |i: usize| Some(le16(i)? | (*b.get(i + 2)? as usize) << 16);
    let be32 = |i: usize| Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize);
    if b.starts_with(b"\x89PNG\r\n\x1a\n") && b.get(12..16)? == b"IHDR" {
        return Some((be32(16)?, be32(20)?));
    }
    if b.starts_with(&[0xff, 0xd8]) {
        // Walk the markers to the first start-of-frame (SOF0..SOF15 but DHT, JPG and DAC).
        let mut i = 2;
        while i + 9 < b.len() {
            if b[i] != 0xff {
                return None;
            }
            let m = b[i + 1];
            if m == 0xff {
                i += 1;
                continue;
            }
            if (0xc0..=0xcf).contains(&m) && ![0xc4, 0xc8, 0xcc].contains(&m) {
                return Some((be16(i + 7)?, be16(i + 5)?));
            }
            if m == 0xd8 || (0xd0..=0xd7).contains(&m) || m == 0x01 {
                i += 2;
                continue;
            }
            i += 2 + be16(i + 2)?;
        }
        return None;
    }
    if b.get(0..4)? == b"RIFF" && b.get(8..12)? == b"WEBP" {
        return match b.get(12..16)? {
            b"VP8 " => Some((le16(26)? & 0x3fff, le16(28)? & 0x3fff)),
            b"VP8L" => {
                let v = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?) as usize;
                Some(((v & 0x3fff) + 1, ((v >> 14) & 0x3fff) + 1))
            }
            b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
            _ => None,
        };
    }
    None
}

/// Page -> worker (and the lead worker -> the workers of its CPU pool).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ToWorker {
    /// Pick the backend and load the weights (from the service worker's cache when offline).
    /// `workers`: the CPU pool's size (None: as many as the device affords, [`pool_size`]).
    Init {
        #[serde(default)]
        device: DeviceChoice,
        #[serde(default)]
        workers: Option<usize>,
    },
    /// Upscale the RGBA pixels that travel next to this message.
    Upscale(Job),
    /// Become a worker of the lead's CPU pool: load the model on the CPU, then run [`ToWorker::Tile`]s.
    Helper,
    /// One network call of a pooled run (core's `pool::TileCall`): the tile's cuts of x and x0
    /// travel next to it as two Float32Arrays (RGB planes, `width` x `height`).
    Tile {
        id: u64,
        step: usize,
        width: usize,
        height: usize,
        request: SampleRequest,
    },
}

/// Where the worker runs the network: `Auto` takes WebGPU on a hardware adapter and the CPU
/// otherwise (a software adapter such as SwiftShader is slower than the CPU path).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Webgpu,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "cpu" => Some(Self::Cpu),
            "webgpu" | "gpu" => Some(Self::Webgpu),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Webgpu => "webgpu",
        }
    }
}

/// Why a WebGPU adapter is a software rasteriser (SwiftShader, llvmpipe, lavapipe, WARP), from
/// what `GPUAdapter.info` says; None for a hardware adapter.
pub fn software_adapter(info: &str, is_fallback: bool) -> Option<String> {
    let lower = info.to_lowercase();
    const NAMES: [&str; 7] = [
        "swiftshader",
        "llvmpipe",
        "lavapipe",
        "softpipe",
        "microsoft basic render",
        "warp",
        "software",
    ];
    if let Some(n) = NAMES.iter().find(|n| lower.contains(*n)) {
        return Some(format!(
            "the WebGPU adapter ({info}) is a software renderer ({n})"
        ));
    }
    is_fallback.then(|| format!("the WebGPU adapter ({info}) is a fallback (software) adapter"))
}

/// Memory one CPU worker may need at the demo's largest tile (the model, the tile's activations
/// and wasm's own overhead), to cap the pool on small devices.
pub const WORKER_MEMORY_GB: f64 = 0.5;
/// Beyond this many workers, tile hand-over costs more than the extra cores give.
pub const MAX_WORKERS: usize = 8;

/// The CPU pool's size: `requested` (clamped to 1..=[`MAX_WORKERS`]) or one worker per core
/// (`navigator.hardwareConcurrency`), capped by `navigator.deviceMemory` (GB; browsers round it
/// and Chrome reports at most 8) at [`WORKER_MEMORY_GB`] each.
pub fn pool_size(requested: Option<usize>, cores: Option<f64>, memory_gb: Option<f64>) -> usize {
    if let Some(n) = requested {
        return n.clamp(1, MAX_WORKERS);
    }
    let cores = cores.filter(|c| c.is_finite() && *c >= 1.0).unwrap_or(1.0) as usize;
    let by_memory = memory_gb
        .filter(|m| m.is_finite() && *m > 0.0)
        .map_or(MAX_WORKERS, |m| {
            (m / WORKER_MEMORY_GB).floor().max(1.0) as usize
        });
    cores.min(by_memory).clamp(1, MAX_WORKERS)
}

/// What the user asked for: the image's size and core's [`SampleRequest`] (the knobs of
/// `flowmapsr upscale`, tile and overlap in input pixels).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub width: usize,
    pub height: usize,
    pub request: SampleRequest,
}

/// The demo's limits for a model with this w_max and adapter.
pub fn web_limits(w_max: f32, lora: bool) -> Limits {
    Limits {
        max_steps: 64,
        max_tile: 512,
        ..Limits::for_model(w_max, lora)
    }
}

impl Job {
    /// The sampler options `flowmapsr upscale` uses for the same knobs (the page's pixels are
    /// decoded, so nothing is lossy here: the projection is as asked).
    pub fn options(&self) -> SampleOptions {
        self.request.options(false)
    }

    /// Size and knob checks before any work: clear errors instead of an out-of-memory tab.
    pub fn check(&self, limits: &Limits) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::InvalidImage("the image is empty".into()));
        }
        self.request.validate(limits)?;
        let scale = self.request.scale;
        let out = self.width * self.height * (scale * scale) as usize;
        if out > MAX_OUTPUT_PIXELS {
            return Err(Error::BadParam(format!(
                "{}x{} at x{} is {:.1} MP of output; the browser demo stops at {} MP (use a \
                 smaller scale or crop, or `flowmapsr upscale`)",
                self.width,
                self.height,
                scale,
                out as f64 / 1e6,
                MAX_OUTPUT_PIXELS >> 20
            )));
        }
        Ok(())
    }
}

/// Worker -> page.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FromWorker {
    /// The worker's wasm is running and listening: messages sent earlier would have been lost.
    Loaded,
    /// The backend in use, and why (e.g. why WebGPU was not used).
    Ready {
        backend: String,
        detail: String,
        /// The model's largest guidance scale (1: the model has no guidance).
        w_max: f32,
        /// Whether an adversarial LoRA adapter was loaded beside the weights.
        #[serde(default)]
        lora: bool,
        /// How many workers run tiles at once (the CPU pool; 1 on WebGPU).
        #[serde(default = "one")]
        workers: usize,
        /// Measured speed of one worker: ms per output megapixel and step (0: not measured).
        #[serde(default)]
        ms_per_mpx: f64,
        /// The model's tile alignment (tile sizes are rounded to it).
        #[serde(default = "one")]
        align: usize,
        /// The realistic preset's weights' cost per pixel over the faithful ones' (for the time
        /// estimate; they are fetched on the first realistic job).
        #[serde(default = "unit")]
        realistic_cost: f64,
    },
    /// A pooled call's signed output: a Float32Array of RGB planes travels next to this message.
    TileOut {
        id: u64,
    },
    /// A pooled call failed (the pool's worker stays usable).
    TileFailed {
        id: u64,
        message: String,
    },
    /// A finished tile: its RGBA pixels travel next to this message.
    Tile {
        done: usize,
        total: usize,
        x: usize,
        y: usize,
        w: usize,
        h: usize,
    },
    /// The whole result: its RGBA pixels travel next to this message.
    Done {
        width: usize,
        height: usize,
        ms: f64,
        /// Where the tiles were blended: "GPU" (flowmapsr-shaders) or "CPU".
        blend: String,
    },
    Error {
        message: String,
    },
}

fn one() -> usize {
    1
}

fn unit() -> f64 {
    1.0
}

/// Expected time of `job` in ms: every tile's padded area at every step, in rounds of `workers`
/// tiles, at `ms_per_mpx` (ms per output megapixel and step of one worker) — tiles are the unit a
/// worker takes, so a small image on many workers is no faster than its largest tile.
pub fn estimate_ms(job: &Job, align: usize, ms_per_mpx: f64, workers: usize) -> Option<f64> {
    if ms_per_mpx <= 0.0 {
        return None;
    }
    let o = job.options();
    let s = job.request.scale as usize;
    let plan = tile_plan(job.width * s, job.height * s, &o, align).ok()?;
    let mut areas: Vec<f64> = plan
        .tiles
        .iter()
        .map(|t| (t.padded_w * t.padded_h) as f64 / 1e6)
        .collect();
    areas.sort_by(|a, b| b.total_cmp(a));
    // Largest first, each round as long as its largest tile.
    let rounds: f64 = areas.chunks(workers.max(1)).map(|c| c[0]).sum();
    Some(rounds * o.steps as f64 * ms_per_mpx)
}

/// "about 40 s", "about 3 min": a duration as a visitor reads it.
pub fn human_ms(ms: f64) -> String {
    let s = ms / 1e3;
    if s < 1.0 {
        "under a second".into()
    } else if s < 90.0 {
        format!("about {:.0} s", s.max(1.0))
    } else {
        format!("about {:.0} min", (s / 60.0).round().max(2.0))
    }
}

/// 8-bit RGBA (as canvases give it) to RGB in [0, 1], and alpha when any pixel is not opaque.
pub fn split_rgba(rgba: &[u8], width: usize, height: usize) -> Result<(Image, Option<Image>)> {
    if rgba.len() != width * height * 4 {
        return Err(Error::InvalidImage(format!(
            "{} bytes for a {width}x{height} RGBA image",
            rgba.len()
        )));
    }
    let img = Image::from_interleaved_u8(width, height, 4, rgba)?;
    let n = width * height;
    let rgb = Image::new(width, height, 3, img.data[..3 * n].to_vec())?;
    let alpha = img.plane(3);
    let alpha = alpha
        .iter()
        .any(|&a| a < 1.0)
        .then(|| Image::new(width, height, 1, alpha.to_vec()))
        .transpose()?;
    Ok((rgb, alpha))
}

pub use flowmapsr_core::image::to_rgba;
pub use flowmapsr_core::sampler::tile_preview;

/// An error as the page shows it: in the visitor's words, without the library's category prefix
/// ("invalid parameter: ...").
pub fn user_message(e: &Error) -> String {
    match e {
        Error::BadParam(m) | Error::InvalidImage(m) => m.clone(),
        e => e.to_string(),
    }
}

/// `photo.jpg` at x4 -> `photo_x4.png` (the page always saves PNG).
pub fn download_name(input: &str, scale: u32) -> String {
    let base = input.rsplit(['/', '\\']).next().unwrap_or(input);
    let stem = match base.rfind('.') {
        Some(i) if i > 0 => &base[..i],
        _ => base,
    };
    let stem = if stem.is_empty() { "image" } else { stem };
    format!("{stem}_x{scale}.png")
}

/// A JS exception or rejection as text (its `message` when it has one).
#[cfg(target_arch = "wasm32")]
pub fn js_error(e: wasm_bindgen::JsValue) -> String {
    e.as_string()
        .or_else(|| {
            js_sys::Reflect::get(&e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmapsr_core::bridge::Mode;
    use flowmapsr_core::projection::Policy;

    fn job() -> Job {
        Job {
            width: 100,
            height: 50,
            request: SampleRequest {
                mode: Mode::Stochastic,
                guidance: Some(1.5),
                temperature: 0.3,
                ..Default::default()
            },
        }
    }

    #[test]
    fn messages_round_trip_as_json() {
        let m = ToWorker::Upscale(job());
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains("\"kind\":\"upscale\""), "{s}");
        assert_eq!(serde_json::from_str::<ToWorker>(&s).unwrap(), m);
        let r: FromWorker =
            serde_json::from_str(r#"{"kind":"ready","backend":"WebGPU","detail":"x","w_max":3}"#)
                .unwrap();
        // A worker that does not say is one without an adapter.
        assert!(matches!(r, FromWorker::Ready { w_max, lora: false, .. } if w_max == 3.0));
    }

    #[test]
    fn options_match_the_cli_and_sizes_are_checked() {
        let j = job();
        let lim = web_limits(3.0, true);
        let o = j.options();
        assert_eq!(
            (o.tile, o.overlap, o.steps, o.guidance, o.temperature),
            (512, 64, 1, 1.5, 0.3)
        );
        assert!(o.lr_projection);
        let mut off = j.clone();
        off.request.projection = Policy::Off;
        assert!(!off.options().lr_projection);
        j.check(&lim).unwrap();
        let huge = Job {
            width: 2100,
            height: 2100,
            ..j.clone()
        };
        let e = user_message(&huge.check(&lim).unwrap_err());
        assert!(e.starts_with("2100x2100 at x4 is 70.6 MP of output"), "{e}");
        assert!(Job {
            width: 0,
            ..j.clone()
        }
        .check(&lim)
        .is_err());
        // The knobs are core's checks with the demo's limits.
        let mut many = j.clone();
        many.request.steps = Some(65);
        let e = many.check(&lim).unwrap_err().to_string();
        assert!(e.contains("1..=64"), "{e}");
        let mut big = j.clone();
        big.request.tile = 600;
        assert!(big.check(&lim).is_err());
        let mut lora = j.clone();
        lora.request.lora = Some(1.0);
        assert!(lora.check(&lim).is_ok());
        assert!(lora.check(&web_limits(3.0, false)).is_err());
    }

    #[test]
    fn rgba_round_trips_and_alpha_only_when_used() {
        let px: Vec<u8> = vec![0, 128, 255, 255, 10, 20, 30, 255];
        let (rgb, a) = split_rgba(&px, 2, 1).unwrap();
        assert!(a.is_none());
        assert_eq!(rgb.plane(1), &[128.0 / 255.0, 20.0 / 255.0]);
        assert_eq!(to_rgba(&rgb, None), px);
        let px2: Vec<u8> = vec![0, 128, 255, 7, 10, 20, 30, 255];
        let (rgb, a) = split_rgba(&px2, 2, 1).unwrap();
        assert_eq!(a.as_ref().unwrap().data, vec![7.0 / 255.0, 1.0]);
        assert_eq!(to_rgba(&rgb, a.as_ref()), px2);
        assert!(split_rgba(&px2, 3, 1).is_err());
    }

    #[test]
    fn tile_preview_crops_and_maps_signed_values() {
        // A 4x2 signed tile; preview its top-left 2x1.
        let mut d = vec![0.0f32; 3 * 8];
        d[0] = -1.0; // R(0,0) -> 0
        d[1] = 1.0; // R(1,0) -> 255
        d[8] = 0.0; // G(0,0) -> 128 (127.5 rounds up)
        let t = Image::new(4, 2, 3, d).unwrap();
        assert_eq!(
            tile_preview(&t, 2, 1),
            vec![0, 128, 128, 255, 255, 128, 128, 255]
        );
    }

    #[test]
    fn header_sizes_without_decoding() {
        let enc = |f: image::ImageFormat| {
            let img = image::RgbImage::from_fn(37, 21, |x, y| image::Rgb([x as u8, y as u8, 9]));
            let mut v = std::io::Cursor::new(Vec::new());
            img.write_to(&mut v, f).unwrap();
            v.into_inner()
        };
        for f in [
            image::ImageFormat::Png,
            image::ImageFormat::Jpeg,
            image::ImageFormat::WebP,
        ] {
            assert_eq!(header_size(&enc(f)), Some((37, 21)), "{f:?}");
        }
        // A header alone: a 20000 x 20000 PNG's first 33 bytes.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend(20000u32.to_be_bytes());
        png.extend(20000u32.to_be_bytes());
        assert_eq!(header_size(&png), Some((20000, 20000)));
        assert!(20000 * 20000 > MAX_INPUT_PIXELS);
        assert_eq!(header_size(b"definitely not a png"), None);
        assert_eq!(header_size(&png[..18]), None);
        assert_eq!(header_size(&[0xff, 0xd8, 0xff]), None);
    }

    #[test]
    fn software_adapters_and_pool_sizes() {
        assert!(software_adapter("google swiftshader Google SwiftShader", false).is_some());
        assert!(software_adapter("mesa llvmpipe (LLVM 19.1.7, 256 bits)", false).is_some());
        assert!(software_adapter("Microsoft Basic Render Driver", false).is_some());
        assert!(software_adapter("nvidia ampere NVIDIA GeForce RTX 3060", false).is_none());
        assert!(software_adapter("adapter", true).is_some());
        assert_eq!(pool_size(None, Some(2.0), Some(8.0)), 2);
        assert_eq!(pool_size(None, Some(16.0), Some(8.0)), MAX_WORKERS);
        assert_eq!(pool_size(None, Some(8.0), Some(1.0)), 2);
        assert_eq!(pool_size(None, Some(8.0), Some(0.25)), 1);
        assert_eq!(pool_size(None, None, None), 1);
        assert_eq!(pool_size(Some(1), Some(8.0), None), 1);
        assert_eq!(pool_size(Some(99), None, None), MAX_WORKERS);
        assert_eq!(DeviceChoice::parse("webgpu"), Some(DeviceChoice::Webgpu));
        assert_eq!(DeviceChoice::parse("tpu"), None);
    }

    #[test]
    fn estimates_follow_tiles_steps_and_workers() {
        let mut j = job();
        j.width = 256;
        j.height = 256;
        j.request.tile = 128;
        j.request.overlap = 16;
        // x4: 1024 px with 512 px tiles and 64 px overlaps: 3 x 3 tiles.
        let one = estimate_ms(&j, 8, 1000.0, 1).unwrap();
        let two = estimate_ms(&j, 8, 1000.0, 2).unwrap();
        assert!((one - 9.0 * 512.0 * 512.0 / 1e3).abs() < 1e-6, "{one}");
        assert!(two < one * 0.6 && two > one * 0.4, "{one} {two}");
        j.request.steps = Some(2);
        assert!((estimate_ms(&j, 8, 1000.0, 1).unwrap() - 2.0 * one).abs() < 1e-9);
        assert_eq!(estimate_ms(&j, 8, 0.0, 1), None);
        assert_eq!(human_ms(400.0), "under a second");
        assert_eq!(human_ms(12_400.0), "about 12 s");
        assert_eq!(human_ms(200_000.0), "about 3 min");
    }

    #[test]
    fn download_names() {
        assert_eq!(download_name("photo.jpg", 4), "photo_x4.png");
        assert_eq!(download_name("C:\\a\\b.c.webp", 2), "b.c_x2.png");
        assert_eq!(download_name(".png", 8), ".png_x8.png");
        assert_eq!(download_name("", 8), "image_x8.png");
    }

    /// The service worker serves the weights cache-first, so a returning user keeps the old weights
    /// until its cache name changes: sw.js's VERSION must follow the shipped files' contents.
    #[test]
    fn sw_cache_version_follows_the_weights() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // FNV-1a 64 over the shipped files, in this order.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in [
            "config.json",
            "model.bin",
            "lora.json",
            "lora.bin",
            "realistic/config.json",
            "realistic/model.bin",
        ] {
            for b in std::fs::read(root.join("weights").join(f)).unwrap() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        let want = format!("const VERSION = \"w-{h:016x}\";");
        let sw = std::fs::read_to_string(root.join("web/sw.js")).unwrap();
        assert!(
            sw.contains(&want),
            "the weights changed: set `{want}` in web/sw.js"
        );
    }
}
