//! flowmapsr-web: the browser demo. The UI (bin `app`, Leptos) runs on the main thread; the
//! upscaler (bin `worker`) runs core's sampler in a dedicated web worker, on WebGPU (burn wgpu)
//! or on the CPU (burn flex) when WebGPU is missing or fails, so the page never freezes.
//!
//! This file holds what both sides share, plain Rust so it is tested natively: the messages
//! between page and worker, and the pixel conversions, which mirror `flowmapsr upscale`'s (8-bit
//! RGBA in, alpha upscaled on its own with bicubic, rounded 8-bit out) so both give one answer.

use flowmapsr_core::bridge::Mode;
use flowmapsr_core::sampler::{check_temperature, sample_options, SampleOptions};
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

/// What the user asked for; tile and overlap in input pixels, as `flowmapsr upscale --tile`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub width: usize,
    pub height: usize,
    pub scale: u32,
    pub steps: usize,
    pub tile: usize,
    pub overlap: usize,
    pub seed: u64,
    pub stochastic: bool,
    /// Guidance scale w (1: faithful); at most the model's `w_max`.
    #[serde(default = "one")]
    pub guidance: f32,
    /// LoRA scale (0: the base model; up to 3, sharper and less faithful); needs an adapter.
    #[serde(default)]
    pub lora: f32,
    /// Stochastic mode: source noise x temperature, in [0, 1] (the page's "grain").
    #[serde(default = "one")]
    pub temperature: f32,
    /// Make the result consistent with the input (its bicubic downscale is the input); no
    /// network call. Off shows the flow map's raw output.
    #[serde(default = "yes")]
    pub projection: bool,
}

fn yes() -> bool {
    true
}

fn one() -> f32 {
    1.0
}

impl Job {
    /// The sampler options `flowmapsr upscale` uses for the same knobs.
    pub fn options(&self) -> SampleOptions {
        let mode = self.mode();
        SampleOptions {
            guidance: self.guidance,
            temperature: self.temperature,
            lr_projection: self.projection,
            ..sample_options(
                self.steps,
                mode,
                self.seed,
                self.scale,
                self.tile,
                self.overlap,
            )
        }
    }

    fn mode(&self) -> Mode {
        if self.stochastic {
            Mode::Stochastic
        } else {
            Mode::Fidelity
        }
    }

    /// Size checks before any work: clear errors instead of an out-of-memory tab.
    pub fn check(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::InvalidImage("the image is empty".into()));
        }
        if !matches!(self.scale, 2 | 4 | 8) {
            return Err(Error::BadScale(self.scale));
        }
        let out = self.width * self.height * (self.scale * self.scale) as usize;
        if out > MAX_OUTPUT_PIXELS {
            return Err(Error::BadParam(format!(
                "{}x{} at x{} is {:.1} MP of output; the browser demo stops at {} MP (use a \
                 smaller scale or crop, or `flowmapsr upscale`)",
                self.width,
                self.height,
                self.scale,
                out as f64 / 1e6,
                MAX_OUTPUT_PIXELS >> 20
            )));
        }
        if self.steps == 0 || self.steps > 64 {
            return Err(Error::BadParam("steps must be in 1..=64".into()));
        }
        if self.tile < 16 || self.tile > 512 {
            return Err(Error::BadParam("tile must be 16..=512 input pixels".into()));
        }
        if !(self.guidance.is_finite() && self.guidance >= 1.0) {
            return Err(Error::BadParam("guidance w must be >= 1".into()));
        }
        flowmapsr_core::lora::check_scale(self.lora)?;
        check_temperature(self.temperature, self.mode())?;
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

    #[test]
    fn messages_round_trip_as_json() {
        let m = ToWorker::Upscale(Job {
            width: 3,
            height: 2,
            scale: 4,
            steps: 1,
            tile: 128,
            overlap: 16,
            seed: 7,
            stochastic: false,
            guidance: 2.5,
            lora: 1.5,
            temperature: 0.4,
            projection: false,
        });
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains("\"kind\":\"upscale\""), "{s}");
        assert_eq!(serde_json::from_str::<ToWorker>(&s).unwrap(), m);
        let r: FromWorker =
            serde_json::from_str(r#"{"kind":"ready","backend":"WebGPU","detail":"x","w_max":3}"#)
                .unwrap();
        // A worker that does not say is one without an adapter.
        assert!(matches!(r, FromWorker::Ready { w_max, lora: false, .. } if w_max == 3.0));
        // A job without guidance, LoRA or temperature (an older page): w = 1, LoRA 0, temperature 1.
        let old = r#"{"kind":"upscale","width":1,"height":1,"scale":2,"steps":1,"tile":64,"overlap":8,"seed":0,"stochastic":false}"#;
        match serde_json::from_str::<ToWorker>(old).unwrap() {
            ToWorker::Upscale(j) => {
                assert_eq!((j.guidance, j.lora, j.temperature), (1.0, 0.0, 1.0));
                assert!(j.projection);
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn options_match_the_cli_and_sizes_are_checked() {
        let j = Job {
            width: 100,
            height: 50,
            scale: 4,
            steps: 1,
            tile: 128,
            overlap: 16,
            seed: 0,
            stochastic: true,
            guidance: 1.5,
            lora: 0.0,
            temperature: 0.3,
            projection: true,
        };
        let o = j.options();
        assert_eq!(
            (o.tile, o.overlap, o.steps, o.guidance, o.temperature),
            (512, 64, 1, 1.5, 0.3)
        );
        assert!(o.lr_projection);
        assert!(
            !Job {
                projection: false,
                ..j.clone()
            }
            .options()
            .lr_projection
        );
        assert!(j.check().is_ok());
        let huge = Job {
            width: 2100,
            height: 2100,
            ..j.clone()
        };
        let e = huge.check().unwrap_err().to_string();
        assert!(e.contains("MP of output"), "{e}");
        assert!(Job {
            scale: 3,
            ..j.clone()
        }
        .check()
        .is_err());
        assert!(Job {
            width: 0,
            ..j.clone()
        }
        .check()
        .is_err());
        assert!(Job {
            guidance: 0.5,
            ..j.clone()
        }
        .check()
        .is_err());
        for lora in [-0.5, 3.5, f32::NAN] {
            assert!(Job { lora, ..j.clone() }.check().is_err(), "{lora}");
        }
        assert!(Job {
            lora: 3.0,
            ..j.clone()
        }
        .check()
        .is_ok());
        for temperature in [-0.1, 1.5, f32::NAN] {
            let bad = Job {
                temperature,
                ..j.clone()
            };
            assert!(bad.check().is_err(), "{temperature}");
        }
        // The fidelity mode has no source noise: only the neutral temperature 1 goes with it.
        let fidelity = |temperature| Job {
            stochastic: false,
            temperature,
            ..j.clone()
        };
        assert!(fidelity(0.3).check().is_err());
        assert!(fidelity(1.0).check().is_ok());
        assert!(Job { steps: 0, ..j }.check().is_err());
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
