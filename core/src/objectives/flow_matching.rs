//! The diagonal (tangent) loss, i.e. plain bridge matching (docs/algorithm.md §2):
//!   L_diag = || v(I_t, t, t) - (x1 - x0) ||^2,  t ~ U[0, 1).
//! On its own it is the flow-matching baseline; the self-distillation objectives add to it.

use super::{bridge_points, per_sample_mse, Batch, FlowNet, LossTerms};
use crate::bridge::BridgeConfig;
use crate::cond::Cond;
use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rand::Rng;

#[derive(Config, Debug)]
pub struct FlowMatchingConfig {
    /// Share of samples whose path starts from a noisy source (the stochastic mode).
    #[config(default = 0.5)]
    pub p_source_noise: f32,
}

/// Per-sample inputs and targets of the diagonal loss for rows of `batch` (times drawn here).
pub struct DiagRows<B: Backend> {
    pub x: Tensor<B, 4>,
    pub target: Tensor<B, 4>,
    pub t: Vec<f32>,
}

pub fn diag_rows<B: Backend>(
    batch: &Batch<B>,
    p_noise: f32,
    bridge: &BridgeConfig,
    rng: &mut impl Rng,
) -> DiagRows<B> {
    let n = batch.x0.dims()[0];
    let t: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    let noisy: Vec<bool> = (0..n).map(|_| rng.random::<f32>() < p_noise).collect();
    let (x, src) = bridge_points(batch, &t, &noisy, bridge, rng);
    DiagRows {
        x,
        target: batch.x1.clone() - src,
        t,
    }
}

pub fn flow_matching<B: Backend>(
    model: &impl FlowNet<B>,
    batch: &Batch<B>,
    cfg: &FlowMatchingConfig,
    bridge: &BridgeConfig,
    rng: &mut impl Rng,
) -> LossTerms<B> {
    let rows = diag_rows(batch, cfg.p_source_noise, bridge, rng);
    let device = batch.x0.device();
    let c = Cond::per_sample(&rows.t, &rows.t, 1.0, crate::cond::PROMPT_POSITIVE, &device);
    let v = model.velocity(rows.x, batch.x0.clone(), &c);
    let n = rows.t.len();
    LossTerms::from_rows(
        per_sample_mse(v, rows.target),
        rows.t.clone(),
        rows.t,
        [("diag", n), ("", 0), ("", 0)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::UNetConfig;
    use burn::backend::{Autodiff, Flex};
    use rand::SeedableRng;

    #[test]
    fn zero_model_loss_is_the_velocity_energy() {
        // With v = 0 (fresh model), L_diag = mean ||x1 - src||^2; without source noise that is
        // exactly mean (x1 - x0)^2.
        let dev = Default::default();
        let model = UNetConfig::tiny().init::<Autodiff<Flex>>(&dev);
        let x0 = Tensor::<Autodiff<Flex>, 4>::zeros([2, 12, 4, 4], &dev);
        let x1 = Tensor::<Autodiff<Flex>, 4>::ones([2, 12, 4, 4], &dev) * 0.5;
        let batch = Batch::new(x0, x1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let cfg = FlowMatchingConfig::new().with_p_source_noise(0.0);
        let l = flow_matching(&model, &batch, &cfg, &BridgeConfig::new(), &mut rng);
        assert!((l.total.into_scalar() - 0.25).abs() < 1e-6);
    }
}
