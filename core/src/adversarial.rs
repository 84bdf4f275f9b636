//! Adversarial LoRA fine-tuning (ALGORITHM.md §5): the flow map is frozen, LoRA adapters
//! (lora.rs) are trained with the relativistic pairing GAN loss (RPGAN, R3GAN 2501.05441),
//!   L_D = E softplus(D(fake) - D(real)) + gamma/2 (R1 + R2),
//!   L_G = E softplus(D(real) - D(fake)) + lambda_rec || fake - real ||^2
//!         + lambda_low || pool_k(fake - real) ||^2,
//! where fake = X_{0,1}(x0) at NFE 1 with the adapters, real = x1, and D sees up(LR) too.
//! burn has no second-order gradients, so R1 and R2 take their finite-difference form
//! (APT 2501.08316): E ||D(x + sigma eps) - D(x)||^2 / sigma^2 ~ E ||grad_x D(x)||^2, on real
//! (R1) and fake (R2) samples. The low-pass term (k x k box means in pixel space) holds colour and
//! tone to the target while leaving the detail above 1/k of the sampling rate to the discriminator:
//! a full-resolution term strong enough to stop drift also holds the detail back.

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
}

/// D(x | x0): a patch discriminator, 3 x 3 convolutions with leaky ReLU and a 1 x 1 head that
/// scores every patch. The first stage keeps full (unshuffled) resolution: a D that strides at
/// at once sees a pattern whose period matches its stride only as a flat offset, and the
/// generator learns exactly those (a 4-pixel grid in an early run). Per-patch scores, not one pooled score, so that
/// every region must look real.
#[derive(Module, Debug)]
pub struct Discriminator<B: Backend> {
    convs: Vec<Conv2d<B>>,
    head: Conv2d<B>,
}

impl DiscriminatorConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Discriminator<B> {
        let mut convs = Vec::new();
        let mut cin = 6;
        for (i, &w) in self.widths.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            convs.push(
                Conv2dConfig::new([cin, w], [3, 3])
                    .with_stride([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            );
            cin = w;
        }
        crate::weights::materialize(Discriminator {
            convs,
            head: Conv2dConfig::new([cin, 1], [1, 1]).init(device),
        })
    }
}

impl<B: Backend> Discriminator<B> {
    /// Patch scores [n, patches] of images x given their sources x0, both [n, 12, h, w].
    pub fn forward(&self, x: Tensor<B, 4>, x0: Tensor<B, 4>) -> Tensor<B, 2> {
        let (x, x0) = (crate::space::shuffle(x, 2), crate::space::shuffle(x0, 2));
        let mut h = Tensor::cat(vec![x, x0], 1);
        for c in &self.convs {
            h = leaky_relu(c.forward(h), 0.2);
        }
        let n = h.dims()[0];
        self.head.forward(h).reshape([n as i32, -1])
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdversarialConfig {
    pub lora: LoraConfig,
    pub discriminator: DiscriminatorConfig,
    /// Weight of R1 + R2 (gamma / 2 each).
    pub gamma: f32,
    /// Finite-difference step of the R1/R2 estimate.
    pub fd_sigma: f32,
    /// Weight of the reconstruction term || fake - real ||^2 in L_G.
    pub rec_weight: f32,
    /// Weight of the low-pass reconstruction term || pool(fake - real) ||^2 in L_G (0: off).
    pub rec_low_weight: f32,
    /// Box size in pixels of that term's pooling (4: the LR grid at x4).
    pub rec_low_pool: usize,
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
}

impl Default for AdversarialConfig {
    fn default() -> Self {
        Self {
            lora: LoraConfig::new(),
            discriminator: DiscriminatorConfig::new(),
            gamma: 1.0,
            fd_sigma: 0.01,
            rec_weight: 1.0,
            rec_low_weight: 0.0,
            rec_low_pool: 4,
            mode: crate::bridge::Mode::Fidelity,
            temperature: 1.0,
            skip_shuffle: false,
            train_scale: 1.0,
            lr_d: 2e-4,
        }
    }
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

/// The generator's (adapters') loss.
pub fn generator_loss<B: Backend>(
    d: &Discriminator<B>,
    real: Tensor<B, 4>,
    fake: Tensor<B, 4>,
    x0: Tensor<B, 4>,
    cfg: &AdversarialConfig,
) -> AdvLoss<B> {
    let rp = softplus(
        d.forward(real.clone(), x0.clone()) - d.forward(fake.clone(), x0),
        1.0,
    )
    .mean();
    let diff = fake - real;
    let rec = diff.clone().powi_scalar(2).mean();
    let mut total = rp.clone() + rec.clone() * cfg.rec_weight;
    let mut terms = vec![("g_rp", rp), ("rec", rec)];
    if cfg.rec_low_weight > 0.0 {
        let low = low_pass(diff, cfg.rec_low_pool).powi_scalar(2).mean();
        total = total + low.clone() * cfg.rec_low_weight;
        terms.push(("rec_low", low));
    }
    AdvLoss { total, terms }
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
    use burn::tensor::{Distribution, TensorData};

    type B = Flex;

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
        let px: Vec<f32> = (0..3 * 8 * 8)
            .map(|i| {
                if (i % 8 + (i / 8) % 8) % 2 == 0 {
                    0.3
                } else {
                    -0.3
                }
            })
            .collect();
        let checker = crate::space::unshuffle(
            Tensor::<B, 4>::from_data(TensorData::new(px, [1, 3, 8, 8]), &dev),
            2,
        );
        let low =
            |x: Tensor<B, 4>, k| -> f32 { low_pass(x, k).powi_scalar(2).mean().into_scalar() };
        assert!(low(checker.clone(), 2) < 1e-12);
        assert!(low(checker.clone(), 4) < 1e-12);
        assert!(
            (low(checker.clone(), 1) - 0.09).abs() < 1e-6,
            "k = 1 is the full term"
        );
        let flat = Tensor::<B, 4>::full([1, 12, 4, 4], 0.1, &dev);
        assert!((low(flat, 4) - 0.01).abs() < 1e-6);
    }

    /// L_D prefers D(real) > D(fake); L_G the opposite; both have gradients where they should.
    #[test]
    fn losses_pull_the_right_way() {
        type AD = Autodiff<B>;
        let dev = Default::default();
        let d = DiscriminatorConfig::new()
            .with_widths(vec![8])
            .init::<AD>(&dev);
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
        let lg = generator_loss(&d, real, fake.clone(), x0, &cfg);
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
