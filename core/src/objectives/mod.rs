//! Training objectives (docs/algorithm.md §2-3). Each is a pure function of (model, batch, rng) that
//! returns its named loss terms; the training loop only sums and logs them.

pub mod eulerian;
pub mod flow_matching;
pub mod guidance;
pub mod lagrangian;
pub mod shortcut;
#[cfg(test)]
mod toy;
pub mod weighting;

use crate::bridge::{noise, per_sample, point, BridgeConfig};
use crate::cond::{Cond, PROMPT_POSITIVE};
use crate::unet::UNet;
use burn::tensor::{backend::Backend, Tensor};
pub use guidance::RowGuide;
use rand::Rng;

/// A training batch in the unshuffled space: clean sources x0 = unshuffle(up(LR)) and targets
/// x1 = unshuffle(HR) (the degraded HR on negative-prompt rows), both [n, 12, h, w] in [-1, 1],
/// and each row's prompt and guidance w (guidance.rs).
#[derive(Clone, Debug)]
pub struct Batch<B: Backend> {
    pub x0: Tensor<B, 4>,
    pub x1: Tensor<B, 4>,
    pub guide: Vec<RowGuide>,
    /// Per row, the range projector R of its downscale (projection.rs `range_projector`),
    /// repeated over the 3 pixel-space channels: [n, 3, H, H] for square H x H crops. Only
    /// objectives that weight the error the LR projection overwrites need it.
    pub range: Option<Tensor<B, 4>>,
}

impl<B: Backend> Batch<B> {
    /// A batch without guidance: every row positive at w = 1.
    pub fn new(x0: Tensor<B, 4>, x1: Tensor<B, 4>) -> Self {
        let n = x0.dims()[0];
        Self {
            x0,
            x1,
            guide: vec![RowGuide::FIDELITY; n],
            range: None,
        }
    }

    /// Rows [a, a + len).
    pub fn rows(&self, a: usize, len: usize) -> Self {
        Self {
            x0: rows(&self.x0, a, len),
            x1: rows(&self.x1, a, len),
            guide: self.guide[a..a + len].to_vec(),
            range: self.range.as_ref().map(|r| rows(r, a, len)),
        }
    }

    /// Conditioning for rows [a, a + s.len()) at times (s, t), with their prompts and w.
    pub fn cond<C: Backend>(&self, a: usize, s: &[f32], t: &[f32], device: &C::Device) -> Cond<C> {
        let g = &self.guide[a..a + s.len()];
        let w: Vec<f32> = g.iter().map(|r| r.w).collect();
        let p: Vec<i64> = g.iter().map(|r| r.prompt).collect();
        Cond::rows(s, t, &w, &p, device)
    }
}

/// The loss to minimise and its named parts (each a mean over its own samples).
pub struct LossTerms<B: Backend> {
    /// Mean of `per_sample` (uniform weighting).
    pub total: Tensor<B, 1>,
    pub terms: Vec<(&'static str, Tensor<B, 1>)>,
    /// One loss per batch row, and the (s, t) that row was trained at: what learned weighting
    /// (weighting.rs) re-weights.
    pub per_sample: Tensor<B, 1>,
    pub s: Vec<f32>,
    pub t: Vec<f32>,
}

impl<B: Backend> LossTerms<B> {
    /// Per-row losses with their times, named by consecutive row ranges.
    pub fn from_rows(
        per_sample: Tensor<B, 1>,
        s: Vec<f32>,
        t: Vec<f32>,
        parts: [(&'static str, usize); 3],
    ) -> Self {
        debug_assert_eq!(per_sample.dims()[0], s.len());
        debug_assert_eq!(s.len(), t.len());
        Self {
            total: per_sample.clone().mean(),
            terms: named_terms(&per_sample, parts),
            per_sample,
            s,
            t,
        }
    }
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

/// Per-sample mean of (R e R)^2 over pixel space, e = pred − target (unshuffled, [n, 12, h, w]) and
/// `range` [n, 3, 2h, 2h] from [`Batch::range`]: the part of the squared error the LR projection
/// overwrites at inference (R symmetric, so R e Rᵀ = R e R). What remains, the per-sample MSE
/// minus this, is the error the projection keeps (the two parts are orthogonal).
pub fn per_sample_range_mse<B: Backend>(
    pred: Tensor<B, 4>,
    target: Tensor<B, 4>,
    range: Tensor<B, 4>,
) -> Tensor<B, 1> {
    let e = crate::space::shuffle(pred - target, 2);
    let n = e.dims()[0];
    range
        .clone()
        .matmul(e)
        .matmul(range)
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

/// Settings of the finite-difference self-distillation objectives (Lagrangian, Eulerian).
#[derive(burn::config::Config, Debug)]
pub struct SelfDistillConfig {
    /// Share of each batch on the off-diagonal (s < t) self-distillation loss.
    #[config(default = 0.25)]
    pub sd_fraction: f32,
    /// Share of each batch on the fidelity anchor X_{0,1}(x0) (see shortcut.rs).
    #[config(default = 0.25)]
    pub anchor_fraction: f32,
    /// Share of self-distillation and diagonal paths with a noisy source (stochastic mode).
    #[config(default = 0.5)]
    pub p_source_noise: f32,
    /// Finite-difference step.
    #[config(default = 1e-3)]
    pub h: f32,
}

/// What an objective needs of a network: the velocity of X_{s,t}(x) = x + (t - s) v(x, s, t | x0).
/// The UNet is one; the toy tests use a small MLP.
pub trait FlowNet<B: Backend> {
    fn velocity(&self, x: Tensor<B, 4>, x0: Tensor<B, 4>, c: &Cond<B>) -> Tensor<B, 4>;

    /// X_{s,t}(x) = x + (t - s) v(x, s, t | x0).
    fn flow_map(&self, x: Tensor<B, 4>, x0: Tensor<B, 4>, c: &Cond<B>) -> Tensor<B, 4> {
        let n = x.dims()[0];
        let dt = (c.t.clone() - c.s.clone()).reshape([n, 1, 1, 1]);
        x.clone() + self.velocity(x, x0, c) * dt
    }
}

impl<B: Backend> FlowNet<B> for UNet<B> {
    fn velocity(&self, x: Tensor<B, 4>, x0: Tensor<B, 4>, c: &Cond<B>) -> Tensor<B, 4> {
        UNet::velocity(self, x, x0, c)
    }
}

/// Off-diagonal times for self-distillation: (s, t) with 0 <= s < t <= 1 uniform on the triangle.
pub fn off_diagonal_times(n: usize, rng: &mut impl Rng) -> (Vec<f32>, Vec<f32>) {
    (0..n)
        .map(|_| {
            let (a, b) = (rng.random::<f32>(), rng.random::<f32>());
            (a.min(b), a.max(b))
        })
        .unzip()
}

/// Rows of a batch for the self-distillation objectives: [sd | anchor | diag], sizes from the
/// fractions (the diagonal share is what is left).
pub fn split_rows(n: usize, sd_fraction: f32, anchor_fraction: f32) -> (usize, usize) {
    let sd = ((n as f32 * sd_fraction).round() as usize).min(n);
    let anchor = ((n as f32 * anchor_fraction).round() as usize).min(n - sd);
    (sd, anchor)
}

/// The rows of one student call, assembled in order: inputs, (s, t) per row, and the velocity
/// targets of the anchor and diagonal rows (self-distillation rows carry their own loss).
pub(crate) struct StudentRows<B: Backend> {
    pub x: Vec<Tensor<B, 4>>,
    pub targets: Vec<Tensor<B, 4>>,
    pub s: Vec<f32>,
    pub t: Vec<f32>,
}

impl<B: Backend> StudentRows<B> {
    pub fn new() -> Self {
        Self {
            x: Vec::new(),
            targets: Vec::new(),
            s: Vec::new(),
            t: Vec::new(),
        }
    }

    /// Appends the rows shared by the self-distillation objectives: `n_anchor` anchor rows from
    /// batch row `from`, then the diagonal loss on the rest of the batch.
    pub fn push_anchor_and_diag(
        &mut self,
        batch: &Batch<B>,
        from: usize,
        n_anchor: usize,
        p_noise: f32,
        bridge: &BridgeConfig,
        rng: &mut impl Rng,
    ) {
        let n = batch.x0.dims()[0];
        let sub = |a: usize, len: usize| batch.rows(a, len);
        if n_anchor > 0 {
            let b = sub(from, n_anchor);
            self.targets.push(b.x1.clone() - b.x0.clone());
            self.x.push(b.x0);
            self.s.extend(std::iter::repeat_n(0.0, n_anchor));
            self.t.extend(std::iter::repeat_n(1.0, n_anchor));
        }
        let n_diag = n - from - n_anchor;
        if n_diag > 0 {
            let r = flow_matching::diag_rows(&sub(from + n_anchor, n_diag), p_noise, bridge, rng);
            self.x.push(r.x);
            self.targets.push(r.target);
            self.s.extend_from_slice(&r.t);
            self.t.extend_from_slice(&r.t);
        }
    }
}

/// Splits per-sample losses [sd | anchor | diag] into named mean terms.
pub(crate) fn named_terms<B: Backend>(
    per: &Tensor<B, 1>,
    parts: [(&'static str, usize); 3],
) -> Vec<(&'static str, Tensor<B, 1>)> {
    let mut terms = Vec::new();
    let mut a = 0;
    for (name, len) in parts {
        if len > 0 {
            terms.push((name, per.clone().narrow(0, a, len).mean()));
        }
        a += len;
    }
    terms
}

/// For the finite-difference objectives: bridge points I_s of the first `n_sd` rows (noisy
/// sources drawn per row) and the conditioning sources of one student call over
/// [those rows twice | the remaining rows].
pub(crate) fn sd_points<B: Backend>(
    batch: &Batch<B>,
    n_sd: usize,
    s: &[f32],
    p_noise: f32,
    bridge: &BridgeConfig,
    rng: &mut impl Rng,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let n = batch.x0.dims()[0];
    let b = batch.rows(0, n_sd);
    let noisy: Vec<bool> = (0..n_sd).map(|_| rng.random::<f32>() < p_noise).collect();
    let (x, _) = bridge_points(&b, s, &noisy, bridge, rng);
    let mut x0 = vec![b.x0.clone(), b.x0];
    if n > n_sd {
        x0.push(rows(&batch.x0, n_sd, n - n_sd));
    }
    (x, Tensor::cat(x0, 0))
}

/// One student call of a finite-difference objective over `rows`
/// ([2 x n_sd rows, the two sides of the difference | anchor | diag], sources `x0`);
/// `fd(X_plus, X_minus)` turns the flow map's two sides on the self-distillation rows (times
/// `s_sd`, `t_sd`) into their per-sample loss; the anchor and diagonal rows regress their velocity
/// targets. Named [`name` | anchor | diag].
pub(crate) fn fd_student_loss<B: Backend, N: FlowNet<B>>(
    name: &'static str,
    model: &N,
    rows: StudentRows<B>,
    x0: Tensor<B, 4>,
    (s_sd, t_sd): (&[f32], &[f32]),
    n_anchor: usize,
    fd: impl FnOnce(Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 1>,
) -> LossTerms<B> {
    let n_sd = s_sd.len();
    let device = x0.device();
    let x = Tensor::cat(rows.x, 0);
    let c = Cond::per_sample(&rows.s, &rows.t, 1.0, PROMPT_POSITIVE, &device);
    let v = model.velocity(x.clone(), x0, &c);
    let mut parts = Vec::new();
    if n_sd > 0 {
        let xm = flow_map_rows(x, v.clone(), &rows.s, &rows.t, 2 * n_sd);
        parts.push(fd(xm.clone().narrow(0, 0, n_sd), xm.narrow(0, n_sd, n_sd)));
    }
    let rest = v.dims()[0] - 2 * n_sd;
    if rest > 0 {
        parts.push(per_sample_mse(
            v.narrow(0, 2 * n_sd, rest),
            Tensor::cat(rows.targets, 0),
        ));
    }
    LossTerms::from_rows(
        Tensor::cat(parts, 0),
        [s_sd, &rows.s[2 * n_sd..]].concat(),
        [t_sd, &rows.t[2 * n_sd..]].concat(),
        [
            (name, n_sd),
            ("anchor", n_anchor),
            ("diag", rest - n_anchor),
        ],
    )
}

/// X_{s,t}(x) = x + (t - s) v for the first `rows` rows, with per-row (s, t).
fn flow_map_rows<B: Backend>(
    x: Tensor<B, 4>,
    v: Tensor<B, 4>,
    s: &[f32],
    t: &[f32],
    rows: usize,
) -> Tensor<B, 4> {
    let dt: Vec<f32> = s[..rows].iter().zip(t).map(|(s, t)| t - s).collect();
    let dt = per_sample::<B>(&dt, &x.device());
    x.narrow(0, 0, rows) + v.narrow(0, 0, rows) * dt
}

/// The self-distillation objective a run trains with (docs/algorithm.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Objective {
    Shortcut,
    Lagrangian,
    Eulerian,
    FlowMatching,
}

/// Each objective's settings, as a training config states them; [`Objective::loss`] uses the
/// chosen one's.
#[derive(Clone, Copy, Debug)]
pub struct ObjectiveConfigs<'a> {
    pub shortcut: &'a shortcut::ShortcutConfig,
    pub lagrangian: &'a SelfDistillConfig,
    pub eulerian: &'a SelfDistillConfig,
    pub flow_matching: &'a flow_matching::FlowMatchingConfig,
}

impl Objective {
    /// This objective's loss terms for `student` against the EMA `teacher` (flow matching has
    /// no teacher).
    pub fn loss<B, N, T>(
        self,
        student: &N,
        teacher: &T,
        batch: &Batch<B>,
        cfgs: &ObjectiveConfigs,
        bridge: &BridgeConfig,
        rng: &mut impl Rng,
    ) -> LossTerms<B>
    where
        B: burn::tensor::backend::AutodiffBackend,
        N: FlowNet<B>,
        T: FlowNet<B::InnerBackend>,
    {
        match self {
            Self::Shortcut => {
                shortcut::shortcut(student, teacher, batch, cfgs.shortcut, bridge, rng)
            }
            Self::Lagrangian => {
                lagrangian::lagrangian(student, teacher, batch, cfgs.lagrangian, bridge, rng)
            }
            Self::Eulerian => {
                eulerian::eulerian(student, teacher, batch, cfgs.eulerian, bridge, rng)
            }
            Self::FlowMatching => {
                flow_matching::flow_matching(student, batch, cfgs.flow_matching, bridge, rng)
            }
        }
    }
}
