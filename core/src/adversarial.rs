//! Adversarial LoRA fine-tuning (docs/algorithm.md §5): the flow map is frozen, LoRA adapters
//! (lora.rs) are trained with the relativistic pairing GAN loss (RPGAN, R3GAN 2501.05441),
//!   L_D = E softplus(D(fake) - D(real)) + gamma/2 (R1 + R2),
//!   L_G = E softplus(D(real) - D(fake)) + lambda_rec || fake - real ||^2
//!         + lambda_low || pool_k(fake - real) ||^2
//!         + lambda_hf sum_l || sqrt(pool_m(lap(Y_fake,l)^2)) - sqrt(pool_m(lap(Y_real,l)^2)) ||_1
//!         + lambda_fm sum_k mean | D_k(fake) - D_k(real) |,
//! where fake = X_{0,1}(x0) at NFE 1 with the adapters, real = x1, and D sees up(LR) too.
//! burn has no second-order gradients, so R1 and R2 take their finite-difference form
//! (APT 2501.08316): E ||D(x + sigma eps) - D(x)||^2 / sigma^2 ~ E ||grad_x D(x)||^2, on real
//! (R1) and fake (R2) samples. The low-pass term (k x k box means in pixel space) holds colour and
//! tone to the target while leaving the detail above 1/k of the sampling rate to the discriminator:
//! a full-resolution term strong enough to stop drift also holds the detail back.
//! The sharpness term compares local RMS Laplacians of luma (m x m boxes): it is blind to phase, so
//! unlike the squared error, whose optimum for detail the input does not determine is blur, it asks
//! for texture as strong as the photo's where the photo has it (the HF ratio of §8, made local).
//! Y_l is luma 2^l x 2^l box-averaged (one octave per level): the level-0 Laplacian weights
//! frequency^4, and alone it is met most cheaply with energy at periods of 2 px (a fine grain)
//! instead of the coarser detail that is missing; a term per octave asks for each octave's own.
//! The feature-matching term (pix2pixHD 1711.11585 §3.2) compares the discriminator's stage
//! activations D_k at each position: a content-aware target (what D has learned real detail looks
//! like there, given up(LR)), where the pooled sharpness term only asks for energy.
//! The gradient-magnitude term is GMSD's similarity map (Xue et al. 2014) made a loss,
//!   lambda_gms mean(1 - GMS),  GMS = (2 m_f m_r + c) / (m_f^2 + m_r^2 + c),
//! with m the Prewitt gradient magnitude of luma (0..255) on the 2 x 2-averaged grid and c = 170,
//! as the metric computes it: it asks for edges as steep as the photo's *where* the photo has them,
//! so it sharpens without moving detail, which the squared error cannot (its optimum is blur) and
//! the phase-blind sharpness term does not ask for.
//! The artifact term is LDL's (Liang et al., CVPR 2022, "Details or Artifacts"):
//!   lambda_ldl mean | M (fake - real) |,  M = var(r)^(1/5) var_k(r) [r >= r_ema],
//! with r = sum_c |fake - real| (0..1 units), var(r) over the whole crop, var_k(r) over the k x k
//! window around each pixel, and r_ema the same residual of the generator's EMA (the stable
//! model). Noisy residuals (high local variance) where the stable model is nearer the photo are
//! artifacts the current step has drawn: the term pulls those pixels back and leaves texture the
//! EMA also draws, and regions the training is still improving, to the discriminator.
//! The band term is the pattern ratio of docs/tradeoff.md made a one-sided loss:
//!   lambda_band mean_{axis, b} max(0, ln((P_b(fake) + e) / (P_b(real) + e))),
//! with P_b the luma's power in the b-th band of period (2-2.5, 2.5-2.9, 2.9-3.3, 3.3-4, 4-5 px),
//! along columns and along rows, per line (|DFT_k|^2 / N, mean over the band's bins and the
//! lines), and e = (1/255)^2 the power of one grey level of white noise, below which a band's
//! energy is not a pattern anyone sees. Only energy above the photo's costs: fine detail the
//! photo has is free, a grain or hatching it lacks is not, which no other term tells apart.
//! Its deficit side, lambda_deficit mean max(0, -ln(...)), costs fine energy the photo has and
//! the output lacks (a soft 3-5 px texture under a 2-px grain): with both, the term matches each
//! crop's fine spectrum to the photo's, blind to phase, which the pixel and GMS terms judge.
//! The checkerboard term is that excess for the one pattern the band term's axes miss: the 2-px
//! diagonal (f_x, f_y near 1/2) that a pixel shuffle leaves in flat regions,
//!   lambda_checker mean_boxes max(0, ln((E(fake) + e) / (E(real) + e))),
//! E the mean square over 8 x 8 boxes of the luma filtered by [1, -2, 1] x [1, -2, 1] / 16.

use crate::cond::{Cond, PROMPT_POSITIVE};
use crate::lora::LoraConfig;
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::{leaky_relu, softplus};
use burn::tensor::{backend::Backend, Tensor};

#[derive(Config, Debug)]
pub struct DiscriminatorConfig {
    /// Widths of the 3 x 3 stages: the first at stride 1, the others at stride 2 (the input is
    /// the image and x0 in pixel space, 6 channels at full resolution).
    #[config(default = "vec![32, 64, 96]")]
    pub widths: Vec<usize>,
    /// A U-Net discriminator (Real-ESRGAN 2107.10833 §4.2): a decoder brings the coarsest stage
    /// back to full resolution through the encoder's skips, so every pixel gets a score that
    /// sees both its own neighbourhood and the stages' wider context.
    /// (Optional in a config file, like `spectral_norm`: off.)
    pub unet: Option<bool>,
    /// Spectral normalisation (Miyato et al. 1802.05957) of every convolution but the first
    /// and the head, as Real-ESRGAN's U-Net discriminator has it.
    pub spectral_norm: Option<bool>,
}

/// D(x | x0): a patch discriminator, 3 x 3 convolutions with leaky ReLU and a 1 x 1 head that
/// scores every patch. The first stage keeps full (unshuffled) resolution: a D that strides at
/// at once sees a pattern whose period matches its stride only as a flat offset, and the
/// generator learns exactly those (a 4-pixel grid in an early run). Per-patch scores, not one pooled score, so that
/// every region must look real. With `unet`, `convs` holds the encoder's stages and then the
/// decoder's (coarsest first): each decoder convolution runs at its input's resolution, is
/// upsampled (nearest) x2 and added to the encoder's stage there; the head scores every pixel.
#[derive(Module, Debug)]
pub struct Discriminator<B: Backend> {
    convs: Vec<Conv2d<B>>,
    head: Conv2d<B>,
    stages: usize,
    spectral_norm: bool,
}

impl DiscriminatorConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Discriminator<B> {
        let conv3 = |cin: usize, cout: usize, stride: usize| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let mut convs = Vec::new();
        let mut cin = 6;
        for (i, &w) in self.widths.iter().enumerate() {
            convs.push(conv3(cin, w, if i == 0 { 1 } else { 2 }));
            cin = w;
        }
        if self.unet == Some(true) {
            for l in (1..self.widths.len()).rev() {
                convs.push(conv3(self.widths[l], self.widths[l - 1], 1));
            }
            cin = self.widths.first().copied().unwrap_or(6);
        }
        crate::weights::materialize(Discriminator {
            convs,
            head: Conv2dConfig::new([cin, 1], [1, 1]).init(device),
            stages: self.widths.len(),
            spectral_norm: self.spectral_norm == Some(true),
        })
    }
}

/// Power iterations per spectral-norm estimate. They start from the same vector at every call
/// (no state to checkpoint), so the estimate is a fixed function of the weight; it is used
/// detached (as in Miyato et al.), and sigma = u^T W v carries the gradient.
const SN_ITERS: usize = 10;

/// `w` [out, in, k, k] divided by its largest singular value as an out x (in k k) matrix.
fn spectral_normalise<B: Backend>(w: Tensor<B, 4>) -> Tensor<B, 4> {
    let [o, i, kh, kw] = w.dims();
    let m = w.clone().reshape([o, i * kh * kw]);
    let md = m.clone().detach();
    // A fixed start that no weight is orthogonal to by construction: alternating-sign ramp.
    let start: Vec<f32> = (0..i * kh * kw)
        .map(|j| (1.0 + (j % 7) as f32) * if j % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let mut v = Tensor::<B, 2>::from_data(
        burn::tensor::TensorData::new(start, [i * kh * kw, 1]),
        &w.device(),
    );
    let unit = |t: Tensor<B, 2>| t.clone() / (t.powi_scalar(2).sum().sqrt() + 1e-12).unsqueeze();
    v = unit(v);
    let mut u = unit(md.clone().matmul(v.clone()));
    for _ in 0..SN_ITERS {
        v = unit(md.clone().transpose().matmul(u));
        u = unit(md.clone().matmul(v.clone()));
    }
    let sigma = u.transpose().matmul(m).matmul(v).reshape([1, 1, 1, 1]);
    w / sigma
}

impl<B: Backend> Discriminator<B> {
    /// Patch (or, with `unet`, pixel) scores [n, positions] of images x given their sources x0,
    /// both [n, 12, h, w].
    pub fn forward(&self, x: Tensor<B, 4>, x0: Tensor<B, 4>) -> Tensor<B, 2> {
        self.features(x, x0).1
    }

    /// Convolution `i`, spectrally normalised where the config says so.
    fn conv(&self, i: usize, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = &self.convs[i];
        if !self.spectral_norm || i == 0 {
            return c.forward(x);
        }
        // Every stage pads by half its kernel ("same" at stride 1), as `init` builds them.
        let pad = [c.kernel_size[0] / 2, c.kernel_size[1] / 2];
        let p = burn::tensor::ops::PaddedConvOptions::asymmetric(
            c.stride, pad, pad, c.dilation, c.groups,
        );
        burn::tensor::module::conv2d(
            x,
            spectral_normalise(c.weight.val()),
            c.bias.as_ref().map(|b| b.val()),
            p,
        )
    }

    /// Each stage's activations (the encoder's, then the decoder's), and the scores.
    pub fn features(&self, x: Tensor<B, 4>, x0: Tensor<B, 4>) -> (Vec<Tensor<B, 4>>, Tensor<B, 2>) {
        let (x, x0) = (crate::space::shuffle(x, 2), crate::space::shuffle(x0, 2));
        let mut h = Tensor::cat(vec![x, x0], 1);
        let mut feats = Vec::with_capacity(self.convs.len());
        for i in 0..self.stages {
            h = leaky_relu(self.conv(i, h), 0.2);
            feats.push(h.clone());
        }
        for i in self.stages..self.convs.len() {
            let skip = feats[2 * self.stages - 2 - i].clone();
            h = upsample2(leaky_relu(self.conv(i, h), 0.2)) + skip;
            feats.push(h.clone());
        }
        let n = h.dims()[0];
        (feats, self.head.forward(h).reshape([n as i32, -1]))
    }
}

/// Nearest-neighbour upsampling by 2.
fn upsample2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let x = x.reshape([n, c, h, 1, w, 1]);
    let x = Tensor::cat(vec![x.clone(), x], 3);
    Tensor::cat(vec![x.clone(), x], 5).reshape([n, c, 2 * h, 2 * w])
}

/// What an adversarial stage trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generator {
    /// LoRA adapters on the frozen base (`lora`, `train_scale`, `skip_shuffle`).
    #[default]
    Lora,
    /// The whole network, deepened from the base when the config's `model` has more residual
    /// blocks (Net2Net identity blocks), with an EMA; the dial between the base and the result is
    /// network interpolation (ESRGAN 1809.00219 §3.4: theta = (1 - a) theta_base + a theta_gan).
    Full,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdversarialConfig {
    pub generator: Generator,
    pub lora: LoraConfig,
    pub discriminator: DiscriminatorConfig,
    /// Weight of R1 + R2 (gamma / 2 each).
    pub gamma: f32,
    /// Finite-difference step of the R1/R2 estimate.
    pub fd_sigma: f32,
    /// Weight of the relativistic GAN term in L_G.
    pub gan_weight: f32,
    /// Weight of the reconstruction term || fake - real ||^2 in L_G.
    pub rec_weight: f32,
    /// Weight of the L1 pixel term | fake - real | in L_G (Real-ESRGAN's pixel loss; 0: off).
    pub rec_l1_weight: f32,
    /// Weight of the low-pass reconstruction term || pool(fake - real) ||^2 in L_G (0: off).
    pub rec_low_weight: f32,
    /// Box size in pixels of that term's pooling (4: the LR grid at x4).
    pub rec_low_pool: usize,
    /// Weight of the local sharpness term (0: off).
    pub hf_weight: f32,
    /// Box size in pixels over which that term pools the squared Laplacian.
    pub hf_pool: usize,
    /// Octaves that term matches (1, or 0: the full-resolution Laplacian only).
    pub hf_levels: usize,
    /// Weight of the discriminator feature-matching term (0: off).
    pub fm_weight: f32,
    /// Weight of the gradient-magnitude similarity term mean(1 - GMS) (0: off).
    pub gms_weight: f32,
    /// The guidance w the fake is made at in training and validated at: the w the weights ship
    /// at (their preset's), so that the discriminator and the losses judge what users get
    /// (1: the plain flow map).
    pub guidance: f32,
    /// Half-width of the range each fake's w is drawn from, per sample and uniform in
    /// [guidance - spread, guidance + spread] (0: every fake at `guidance`); validation stays at
    /// `guidance`. A run that trains one w leaves the response to the w around it untrained and
    /// not monotone; over a trained range it flattens instead (docs/realistic-training.md, "The
    /// fake over a range of w").
    pub guidance_spread: f32,
    /// Weight of the LDL artifact term (0: off); needs the EMA's fake (`"generator": "full"`).
    pub ldl_weight: f32,
    /// Window in pixels of that term's local residual variance (LDL's 7).
    pub ldl_window: usize,
    /// Weight of the fine-band power term's excess side: energy above the photo's (0: off).
    pub band_weight: f32,
    /// Weight of its deficit side: energy below the photo's (0: off, the term one-sided).
    pub band_deficit_weight: f32,
    /// Weight of the checkerboard term (0: off): 2-px diagonal energy above the photo's.
    pub checker_weight: f32,
    /// The deficit side counts the bands whose shortest period is at least this (pixels; 2: all,
    /// 2.5: all but the finest, where a photo's energy is mostly sensor noise).
    pub band_deficit_min_period: f32,
    /// Source of the fake: `fidelity` X_{0,1}(x0), or `stochastic` X_{0,1}(x0 + sigma_0 eps), which
    /// gives the adapters a noise source to shape into texture (inference then runs in that mode).
    pub mode: crate::bridge::Mode,
    /// Stochastic mode: the source noise is temperature x sigma_0 (as the sampler's).
    pub temperature: f32,
    /// Keep the convolutions that feed a pixel shuffle unadapted (their adapters stay zero):
    /// they write 2 x 2 phase patterns, a suspect for the grid of earlier adapters.
    pub skip_shuffle: bool,
    /// LoRA scale during training (inference may use 0 to 3).
    pub train_scale: f32,
    /// Discriminator learning rate (the adapters use the run's lr schedule).
    pub lr_d: f64,
    /// Steps between fresh discriminators (0: never): before every multiple of it the
    /// discriminator and its optimiser start again from an initialisation seeded by the run's
    /// seed and the step. A kept discriminator let a run slide back under its start's
    /// fidelity-detail curve; with a reset every 1,500 steps a run stays past that curve, while
    /// its detail falls (docs/realistic-training.md). `"generator": "full"` only.
    pub critic_reset_every: usize,
    /// Judge the fake, the EMA's fake and the photo with the 2-px grain cut ([`cut_grain`]): the
    /// generator's grain is then neither seen by the discriminator nor paid for by any term, so
    /// that its detail has to be drawn below the corner. The validation in the log is of the
    /// uncut output; judge such a run's outputs cut (scripts/degrain.py).
    pub grain_cut: bool,
}

impl Default for AdversarialConfig {
    fn default() -> Self {
        Self {
            generator: Generator::Lora,
            lora: LoraConfig::new(),
            discriminator: DiscriminatorConfig::new(),
            gamma: 1.0,
            fd_sigma: 0.01,
            gan_weight: 1.0,
            rec_weight: 1.0,
            rec_l1_weight: 0.0,
            rec_low_weight: 0.0,
            rec_low_pool: 4,
            hf_weight: 0.0,
            hf_pool: 8,
            hf_levels: 1,
            fm_weight: 0.0,
            gms_weight: 0.0,
            guidance: 1.0,
            guidance_spread: 0.0,
            ldl_weight: 0.0,
            ldl_window: 7,
            band_weight: 0.0,
            band_deficit_weight: 0.0,
            band_deficit_min_period: 2.0,
            checker_weight: 0.0,
            mode: crate::bridge::Mode::Fidelity,
            temperature: 1.0,
            skip_shuffle: false,
            train_scale: 1.0,
            lr_d: 2e-4,
            critic_reset_every: 0,
            grain_cut: false,
        }
    }
}

impl AdversarialConfig {
    /// Whether the discriminator starts afresh before the step numbered `step` (0-based).
    pub fn resets_critic_at(&self, step: usize) -> bool {
        self.critic_reset_every > 0 && step > 0 && step.is_multiple_of(self.critic_reset_every)
    }

    /// The fakes' condition: X_{0,1} (one step), positive prompt, one w per sample (`fake_ws`).
    pub fn cond_at<B: Backend>(&self, ws: &[f32], device: &B::Device) -> Cond<B> {
        let n = ws.len();
        Cond::rows(
            &vec![0.0; n],
            &vec![1.0; n],
            ws,
            &vec![PROMPT_POSITIVE; n],
            device,
        )
    }

    /// The w of each of `n` fakes: `guidance`, or with `guidance_spread` a uniform draw around
    /// it. Without a spread `rng` is not touched, so a run's stream is what it was before the
    /// knob existed.
    pub fn fake_ws(&self, n: usize, rng: &mut impl rand::Rng) -> Vec<f32> {
        if self.guidance_spread == 0.0 {
            return vec![self.guidance; n];
        }
        let (lo, hi) = (
            self.guidance - self.guidance_spread,
            self.guidance + self.guidance_spread,
        );
        (0..n).map(|_| rng.random_range(lo..=hi)).collect()
    }
}

pub use crate::grain::GRAIN_CORNER;

/// `x` (an unshuffled [n, 12, h, w] image) with the 2-D spectrum of every colour zeroed where
/// both frequencies are at least [`GRAIN_CORNER`]: y - P_H y P_W in pixel space, P_N the real
/// projector onto the DFT bins k of length N with |k / N| >= the corner (the cut is circular,
/// as scripts/degrain.py's FFT; inference cuts whole images by [`crate::grain::cut_grain`]).
/// Photos hold little there; the generator's grain is all there.
pub fn cut_grain<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let y = crate::space::shuffle(x, 2);
    let [n, c, h, w] = y.dims();
    let dev = y.device();
    let proj = |len: usize| {
        let keep: Vec<usize> = (0..len)
            .filter(|&k| crate::grain::in_band(k, len))
            .collect();
        let p: Vec<f32> = (0..len * len)
            .map(|ij| {
                let d = (ij / len + len - ij % len) % len;
                let sum: f64 = keep
                    .iter()
                    .map(|&k| {
                        (2.0 * std::f64::consts::PI * (k * d % len) as f64 / len as f64).cos()
                    })
                    .sum();
                (sum / len as f64) as f32
            })
            .collect();
        Tensor::<B, 1>::from_floats(p.as_slice(), &dev)
            .reshape([1, len, len])
            .expand([n * c, len, len])
    };
    let y3 = y.clone().reshape([n * c, h, w]);
    let corner = proj(h).matmul(y3).matmul(proj(w)).reshape([n, c, h, w]);
    crate::space::unshuffle(y - corner, 2)
}

/// Named loss terms of one adversarial step.
pub struct AdvLoss<B: Backend> {
    pub total: Tensor<B, 1>,
    pub terms: Vec<(&'static str, Tensor<B, 1>)>,
}

/// E ||D_p(x + sigma eps) - D_p(x)||^2 / sigma^2 over samples and patches p (finite-difference
/// gradient penalty: the mean squared gradient norm of the patch scores).
fn fd_penalty<B: Backend>(
    d: &Discriminator<B>,
    x: Tensor<B, 4>,
    x0: Tensor<B, 4>,
    sigma: f32,
    rng: &mut impl rand::Rng,
) -> Tensor<B, 1> {
    let eps = crate::bridge::noise::<B, 4>(x.dims(), rng, &x.device()) * sigma;
    let dx = d.forward(x.clone() + eps, x0.clone()) - d.forward(x, x0);
    (dx.powi_scalar(2) / (sigma * sigma)).mean()
}

/// The discriminator's loss; `fake` carries no gradient to the generator (detach it). The R1/R2
/// perturbations come from `rng` (seeded per step: resumed runs repeat exactly).
pub fn discriminator_loss<B: Backend>(
    d: &Discriminator<B>,
    real: Tensor<B, 4>,
    fake: Tensor<B, 4>,
    x0: Tensor<B, 4>,
    cfg: &AdversarialConfig,
    rng: &mut impl rand::Rng,
) -> AdvLoss<B> {
    let rp = softplus(
        d.forward(fake.clone(), x0.clone()) - d.forward(real.clone(), x0.clone()),
        1.0,
    )
    .mean();
    let r1 = fd_penalty(d, real, x0.clone(), cfg.fd_sigma, rng);
    let r2 = fd_penalty(d, fake, x0, cfg.fd_sigma, rng);
    let total = rp.clone() + (r1.clone() + r2.clone()) * (cfg.gamma / 2.0);
    AdvLoss {
        total,
        terms: vec![("d_rp", rp), ("r1", r1), ("r2", r2)],
    }
}

/// The generator's (adapters') loss. `stable`: the EMA generator's fake, for the artifact term.
pub fn generator_loss<B: Backend>(
    d: &Discriminator<B>,
    real: Tensor<B, 4>,
    fake: Tensor<B, 4>,
    x0: Tensor<B, 4>,
    stable: Option<Tensor<B, 4>>,
    cfg: &AdversarialConfig,
) -> AdvLoss<B> {
    let (f_real, d_real) = d.features(real.clone(), x0.clone());
    let (f_fake, d_fake) = d.features(fake.clone(), x0);
    let rp = softplus(d_real - d_fake, 1.0).mean();
    let diff = fake.clone() - real.clone();
    let rec = diff.clone().powi_scalar(2).mean();
    let mut total = rp.clone() * cfg.gan_weight + rec.clone() * cfg.rec_weight;
    let mut terms = vec![("g_rp", rp), ("rec", rec)];
    if cfg.rec_l1_weight > 0.0 {
        let l1 = diff.clone().abs().mean();
        total = total + l1.clone() * cfg.rec_l1_weight;
        terms.push(("l1", l1));
    }
    if cfg.fm_weight > 0.0 {
        let mut fm = Tensor::zeros([1], &fake.device());
        for (a, b) in f_fake.into_iter().zip(f_real) {
            // The real side is a fixed target for the adapters.
            fm = fm + (a - b.detach()).abs().mean();
        }
        total = total + fm.clone() * cfg.fm_weight;
        terms.push(("fm", fm));
    }
    if cfg.rec_low_weight > 0.0 {
        let low = low_pass(diff.clone(), cfg.rec_low_pool)
            .powi_scalar(2)
            .mean();
        total = total + low.clone() * cfg.rec_low_weight;
        terms.push(("rec_low", low));
    }
    if cfg.hf_weight > 0.0 {
        let mut hf = Tensor::zeros([1], &fake.device());
        for level in 0..cfg.hf_levels.max(1) {
            let box_px = (cfg.hf_pool >> level).max(1);
            hf = hf
                + (local_hf(fake.clone(), level, box_px) - local_hf(real.clone(), level, box_px))
                    .abs()
                    .mean();
        }
        total = total + hf.clone() * cfg.hf_weight;
        terms.push(("hf", hf));
    }
    if cfg.gms_weight > 0.0 {
        let gms = (gms_map(fake.clone(), real.clone()) * -1.0 + 1.0).mean();
        total = total + gms.clone() * cfg.gms_weight;
        terms.push(("gms", gms));
    }
    if cfg.band_weight > 0.0 || cfg.band_deficit_weight > 0.0 {
        let log_ratio = (band_power(fake.clone()) + BAND_FLOOR).log()
            - (band_power(real.clone()) + BAND_FLOOR).log();
        if cfg.band_weight > 0.0 {
            let band = log_ratio.clone().clamp_min(0.0).mean();
            total = total + band.clone() * cfg.band_weight;
            terms.push(("band", band));
        }
        if cfg.band_deficit_weight > 0.0 {
            // Only the bands whose shortest period is at least band_deficit_min_period.
            let [n, _, h, w] = fake.dims();
            let keep: Vec<f32> = band_periods(2 * h, 2 * w)
                .into_iter()
                .map(|p| f32::from(p >= f64::from(cfg.band_deficit_min_period) - 1e-9))
                .collect();
            let count = keep.iter().sum::<f32>().max(1.0) * n as f32;
            let mask = Tensor::<B, 1>::from_floats(keep.as_slice(), &fake.device())
                .reshape([1, keep.len()]);
            let deficit = (log_ratio.neg().clamp_min(0.0) * mask).sum() / count;
            total = total + deficit.clone() * cfg.band_deficit_weight;
            terms.push(("band_deficit", deficit));
        }
    }
    if cfg.checker_weight > 0.0 {
        let excess = (checker_energy(fake.clone()) + BAND_FLOOR).log()
            - (checker_energy(real.clone()) + BAND_FLOOR).log();
        let checker = excess.clamp_min(0.0).mean();
        total = total + checker.clone() * cfg.checker_weight;
        terms.push(("checker", checker));
    }
    if let (true, Some(stable)) = (cfg.ldl_weight > 0.0, stable) {
        // Pixel-space residuals in 0..1 units (the image is -1..1).
        let px = |d: Tensor<B, 4>| crate::space::shuffle(d, 2) * 0.5;
        let d = px(diff);
        let m = artifact_map(
            d.clone().detach(),
            px(stable.detach() - real),
            cfg.ldl_window,
        );
        let ldl = (d * m).abs().mean();
        total = total + ldl.clone() * cfg.ldl_weight;
        terms.push(("ldl", ldl));
    }
    AdvLoss { total, terms }
}

/// One grey level of white noise, per DFT bin (|X_k|^2 / N) in 0..1 units.
const BAND_FLOOR: f32 = 1.0 / (255.0 * 255.0);

/// BT.601 luma in 0..1 units (up to an offset) of an unshuffled [n, 12, h, w] image (-1..1), in
/// pixel space: [n, 1, 2h, 2w].
fn pixel_luma<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let x = crate::space::shuffle(x, 2);
    filter(x, &[0.299 / 2.0, 0.587 / 2.0, 0.114 / 2.0], [1, 3, 1, 1])
}

/// Luma power in each of the pattern measure's bands (metrics.rs) along columns, then along
/// rows, of an unshuffled [n, 12, h, w] image (-1..1): [n, 2 x bands], a band without a DFT bin
/// at this size left out.
fn band_power<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    // Its offset goes with each line's mean.
    let y = pixel_luma(x);
    let t = y.clone().swap_dims(2, 3);
    Tensor::cat(vec![line_band_power(t), line_band_power(y)], 1)
}

/// Box size in pixels over which the checkerboard term pools its energy.
const CHECKER_POOL: usize = 8;

/// Local energy of the luma's 2-px diagonal pattern, of an unshuffled [n, 12, h, w] image
/// (-1..1): the mean square over 8 x 8 boxes (a remainder left out) of the luma filtered by
/// ([1, -2, 1] x [1, -2, 1]) / 16, whose gain is 16 sin^2(pi f_x) sin^2(pi f_y) / 16: 1 for a
/// checkerboard (its amplitude in 0..1 units comes out), 0 on both axes, so edges and stripes
/// along x or y cost nothing.
fn checker_energy<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let y = pixel_luma(x);
    let k = [1., -2., 1., -2., 4., -2., 1., -2., 1.].map(|v: f32| v / 16.0);
    let c = filter(y, &k, [1, 1, 3, 3]);
    let p = CHECKER_POOL;
    burn::tensor::module::avg_pool2d(c.powi_scalar(2), [p, p], [p, p], [0, 0], true, false)
}

/// The shortest period in pixels of each of `band_power`'s columns for an h x w image (pixels).
fn band_periods(h: usize, w: usize) -> Vec<f64> {
    [h, w]
        .into_iter()
        .flat_map(|len| {
            crate::metrics::band_bins(len)
                .into_iter()
                .zip(crate::metrics::PATTERN_BANDS)
                .filter(|(b, _)| !b.is_empty())
                .map(|(_, (_, hi))| 1.0 / hi)
        })
        .collect()
}

/// Band power along the last axis of [n, 1, lines, len], averaged over the lines: [n, bands].
fn line_band_power<B: Backend>(y: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, _, lines, len] = y.dims();
    let dev = y.device();
    let y = y.reshape([n * lines, len]);
    let y = y.clone() - y.mean_dim(1);
    // The DFT at the bins of the bands as two real matrices [len, bins], and each band's mean
    // over its bins as [bins, bands].
    let bands: Vec<Vec<usize>> = crate::metrics::band_bins(len)
        .into_iter()
        .filter(|b| !b.is_empty())
        .collect();
    let bins: Vec<usize> = bands.iter().flatten().copied().collect();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for i in 0..len {
        for &k in &bins {
            let a = 2.0 * std::f64::consts::PI * (k * i % len) as f64 / len as f64;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let mut mean = vec![0.0f32; bins.len() * bands.len()];
    let mut row = 0;
    for (j, b) in bands.iter().enumerate() {
        for _ in b {
            mean[row * bands.len() + j] = 1.0 / b.len() as f32;
            row += 1;
        }
    }
    let m = |v: Vec<f32>, shape: [usize; 2]| {
        Tensor::<B, 1>::from_floats(v.as_slice(), &dev).reshape(shape)
    };
    let (c, s) = (m(cos, [len, bins.len()]), m(sin, [len, bins.len()]));
    let p = (y.clone().matmul(c).powi_scalar(2) + y.matmul(s).powi_scalar(2)) / len as f32;
    let p = p
        .reshape([n, lines, bins.len()])
        .mean_dim(1)
        .reshape([n, bins.len()]);
    p.matmul(m(mean, [bins.len(), bands.len()]))
}

/// LDL's refined artifact map from the pixel-space residuals fake - real and stable - real
/// ([n, 3, H, W], detached: the map is a weight, as in LDL): [n, 1, H, W]. The window variance is
/// unbiased; at the borders it covers the pixels that exist.
fn artifact_map<B: Backend>(
    fake_res: Tensor<B, 4>,
    stable_res: Tensor<B, 4>,
    k: usize,
) -> Tensor<B, 4> {
    let (r, r_ema) = (fake_res.abs().sum_dim(1), stable_res.abs().sum_dim(1));
    let [n, _, h, w] = r.dims();
    let flat = r.clone().reshape([n, h * w]);
    let mean = flat.clone().mean_dim(1);
    let patch = ((flat - mean).powi_scalar(2).sum_dim(1) / (h * w - 1) as f32)
        .powf_scalar(0.2)
        .reshape([n, 1, 1, 1]);
    let pool = |x: Tensor<B, 4>| {
        burn::tensor::module::avg_pool2d(x, [k, k], [1, 1], [k / 2, k / 2], false, false)
    };
    let kk = (k * k) as f32;
    let local = ((pool(r.clone().powi_scalar(2)) - pool(r.clone()).powi_scalar(2))
        * (kk / (kk - 1.0)))
        .clamp_min(0.0);
    let keep = r.greater_equal(r_ema).float();
    local * patch * keep
}

/// Prewitt gradient magnitude of luma on the 0..255 scale (BT.601 as the metrics' Y; the image
/// is -1..1) of an unshuffled [n, 12, h, w] image, on its 2 x 2-averaged grid: [n, 1, h - 2, w - 2]
/// (unpadded).
fn grad_mag<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let x = crate::space::shuffle(x, 2);
    let x = burn::tensor::module::avg_pool2d(x, [2, 2], [2, 2], [0, 0], true, false);
    // Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 per unit of 0..1; the image is 2 x that - 1.
    let y = filter(
        x,
        &[65.481 / 2.0, 128.553 / 2.0, 24.966 / 2.0],
        [1, 3, 1, 1],
    );
    let t = 1.0 / 3.0;
    let prewitt = [
        t, 0., -t, t, 0., -t, t, 0., -t, t, t, t, 0., 0., 0., -t, -t, -t,
    ];
    let g = filter(y, &prewitt, [2, 1, 3, 3]);
    // + eps: sqrt has no finite gradient at 0 (flat regions).
    (g.powi_scalar(2).sum_dim(1) + 1e-4).sqrt()
}

/// An unpadded, stride-1 convolution of `x` with a fixed kernel of `shape` [out, in, kh, kw].
fn filter<B: Backend>(x: Tensor<B, 4>, kernel: &[f32], shape: [usize; 4]) -> Tensor<B, 4> {
    let k = Tensor::<B, 1>::from_floats(kernel, &x.device()).reshape(shape);
    let opts = burn::tensor::ops::ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    burn::tensor::module::conv2d(x, k, None, opts)
}

/// GMSD's gradient-magnitude similarity map of `a` against `b` (1 where they agree).
fn gms_map<B: Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> Tensor<B, 4> {
    let (ma, mb) = (grad_mag(a), grad_mag(b));
    let c = 170.0;
    ((ma.clone() * mb.clone() * 2.0) + c) / (ma.powi_scalar(2) + mb.powi_scalar(2) + c)
}

/// Local RMS Laplacian of luma (BT.601 weights) of an unshuffled [n, 12, h, w] image, box-averaged
/// 2^level x 2^level first, over k x k boxes of that grid: at level 0 [n, 1, (2h - 2) / k,
/// (2w - 2) / k] (the Laplacian is taken unpadded).
fn local_hf<B: Backend>(x: Tensor<B, 4>, level: usize, k: usize) -> Tensor<B, 4> {
    let mut x = crate::space::shuffle(x, 2);
    for _ in 0..level {
        x = burn::tensor::module::avg_pool2d(x, [2, 2], [2, 2], [0, 0], true, false);
    }
    let y = filter(x, &[0.299, 0.587, 0.114], [1, 3, 1, 1]);
    let l = filter(y, &[0., 1., 0., 1., -4., 1., 0., 1., 0.], [1, 1, 3, 3]);
    let e = burn::tensor::module::avg_pool2d(l.powi_scalar(2), [k, k], [k, k], [0, 0], true, false);
    // + eps: sqrt has no finite gradient at 0 (flat regions).
    (e + 1e-6).sqrt()
}

/// k x k box means in pixel space of an unshuffled [n, 12, h, w] image: [n, 3, 2h / k, 2w / k].
fn low_pass<B: Backend>(x: Tensor<B, 4>, k: usize) -> Tensor<B, 4> {
    let x = crate::space::shuffle(x, 2);
    burn::tensor::module::avg_pool2d(x, [k, k], [k, k], [0, 0], true, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, TensorData};

    type B = Flex;

    /// A one-stage discriminator (8 channels) for the loss tests.
    fn tiny_disc<AB: Backend>() -> Discriminator<AB> {
        DiscriminatorConfig::new()
            .with_widths(vec![8])
            .init(&Default::default())
    }

    /// An n x n RGB checkerboard of +-c with square cells of `cell` px, in the unshuffled space.
    fn checker(n: usize, cell: usize, c: f32) -> Tensor<B, 4> {
        let px: Vec<f32> = (0..3 * n * n)
            .map(|i| {
                if ((i % n) / cell + ((i / n) % n) / cell).is_multiple_of(2) {
                    c
                } else {
                    -c
                }
            })
            .collect();
        let img = Tensor::<B, 4>::from_data(TensorData::new(px, [1, 3, n, n]), &Default::default());
        crate::space::unshuffle(img, 2)
    }

    /// Without a spread every fake is at `guidance` and the step's RNG is left as it was (runs
    /// from before the knob resume bit for bit); with one, each sample draws its own w within
    /// guidance +- spread, the same for the same seed, and the condition carries it.
    #[test]
    fn fake_ws_draws_around_the_guidance() {
        use rand::{Rng, SeedableRng};
        let seeded = || rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut adv = AdversarialConfig {
            guidance: 2.0,
            ..Default::default()
        };
        let mut rng = seeded();
        assert_eq!(adv.fake_ws(4, &mut rng), vec![2.0; 4]);
        assert_eq!(rng.random::<u64>(), seeded().random::<u64>());

        adv.guidance_spread = 0.5;
        let ws = adv.fake_ws(64, &mut seeded());
        assert!(ws.iter().all(|w| (1.5..=2.5).contains(w)), "{ws:?}");
        let (lo, hi) = ws
            .iter()
            .fold((9f32, 0f32), |(a, b), &w| (a.min(w), b.max(w)));
        assert!(lo < 1.7 && hi > 2.3, "64 draws span the range: {lo}..{hi}");
        assert_eq!(ws, adv.fake_ws(64, &mut seeded()));

        let dev = Default::default();
        let c = adv.cond_at::<B>(&ws[..3], &dev);
        let got: Vec<f32> = c.w.into_data().to_vec().unwrap();
        assert_eq!(got, ws[..3].to_vec());
    }

    /// The 2-px checkerboard is all corner and goes; 4-px cells and 2-px stripes along one axis
    /// (on a 16 x 24 image) stay as they were; a second cut changes nothing, and white noise
    /// loses the corner's share of its power.
    #[test]
    fn cut_grain_takes_the_grain_and_keeps_the_rest() {
        let dev = Default::default();
        let v = |t: Tensor<B, 4>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        let max_diff = |a: Tensor<B, 4>, b: Tensor<B, 4>| {
            v(a).iter()
                .zip(v(b))
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        };
        let fine = checker(16, 1, 0.5);
        assert!(max_diff(cut_grain(fine.clone()), fine.zeros_like()) < 1e-4);
        let coarse = checker(16, 2, 0.5);
        assert!(max_diff(cut_grain(coarse.clone()), coarse) < 1e-4);
        // Columns alternating +-0.5, every row alike: all at (0, 0.5).
        let px: Vec<f32> = (0..3 * 16 * 24usize)
            .map(|i| {
                if (i % 24usize).is_multiple_of(2) {
                    0.5
                } else {
                    -0.5
                }
            })
            .collect();
        let stripes = crate::space::unshuffle(
            Tensor::<B, 4>::from_data(TensorData::new(px, [1, 3, 16, 24]), &dev),
            2,
        );
        assert!(max_diff(cut_grain(stripes.clone()), stripes) < 1e-4);
        let x = Tensor::<B, 4>::random([2, 12, 8, 12], Distribution::Normal(0.0, 1.0), &dev);
        let once = cut_grain(x.clone());
        assert!(max_diff(cut_grain(once.clone()), once.clone()) < 1e-4);
        // White noise loses the corner's share of its power: on 16 x 24 pixels, 3 of the 16
        // row frequencies and 5 of the 24 column frequencies, 0.039.
        let power = |t: Tensor<B, 4>| v(t.powi_scalar(2).sum().reshape([1, 1, 1, 1]))[0];
        let share = 1.0 - power(once) / power(x);
        assert!((0.02..0.07).contains(&share), "{share}");
    }

    #[test]
    fn discriminator_scores_every_patch() {
        let dev = Default::default();
        let d = DiscriminatorConfig::new()
            .with_widths(vec![8, 8])
            .init::<B>(&dev);
        let x = Tensor::<B, 4>::random([3, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        // Pixel space is 16 x 16; stage 1 keeps it, stage 2 halves it: 8 x 8 patch scores.
        assert_eq!(d.forward(x.clone(), x).dims(), [3, 64]);
    }

    /// The U-Net discriminator scores every pixel, from both its neighbourhood and the coarse
    /// stages: a change far from a pixel (beyond the first stage's 3 x 3) moves its score.
    #[test]
    fn unet_discriminator_scores_every_pixel() {
        let dev = Default::default();
        let cfg = DiscriminatorConfig::new()
            .with_widths(vec![8, 8, 8])
            .with_unet(Some(true))
            .with_spectral_norm(Some(true));
        let d = cfg.init::<B>(&dev);
        let x = Tensor::<B, 4>::random([2, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let s = d.forward(x.clone(), x.clone());
        // Pixel space is 16 x 16.
        assert_eq!(s.dims(), [2, 256]);
        // Move one pixel (pixel space (15, 15): unshuffled channel 3, position (7, 7)) and read
        // the score at pixel (8, 8), out of the first stage's reach.
        let bump = Tensor::<B, 4>::zeros([2, 12, 8, 8], &dev).slice_assign(
            [0..2, 3..4, 7..8, 7..8],
            Tensor::<B, 4>::ones([2, 1, 1, 1], &dev) * 5.0,
        );
        let s2 = d.forward(x.clone() + bump, x);
        let at = |t: Tensor<B, 2>| t.slice([0..1, 136..137]).into_scalar();
        assert!((at(s2) - at(s)).abs() > 1e-6);
        // A patch discriminator's bytes do not load into it: the shapes differ.
        let patch = DiscriminatorConfig::new()
            .with_widths(vec![8, 8, 8])
            .init::<B>(&dev);
        let bytes = crate::weights::module_to_bytes(patch);
        assert!(crate::weights::module_from_bytes(cfg.init::<B>(&dev), &bytes, &dev).is_err());
    }

    /// Spectral normalisation divides by the largest singular value: by hand on a diagonal
    /// matrix, and on a seeded random one (whose normalised largest singular value, by many more
    /// power iterations here, is 1), with the gradient reaching the weight. The draw is seeded:
    /// the estimate's error shrinks like (s2/s1)^20, and an unseeded draw with nearly equal top
    /// singular values can leave it several percent short.
    #[test]
    fn spectral_norm_by_hand() {
        use burn::backend::Autodiff;
        let dev = Default::default();
        let w = Tensor::<B, 4>::from_data(
            TensorData::new(vec![3.0f32, 0.0, 0.0, 1.0, 0.0, 0.0], [3, 2, 1, 1]),
            &dev,
        );
        let got = spectral_normalise(w).into_data().to_vec::<f32>().unwrap();
        let want = [1.0, 0.0, 0.0, 1.0 / 3.0, 0.0, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{got:?}");
        }
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
        let draw: Vec<f32> = (0..16 * 72)
            .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
            .collect();
        let w = Tensor::<Autodiff<B>, 4>::from_data(TensorData::new(draw, [16, 8, 3, 3]), &dev)
            .require_grad();
        let n = spectral_normalise(w.clone());
        let m = n.clone().inner().reshape([16, 72]);
        let mut v = Tensor::<B, 2>::ones([72, 1], &dev);
        for _ in 0..500 {
            let u = m.clone().matmul(v);
            v = m
                .clone()
                .transpose()
                .matmul(u.clone() / u.powi_scalar(2).sum().sqrt().unsqueeze());
            v = v.clone() / v.powi_scalar(2).sum().sqrt().unsqueeze();
        }
        let top = m.matmul(v).powi_scalar(2).sum().sqrt().into_scalar();
        // Power iteration never overestimates sigma, so the normalised top is never under 1.
        assert!(
            top > 1.0 - 1e-4 && top < 1.02,
            "largest singular value {top}"
        );
        let g = n.sum().backward();
        assert!(w.grad(&g).unwrap().abs().max().into_scalar() > 0.0);
    }

    /// For a linear patch score D_p(x) = a . x_p + b, the finite-difference R1 is ||a||^2 in
    /// expectation (D_p(x + s e) - D_p(x) = s a . e_p); 32000 pixels put it within 1% (std).
    #[test]
    fn fd_penalty_estimates_the_squared_gradient_norm() {
        let dev = Default::default();
        // No conv stages: D(x, x0) = 1 x 1 head on cat(x, x0), linear in x at every pixel.
        let mut d = DiscriminatorConfig::new()
            .with_widths(vec![])
            .init::<B>(&dev);
        let a: Vec<f32> = (0..6).map(|c| if c < 3 { 0.5 } else { 0.0 }).collect();
        d.head.weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(a, [1, 6, 1, 1]), &dev));
        let x = Tensor::<B, 4>::random([500, 12, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
        let r1: f32 = fd_penalty(&d, x.clone(), x, 0.01, &mut rng).into_scalar();
        // grad of D_p with respect to pixel p: 0.5 on each of its 3 channels.
        let exact = 3.0 * 0.25;
        assert!((r1 / exact - 1.0).abs() < 0.05, "{r1} vs {exact}");
    }

    /// The low-pass term sees tone, not detail: a checkerboard (zero mean over every 2 x 2) costs
    /// nothing, a flat offset of 0.1 costs 0.01.
    #[test]
    fn low_pass_term_by_hand() {
        let dev = Default::default();
        let board = checker(8, 1, 0.3);
        let low =
            |x: Tensor<B, 4>, k| -> f32 { low_pass(x, k).powi_scalar(2).mean().into_scalar() };
        assert!(low(board.clone(), 2) < 1e-12);
        assert!(low(board.clone(), 4) < 1e-12);
        assert!(
            (low(board.clone(), 1) - 0.09).abs() < 1e-6,
            "k = 1 is the full term"
        );
        let flat = Tensor::<B, 4>::full([1, 12, 4, 4], 0.1, &dev);
        assert!((low(flat, 4) - 0.01).abs() < 1e-6);
    }

    /// A +-c checkerboard has Laplacian -8 x its value at every inner pixel: local RMS 8c; a flat
    /// image has 0 (sqrt of the eps); grey RGB is its own luma. Levels: one octave per 2 x 2 mean.
    #[test]
    fn local_hf_by_hand() {
        let dev = Default::default();
        let board = checker(10, 1, 0.25);
        let hf = local_hf(board.clone(), 0, 4);
        assert_eq!(hf.dims(), [1, 1, 2, 2]);
        for v in hf.into_data().to_vec::<f32>().unwrap() {
            assert!((v - 2.0).abs() < 1e-4, "{v}");
        }
        // One octave down the 2-px grain averages out; a grain of 2 x 2 blocks is a checkerboard
        // there.
        let v: f32 = local_hf(board, 1, 2).max().into_scalar();
        assert!((v - 1e-3).abs() < 1e-4, "{v}");
        let blocks = checker(12, 2, 0.25);
        let hf = local_hf(blocks, 1, 2);
        assert_eq!(hf.dims(), [1, 1, 2, 2]);
        for v in hf.into_data().to_vec::<f32>().unwrap() {
            assert!((v - 2.0).abs() < 1e-4, "{v}");
        }
        let flat = Tensor::<B, 4>::full([1, 12, 5, 5], 0.7, &dev);
        let v: f32 = local_hf(flat, 0, 4).max().into_scalar();
        assert!((v - 1e-3).abs() < 1e-4, "{v}");
    }

    /// The sharpness term asks a blurred fake for more detail: its gradient raises the fake's
    /// Laplacian energy, which the squared error alone would not.
    #[test]
    fn sharpness_term_asks_for_detail() {
        type AD = Autodiff<B>;
        let dev = Default::default();
        let d = tiny_disc::<AD>();
        let cfg = AdversarialConfig {
            rec_weight: 0.0,
            hf_weight: 1.0,
            hf_pool: 4,
            hf_levels: 2,
            ..Default::default()
        };
        let real = Tensor::<AD, 4>::random([2, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let fake = (real.clone() * 0.2).detach().require_grad();
        let lg = generator_loss(
            &d,
            real.clone(),
            fake.clone(),
            real.clone() * 0.5,
            None,
            &cfg,
        );
        let names: Vec<_> = lg.terms.iter().map(|t| t.0).collect();
        assert_eq!(names, ["g_rp", "rec", "hf"]);
        // Only the sharpness term's gradient: a small step against it must raise the energy.
        let hf = lg.terms[2].1.clone();
        let g = hf.backward();
        let grad = fake.grad(&g).unwrap();
        let energy =
            |x: Tensor<B, 4>| -> f32 { local_hf(x, 0, 4).powi_scalar(2).mean().into_scalar() };
        let before = energy(fake.clone().inner());
        let down = energy(fake.clone().inner() - grad.clone() * 0.5);
        let up = energy(fake.inner() + grad * 0.5);
        assert!(
            down > before * 1.05 && up < before,
            "{up} < {before} < {down}"
        );
    }

    /// The gradient-magnitude term by hand: a vertical step of +-h in every channel is a luma
    /// step of 219 h (Y spans 16..235), which the 2 x 2 average keeps and Prewitt's x kernel
    /// reads as 219 h at the two grid columns beside it (of the 6 the unpadded 8 x 8 grid leaves);
    /// gradients are zero elsewhere, where GMS is 1. Zero on equal images; its gradient steepens
    /// the softer edge.
    #[test]
    fn gradient_magnitude_term_asks_for_steep_edges() {
        type AD = Autodiff<B>;
        let dev = Default::default();
        let step = |h: f32| -> Tensor<B, 4> {
            let px: Vec<f32> = (0..3 * 16 * 16)
                .map(|i| if i % 16 < 8 { -h } else { h })
                .collect();
            crate::space::unshuffle(
                Tensor::from_data(TensorData::new(px, [1, 3, 16, 16]), &dev),
                2,
            )
        };
        let gms = |a: Tensor<B, 4>, b: Tensor<B, 4>| -> f32 {
            (gms_map(a, b) * -1.0 + 1.0).mean().into_scalar()
        };
        assert!(gms(step(0.5), step(0.5)).abs() < 1e-6);
        let (mf, mr) = (219.0 * 0.25f32, 219.0 * 0.5f32);
        let want = 2.0 / 6.0 * (1.0 - (2.0 * mf * mr + 170.0) / (mf * mf + mr * mr + 170.0));
        let got = gms(step(0.25), step(0.5));
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        // Its gradient steepens the softer edge.
        let d = tiny_disc::<AD>();
        let cfg = AdversarialConfig {
            rec_weight: 0.0,
            gms_weight: 1.0,
            ..Default::default()
        };
        let real = Tensor::<AD, 4>::from_inner(step(0.5));
        let fake = Tensor::<AD, 4>::from_inner(step(0.25)).require_grad();
        let lg = generator_loss(&d, real.clone(), fake.clone(), real, None, &cfg);
        let names: Vec<_> = lg.terms.iter().map(|t| t.0).collect();
        assert_eq!(names, ["g_rp", "rec", "gms"]);
        let g = lg.terms[2].1.clone().backward();
        let grad = fake.grad(&g).unwrap();
        // A small step (0.005 at the largest component): the map is far from linear beyond.
        let scale = 0.005 / grad.clone().abs().max().into_scalar();
        let stepped = fake.clone().inner() - grad * scale;
        let after = gms(stepped, step(0.5));
        assert!(after < got, "{after} < {got}");
    }

    /// The artifact term by hand: a fake off the real by 0.2 (0.1 in 0..1 units) in one channel
    /// of one interior pixel of a 16 x 16 crop, r = 0.1 there and 0 elsewhere: var(r) over the
    /// crop is 0.01 / 256, the 7 x 7 window's unbiased variance at that pixel 0.01 / 49, and the
    /// term is 0.1 M / (3 x 256) there (the other pixels have no error to weight). A stable model
    /// nearer the photo keeps the map; one farther off zeroes it. Its gradient pulls the pixel
    /// back.
    #[test]
    fn artifact_term_by_hand() {
        type AD = Autodiff<B>;
        let dev = Default::default();
        let img = |v: f32| -> Tensor<B, 4> {
            let mut px = vec![0.0f32; 3 * 16 * 16];
            px[8 * 16 + 8] = v;
            crate::space::unshuffle(
                Tensor::from_data(TensorData::new(px, [1, 3, 16, 16]), &dev),
                2,
            )
        };
        let d = tiny_disc::<AD>();
        let cfg = AdversarialConfig {
            rec_weight: 0.0,
            ldl_weight: 1.0,
            ..Default::default()
        };
        let real = Tensor::<AD, 4>::from_inner(img(0.0));
        let fake = Tensor::<AD, 4>::from_inner(img(0.2)).require_grad();
        let ldl = |stable: f32| {
            let s = Tensor::<AD, 4>::from_inner(img(stable));
            generator_loss(&d, real.clone(), fake.clone(), real.clone(), Some(s), &cfg)
        };
        let lg = ldl(0.0);
        let names: Vec<_> = lg.terms.iter().map(|t| t.0).collect();
        assert_eq!(names, ["g_rp", "rec", "ldl"]);
        let m = 0.01f32 / 49.0 * (0.01f32 / 256.0).powf(0.2);
        let want = 0.1 * m / (3.0 * 256.0);
        let got: f32 = lg.terms[2].1.clone().into_scalar();
        assert!((got - want).abs() < want * 1e-3, "{got} vs {want}");
        let g = lg.terms[2].1.clone().backward();
        let grad = crate::space::shuffle(fake.grad(&g).unwrap(), 2);
        let at: f32 = grad.clone().slice([0..1, 0..1, 8..9, 8..9]).into_scalar();
        assert!(at > 0.0, "{at}: the step against it lowers the pixel");
        // A stable model farther from the photo: the current step is not the artifact.
        let far: f32 = ldl(0.4).terms[2].1.clone().into_scalar();
        assert_eq!(far, 0.0);
        // No stable fake, no term.
        let none = generator_loss(&d, real.clone(), fake.clone(), real, None, &cfg);
        assert_eq!(none.terms.len(), 2);
    }

    /// A size x size RGB image (-1..1, the same in every channel) from a function of (x, y),
    /// unshuffled as the generator's output is.
    fn px_image<BB: Backend>(size: usize, f: impl Fn(usize, usize) -> f32) -> Tensor<BB, 4> {
        let plane = size * size;
        let px: Vec<f32> = (0..3 * plane)
            .map(|i| f((i % plane) % size, (i % plane) / size))
            .collect();
        let dev = Default::default();
        crate::space::unshuffle(
            Tensor::from_data(TensorData::new(px, [1, 3, size, size]), &dev),
            2,
        )
    }

    /// The band tests' 64-px crop: a cosine of period 8 px along the rows (outside the bands, 0.2
    /// in 0..1 units) plus one of period 4 px and amplitude `grain`.
    fn grain_image<BB: Backend>(grain: f32) -> Tensor<BB, 4> {
        px_image(64, |x, _| {
            let x = x as f32 * std::f32::consts::PI;
            // -1..1 units: twice the 0..1 amplitudes.
            0.4 * (x / 4.0).cos() + 2.0 * grain * (x / 2.0).cos()
        })
    }

    /// The one optional term `cfg` switches on (after g_rp and rec) for `fake` against `real`.
    fn only_term<BB: AutodiffBackend>(
        d: &Discriminator<BB>,
        fake: Tensor<BB, 4>,
        real: Tensor<BB, 4>,
        cfg: &AdversarialConfig,
        name: &str,
    ) -> Tensor<BB, 1> {
        let lg = generator_loss(d, real.clone(), fake, real, None, cfg);
        let names: Vec<_> = lg.terms.iter().map(|t| t.0).collect();
        assert_eq!(names, ["g_rp", "rec", name]);
        lg.terms[2].1.clone()
    }

    /// The band term by hand on a 64-px crop: the real image is a cosine of period 8 px along
    /// the rows (outside the bands), the fake adds one of period 4 px and amplitude 0.1 (0..1
    /// units). Along the rows that is |X_16|^2 / 64 = (0.1 x 32)^2 / 64 = 0.16 in bin 16, a mean
    /// of 0.04 over the 4-5 px band's 4 bins (13..16), against none in the real: ln(1 + 0.04 x
    /// 255^2) in 1 of the 10 (band, axis) pairs; every other pair is zero (along the columns each
    /// column is flat). The other way round costs nothing, and its gradient takes the grain off.
    #[test]
    fn band_term_by_hand() {
        type AD = Autodiff<B>;
        let img = grain_image::<B>;
        let p: Vec<f32> = band_power(img(0.1)).into_data().to_vec().unwrap();
        assert_eq!(p.len(), 10);
        assert!((p[9] - 0.04).abs() < 1e-5, "{p:?}");
        assert!(p[..9].iter().all(|v| v.abs() < 1e-7), "{p:?}");
        let d = tiny_disc::<AD>();
        let cfg = AdversarialConfig {
            rec_weight: 0.0,
            band_weight: 1.0,
            ..Default::default()
        };
        let term = |fake, real| only_term::<AD>(&d, fake, real, &cfg, "band");
        let fake = Tensor::<AD, 4>::from_inner(img(0.1)).require_grad();
        let real = Tensor::<AD, 4>::from_inner(img(0.0));
        let band = term(fake.clone(), real.clone());
        let got: f32 = band.clone().into_scalar();
        let want = (1.0 + 0.04 * 255.0f32 * 255.0).ln() / 10.0;
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        let smooth: f32 = term(real.clone(), fake.clone()).into_scalar();
        assert!(
            smooth.abs() < 1e-4,
            "{smooth}: less fine energy than the photo is free"
        );
        let grad = fake.grad(&band.backward()).unwrap();
        let stepped = fake.inner() - grad.clone() * (0.01 / grad.abs().max().into_scalar());
        let after: Vec<f32> = band_power(stepped).into_data().to_vec().unwrap();
        assert!(after[9] < 0.04 * 0.99, "{after:?}");
    }

    /// The checkerboard term by hand: a flat grey crop against the same crop with a checkerboard
    /// of 2 grey levels' amplitude (0..1 units) costs ln((a^2 + e) / e) in every box, a = 2/255;
    /// stripes along x of the same amplitude, or a smooth ramp, cost nothing (zero gain on the
    /// axes and for a linear ramp), and the gradient takes the checkerboard off.
    #[test]
    fn checker_term_by_hand() {
        type AD = Autodiff<B>;
        let a = 2.0 / 255.0;
        let img = |f: &dyn Fn(usize, usize) -> f32| -> Tensor<AD, 4> { px_image(32, f) };
        // -1..1 units: twice the 0..1 amplitude.
        let flat = img(&|_, _| 0.1);
        let checker = img(&|x, y| 0.1 + 2.0 * a * if (x + y) % 2 == 0 { 1.0 } else { -1.0 });
        let stripes = img(&|x, _| 0.1 + 2.0 * a * if x % 2 == 0 { 1.0 } else { -1.0 });
        let ramp = img(&|x, y| -0.5 + 0.02 * x as f32 + 0.01 * y as f32);
        let d = tiny_disc::<AD>();
        let cfg = AdversarialConfig {
            rec_weight: 0.0,
            checker_weight: 1.0,
            ..Default::default()
        };
        let term = |fake, real| only_term::<AD>(&d, fake, real, &cfg, "checker");
        let e = BAND_FLOOR;
        // Boxes of the 30 x 30 valid response: 3 x 3 (the last 6 px are in none).
        let fake = checker.clone().require_grad();
        let got = term(fake.clone(), flat.clone());
        let want = ((a * a + e) / e).ln();
        let v: f32 = got.clone().into_scalar();
        assert!((v - want).abs() < 1e-3 * want, "{v} vs {want}");
        for other in [stripes, ramp] {
            let v: f32 = term(other.clone(), flat.clone()).into_scalar();
            assert!(v.abs() < 1e-4, "{v}");
        }
        let v: f32 = term(flat.clone(), checker.clone()).into_scalar();
        assert!(v.abs() < 1e-6, "less than the photo's is free: {v}");
        let grad = fake.grad(&got.backward()).unwrap();
        let g_max: f32 = grad.clone().abs().max().into_scalar();
        let stepped = fake.inner() - grad * (0.5 * a / g_max);
        let before: f32 = checker_energy(checker.inner()).mean().into_scalar();
        let after: f32 = checker_energy(stepped).mean().into_scalar();
        assert!(after < 0.9 * before, "{after} vs {before}");
    }

    /// The deficit side by hand, with the images of `band_term_by_hand`: a fake with the 4-px
    /// cosine at amplitude 0.02 (band power 4 a^2 = 0.0016) against a real at 0.1 (0.04) costs
    /// ln((0.04 + e) / (0.0016 + e)) / 10, and its gradient grows the cosine the fake has (at
    /// zero amplitude the gradient vanishes: the term scales detail, it draws none). More energy
    /// than the photo's costs this side nothing, and nor do bands finer than the minimum period.
    #[test]
    fn band_deficit_by_hand() {
        type AD = Autodiff<B>;
        let img = grain_image::<AD>;
        let d = tiny_disc::<AD>();
        let cfg = AdversarialConfig {
            rec_weight: 0.0,
            band_deficit_weight: 1.0,
            ..Default::default()
        };
        let term = |fake, real| only_term::<AD>(&d, fake, real, &cfg, "band_deficit");
        let e = BAND_FLOOR;
        let fake = img(0.02).require_grad();
        let deficit = term(fake.clone(), img(0.1));
        let got: f32 = deficit.clone().into_scalar();
        let want = ((0.04 + e) / (0.0016 + e)).ln() / 10.0;
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        // The deficit side on the 4-5 px band only (both axes: 2 pairs), then on none.
        let only = |min_period: f32| -> f32 {
            let cfg = AdversarialConfig {
                band_deficit_min_period: min_period,
                ..cfg.clone()
            };
            only_term::<AD>(&d, img(0.02), img(0.1), &cfg, "band_deficit").into_scalar()
        };
        assert!(
            (only(4.0) - want * 5.0).abs() < 5e-3,
            "{} vs {}",
            only(4.0),
            want * 5.0
        );
        assert!(only(4.5).abs() < 1e-6);
        let over: f32 = term(img(0.1), img(0.02)).into_scalar();
        assert!(over.abs() < 1e-4, "{over}: more energy is the other side's");
        let grad = fake.grad(&deficit.backward()).unwrap();
        let g_max: f32 = grad.clone().abs().max().into_scalar();
        let stepped = fake.inner() - grad * (0.01 / g_max);
        let after: Vec<f32> = band_power(stepped).into_data().to_vec().unwrap();
        assert!(after[9] > 0.0016 * 1.01, "{after:?}");
        let flat = img(0.0).require_grad();
        let grad = flat.grad(&term(flat.clone(), img(0.1)).backward()).unwrap();
        let flat_max: f32 = grad.abs().max().into_scalar();
        // Zero but for rounding: the flat fake's DFT at the band is float noise.
        assert!(flat_max < 1e-2 * g_max, "{flat_max} vs {g_max}");
    }

    /// Feature matching by hand: a one-stage D whose single feature is leaky_relu(R) (a centre
    /// tap on the red channel, no bias) sees a fake 0.5 above a real of 1 everywhere: the term
    /// is 0.5, and its gradient moves only the fake's red channel, towards the real.
    #[test]
    fn feature_matching_by_hand() {
        type AD = Autodiff<B>;
        let dev = Default::default();
        let mut d = DiscriminatorConfig::new()
            .with_widths(vec![1])
            .init::<AD>(&dev);
        let mut w = vec![0.0f32; 6 * 9];
        w[4] = 1.0; // input channel 0 (red of x), centre of the 3 x 3
        d.convs[0].weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(w, [1, 6, 3, 3]), &dev));
        d.convs[0].bias = Some(Param::from_tensor(Tensor::zeros([1], &dev)));
        let cfg = AdversarialConfig {
            rec_weight: 0.0,
            fm_weight: 1.0,
            ..Default::default()
        };
        let real = Tensor::<AD, 4>::ones([2, 12, 4, 4], &dev);
        let fake = (real.clone() * 1.5).detach().require_grad();
        let lg = generator_loss(&d, real.clone(), fake.clone(), real.clone(), None, &cfg);
        let names: Vec<_> = lg.terms.iter().map(|t| t.0).collect();
        assert_eq!(names, ["g_rp", "rec", "fm"]);
        let fm: f32 = lg.terms[2].1.clone().into_scalar();
        assert!((fm - 0.5).abs() < 1e-6, "{fm}");
        let g = lg.terms[2].1.clone().backward();
        let grad = crate::space::shuffle(fake.grad(&g).unwrap(), 2);
        // d fm / d fake_R = 1 / (pixels) = 1 / (2 x 8 x 8) everywhere; green and blue get none.
        let red: Vec<f32> = grad.clone().narrow(1, 0, 1).into_data().to_vec().unwrap();
        assert!(
            red.iter().all(|v| (v - 1.0 / 128.0).abs() < 1e-7),
            "{red:?}"
        );
        let rest: f32 = grad.narrow(1, 1, 2).abs().max().into_scalar();
        assert_eq!(rest, 0.0);
        // Equal images match exactly.
        let lg = generator_loss(&d, real.clone(), real.clone(), real, None, &cfg);
        assert_eq!(lg.terms[2].1.clone().into_scalar(), 0.0);
    }

    /// L_D prefers D(real) > D(fake); L_G the opposite; both have gradients where they should.
    #[test]
    fn losses_pull_the_right_way() {
        type AD = Autodiff<B>;
        let dev = Default::default();
        let d = tiny_disc::<AD>();
        let cfg = AdversarialConfig {
            rec_low_weight: 1.0,
            ..Default::default()
        };
        let real = Tensor::<AD, 4>::random([4, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let x0 = real.clone() * 0.5;
        let fake = Tensor::<AD, 4>::random([4, 12, 8, 8], Distribution::Normal(0.0, 0.2), &dev)
            .require_grad();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let ld = discriminator_loss(
            &d,
            real.clone(),
            fake.clone().detach(),
            x0.clone(),
            &cfg,
            &mut rng,
        );
        let names: Vec<_> = ld.terms.iter().map(|t| t.0).collect();
        assert_eq!(names, ["d_rp", "r1", "r2"]);
        let lg = generator_loss(&d, real, fake.clone(), x0, None, &cfg);
        let names: Vec<_> = lg.terms.iter().map(|t| t.0).collect();
        assert_eq!(names, ["g_rp", "rec", "rec_low"]);
        // softplus(a) + softplus(-a) >= 2 ln 2 > 0 with equality at a = 0: the two relativistic
        // terms are each other's mirror.
        let (a, b): (f32, f32) = (
            ld.terms[0].1.clone().into_scalar(),
            lg.terms[0].1.clone().into_scalar(),
        );
        assert!(a > 0.0 && b > 0.0);
        let g = lg.total.backward();
        assert!(
            fake.grad(&g).is_some(),
            "the generator loss reaches the fake"
        );
    }
}
