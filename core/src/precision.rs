//! Mixed precision: f32 master weights, half-precision compute.
//!
//! Each step the f32 parameters are cast to bf16 (or f16) through burn's differentiable `cast`,
//! the network runs in half precision, its output is cast back to f32 and the loss is taken in
//! f32. The backward pass of the cast returns f32 gradients to the master weights, so Adam, the
//! EMA teacher and the checkpoints stay f32. bf16 keeps f32's exponent range and needs no loss
//! scaling; f16 has no loss scaling here (gradients below ~6e-8 flush to zero) — prefer bf16.

use crate::cond::Cond;
use crate::objectives::FlowNet;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{backend::Backend, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// Compute precision of the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// The half dtype the network computes in; None for plain f32.
    pub fn half(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            _ => Err(format!(
                "unknown precision {s:?} (expected f32, bf16 or f16)"
            )),
        }
    }
}

/// Casts every float parameter, keeping its id (so optimiser state and gradients still match).
struct CastParams(FloatDType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

/// A network that computes in `precision`: f32 in and out, half inside.
#[derive(Clone, Debug)]
pub struct Mixed<M> {
    net: M,
    half: Option<FloatDType>,
}

impl<M> Mixed<M> {
    /// Casts a copy of `net` (cheap: tensors are shared until cast). With autodiff, the cast is
    /// part of the graph: gradients flow back to `net`'s f32 parameters.
    pub fn new<B: Backend>(net: &M, precision: Precision) -> Self
    where
        M: Module<B>,
    {
        let half = precision.half();
        let net = match half {
            Some(d) => net.clone().map(&mut CastParams(d)),
            None => net.clone(),
        };
        Self { net, half }
    }
}

impl<B: Backend, M: FlowNet<B>> FlowNet<B> for Mixed<M> {
    fn velocity(&self, x: Tensor<B, 4>, x0: Tensor<B, 4>, c: &Cond<B>) -> Tensor<B, 4> {
        match self.half {
            None => self.net.velocity(x, x0, c),
            Some(d) => self
                .net
                .velocity(x.cast(d), x0.cast(d), &c.clone().cast(d))
                .cast(FloatDType::F32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::{UNet, UNetConfig};
    use burn::backend::{Autodiff, Flex};
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use burn::tensor::{DType, Distribution};

    type B = Flex;
    type AB = Autodiff<Flex>;

    /// A tiny UNet with a non-zero output layer (the real init is the identity: v = 0).
    fn net<Bk: Backend>(dev: &Bk::Device) -> UNet<Bk> {
        let cfg = UNetConfig::tiny();
        let mut n = cfg.init::<Bk>(dev);
        n.perturb_output(0.05, 7, dev);
        n
    }

    #[test]
    fn half_velocity_is_close_to_f32_and_f32_in_and_out() {
        let dev = Default::default();
        let n = net::<B>(&dev);
        let x = Tensor::<B, 4>::random([2, 12, 8, 8], Distribution::Normal(0.0, 0.5), &dev);
        let c = Cond::uniform(2, 0.25, 0.75, &dev);
        let v32 = n.velocity(x.clone(), x.clone(), &c);
        for p in [Precision::Bf16, Precision::F16] {
            let m = Mixed::new(&n, p);
            let v = m.velocity(x.clone(), x.clone(), &c);
            assert_eq!(v.dtype(), DType::F32);
            let err: f32 = (v - v32.clone()).abs().max().into_scalar();
            let scale: f32 = v32.clone().abs().max().into_scalar();
            // bf16 keeps 8 significant bits (relative step 2^-8 ~ 0.4%), f16 11 bits.
            let tol = if p == Precision::Bf16 { 0.03 } else { 0.005 };
            assert!(
                scale > 1e-3 && err < tol * scale,
                "{p}: max error {err} vs scale {scale}"
            );
            assert!(
                err > 0.0,
                "{p}: no rounding at all means the cast did not happen"
            );
        }
    }

    #[test]
    fn gradients_reach_the_f32_master_weights() {
        let dev = Default::default();
        let n = net::<AB>(&dev);
        let x = Tensor::<AB, 4>::random([2, 12, 8, 8], Distribution::Normal(0.0, 0.5), &dev);
        let c = Cond::uniform(2, 0.0, 1.0, &dev);
        let loss = |m: &dyn Fn() -> Tensor<AB, 4>| m().powi_scalar(2).mean();
        let g32 = GradientsParams::from_grads(
            loss(&|| n.velocity(x.clone(), x.clone(), &c)).backward(),
            &n,
        );
        let m = Mixed::new(&n, Precision::Bf16);
        let gbf = GradientsParams::from_grads(
            loss(&|| m.velocity(x.clone(), x.clone(), &c)).backward(),
            &n,
        );
        assert_eq!(g32.len(), gbf.len(), "every parameter gets a gradient");
        let w = n.output_weight_id();
        let a = g32.get::<B, 4>(w).unwrap();
        let b = gbf.get::<B, 4>(w).unwrap();
        assert_eq!(b.dtype(), DType::F32);
        let rel: f32 = ((a.clone() - b).abs().sum() / a.abs().sum()).into_scalar();
        assert!(rel < 0.05, "bf16 gradient differs by {rel} (relative L1)");
    }

    /// The loss curve of mixed-precision training follows f32's: same init, same batches, Adam.
    #[test]
    fn bf16_loss_curve_matches_f32() {
        let dev = Default::default();
        let curve = |p: Precision| -> Vec<f32> {
            let mut model = UNetConfig::tiny().init::<AB>(&dev);
            model.perturb_output(0.05, 7, &dev);
            let mut optim = AdamConfig::new().init::<AB, UNet<AB>>();
            (0..30)
                .map(|k| {
                    // A fixed regression target: v(x) = x1 - x0 for a few fixed random pairs.
                    let g = |seed: u64| {
                        crate::bridge::noise::<AB, 4>(
                            [4, 12, 8, 8],
                            &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(
                                seed + (k % 3) as u64,
                            ),
                            &dev,
                        )
                    };
                    let (x0, x1) = (g(100), g(200));
                    let m = Mixed::new(&model, p);
                    let v = m.velocity(x0.clone(), x0.clone(), &Cond::uniform(4, 0.0, 1.0, &dev));
                    let loss = (v - (x1 - x0)).powi_scalar(2).mean();
                    let val: f32 = loss.clone().into_scalar();
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    model = optim.step(3e-3, model.clone(), grads);
                    val
                })
                .collect()
        };
        let f32c = curve(Precision::F32);
        let bf = curve(Precision::Bf16);
        assert!(
            f32c[29] < 0.9 * f32c[0],
            "training must make progress: {f32c:?}"
        );
        assert!(
            bf[29] < 0.9 * bf[0],
            "bf16 training must make progress: {bf:?}"
        );
        // Rounding changes each Adam step a little and the two runs drift apart; how far depends
        // on the CPU's float kernels (at most 5.0% at one step on CI's machine, 2.4% on ours). The
        // batches repeat every 3 steps, so compare the mean loss of each 3-step cycle (2.6% and
        // 0.7% apart at most); a broken bf16 path (wrong casts, lost gradients) is far off.
        let cycles =
            |c: &[f32]| -> Vec<f32> { c.chunks(3).map(|w| w.iter().sum::<f32>() / 3.0).collect() };
        for (k, (a, b)) in cycles(&f32c).iter().zip(&cycles(&bf)).enumerate() {
            assert!(
                (a - b).abs() < 0.08 * a,
                "cycle {k}: bf16 mean loss {b} vs f32 {a} (curves {f32c:?} / {bf:?})"
            );
        }
    }
}
