//! Lagrangian self-distillation (LSD; docs/algorithm.md §3, Boffi et al. 2505.18825):
//!   L = || d/dt X_{s,t}(I_s) - sg[ v(X_{s,t}(I_s), t, t) ] ||^2,
//! the flow map must move along the diagonal (instantaneous) field at its own end point.
//! burn has no forward-mode JVP: d/dt X_{s,t} is a central difference in t,
//!   (X_{s,t+h}(x) - X_{s,t-h}(x)) / 2h   (fp32, error O(h^2)),
//! with both student calls differentiated; the end point is their mean (also O(h^2)) and the
//! target is the EMA teacher's diagonal velocity there, without gradient.
//! The rest of the batch carries the fidelity anchor and the diagonal loss (as in Shortcut).

use super::{
    fd_student_loss, off_diagonal_times, per_sample_mse, rows, sd_points, split_rows, Batch,
    FlowNet, LossTerms, StudentRows,
};
use crate::bridge::BridgeConfig;
use crate::cond::{Cond, PROMPT_POSITIVE};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use rand::Rng;

pub type LagrangianConfig = super::SelfDistillConfig;

pub fn lagrangian<B, N, T>(
    model: &N,
    teacher: &T,
    batch: &Batch<B>,
    cfg: &LagrangianConfig,
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
        x0_all = x0;
        // Two copies: t + h and t - h.
        st.x.push(x.clone());
        st.x.push(x);
        for sign in [1.0f32, -1.0] {
            st.s.extend_from_slice(&s);
            st.t.extend(t.iter().map(|t| t + sign * h));
        }
    }
    st.push_anchor_and_diag(batch, n_sd, n_anchor, cfg.p_source_noise, bridge, rng);

    // One student call for everything.
    fd_student_loss(
        "lagrangian",
        model,
        st,
        x0_all,
        (&s, &t),
        n_anchor,
        |xp, xq| {
            let dxdt = (xp.clone() - xq.clone()) / (2.0 * h);
            let end = ((xp + xq) * 0.5).inner();
            let inner = end.device();
            let target = teacher.velocity(
                end,
                rows(&batch.x0, 0, n_sd).inner(),
                &Cond::per_sample(&t, &t, 1.0, PROMPT_POSITIVE, &inner),
            );
            per_sample_mse(dxdt, Tensor::from_inner(target))
        },
    )
}
