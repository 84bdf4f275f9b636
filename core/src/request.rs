//! One sampling request: the knobs every surface turns (`flowmapsr upscale / eval / bench`, the
//! server's query, the web worker's job), declared and validated here once. Each surface sets
//! only its [`Limits`]; the model's own limits (its w_max, whether it has an adapter) come with
//! the weights ([`Limits::for_model`]).
//!
//! A [`Preset`] names shipped weights and a setting of the fidelity <-> realism knobs (steps,
//! guidance, LoRA scale); a knob given explicitly overrides the preset's value, and weights given
//! explicitly (`--weights`) replace the preset's.
//!
//! Tile and overlap are in input pixels, as a user thinks of them; [`SampleRequest::options`]
//! turns them into the sampler's full-resolution [`SampleOptions`].

use crate::bridge::Mode;
use crate::error::{Error, Result};
use crate::projection::Policy;
use crate::sampler::{check_temperature, SampleOptions, Solver};
use serde::{Deserialize, Serialize};

/// The smallest tile side, in input pixels, any surface accepts: below it the network's
/// receptive field sees mostly padding and the overlaps cost more than the tiles.
pub const MIN_TILE: usize = 16;

/// A named choice of shipped weights and knobs that trade fidelity for realism.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Preset {
    /// The best PSNR: the shipped weights, one step, w 1, no adapter.
    #[default]
    Faithful,
    /// Sharper: the realistic weights (the whole network deepened and trained against a
    /// discriminator, docs/realistic-training.md), one step, w 1.95 (chosen on held-out training
    /// images; needs w_max >= 1.95).
    Realistic,
}

impl Preset {
    /// (steps, guidance w, LoRA scale).
    pub fn knobs(self) -> (usize, f32, f32) {
        match self {
            Self::Faithful => (1, 1.0, 0.0),
            Self::Realistic => (1, 1.95, 0.0),
        }
    }

    /// Whether it cuts the 2-px grain from the result ([`crate::grain`]); neither shipped preset
    /// does yet (the realistic weights' grain is error, but it also counts as detail in the HF
    /// ratio that the ship rule weighs, docs/realistic-training.md).
    pub fn grain_cut(self) -> bool {
        false
    }

    /// The folder of its shipped weights under the shipped `weights/` folder ("" for the
    /// faithful ones at its root).
    pub fn weights_subdir(self) -> &'static str {
        match self {
            Self::Faithful => "",
            Self::Realistic => "realistic/",
        }
    }

    /// Whether its shipped weights come with a LoRA adapter (only the faithful ones do: the
    /// realistic network was trained whole).
    pub fn ships_adapter(self) -> bool {
        self == Self::Faithful
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct SampleRequest {
    /// Upscaling factor: 2, 4 or 8.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 4))]
    pub scale: u32,
    /// faithful (best PSNR) or realistic (sharper, less faithful): a setting of --steps,
    /// --guidance and --lora; any of those given explicitly overrides the preset's value.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Preset::Faithful))]
    pub preset: Preset,
    /// Network calls per tile (flow-map steps; 1 is the one-step map) [default: the preset's].
    #[cfg_attr(feature = "clap", arg(long))]
    pub steps: Option<usize>,
    /// Tile side in input pixels (at least 16).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 128))]
    pub tile: usize,
    /// Overlap of neighbouring tiles in input pixels (below the tile side).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 16))]
    pub overlap: usize,
    /// fidelity (deterministic, best PSNR) or stochastic (seeded source noise).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Mode::Fidelity))]
    pub mode: Mode,
    /// Seed of the stochastic mode's source noise.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Stochastic mode: source noise = temperature x the trained sigma_0, in [0, 1]; lower keeps
    /// less grain and more fidelity (SRFlow's temperature).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1.0))]
    pub temperature: f32,
    /// Guidance scale w in [1, w_max of the model]: 1 is faithful, larger is sharper
    /// (positive/negative prompt guidance, one network call per step at any w) [default: the
    /// preset's].
    #[cfg_attr(feature = "clap", arg(long))]
    pub guidance: Option<f32>,
    /// LoRA scale in [0, 3] (adversarial adapters: 0 is the base model, higher is more
    /// photographic); needs weights with lora.json + lora.bin [default: the preset's].
    #[cfg_attr(feature = "clap", arg(long))]
    pub lora: Option<f32>,
    /// LR projection: make the result exactly consistent with the input (its bicubic downscale
    /// is the input; no network call). auto: on, except for JPEG and lossy WebP inputs (their
    /// coding noise would come back); off: the flow map's raw output.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Policy::Auto))]
    pub projection: Policy,
    /// Cut the 2-px grain (the spectrum where both frequencies are at least 0.4 cycles/px) from
    /// the whole result: true or false [default: the preset's].
    #[cfg_attr(feature = "clap", arg(long))]
    pub grain_cut: Option<bool>,
}

impl Default for SampleRequest {
    fn default() -> Self {
        Self {
            scale: 4,
            preset: Preset::Faithful,
            steps: None,
            tile: 128,
            overlap: 16,
            mode: Mode::Fidelity,
            seed: 0,
            temperature: 1.0,
            guidance: None,
            lora: None,
            projection: Policy::Auto,
            grain_cut: None,
        }
    }
}

/// What a surface accepts, and what the loaded model can do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub max_steps: usize,
    pub max_tile: usize,
    /// The model's largest guidance scale (1: no guidance).
    pub w_max: f32,
    /// Whether the model has a LoRA adapter.
    pub lora: bool,
}

impl Limits {
    /// The command line's limits (the sampler's own) for a model.
    pub fn for_model(w_max: f32, lora: bool) -> Self {
        Self {
            max_steps: 1024,
            max_tile: 4096,
            w_max,
            lora,
        }
    }
}

impl SampleRequest {
    /// Network calls per tile: as given, or the preset's.
    pub fn steps(&self) -> usize {
        self.steps.unwrap_or(self.preset.knobs().0)
    }

    /// Guidance w: as given, or the preset's.
    pub fn guidance(&self) -> f32 {
        self.guidance.unwrap_or(self.preset.knobs().1)
    }

    /// LoRA scale: as given, or the preset's.
    pub fn lora(&self) -> f32 {
        self.lora.unwrap_or(self.preset.knobs().2)
    }

    /// The grain cut: as given, or the preset's.
    pub fn grain_cut(&self) -> bool {
        self.grain_cut.unwrap_or(self.preset.grain_cut())
    }

    /// Every knob against `limits`, before any work; the message names the knob and the range.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        let (steps, w, lora) = (self.steps(), self.guidance(), self.lora());
        if !matches!(self.scale, 2 | 4 | 8) {
            return Err(Error::BadScale(self.scale));
        }
        if !(1..=limits.max_steps).contains(&steps) {
            return Err(Error::BadParam(format!(
                "steps must be in 1..={}, got {steps}",
                limits.max_steps
            )));
        }
        if !(MIN_TILE..=limits.max_tile).contains(&self.tile) {
            return Err(Error::BadParam(format!(
                "tile must be in {MIN_TILE}..={} input pixels, got {}",
                limits.max_tile, self.tile
            )));
        }
        if self.overlap >= self.tile {
            return Err(Error::BadParam(format!(
                "overlap {} must be below the tile side {} (set a smaller overlap)",
                self.overlap, self.tile
            )));
        }
        // Said with the preset when the value is the preset's, so the fix is clear.
        let from_preset = |given: bool| {
            if given {
                String::new()
            } else {
                format!(" (the {:?} preset's)", self.preset).to_lowercase()
            }
        };
        if !(w.is_finite() && w >= 1.0 && w <= limits.w_max + 1e-6) {
            let why = from_preset(self.guidance.is_some());
            return Err(Error::BadParam(if limits.w_max > 1.0 {
                format!(
                    "guidance must be in [1, {}] for this model, got {w}{why}",
                    limits.w_max
                )
            } else {
                format!("guidance {w}{why}: this model was not trained for guidance (only 1)")
            }));
        }
        crate::lora::check_scale(lora)?;
        if lora != 0.0 && !limits.lora {
            return Err(Error::BadParam(format!(
                "lora {lora}{}: this model has no LoRA adapter (lora.json + lora.bin)",
                from_preset(self.lora.is_some())
            )));
        }
        check_temperature(self.temperature, self.mode)
    }

    /// The sampler's options for an input whose file was (`lossy_input`) lossily coded.
    pub fn options(&self, lossy_input: bool) -> SampleOptions {
        let s = self.scale as usize;
        SampleOptions {
            steps: self.steps(),
            solver: Solver::FlowMap,
            mode: self.mode,
            seed: self.seed,
            guidance: self.guidance(),
            temperature: self.temperature,
            tile: self.tile * s,
            overlap: self.overlap * s,
            lr_projection: self.projection.applies(lossy_input),
            grain_cut: self.grain_cut(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits {
            max_steps: 16,
            max_tile: 512,
            w_max: 3.0,
            lora: true,
        }
    }

    #[test]
    fn defaults_pass_and_each_bad_knob_is_named() {
        let r = SampleRequest::default();
        r.validate(&lim()).unwrap();
        let bad = |f: &dyn Fn(&mut SampleRequest), word: &str| {
            let mut q = r.clone();
            f(&mut q);
            let e = q.validate(&lim()).unwrap_err().to_string();
            assert!(e.contains(word), "{e} should name {word}");
        };
        bad(&|q| q.scale = 3, "scale");
        bad(&|q| q.steps = Some(0), "steps");
        bad(&|q| q.steps = Some(17), "1..=16");
        bad(&|q| q.tile = 0, "tile");
        bad(&|q| q.tile = 513, "16..=512");
        bad(
            &|q| (q.tile, q.overlap) = (32, 32),
            "overlap 32 must be below",
        );
        bad(&|q| q.guidance = Some(0.5), "guidance");
        bad(&|q| q.guidance = Some(3.5), "[1, 3]");
        bad(&|q| q.guidance = Some(f32::NAN), "guidance");
        bad(&|q| q.lora = Some(3.5), "LoRA");
        bad(&|q| q.temperature = 0.3, "temperature");
        let no_lora = Limits {
            lora: false,
            w_max: 1.0,
            ..lim()
        };
        let e = SampleRequest {
            lora: Some(1.0),
            ..r.clone()
        }
        .validate(&no_lora)
        .unwrap_err();
        assert!(e.to_string().contains("no LoRA adapter"), "{e}");
        // The realistic preset needs guidance, and says so by name.
        let e = SampleRequest {
            preset: Preset::Realistic,
            ..r.clone()
        }
        .validate(&no_lora)
        .unwrap_err();
        assert!(e.to_string().contains("the realistic preset's"), "{e}");
        let e = SampleRequest {
            guidance: Some(2.0),
            ..r.clone()
        }
        .validate(&no_lora)
        .unwrap_err();
        assert!(e.to_string().contains("not trained for guidance"), "{e}");
        SampleRequest {
            mode: Mode::Stochastic,
            temperature: 0.3,
            tile: 16,
            overlap: 15,
            ..r
        }
        .validate(&lim())
        .unwrap();
    }

    #[test]
    fn options_scale_tiles_and_follow_the_projection_policy() {
        let r = SampleRequest {
            scale: 2,
            guidance: Some(1.5),
            ..Default::default()
        };
        let o = r.options(true);
        assert_eq!((o.tile, o.overlap, o.guidance), (256, 32, 1.5));
        assert!(!o.lr_projection, "auto leaves lossy inputs raw");
        assert!(r.options(false).lr_projection);
        let on = SampleRequest {
            projection: Policy::On,
            ..r
        };
        assert!(on.options(true).lr_projection);
    }

    /// A preset sets steps, w and LoRA scale; a knob given explicitly wins.
    #[test]
    fn presets_set_the_knobs_and_explicit_ones_override() {
        let f = SampleRequest::default();
        assert_eq!((f.steps(), f.guidance(), f.lora()), (1, 1.0, 0.0));
        let r = SampleRequest {
            preset: Preset::Realistic,
            ..Default::default()
        };
        assert_eq!((r.steps(), r.guidance(), r.lora()), (1, 1.95, 0.0));
        r.validate(&lim()).unwrap();
        assert_eq!(r.options(false).guidance, 1.95);
        let mine = SampleRequest {
            lora: Some(1.0),
            steps: Some(2),
            ..r
        };
        assert_eq!((mine.steps(), mine.guidance(), mine.lora()), (2, 1.95, 1.0));
        let q: SampleRequest =
            serde_json::from_str(r#"{"preset":"realistic","guidance":3}"#).unwrap();
        assert_eq!((q.guidance(), q.lora()), (3.0, 0.0));
        assert_eq!(Preset::Realistic.weights_subdir(), "realistic/");
        // The grain cut: the preset's unless given, and it reaches the sampler.
        assert_eq!(q.grain_cut(), Preset::Realistic.grain_cut());
        assert_eq!(q.options(false).grain_cut, q.grain_cut());
        for on in [true, false] {
            let g: SampleRequest =
                serde_json::from_str(&format!(r#"{{"preset":"realistic","grain_cut":{on}}}"#))
                    .unwrap();
            assert_eq!((g.grain_cut(), g.options(true).grain_cut), (on, on));
        }
    }

    /// The server's query and the web worker's job are this struct in JSON / form encoding:
    /// absent knobs take the defaults, unknown ones are refused.
    #[test]
    fn deserialises_with_defaults_and_refuses_unknown_knobs() {
        let r: SampleRequest =
            serde_json::from_str(r#"{"scale":2,"mode":"stochastic","projection":"off"}"#).unwrap();
        assert_eq!(r.scale, 2);
        assert_eq!(r.mode, Mode::Stochastic);
        assert_eq!(r.projection, Policy::Off);
        assert_eq!(r.tile, 128);
        assert!(serde_json::from_str::<SampleRequest>(r#"{"stpes":2}"#).is_err());
    }
}
