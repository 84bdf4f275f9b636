//! The compact conditional UNet v_theta(x, s, t, c, w) of docs/algorithm.md §1-2.
//!
//! Input: the current point x and the source x0 = unshuffle(up(LR)), concatenated (2 x 12 channels
//! at half resolution). Levels of residual blocks (no normalisation, as in EDSR: it costs PSNR)
//! with FiLM conditioning, stride-2 convolutions down, sub-pixel convolutions up, additive skips.
//! The output convolution is zero-initialised so that X_{s,t}(x) = x + (t - s) v starts as the
//! identity. The network sees only (s, t, w, prompt), never the schedule.

use crate::cond::{Cond, CondConfig, CondEmbed};
use crate::lora::{Adapt, UNetLora};
use crate::space::shuffle;
use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Tensor};

#[derive(Config, Debug)]
pub struct UNetConfig {
    /// Channels of one image in the unshuffled space (3 x 2 x 2).
    #[config(default = 12)]
    pub channels: usize,
    /// Width of each level, top (half resolution) first.
    pub widths: Vec<usize>,
    /// Residual blocks per level on the way down (one more per level on the way up).
    pub blocks: Vec<usize>,
    pub cond: CondConfig,
}

impl UNetConfig {
    /// The shipped size: fast enough to train on a CPU, one tile at a time in a browser.
    pub fn small() -> Self {
        Self::new(vec![32, 64, 96], vec![1, 3, 3], CondConfig::new())
    }

    /// For unit tests.
    pub fn tiny() -> Self {
        Self::new(
            vec![8, 16],
            vec![1, 1],
            CondConfig::new().with_dim(16).with_octaves(3),
        )
    }

    /// Tile sizes (in the unshuffled space) must be multiples of this.
    pub fn align(&self) -> usize {
        1 << (self.widths.len() - 1)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet<B> {
        assert_eq!(
            self.widths.len(),
            self.blocks.len(),
            "widths and blocks differ in length"
        );
        let conv3 = |i: usize, o: usize| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let block = |c: usize| self.block(c, false, device);
        let n = self.widths.len();
        let mut down = Vec::new();
        for l in 0..n {
            down.push(Level {
                blocks: (0..self.blocks[l]).map(|_| block(self.widths[l])).collect(),
                down: (l + 1 < n).then(|| {
                    Conv2dConfig::new([self.widths[l], self.widths[l + 1]], [3, 3])
                        .with_stride([2, 2])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device)
                }),
            });
        }
        let up = (0..n - 1)
            .map(|l| UpLevel {
                up: conv3(self.widths[l + 1], 4 * self.widths[l]),
                block: block(self.widths[l]),
            })
            .collect();
        UNet {
            cond: self.cond.init(device),
            conv_in: conv3(2 * self.channels, self.widths[0]),
            down,
            up,
            conv_out: Conv2dConfig::new([self.widths[0], self.channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device),
        }
    }

    /// A residual block of width c; with `identity` its second convolution is zeroed, so the
    /// block passes its input through unchanged until it learns (FiLM starts at zero either way).
    fn block<B: Backend>(&self, c: usize, identity: bool, device: &B::Device) -> ResBlock<B> {
        let conv3 = |init: Option<Initializer>| {
            let cfg = Conv2dConfig::new([c, c], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
            match init {
                Some(i) => cfg.with_initializer(i).init(device),
                None => cfg.init(device),
            }
        };
        ResBlock {
            conv1: conv3(None),
            conv2: conv3(identity.then_some(Initializer::Zeros)),
            film: LinearConfig::new(self.cond.dim, 2 * c)
                .with_initializer(Initializer::Zeros)
                .init(device),
        }
    }

    /// Whether `self` is `trained` with more residual blocks on some down levels and nothing
    /// else changed; the extra blocks per level if so.
    pub fn extra_blocks(&self, trained: &UNetConfig) -> Option<Vec<usize>> {
        let same = self.channels == trained.channels
            && self.widths == trained.widths
            && self.cond.dim == trained.cond.dim
            && self.cond.octaves == trained.cond.octaves
            && self.blocks.len() == trained.blocks.len()
            && self.blocks.iter().zip(&trained.blocks).all(|(a, b)| a >= b);
        same.then(|| {
            self.blocks
                .iter()
                .zip(&trained.blocks)
                .map(|(a, b)| a - b)
                .collect()
        })
    }

    /// Multiply-adds x 2 per output pixel (full resolution) of one forward pass: the convolutions,
    /// which are all but a rounding error of the cost.
    pub fn flops_per_pixel(&self) -> f64 {
        let mut f = 0.0;
        // A conv at level l (resolution 1 / 2^(l+1) of the output per axis) costs
        // 2 k^2 cin cout per position and has 4^-(l+1) positions per output pixel.
        let per = |l: usize| 0.25f64.powi(l as i32 + 1);
        let conv = |cin: usize, cout: usize| 2.0 * 9.0 * cin as f64 * cout as f64;
        f += conv(2 * self.channels, self.widths[0]) * per(0);
        f += conv(self.widths[0], self.channels) * per(0);
        for l in 0..self.widths.len() {
            let c = self.widths[l];
            let blocks = self.blocks[l] + usize::from(l + 1 < self.widths.len());
            f += blocks as f64 * 2.0 * conv(c, c) * per(l);
            if l + 1 < self.widths.len() {
                f += conv(c, self.widths[l + 1]) * per(l + 1); // stride-2 down
                f += conv(self.widths[l + 1], 4 * c) * per(l + 1); // sub-pixel up
            }
        }
        f
    }
}

#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    film: Linear<B>,
}

impl<B: Backend> ResBlock<B> {
    fn forward(&self, x: Tensor<B, 4>, c: &Tensor<B, 2>, ad: &mut Adapt<B>) -> Tensor<B, 4> {
        let [n, ch, _, _] = x.dims();
        let h = ad.conv(&self.conv1, silu(x.clone()));
        let ss = ad.linear(&self.film, c.clone()).reshape([n, 2 * ch, 1, 1]);
        let scale = ss.clone().narrow(1, 0, ch);
        let shift = ss.narrow(1, ch, ch);
        let h = h.clone() + h * scale + shift;
        x + ad.conv(&self.conv2, silu(h))
    }
}

#[derive(Module, Debug)]
pub struct Level<B: Backend> {
    blocks: Vec<ResBlock<B>>,
    down: Option<Conv2d<B>>,
}

#[derive(Module, Debug)]
pub struct UpLevel<B: Backend> {
    up: Conv2d<B>,
    block: ResBlock<B>,
}

#[derive(Module, Debug)]
pub struct UNet<B: Backend> {
    cond: CondEmbed<B>,
    conv_in: Conv2d<B>,
    down: Vec<Level<B>>,
    up: Vec<UpLevel<B>>,
    conv_out: Conv2d<B>,
}

impl<B: Backend> UNet<B> {
    /// The velocity v(x, s, t | x0): x and x0 are [n, 12, h, w] with h, w multiples of `align()`.
    pub fn velocity(&self, x: Tensor<B, 4>, x0: Tensor<B, 4>, c: &Cond<B>) -> Tensor<B, 4> {
        self.velocity_lora(x, x0, c, None)
    }

    /// [`Self::velocity`] with LoRA adapters (lora.rs) at `scale` on every convolution and
    /// conditioning linear.
    pub fn velocity_lora(
        &self,
        x: Tensor<B, 4>,
        x0: Tensor<B, 4>,
        c: &Cond<B>,
        lora: Option<(&UNetLora<B>, f32)>,
    ) -> Tensor<B, 4> {
        let ad = &mut Adapt::new(lora);
        let emb = self.cond.forward_with(c, ad);
        let mut h = ad.conv(&self.conv_in, Tensor::cat(vec![x, x0], 1));
        let mut skips = Vec::new();
        for level in &self.down {
            for b in &level.blocks {
                h = b.forward(h, &emb, ad);
            }
            if let Some(d) = &level.down {
                skips.push(h.clone());
                h = ad.conv(d, h);
            }
        }
        for (l, up) in self.up.iter().enumerate().rev() {
            h = shuffle(ad.conv(&up.up, h), 2) + skips[l].clone();
            h = up.block.forward(h, &emb, ad);
        }
        let out = ad.conv(&self.conv_out, silu(h));
        ad.finish();
        out
    }

    /// The layers LoRA adapts, each list in the order [`Self::velocity_lora`] uses them.
    pub(crate) fn adapted_layers(&self) -> (Vec<&Conv2d<B>>, Vec<&Linear<B>>) {
        let mut convs = vec![&self.conv_in];
        let mut linears: Vec<&Linear<B>> = self.cond.linears().to_vec();
        for level in &self.down {
            for b in &level.blocks {
                convs.extend([&b.conv1, &b.conv2]);
                linears.push(&b.film);
            }
            if let Some(d) = &level.down {
                convs.push(d);
            }
        }
        for up in self.up.iter().rev() {
            convs.extend([&up.up, &up.block.conv1, &up.block.conv2]);
            linears.push(&up.block.film);
        }
        convs.push(&self.conv_out);
        (convs, linears)
    }

    /// Indices, in [`Self::adapted_layers`] order, of the convolutions whose output is
    /// pixel-shuffled (each up-sampling conv and the output conv): each writes the 2 x 2 phases of
    /// a finer grid on its own.
    pub fn shuffle_fed(&self) -> Vec<usize> {
        let mut i = 1; // conv_in
        for level in &self.down {
            i += 2 * level.blocks.len() + usize::from(level.down.is_some());
        }
        let mut out = Vec::new();
        for _ in &self.up {
            out.push(i);
            i += 3;
        }
        out.push(i);
        out
    }

    /// Deepening (Net2Net, 1511.05641 §3.2): identity blocks appended to each down level (before
    /// its stride-2 convolution) up to `cfg`'s block count, so the deeper network computes
    /// exactly what this one does and training continues from where it stands.
    pub fn deepen(mut self, cfg: &UNetConfig, device: &B::Device) -> Self {
        for ((level, &n), &width) in self.down.iter_mut().zip(&cfg.blocks).zip(&cfg.widths) {
            while level.blocks.len() < n {
                level.blocks.push(cfg.block(width, true, device));
            }
        }
        self
    }

    /// `self` deepened to the shape of `like` (same widths, at least as many blocks per level)
    /// with `like`'s own extra blocks, their second convolution zeroed: each passes its input
    /// through, as the identity blocks that `like` grew from did, so the function is unchanged;
    /// blending towards `like` (network interpolation) then phases the new blocks in.
    pub fn deepen_like(mut self, like: &UNet<B>) -> Self {
        for (level, other) in self.down.iter_mut().zip(&like.down) {
            while level.blocks.len() < other.blocks.len() {
                let mut b = other.blocks[level.blocks.len()].clone();
                b.conv2.weight = b.conv2.weight.map(|t| t.zeros_like());
                b.conv2.bias = b.conv2.bias.map(|p| p.map(|t| t.zeros_like()));
                level.blocks.push(b);
            }
        }
        self
    }

    /// Tests: replace the zero-initialised output layer with seeded noise of this std, so the
    /// network is no longer the identity.
    #[cfg(test)]
    pub(crate) fn perturb_output(&mut self, std: f32, seed: u64, device: &B::Device) {
        use rand::SeedableRng;
        let w = self.conv_out.weight.val();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let noise = crate::bridge::noise::<B, 4>(w.dims(), &mut rng, device) * std;
        self.conv_out.weight =
            burn::module::Param::initialized(self.conv_out.weight.id, noise.require_grad());
    }

    /// Tests: the id of the output layer's weight.
    #[cfg(test)]
    pub(crate) fn output_weight_id(&self) -> burn::module::ParamId {
        self.conv_out.weight.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objectives::FlowNet;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    #[test]
    fn shapes_and_identity_at_init() {
        let dev = Default::default();
        let cfg = UNetConfig::tiny();
        let net = cfg.init::<B>(&dev);
        let x = Tensor::<B, 4>::random([3, 12, 8, 12], Distribution::Normal(0.0, 1.0), &dev);
        let x0 = Tensor::<B, 4>::random([3, 12, 8, 12], Distribution::Normal(0.0, 1.0), &dev);
        let c = Cond::uniform(3, 0.0, 1.0, &dev);
        let v = net.velocity(x.clone(), x0.clone(), &c);
        assert_eq!(v.dims(), [3, 12, 8, 12]);
        // Zero-initialised output: v = 0 and X_{0,1} is the identity.
        assert_eq!(v.abs().max().into_scalar(), 0.0);
        let y = net.flow_map(x.clone(), x0, &c);
        assert_eq!(
            y.to_data().to_vec::<f32>().unwrap(),
            x.to_data().to_vec::<f32>().unwrap()
        );
    }

    /// A deepened network computes exactly what the trained one does (the new blocks add a zero
    /// residual), has the extra blocks' parameters, and the new blocks learn: their zeroed
    /// convolution gets a gradient.
    #[test]
    fn deepening_keeps_the_function() {
        use burn::backend::Autodiff;
        type AD = Autodiff<B>;
        let dev = Default::default();
        let small = UNetConfig::tiny();
        let deep = UNetConfig::new(small.widths.clone(), vec![2, 1], small.cond.clone());
        assert_eq!(deep.extra_blocks(&small), Some(vec![1, 0]));
        assert_eq!(
            small.extra_blocks(&deep),
            None,
            "fewer blocks is not a deepening"
        );
        let wider = UNetConfig::new(vec![8, 24], vec![2, 1], small.cond.clone());
        assert_eq!(wider.extra_blocks(&small), None);
        let mut net = small.init::<AD>(&dev);
        net.perturb_output(0.1, 3, &dev);
        let n_small = net.num_params();
        let x = Tensor::<AD, 4>::random([2, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let x0 = Tensor::<AD, 4>::random([2, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let c = Cond::uniform(2, 0.0, 1.0, &dev);
        let before = net.velocity(x.clone(), x0.clone(), &c).into_data();
        let net = net.deepen(&deep, &dev);
        // One block of width 8: two 3 x 3 convs 8 -> 8 with bias, FiLM 16 -> 16 with bias.
        assert_eq!(
            net.num_params() - n_small,
            2 * (8 * 8 * 9 + 8) + 16 * 16 + 16
        );
        assert_eq!(net.down[0].blocks.len(), 2);
        let v = net.velocity(x, x0, &c);
        assert_eq!(v.clone().into_data(), before);
        let grads = v.powi_scalar(2).sum().backward();
        let g = net.down[0].blocks[1].conv2.weight.grad(&grads).unwrap();
        assert!(g.abs().max().into_scalar() > 0.0);
    }

    #[test]
    fn conditioning_changes_the_output() {
        let dev = Default::default();
        let cfg = UNetConfig::tiny();
        // Give the output layer weights so the conditioning is visible.
        let net = cfg.init::<B>(&dev);
        let net = UNet {
            conv_out: Conv2dConfig::new([8, 12], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&dev),
            cond: CondConfig::new().with_dim(16).with_octaves(3).init(&dev),
            down: net
                .down
                .into_iter()
                .map(|l| Level {
                    blocks: l
                        .blocks
                        .into_iter()
                        .map(|b| ResBlock {
                            film: LinearConfig::new(16, b.film.weight.dims()[1]).init(&dev),
                            ..b
                        })
                        .collect(),
                    down: l.down,
                })
                .collect(),
            ..net
        };
        let x = Tensor::<B, 4>::random([1, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let v1 = net.velocity(x.clone(), x.clone(), &Cond::uniform(1, 0.0, 1.0, &dev));
        let v2 = net.velocity(x.clone(), x.clone(), &Cond::uniform(1, 0.5, 1.0, &dev));
        let v3 = net.velocity(
            x.clone(),
            x.clone(),
            &Cond::per_sample(&[0.0], &[1.0], 2.0, 1, &dev),
        );
        let diff =
            |a: &Tensor<B, 4>, b: &Tensor<B, 4>| (a.clone() - b.clone()).abs().max().into_scalar();
        assert!(diff(&v1, &v2) > 1e-4, "s must matter");
        assert!(diff(&v1, &v3) > 1e-4, "w and prompt must matter");
    }

    #[test]
    fn flops_by_hand_for_tiny() {
        // tiny: widths [8, 16], blocks [1, 1], 12 channels.
        let c = |i: f64, o: f64| 18.0 * i * o;
        let expect = (c(24.0, 8.0) + c(8.0, 12.0)) / 4.0
            + 2.0 * 2.0 * c(8.0, 8.0) / 4.0
            + (c(8.0, 16.0) + c(16.0, 32.0)) / 16.0
            + 2.0 * c(16.0, 16.0) / 16.0;
        assert!((UNetConfig::tiny().flops_per_pixel() - expect).abs() < 1e-9);
    }
}
