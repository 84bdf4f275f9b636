//! flowmapsr-web: the browser demo. The UI (bin `app`, Leptos) runs on the main thread; the
//! upscaler (bin `worker`) runs core's sampler in a dedicated web worker, on WebGPU (burn wgpu)
//! or on the CPU (burn flex) when WebGPU is missing or fails, so the page never freezes.
//!
//! This file holds what both sides share, plain Rust so it is tested natively: the messages
//! between page and worker, and the pixel conversions, which mirror `flowmapsr upscale`'s (8-bit
//! RGBA in, alpha upscaled on its own with bicubic, rounded 8-bit out) so both give one answer.

use flowmapsr_core::request::{Limits, SampleRequest};
use flowmapsr_core::sampler::SampleOptions;
use flowmapsr_core::{Error, Image, Result};
use serde::{Deserialize, Serialize};

/// Largest output the worker accepts (float buffers of a few times this many pixels live in
/// wasm memory, which is limited to 4 GiB and often much less on phones).
pub const MAX_OUTPUT_PIXELS: usize = 16 << 20;

/// Page -> worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ToWorker {
    /// Pick the backend and load the weights (from the service worker's cache when offline).
    Init { force_cpu: bool },
    /// Upscale the RGBA pixels that travel next to this message.
    Upscale(Job),
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
        // FNV-1a 64 over the four files, in this order.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in ["config.json", "model.bin", "lora.json", "lora.bin"] {
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
