//! Training objectives (ALGORITHM.md §2-3). Each is a pure function of (model, batch, rng) that
//! returns its named loss terms; the training loop only sums and logs them.

pub mod flow_matching;
pub mod shortcut;

use crate::bridge::{noise, per_sample, point, BridgeConfig};
use burn::tensor::{backend::Backend, Tensor};
use rand::Rng;

/// A training batch in the unshuffled space: clean sources x0 = unshuffle(up(LR)) and targets
/// x1 = unshuffle(HR), both [n, 12, h, w] in [-1, 1].
#[derive(Clone, Debug)]
pub struct Batch<B: Backend> {
    pub x0: Tensor<B, 4>,
    pub x1: Tensor<B, 4>,
}

/// The loss to minimise and its named parts (each a mean over its own samples).
pub struct LossTerms<B: Backend> {
    pub total: Tensor<B, 1>,
    pub terms: Vec<(&'static str, Tensor<B, 1>)>,
}

/// Per-sample squared error, mean over (c, h, w): [n].
pub fn per_sample_mse<B: Backend>(pred: Tensor<B, 4>, target: Tensor<B, 4>) -> Tensor<B, 1> {
    let n = pred.dims()[0];
    (pred - target)
        .powi_scalar(2)
        .reshape([n as i32, -1])
        .mean_dim(1)
        .reshape([n])
}

/// Points on the bridge for per-sample times, with source noise where `noisy[i]`:
/// returns (I_t, src) where src is the (possibly noisy) start of each path.
pub fn bridge_points<B: Backend>(
    batch: &Batch<B>,
    t: &[f32],
    noisy: &[bool],
    bridge: &BridgeConfig,
    rng: &mut impl Rng,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let device = batch.x0.device();
    let dims = batch.x0.dims();
    let mask: Vec<f32> = noisy
        .iter()
        .map(|&b| if b { bridge.sigma_0 } else { 0.0 })
        .collect();
    let src =
        batch.x0.clone() + noise::<B, 4>(dims, rng, &device) * per_sample::<B>(&mask, &device);
    let eps = noise::<B, 4>(dims, rng, &device);
    let it = point(
        src.clone(),
        batch.x1.clone(),
        per_sample(t, &device),
        eps,
        bridge.sigma_b,
    );
    (it, src)
}

/// Rows [a, a + len) of a batch tensor.
pub fn rows<B: Backend>(x: &Tensor<B, 4>, a: usize, len: usize) -> Tensor<B, 4> {
    x.clone().narrow(0, a, len)
}
