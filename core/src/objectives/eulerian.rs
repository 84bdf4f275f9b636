//! Eulerian self-distillation (ESD; docs/algorithm.md §3, Boffi et al. 2505.18825):
//!   L = || d/ds X_{s,t}(I_s) + grad_x X_{s,t}(I_s) . sg[b_s(I_s)] ||^2,
//! the flow map is constant along the characteristics of the diagonal field b_s = v(., s, s).
//! Both derivatives together are one directional derivative along the characteristic, which we
//! take as a central difference (fp32, error O(h^2)):
//!   (X_{s+h,t}(x + h b) - X_{s-h,t}(x - h b)) / 2h,   b = sg[v_T(x, s, s)] (EMA teacher),
//! with both student calls differentiated. Known to be unstable (the paper); we report what we see.

use super::{
    fd_student_loss, off_diagonal_times, per_sample_mse, rows, sd_points, split_rows, Batch,
    FlowNet, LossTerms, StudentRows,
};
use crate::bridge::BridgeConfig;
use crate::cond::{Cond, PROMPT_POSITIVE};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use rand::Rng;

pub type EulerianConfig = super::SelfDistillConfig;

pub fn eulerian<B, N, T>(
    model: &N,
    teacher: &T,
    batch: &Batch<B>,
    cfg: &EulerianConfig,
    bridge: &BridgeConfig,
    rng: &mut impl Rng,
) -> LossTerms<B>
where
    B: AutodiffBackend,
    N: FlowNet<B>,
    T: FlowNet<B::InnerBackend>,
{
    let n = batch.x0.dims()[0];
    let (n_sd, n_anchor) = split_rows(n, cfg.sd_fraction, cfg.anchor_fraction);
    let h = cfg.h;

    let mut st = StudentRows::new();
    let (s, t) = off_diagonal_times(n_sd, rng);
    let mut x0_all = batch.x0.clone();
    if n_sd > 0 {
        let (x, x0) = sd_points(batch, n_sd, &s, cfg.p_source_noise, bridge, rng);
        let xi = x.clone().inner();
        let inner = xi.device();
        let drift = teacher.velocity(
            xi,
            rows(&batch.x0, 0, n_sd).inner(),
            &Cond::per_sample(&s, &s, 1.0, PROMPT_POSITIVE, &inner),
        );
        x0_all = x0;
        let step = Tensor::<B, 4>::from_inner(drift) * h;
        st.x.push(x.clone() + step.clone());
        st.x.push(x - step);
        for sign in [1.0f32, -1.0] {
            st.s.extend(s.iter().map(|s| s + sign * h));
            st.t.extend_from_slice(&t);
        }
    }
    st.push_anchor_and_diag(batch, n_sd, n_anchor, cfg.p_source_noise, bridge, rng);

    fd_student_loss(
        "eulerian",
        model,
        st,
        x0_all,
        (&s, &t),
        n_anchor,
        |xp, xq| {
            // The directional derivative must vanish.
            let deriv = (xp - xq) / (2.0 * h);
            per_sample_mse(deriv.clone(), deriv.zeros_like())
        },
    )
}
