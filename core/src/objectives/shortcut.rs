//! Shortcut (progressive) self-distillation (docs/algorithm.md §3; Frans et al. 2410.12557):
//! for a step d on the dyadic grid and t on the d-grid, the target of v(x_t, t, t + 2d) is
//!   (v_T(x_t, t, t + d) + v_T(x', t + d, t + 2d)) / 2,   x' = x_t + d v_T(x_t, t, t + d),
//! with the EMA teacher T under stop-gradient (it runs on the inner, non-autodiff backend).
//! The rest of the batch carries the diagonal loss, and an `anchor` share the fidelity endpoint:
//! with a noise-free source the exact flow map is X_{0,1}(x0) = E[x1 | x0] (the diagonal field is
//! (x - x0) / t for t > 0, so the ODE moves straight along the t = 0 velocity E[x1 - x0 | x0]);
//! || v(x0, 0, 1) - (x1 - x0) ||^2 is therefore an unbiased loss for that one map.

use super::{
    bridge_points, per_sample_mse, per_sample_range_mse, rows, split_rows, Batch, FlowNet,
    LossTerms, StudentRows,
};
use crate::bridge::BridgeConfig;
use crate::cond::{Cond, PROMPT_NEGATIVE};
use burn::config::Config;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use rand::Rng;

#[derive(Config, Debug)]
pub struct ShortcutConfig {
    /// Share of each batch trained for self-consistency.
    #[config(default = 0.25)]
    pub sc_fraction: f32,
    /// Share of each batch on the fidelity anchor X_{0,1}(x0).
    #[config(default = 0.25)]
    pub anchor_fraction: f32,
    /// Smallest step is 2^-max_log2 (the dyadic grid 1, 1/2, ..., 1/64).
    #[config(default = 6)]
    pub max_log2: u32,
    /// Share of diagonal and self-consistency samples with a noisy source (stochastic mode).
    #[config(default = 0.5)]
    pub p_source_noise: f32,
    /// Weight of the anchor error's range part, the part the LR projection overwrites at
    /// inference (projection.rs); the rest keeps weight 1. 1 is the plain MSE; below 1 spends
    /// the fit on what the projection keeps, while the raw map (inputs that are not projected)
    /// still learns the range part. Needs `Batch::range`. Absent (older configs) = 1.
    pub anchor_range_weight: Option<f32>,
}

impl ShortcutConfig {
    /// [`Self::anchor_range_weight`], 1 when absent.
    pub fn range_weight(&self) -> f32 {
        self.anchor_range_weight.unwrap_or(1.0)
    }

    /// Rows of a batch of `n`: (self-consistency, anchor); the rest are diagonal.
    pub fn split(&self, n: usize) -> (usize, usize) {
        split_rows(n, self.sc_fraction, self.anchor_fraction)
    }
}

pub fn shortcut<B, N, T>(
    model: &N,
    teacher: &T,
    batch: &Batch<B>,
    cfg: &ShortcutConfig,
    bridge: &BridgeConfig,
    rng: &mut impl Rng,
) -> LossTerms<B>
where
    B: AutodiffBackend,
    N: FlowNet<B>,
    T: FlowNet<B::InnerBackend>,
{
    let device = batch.x0.device();
    let n = batch.x0.dims()[0];
    let (n_sc, n_anchor) = cfg.split(n);
    let n_diag = n - n_sc - n_anchor;
    let sub = |a: usize, len: usize| batch.rows(a, len);

    let mut st = StudentRows::new();

    if n_sc > 0 {
        let b = sub(0, n_sc);
        // d = 2^-k, k in 1..=max_log2 (2d <= 1); t on the d-grid with t + 2d <= 1.
        let mut d = Vec::with_capacity(n_sc);
        let mut t = Vec::with_capacity(n_sc);
        for _ in 0..n_sc {
            let k = rng.random_range(1..=cfg.max_log2.max(1));
            let dk = 0.5f32.powi(k as i32);
            let slots = (1u32 << k) - 1; // t = j d, j in 0..=2^k - 2
            t.push(rng.random_range(0..slots) as f32 * dk);
            d.push(dk);
        }
        let noisy: Vec<bool> = (0..n_sc)
            .map(|_| rng.random::<f32>() < cfg.p_source_noise)
            .collect();
        let (x, _) = bridge_points(&b, &t, &noisy, bridge, rng);
        let td: Vec<f32> = t.iter().zip(&d).map(|(t, d)| t + d).collect();
        let t2d: Vec<f32> = t.iter().zip(&d).map(|(t, d)| t + 2.0 * d).collect();
        let inner_dev = x.clone().inner().device();
        let (xi, x0i) = (x.clone().inner(), b.x0.clone().inner());
        // The teacher at each row's own prompt and w: the guided field's flow map at that w.
        let v1 = teacher.velocity(xi.clone(), x0i.clone(), &b.cond(0, &t, &td, &inner_dev));
        let xm = xi + v1.clone() * crate::bridge::per_sample(&d, &inner_dev);
        let v2 = teacher.velocity(xm, x0i, &b.cond(0, &td, &t2d, &inner_dev));
        st.targets.push(Tensor::from_inner((v1 + v2) * 0.5));
        st.x.push(x);
        st.s.extend_from_slice(&t);
        st.t.extend_from_slice(&t2d);
    }
    st.push_anchor_and_diag(batch, n_sc, n_anchor, cfg.p_source_noise, bridge, rng);

    let x = Tensor::cat(st.x, 0);
    let mut target = Tensor::cat(st.targets, 0);
    // Guided anchor and diagonal rows (w > 1) regress b^w: their own velocity stands in for
    // v(pos), the teacher gives v(neg) (guidance.rs).
    let w: Vec<f32> = batch.guide.iter().map(|g| g.w).collect();
    let len = n - n_sc;
    if w[n_sc..].iter().any(|&w| w != 1.0) {
        let inner_dev = x.clone().inner().device();
        let neg = Cond::rows(
            &st.s[n_sc..],
            &st.t[n_sc..],
            &vec![1.0; len],
            &vec![PROMPT_NEGATIVE; len],
            &inner_dev,
        );
        let xi = x.clone().narrow(0, n_sc, len).inner();
        let v_neg =
            Tensor::from_inner(teacher.velocity(xi, rows(&batch.x0, n_sc, len).inner(), &neg));
        let wt = crate::bridge::per_sample::<B>(&w[n_sc..], &device);
        let guided = target.clone().narrow(0, n_sc, len) * wt.clone() + v_neg * (wt.neg() + 1.0);
        target = match n_sc {
            0 => guided,
            _ => Tensor::cat(vec![target.narrow(0, 0, n_sc), guided], 0),
        };
    }

    // One student call for the whole batch, at each row's prompt and w.
    let c = batch.cond(0, &st.s, &st.t, &device);
    let v = model.velocity(x, batch.x0.clone(), &c);
    let per = match &batch.range {
        Some(range) if cfg.range_weight() != 1.0 && n_anchor > 0 => {
            // Anchor rows: ||e||^2 − (1 − λ) ||R e R||^2 = ||(I − R) e||^2 + λ ||R e R||^2.
            let (va, ta) = (
                v.clone().narrow(0, n_sc, n_anchor),
                target.clone().narrow(0, n_sc, n_anchor),
            );
            let ranged = per_sample_range_mse(va, ta, rows(range, n_sc, n_anchor));
            let all = per_sample_mse(v, target);
            let anchor =
                all.clone().narrow(0, n_sc, n_anchor) - ranged * (1.0 - cfg.range_weight());
            let mut parts = vec![anchor];
            if n_sc > 0 {
                parts.insert(0, all.clone().narrow(0, 0, n_sc));
            }
            if n_diag > 0 {
                parts.push(all.narrow(0, n_sc + n_anchor, n_diag));
            }
            Tensor::cat(parts, 0)
        }
        _ => per_sample_mse(v, target),
    };
    LossTerms::from_rows(
        per,
        st.s,
        st.t,
        [("shortcut", n_sc), ("anchor", n_anchor), ("diag", n_diag)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::UNetConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use rand::SeedableRng;

    #[test]
    fn split_by_hand() {
        let c = ShortcutConfig::new();
        assert_eq!(c.split(8), (2, 2));
        assert_eq!(c.split(1), (0, 0));
        assert_eq!(ShortcutConfig::new().with_sc_fraction(1.0).split(4), (4, 0));
    }

    #[test]
    fn anchor_range_weight_splits_the_anchor_error() {
        // A zero model with noise-free rows: the anchor error is x1 − x0. Put it wholly in the
        // range of Dᵀ (e = R z R) and the anchor term is λ mse(e); the diagonal keeps mse(e).
        type B = Autodiff<Flex>;
        let dev = Default::default();
        let model = UNetConfig::tiny().init::<B>(&dev);
        let teacher = model.valid();
        let (n, hw) = (4, 16);
        let r = crate::projection::range_projector(hw, 4).unwrap();
        let range = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(r, [hw, hw]), &dev)
            .reshape([1, 1, hw, hw])
            .repeat_dim(0, n)
            .repeat_dim(1, 3);
        let z = Tensor::<B, 4>::from_data(
            burn::tensor::TensorData::new(
                (0..n * 3 * hw * hw)
                    .map(|i| ((i * 37 + 11) % 97) as f32 / 97.0 - 0.5)
                    .collect::<Vec<_>>(),
                [n, 3, hw, hw],
            ),
            &dev,
        );
        let e_src = z.clone();
        let e = range.clone().matmul(z).matmul(range.clone());
        let x1 = crate::space::unshuffle(e.clone(), 2);
        let mut batch = Batch::new(Tensor::zeros([n, 12, hw / 2, hw / 2], &dev), x1);
        batch.range = Some(range);
        // Rows [0, 2) are the anchor rows (no self-consistency rows, anchor share 0.5).
        let n_anchor = 2;
        let want = e.narrow(0, 0, n_anchor).powi_scalar(2).mean().into_scalar();
        let cfg = ShortcutConfig::new()
            .with_sc_fraction(0.0)
            .with_anchor_fraction(0.5)
            .with_p_source_noise(0.0)
            .with_anchor_range_weight(Some(0.25));
        assert_eq!(cfg.split(n), (0, n_anchor));
        // The named terms of one loss on `b` at weight λ (the same rows and times every call).
        let terms = |b: &Batch<B>, lambda: f32| {
            let l = shortcut(
                &model,
                &teacher,
                b,
                &cfg.clone().with_anchor_range_weight(Some(lambda)),
                &BridgeConfig::new(),
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
            );
            let get = |k: &str| {
                let t = l.terms.iter().find(|(m, _)| *m == k).unwrap();
                t.1.clone().into_scalar()
            };
            (get("anchor"), get("diag"))
        };
        let ((anchor, diag), (anchor_plain, diag_plain)) =
            (terms(&batch, 0.25), terms(&batch, 1.0));
        assert!(want > 1e-6, "{want}");
        assert!(
            (anchor_plain - want).abs() < 1e-4 * want,
            "{anchor_plain} vs {want}"
        );
        assert!(
            (anchor - 0.25 * want).abs() < 1e-3 * want,
            "{anchor} vs {want} / 4"
        );
        assert!((diag - diag_plain).abs() < 1e-6);
        // An error orthogonal to the range (e = z − R z R: the projection keeps it) is not
        // discounted at all.
        let r2 = batch.range.clone().unwrap();
        let z = e_src;
        let perp = z.clone() - r2.clone().matmul(z).matmul(r2.clone());
        let mut flat = Batch::new(
            Tensor::zeros([n, 12, hw / 2, hw / 2], &dev),
            crate::space::unshuffle(perp, 2),
        );
        flat.range = Some(r2);
        let ((ga, _), (gb, _)) = (terms(&flat, 0.25), terms(&flat, 1.0));
        assert!(gb > 1e-3 && (ga - gb).abs() < 1e-3 * gb, "{ga} vs {gb}");
    }

    #[test]
    fn fresh_model_terms() {
        // A zero-output model and teacher: shortcut target 0, so that term is 0; anchor and diag
        // (noise-free) equal mean (x1 - x0)^2 = 0.25.
        type B = Autodiff<Flex>;
        let dev = Default::default();
        let model = UNetConfig::tiny().init::<B>(&dev);
        let teacher = model.valid();
        let batch = Batch::new(
            Tensor::<B, 4>::zeros([8, 12, 4, 4], &dev),
            Tensor::<B, 4>::ones([8, 12, 4, 4], &dev) * 0.5,
        );
        let cfg = ShortcutConfig::new().with_p_source_noise(0.0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let l = shortcut(
            &model,
            &teacher,
            &batch,
            &cfg,
            &BridgeConfig::new(),
            &mut rng,
        );
        let get = |k: &str| {
            l.terms
                .iter()
                .find(|(n, _)| *n == k)
                .unwrap()
                .1
                .clone()
                .into_scalar()
        };
        assert!(get("shortcut").abs() < 1e-12);
        assert!((get("anchor") - 0.25).abs() < 1e-6);
        assert!((get("diag") - 0.25).abs() < 1e-6);
        // total = (2 * 0 + 2 * 0.25 + 4 * 0.25) / 8
        assert!((l.total.into_scalar() - 0.1875).abs() < 1e-6);
    }
}
