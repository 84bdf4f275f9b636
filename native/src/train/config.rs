//! The training config (JSON, configs/): model, objective and its settings, data, schedule.

use anyhow::{bail, Context, Result};
use flowmapsr_core::adversarial::{AdversarialConfig, Generator};
use flowmapsr_core::batch::BatchSpec;
use flowmapsr_core::degrade::DegradeConfig;
use flowmapsr_core::objectives::flow_matching::FlowMatchingConfig;
use flowmapsr_core::objectives::guidance::GuidanceConfig;
use flowmapsr_core::objectives::shortcut::ShortcutConfig;
use flowmapsr_core::objectives::weighting::LossWeightConfig;
use flowmapsr_core::objectives::{Objective, ObjectiveConfigs, SelfDistillConfig};
use flowmapsr_core::precision::Precision;
use flowmapsr_core::weights::ModelConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Uniform: the plain mean of the per-sample losses. Learned: exp(-u(s, t)) L + u(s, t) with a
/// jointly trained u (core objectives/weighting.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    #[default]
    Uniform,
    Learned,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub objective: Objective,
    #[serde(default = "ShortcutConfig::new")]
    pub shortcut: ShortcutConfig,
    #[serde(default = "FlowMatchingConfig::new")]
    pub flow_matching: FlowMatchingConfig,
    #[serde(default = "SelfDistillConfig::new")]
    pub lagrangian: SelfDistillConfig,
    #[serde(default = "SelfDistillConfig::new")]
    pub eulerian: SelfDistillConfig,
    #[serde(default)]
    pub weighting: Weighting,
    #[serde(default = "LossWeightConfig::new")]
    pub loss_weight: LossWeightConfig,
    /// Network compute precision (master weights, optimiser and EMA stay f32).
    #[serde(default)]
    pub precision: Precision,
    #[serde(default)]
    pub degrade: DegradeConfig,
    /// Positive/negative prompt guidance (core objectives/guidance.rs); shortcut objective only.
    #[serde(default)]
    pub guidance: Option<GuidanceConfig>,
    /// Adversarial LoRA fine-tuning of the `--init` model (core adversarial.rs) instead of
    /// training the flow map.
    #[serde(default)]
    pub adversarial: Option<AdversarialConfig>,
    /// Probabilities of x2, x4, x8.
    pub scale_mix: [f32; 3],
    /// HR crop side (a multiple of 8 and of the model's alignment).
    pub crop: usize,
    /// Images are drawn with probability proportional to (their number of crop positions)^p:
    /// 0 (or absent) draws every image equally often, so T91's small images (8% of the
    /// pixels) gave half the crops; 1 draws every crop position of the data equally often.
    #[serde(default)]
    pub image_weight_power: Option<f32>,
    pub batch: usize,
    pub steps: usize,
    pub lr: f64,
    #[serde(default)]
    pub lr_min: f64,
    #[serde(default)]
    pub warmup: usize,
    pub ema_decay: f32,
    #[serde(default = "default_grad_clip")]
    pub grad_clip: Option<f32>,
    pub seed: u64,
    pub log_every: usize,
    pub val_every: usize,
    pub ckpt_every: usize,
}

fn default_grad_clip() -> Option<f32> {
    Some(1.0)
}

impl TrainConfig {
    /// A complete config file (an adversarial one without `model` needs its base: see
    /// [`TrainConfig::from_value`]).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, || {
            bail!("an adversarial config without `model` takes its base's: train it with --init")
        })
    }

    /// A config file whose `model`, when an adversarial config leaves it out, is `base`'s.
    pub fn load_with(path: &Path, base: impl FnOnce() -> Result<ModelConfig>) -> Result<Self> {
        let s =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v = serde_json::from_str(&s).with_context(|| format!("parsing {}", path.display()))?;
        Self::from_value(v, base).with_context(|| format!("config {}", path.display()))
    }

    /// A config from parsed JSON. An adversarial config may leave `model` out: the base's own
    /// config.json states it, and `base` reads it (only then).
    pub fn from_value(
        mut file: serde_json::Value,
        base: impl FnOnce() -> Result<ModelConfig>,
    ) -> Result<Self> {
        let adversarial = file.get("adversarial").is_some_and(|a| !a.is_null());
        if adversarial && file.get("model").is_none() {
            file["model"] = serde_json::to_value(base()?)?;
        }
        let c: Self = serde_json::from_value(file)?;
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> Result<()> {
        let align = self.model.align() * 8;
        if self.crop == 0 || !self.crop.is_multiple_of(align) {
            bail!("crop {} must be a positive multiple of {align} (the model's alignment x the largest scale)", self.crop);
        }
        if self.batch == 0 || self.steps == 0 {
            bail!("batch and steps must be positive");
        }
        if let Some(p) = self.image_weight_power {
            if !(p.is_finite() && p >= 0.0) {
                bail!("image_weight_power must be a finite number >= 0, not {p}");
            }
        }
        if self.scale_mix.iter().any(|p| *p < 0.0) || self.scale_mix.iter().sum::<f32>() <= 0.0 {
            bail!("scale_mix must be non-negative and not all zero");
        }
        let w = self.shortcut.range_weight();
        if !(w.is_finite() && w >= 0.0) {
            bail!("shortcut.anchor_range_weight must be a finite number >= 0, not {w}");
        }
        if let Some(a) = &self.adversarial {
            if a.ldl_weight > 0.0 && a.generator != Generator::Full {
                bail!("adversarial.ldl_weight needs \"generator\": \"full\" (the artifact map compares with its EMA)");
            }
            if a.critic_reset_every > 0 && a.generator != Generator::Full {
                bail!("adversarial.critic_reset_every needs \"generator\": \"full\"");
            }
            let w_max = self.model.w_max();
            if !(a.guidance >= 1.0 && a.guidance <= w_max) {
                bail!(
                    "adversarial.guidance must be in [1, {w_max}] (the model's w_max), not {}",
                    a.guidance
                );
            }
            let spread = a.guidance_spread;
            if !(spread >= 0.0 && a.guidance - spread >= 1.0 && a.guidance + spread <= w_max) {
                bail!(
                    "adversarial.guidance_spread must keep guidance +- spread in [1, {w_max}] \
                     (the model's w_max), not {} +- {spread}",
                    a.guidance
                );
            }
            for (name, v) in [
                ("band_weight", a.band_weight),
                ("band_deficit_weight", a.band_deficit_weight),
                ("checker_weight", a.checker_weight),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    bail!("adversarial.{name} must be a finite number >= 0, not {v}");
                }
            }
            if !(a.band_deficit_min_period.is_finite() && a.band_deficit_min_period >= 2.0) {
                bail!(
                    "adversarial.band_deficit_min_period must be a period in pixels >= 2, not {}",
                    a.band_deficit_min_period
                );
            }
            if a.ldl_window < 3 || a.ldl_window.is_multiple_of(2) {
                bail!(
                    "adversarial.ldl_window must be odd and >= 3, not {}",
                    a.ldl_window
                );
            }
        }
        if let Some(g) = &self.guidance {
            g.check()?;
            if self.objective != Objective::Shortcut {
                bail!("guidance trains with the shortcut objective (its guided teacher)");
            }
            if (self.model.w_max() - g.w_max).abs() > 1e-6 {
                bail!(
                    "model.w_max ({}) must equal guidance.w_max ({}): it tells inference which w the weights know",
                    self.model.w_max(),
                    g.w_max
                );
            }
        }
        Ok(())
    }

    /// What this config's batches are drawn from (core batch.rs).
    pub fn batch_spec(&self) -> BatchSpec<'_> {
        BatchSpec {
            crop: self.crop,
            scale_mix: self.scale_mix,
            image_weight_power: self.image_weight_power,
            degrade: &self.degrade,
            guidance: self.guidance.as_ref(),
            seed: self.seed,
            range_projectors: self.objective == Objective::Shortcut
                && self.shortcut.range_weight() != 1.0,
        }
    }

    /// Every objective's settings (the chosen one's are used).
    pub fn objectives(&self) -> ObjectiveConfigs<'_> {
        ObjectiveConfigs {
            shortcut: &self.shortcut,
            lagrangian: &self.lagrangian,
            eulerian: &self.eulerian,
            flow_matching: &self.flow_matching,
        }
    }

    /// Cosine decay from lr to lr_min after a linear warm-up.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let p = (step - self.warmup) as f64 / (self.steps - self.warmup).max(1) as f64;
        self.lr_min
            + 0.5 * (self.lr - self.lr_min) * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos())
    }
}

/// One stage of configs/release.json (tests).
#[cfg(test)]
pub(crate) fn release_stage(name: &str) -> TrainConfig {
    let v = serde_json::from_str(include_str!("../../../configs/release.json")).unwrap();
    crate::pipeline::stages(&v)
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
        .cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every config in the repo still loads (fields added later must be optional) and passes
    /// its checks; the release recipe's stages too.
    #[test]
    fn every_config_in_the_repo_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&root).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            if v.get("stages").is_some() {
                assert!(!crate::pipeline::stages(&v).unwrap().is_empty());
            } else {
                TrainConfig::from_value(v, || {
                    crate::adversarial::base_model(&root.join("../weights"), None, false)
                })
                .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            }
            n += 1;
        }
        assert!(n >= 2, "{n} configs");
        let c = release_stage("range");
        assert_eq!(c.shortcut.range_weight(), 0.25);
        let c = release_stage("fidelity");
        assert_eq!(c.shortcut.range_weight(), 1.0);
    }

    /// The artifact term compares with the EMA, which only the whole-network generator keeps; the
    /// training guidance must be one the model knows; the artifact window is odd; the band
    /// term's weight is a number.
    #[test]
    fn artifact_term_needs_the_full_generator() {
        let mut cfg = release_stage("fidelity");
        let mut adv = AdversarialConfig {
            ldl_weight: 1.0,
            ..Default::default()
        };
        cfg.adversarial = Some(adv.clone());
        let e = cfg.check().unwrap_err().to_string();
        assert!(e.contains("ldl_weight") && e.contains("full"), "{e}");
        adv.generator = Generator::Full;
        cfg.adversarial = Some(adv.clone());
        cfg.check().unwrap();
        adv.guidance = 3.5;
        cfg.adversarial = Some(adv.clone());
        let e = cfg.check().unwrap_err().to_string();
        assert!(e.contains("guidance") && e.contains("w_max"), "{e}");
        adv.guidance = 2.0;
        for bad in [-0.1, 1.5, 1.2, f32::NAN] {
            // Below 0, below w 1 (2 - 1.5), above w_max 3 (2 + 1.2), not a number.
            adv.guidance_spread = bad;
            cfg.adversarial = Some(adv.clone());
            let e = cfg.check().unwrap_err().to_string();
            assert!(e.contains("guidance_spread"), "{bad}: {e}");
        }
        adv.guidance_spread = 0.5;
        cfg.adversarial = Some(adv.clone());
        cfg.check().unwrap();
        adv.guidance_spread = 0.0;
        adv.guidance = 1.0;
        adv.ldl_window = 4;
        cfg.adversarial = Some(adv.clone());
        let e = cfg.check().unwrap_err().to_string();
        assert!(e.contains("ldl_window"), "{e}");
        adv.ldl_window = 7;
        adv.band_weight = f32::NAN;
        cfg.adversarial = Some(adv.clone());
        let e = cfg.check().unwrap_err().to_string();
        assert!(e.contains("band_weight"), "{e}");
        adv.band_weight = 0.3;
        adv.band_deficit_weight = -1.0;
        cfg.adversarial = Some(adv.clone());
        let e = cfg.check().unwrap_err().to_string();
        assert!(e.contains("band_deficit_weight"), "{e}");
        adv.band_deficit_weight = 0.3;
        adv.band_deficit_min_period = 1.0;
        cfg.adversarial = Some(adv);
        let e = cfg.check().unwrap_err().to_string();
        assert!(e.contains("band_deficit_min_period"), "{e}");
    }

    /// A fresh discriminator every N steps: the whole-network trainer only (the LoRA trainer
    /// has no reset), at multiples of N past step 0.
    #[test]
    fn critic_reset_needs_the_full_generator() {
        let mut cfg = release_stage("fidelity");
        let mut adv = AdversarialConfig {
            critic_reset_every: 1000,
            ..Default::default()
        };
        cfg.adversarial = Some(adv.clone());
        let e = cfg.check().unwrap_err().to_string();
        assert!(
            e.contains("critic_reset_every") && e.contains("full"),
            "{e}"
        );
        adv.generator = Generator::Full;
        cfg.adversarial = Some(adv.clone());
        cfg.check().unwrap();
        let at: Vec<usize> = (0..3001).filter(|&s| adv.resets_critic_at(s)).collect();
        assert_eq!(at, [1000, 2000, 3000]);
        adv.critic_reset_every = 0;
        assert!(!(0..3001).any(|s| adv.resets_critic_at(s)));
    }

    #[test]
    fn image_weight_power_is_checked() {
        let mut cfg = release_stage("fidelity");
        cfg.image_weight_power = Some(-1.0);
        assert!(cfg.check().is_err());
    }
}
