//! The bridge path (docs/algorithm.md §1): from the source x0 = up(LR) (optionally x0 + sigma_0 eps,
//! the stochastic mode) to the target x1 = HR,
//!   I_t = (1 - t) x0 + t x1 + sigma_b sqrt(t (1 - t)) eps,   dI_t/dt = x1 - x0.

use burn::config::Config;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::Rng;
use rand_distr::StandardNormal;

#[derive(Config, Debug)]
pub struct BridgeConfig {
    /// Bridge noise.
    #[config(default = 0.005)]
    pub sigma_b: f32,
    /// Source noise of the stochastic mode (images in [-1, 1]).
    #[config(default = 0.1)]
    pub sigma_0: f32,
}

/// Whether the source carries noise: "fidelity" is the deterministic map, "stochastic" samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Mode {
    Fidelity,
    Stochastic,
}

/// Standard normal noise from a seeded CPU generator (the same on every backend).
pub fn noise<B: Backend, const D: usize>(
    shape: [usize; D],
    rng: &mut impl Rng,
    device: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A per-sample scalar broadcastable over [n, c, h, w].
pub fn per_sample<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len(), 1, 1, 1]), device)
}

/// I_t for per-sample times `t` ([n, 1, 1, 1]) from `src` to `x1` with bridge noise `eps`.
pub fn point<B: Backend>(
    src: Tensor<B, 4>,
    x1: Tensor<B, 4>,
    t: Tensor<B, 4>,
    eps: Tensor<B, 4>,
    sigma_b: f32,
) -> Tensor<B, 4> {
    let std = (t.clone() * (t.clone().neg() + 1.0)).clamp_min(0.0).sqrt() * sigma_b;
    src * (t.clone().neg() + 1.0) + x1 * t + eps * std
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use rand::SeedableRng;

    #[test]
    fn endpoints_and_midpoint() {
        let dev = Default::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let x0 = noise::<Flex, 4>([2, 12, 4, 4], &mut rng, &dev);
        let x1 = noise::<Flex, 4>([2, 12, 4, 4], &mut rng, &dev);
        let eps = noise::<Flex, 4>([2, 12, 4, 4], &mut rng, &dev);
        let at = |t: f32| {
            point(
                x0.clone(),
                x1.clone(),
                per_sample(&[t, t], &dev),
                eps.clone(),
                0.5,
            )
        };
        let close =
            |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>| (a - b).abs().max().into_scalar() < 1e-6;
        assert!(close(at(0.0), x0.clone()));
        assert!(close(at(1.0), x1.clone()));
        // t = 1/2: mean of the ends plus 0.5 * sqrt(1/4) eps.
        assert!(close(
            at(0.5),
            (x0.clone() + x1.clone()) * 0.5 + eps.clone() * 0.25
        ));
    }

    #[test]
    fn seeded_noise_is_deterministic() {
        let dev = Default::default();
        let a = noise::<Flex, 2>([3, 5], &mut rand_chacha::ChaCha8Rng::seed_from_u64(9), &dev);
        let b = noise::<Flex, 2>([3, 5], &mut rand_chacha::ChaCha8Rng::seed_from_u64(9), &dev);
        assert_eq!(
            a.to_data().to_vec::<f32>().unwrap(),
            b.to_data().to_vec::<f32>().unwrap()
        );
    }
}
