//! Positive / negative prompt guidance (docs/algorithm.md §4).
//!
//! Three learned prompt embeddings (cond.rs): positive pairs with the clean HR target, negative
//! with a degraded one ([`negative_target`]: blurred or down-up-sampled HR), null is dropped-out
//! conditioning. The guided field is
//!   b^w = v(., neg) + w (v(., pos) - v(., neg)),
//! and w ~ U[1, w_max] is a network input, so any w costs one call per step at inference.
//! Training (shortcut.rs): a positive row at w > 1 regresses the guided field, with the sample's
//! own velocity standing in for v(., pos) (unbiased, as in MeanFlow's guidance) and the EMA
//! teacher's negative velocity under stop-gradient:
//!   target = w (x1 - src) + (1 - w) sg[v_T(x, s, t, neg)];
//! its self-consistency rows run the teacher at the same (w, positive), so the flow map of the
//! guided field is distilled at every w.

use crate::cond::{PROMPT_NEGATIVE, PROMPT_NULL, PROMPT_POSITIVE};
use crate::degrade::{convolve, down_up, gaussian_kernel};
use crate::error::Result;
use crate::image::Image;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuidanceConfig {
    /// Largest guidance scale trained (and accepted at inference).
    pub w_max: f32,
    /// Share of rows paired with the negative prompt and a degraded target.
    pub p_negative: f32,
    /// Share of rows whose prompt is dropped to null (conditioning dropout).
    pub p_null: f32,
    /// Share of the positive rows trained at w ~ U[1, w_max] (the rest at w = 1).
    pub p_guided: f32,
    /// Negative targets: probability of a Gaussian blur (else a bicubic down-up), the blur's
    /// sigma range in HR pixels, and the down-up factors.
    pub p_blur: f32,
    pub blur_sigma: [f32; 2],
    pub down_up: Vec<u32>,
}

impl Default for GuidanceConfig {
    fn default() -> Self {
        Self {
            w_max: 3.0,
            p_negative: 0.2,
            p_null: 0.1,
            p_guided: 0.5,
            p_blur: 0.5,
            blur_sigma: [1.0, 2.5],
            down_up: vec![2, 4],
        }
    }
}

/// One row's guidance draw: its prompt id, its w, and whether its target is the negative one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowGuide {
    pub prompt: i64,
    pub w: f32,
    pub negative: bool,
}

impl RowGuide {
    /// Fidelity: positive prompt at w = 1 (training without guidance, and validation).
    pub const FIDELITY: Self = Self {
        prompt: PROMPT_POSITIVE,
        w: 1.0,
        negative: false,
    };
}

impl GuidanceConfig {
    pub fn check(&self) -> Result<()> {
        let p = |v: f32| (0.0..=1.0).contains(&v);
        if !(self.w_max >= 1.0 && self.w_max <= 8.0) {
            return Err(crate::Error::BadParam(format!(
                "guidance w_max must be in [1, 8], got {}",
                self.w_max
            )));
        }
        if !(p(self.p_negative) && p(self.p_null) && p(self.p_guided) && p(self.p_blur))
            || self.p_negative + self.p_null > 1.0
        {
            return Err(crate::Error::BadParam(
                "guidance probabilities must be in [0, 1], p_negative + p_null <= 1".into(),
            ));
        }
        if self.blur_sigma[0] <= 0.0 || self.blur_sigma[1] < self.blur_sigma[0] {
            return Err(crate::Error::BadParam(
                "guidance blur_sigma: 0 < lo <= hi".into(),
            ));
        }
        if self.down_up.is_empty() || self.down_up.iter().any(|&s| ![2, 4, 8].contains(&s)) {
            return Err(crate::Error::BadParam(
                "guidance down_up factors must be among 2, 4, 8".into(),
            ));
        }
        Ok(())
    }

    /// A row's prompt, w and target kind, drawn from `rng`.
    pub fn draw(&self, rng: &mut impl Rng) -> RowGuide {
        let u = rng.random::<f32>();
        let g = rng.random::<f32>();
        let w = 1.0 + rng.random::<f32>() * (self.w_max - 1.0);
        if u < self.p_negative {
            RowGuide {
                prompt: PROMPT_NEGATIVE,
                w: 1.0,
                negative: true,
            }
        } else if u < self.p_negative + self.p_null {
            // Dropped-out conditioning keeps the clean pairing.
            RowGuide {
                prompt: PROMPT_NULL,
                w: 1.0,
                negative: false,
            }
        } else if g < self.p_guided {
            RowGuide {
                prompt: PROMPT_POSITIVE,
                w,
                negative: false,
            }
        } else {
            RowGuide::FIDELITY
        }
    }
}

/// The negative prompt's target for `hr` (RGB in [0, 1], a multiple of the largest down-up
/// factor in size): Gaussian-blurred or bicubic down-up-sampled HR, rounded to 8 bits. Seeded, pure.
pub fn negative_target(hr: &Image, cfg: &GuidanceConfig, seed: u64) -> Result<Image> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let out = if rng.random::<f32>() < cfg.p_blur {
        let s = rng.random_range(cfg.blur_sigma[0]..=cfg.blur_sigma[1]);
        convolve(hr, &gaussian_kernel(s, s, 0.0))
    } else {
        let f = cfg.down_up[rng.random_range(0..cfg.down_up.len())];
        down_up(hr, f)?
    };
    Ok(out.quantized(255.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;

    fn texture(n: usize) -> Image {
        let mut d = Vec::new();
        for c in 0..3 {
            for y in 0..n {
                for x in 0..n {
                    let v = ((x * 7 + y * 13 + c * 5) % 11) as f32 / 10.0;
                    d.push(if (x / 2 + y / 3) % 2 == 0 { v } else { 1.0 - v });
                }
            }
        }
        Image::new(n, n, 3, d).unwrap()
    }

    #[test]
    fn negative_targets_are_softer_seeded_and_both_kinds_occur() {
        let hr = texture(32);
        let cfg = GuidanceConfig::default();
        let (mut blur, mut du) = (0, 0);
        for seed in 0..20 {
            let neg = negative_target(&hr, &cfg, seed).unwrap();
            assert_eq!((neg.width, neg.height, neg.channels), (32, 32, 3));
            assert_eq!(neg, negative_target(&hr, &cfg, seed).unwrap());
            // Less high-frequency energy than the HR it came from.
            let r = metrics::hf_ratio(&metrics::luma(&neg, false), &metrics::luma(&hr, false));
            assert!(r < 0.8, "seed {seed}: hf ratio {r}");
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            if rng.random::<f32>() < cfg.p_blur {
                blur += 1
            } else {
                du += 1
            }
        }
        assert!(blur > 0 && du > 0, "{blur} blurred, {du} down-up");
    }

    #[test]
    fn draws_follow_the_config() {
        let cfg = GuidanceConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let rows: Vec<RowGuide> = (0..4000).map(|_| cfg.draw(&mut rng)).collect();
        let share = |f: &dyn Fn(&RowGuide) -> bool| {
            rows.iter().filter(|r| f(r)).count() as f32 / rows.len() as f32
        };
        let neg = share(&|r| r.prompt == PROMPT_NEGATIVE);
        let null = share(&|r| r.prompt == PROMPT_NULL);
        let guided = share(&|r| r.w > 1.0);
        assert!((neg - 0.2).abs() < 0.03, "{neg}");
        assert!((null - 0.1).abs() < 0.03, "{null}");
        // Half of the positive 70%.
        assert!((guided - 0.35).abs() < 0.03, "{guided}");
        // Only positive rows are guided, only negative rows have the degraded target, and w
        // stays in [1, w_max].
        for r in &rows {
            assert!(r.w >= 1.0 && r.w <= cfg.w_max);
            assert_eq!(r.negative, r.prompt == PROMPT_NEGATIVE);
            if r.w > 1.0 {
                assert_eq!(r.prompt, PROMPT_POSITIVE);
            }
        }
        let bad = GuidanceConfig {
            p_negative: 0.9,
            p_null: 0.2,
            ..cfg.clone()
        };
        assert!(bad.check().is_err());
        assert!(cfg.check().is_ok());
    }
}
