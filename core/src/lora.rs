//! LoRA adapters for the adversarial fine-tuning (docs/algorithm.md §5; Hu et al. 2106.09685):
//! a frozen layer W plus a low-rank update, y = W x + scale * up(down(x)), with `up`
//! zero-initialised so a fresh adapter changes nothing. For a k x k convolution `down` is a k x k
//! convolution C_in -> r with the base's stride and padding and `up` a 1 x 1 convolution
//! r -> C_out; for a linear layer both are linears. `scale` is an inference knob (0 to 3).
//!
//! [`UNetLora`] holds one adapter per convolution and per conditioning linear of a [`UNet`], in
//! the order the forward pass uses them, and is stored as its own small file beside the base
//! weights (weights.rs).

use crate::unet::UNet;
use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{backend::Backend, Tensor};

#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r of every adapter.
    #[config(default = 8)]
    pub rank: usize,
}

impl LoraConfig {
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }
}

/// Largest LoRA scale accepted at inference.
pub const MAX_SCALE: f32 = 3.0;

/// A LoRA scale is a finite number in [0, MAX_SCALE] (the one check for every front end).
pub fn check_scale(scale: f32) -> crate::Result<()> {
    if scale.is_finite() && (0.0..=MAX_SCALE).contains(&scale) {
        Ok(())
    } else {
        Err(crate::Error::BadParam(format!(
            "LoRA scale must be in [0, {MAX_SCALE}], got {scale}"
        )))
    }
}

/// A base network and its adapters, if it has any: what `upscale`, `eval`, the server and the
/// browser load; [`Adapted::at`] picks the LoRA scale of one run.
#[derive(Debug)]
pub struct Adapted<B: Backend> {
    pub net: UNet<B>,
    pub lora: Option<UNetLora<B>>,
}

impl<B: Backend> Adapted<B> {
    pub fn plain(net: UNet<B>) -> Self {
        Self { net, lora: None }
    }

    /// The network at LoRA scale `scale` (0: the base network).
    pub fn at(&self, scale: f32) -> crate::Result<WithLora<'_, B>> {
        check_scale(scale)?;
        if scale != 0.0 && self.lora.is_none() {
            return Err(crate::Error::BadParam(format!(
                "LoRA scale {scale}: these weights have no LoRA adapter (lora.json + lora.bin)"
            )));
        }
        Ok(WithLora {
            net: &self.net,
            lora: self.lora.as_ref().filter(|_| scale != 0.0),
            scale,
        })
    }
}

/// A network at one LoRA scale.
#[derive(Debug)]
pub struct WithLora<'a, B: Backend> {
    pub net: &'a UNet<B>,
    pub lora: Option<&'a UNetLora<B>>,
    pub scale: f32,
}

impl<B: Backend> crate::objectives::FlowNet<B> for WithLora<'_, B> {
    fn velocity(
        &self,
        x: Tensor<B, 4>,
        x0: Tensor<B, 4>,
        c: &crate::cond::Cond<B>,
    ) -> Tensor<B, 4> {
        self.net
            .velocity_lora(x, x0, c, self.lora.map(|l| (l, self.scale)))
    }
}

/// down: k x k conv C_in -> r (the base's stride and padding); up: 1 x 1 conv r -> C_out.
#[derive(Module, Debug)]
pub struct ConvLora<B: Backend> {
    down: Conv2d<B>,
    up: Conv2d<B>,
}

#[derive(Module, Debug)]
pub struct LinearLora<B: Backend> {
    down: Linear<B>,
    up: Linear<B>,
}

impl<B: Backend> ConvLora<B> {
    fn for_conv(base: &Conv2d<B>, rank: usize, device: &B::Device) -> Self {
        let [cout, cin, _, _] = base.weight.dims();
        let down = Conv2dConfig::new([cin, rank], base.kernel_size)
            .with_stride(base.stride)
            .with_dilation(base.dilation)
            .with_padding(base.padding.clone())
            .with_bias(false)
            .init(device);
        let up = Conv2dConfig::new([rank, cout], [1, 1])
            .with_bias(false)
            .with_initializer(Initializer::Zeros)
            .init(device);
        Self { down, up }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.up.forward(self.down.forward(x))
    }
}

impl<B: Backend> LinearLora<B> {
    fn for_linear(base: &Linear<B>, rank: usize, device: &B::Device) -> Self {
        let [i, o] = base.weight.dims();
        Self {
            down: LinearConfig::new(i, rank).with_bias(false).init(device),
            up: LinearConfig::new(rank, o)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.up.forward(self.down.forward(x))
    }
}

/// The adapters of one UNet, in forward order.
#[derive(Module, Debug)]
pub struct UNetLora<B: Backend> {
    pub convs: Vec<ConvLora<B>>,
    pub linears: Vec<LinearLora<B>>,
}

impl LoraConfig {
    /// Fresh adapters (zero update) for every convolution and conditioning linear of `net`.
    pub fn init<B: Backend>(&self, net: &UNet<B>, device: &B::Device) -> UNetLora<B> {
        let (convs, linears) = net.adapted_layers();
        let lora = UNetLora {
            convs: convs
                .into_iter()
                .map(|c| ConvLora::for_conv(c, self.rank, device))
                .collect(),
            linears: linears
                .into_iter()
                .map(|l| LinearLora::for_linear(l, self.rank, device))
                .collect(),
        };
        crate::weights::materialize(lora)
    }
}

impl<B: Backend> UNetLora<B> {
    /// Takes the gradient away from the conv adapters at `idx` (e.g. [`UNet::shuffle_fed`]):
    /// fresh, their zero up-projection keeps them exactly zero through training, and the file
    /// format stays one adapter per convolution.
    pub fn freeze_convs(mut self, idx: &[usize]) -> Self {
        self.convs = self
            .convs
            .into_iter()
            .enumerate()
            .map(|(i, a)| if idx.contains(&i) { a.no_grad() } else { a })
            .collect();
        self
    }

    /// Tests: every up-projection set to seeded noise, so the adapters act.
    #[cfg(test)]
    pub(crate) fn randomize(&mut self, std: f32, seed: u64, device: &B::Device) {
        use burn::module::Param;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for a in self.convs.iter_mut() {
            let d = a.up.weight.dims();
            a.up.weight = Param::from_tensor(crate::bridge::noise(d, &mut rng, device) * std);
        }
        for a in self.linears.iter_mut() {
            let d = a.up.weight.dims();
            a.up.weight = Param::from_tensor(crate::bridge::noise(d, &mut rng, device) * std);
        }
    }
}

/// Adapters applied during one forward pass: hands them out in forward order.
pub struct Adapt<'a, B: Backend> {
    lora: Option<(&'a UNetLora<B>, f32)>,
    conv: usize,
    linear: usize,
}

impl<'a, B: Backend> Adapt<'a, B> {
    pub fn new(lora: Option<(&'a UNetLora<B>, f32)>) -> Self {
        Self {
            lora,
            conv: 0,
            linear: 0,
        }
    }

    /// Counts one use of an adapter list: the adapters and the index of this one, with the
    /// scale, when its update applies (an adapter set at a non-zero scale).
    fn next(
        lora: Option<(&'a UNetLora<B>, f32)>,
        counter: &mut usize,
    ) -> Option<(&'a UNetLora<B>, usize, f32)> {
        let (l, s) = lora?;
        *counter += 1;
        (s != 0.0).then_some((l, *counter - 1, s))
    }

    /// `base(x)`, plus the next conv adapter's scaled update.
    pub fn conv(&mut self, base: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = base.forward(x.clone());
        match Self::next(self.lora, &mut self.conv) {
            Some((l, i, s)) => y + l.convs[i].forward(x) * s,
            None => y,
        }
    }

    /// `base(x)`, plus the next linear adapter's scaled update.
    pub fn linear(&mut self, base: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = base.forward(x.clone());
        match Self::next(self.lora, &mut self.linear) {
            Some((l, i, s)) => y + l.linears[i].forward(x) * s,
            None => y,
        }
    }

    /// Every adapter was used exactly once (the adapters fit this network).
    pub fn finish(&self) {
        if let Some((l, _)) = self.lora {
            debug_assert_eq!(self.conv, l.convs.len());
            debug_assert_eq!(self.linear, l.linears.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cond::Cond;
    use crate::unet::UNetConfig;
    use burn::backend::Flex;
    use burn::module::Param;
    use burn::tensor::{Distribution, TensorData};

    type B = Flex;

    fn max_abs(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// A random tiny UNet (output layer not zero) and a random input.
    fn setup() -> (UNet<B>, Tensor<B, 4>, Tensor<B, 4>, Cond<B>) {
        let dev = Default::default();
        let mut net = UNetConfig::tiny().init::<B>(&dev);
        net.perturb_output(0.1, 1, &dev);
        let x = Tensor::random([2, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let x0 = Tensor::random([2, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        (net, x, x0, Cond::uniform(2, 0.0, 1.0, &dev))
    }

    #[test]
    fn one_adapter_per_layer_and_fresh_adapters_change_nothing() {
        let (net, x, x0, c) = setup();
        let lora = LoraConfig::new()
            .with_rank(4)
            .init(&net, &Default::default());
        // tiny: conv_in, 2 levels x 1 block x 2 convs, 1 down, 1 up level (up + 2 convs),
        // conv_out = 10 convs; linears: fc1, fc2, 2 down films, 1 up film = 5.
        assert_eq!((lora.convs.len(), lora.linears.len()), (10, 5));
        let base = net.velocity(x.clone(), x0.clone(), &c);
        for s in [0.0, 1.0, 3.0] {
            let v = net.velocity_lora(x.clone(), x0.clone(), &c, Some((&lora, s)));
            assert_eq!(max_abs(v, base.clone()), 0.0, "scale {s}");
        }
    }

    #[test]
    fn trained_adapters_act_by_their_scale() {
        let (net, x, x0, c) = setup();
        let dev = Default::default();
        let mut lora = LoraConfig::new().with_rank(4).init(&net, &dev);
        for a in lora.convs.iter_mut() {
            let d = a.up.weight.dims();
            a.up.weight =
                Param::from_tensor(Tensor::random(d, Distribution::Normal(0.0, 0.05), &dev));
        }
        let base = net.velocity(x.clone(), x0.clone(), &c);
        let at = |s: f32| net.velocity_lora(x.clone(), x0.clone(), &c, Some((&lora, s)));
        assert_eq!(max_abs(at(0.0), base.clone()), 0.0);
        let (d1, d2) = (
            max_abs(at(1.0), base.clone()),
            max_abs(at(2.0), base.clone()),
        );
        assert!(d1 > 1e-4, "{d1}");
        assert!(d2 > d1, "{d2} vs {d1}");
    }

    /// Frozen at `shuffle_fed`, the up-sampling conv (index 6 in tiny) and the output conv (9)
    /// get no gradient, every other adapter does; the by-hand indices match `shuffle_fed`.
    #[test]
    fn frozen_shuffle_convs_get_no_gradient() {
        type AD = burn::backend::Autodiff<B>;
        let dev = Default::default();
        let mut net = UNetConfig::tiny().init::<AD>(&dev);
        net.perturb_output(0.1, 1, &dev);
        assert_eq!(net.shuffle_fed(), vec![6, 9]);
        let lora = LoraConfig::new()
            .with_rank(2)
            .init(&net, &dev)
            .freeze_convs(&net.shuffle_fed());
        let x = Tensor::<AD, 4>::random([1, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let v = net.velocity_lora(
            x.clone(),
            x,
            &Cond::uniform(1, 0.0, 1.0, &dev),
            Some((&lora, 1.0)),
        );
        let g = burn::optim::GradientsParams::from_grads(v.powi_scalar(2).mean().backward(), &lora);
        for (i, a) in lora.convs.iter().enumerate() {
            let has = g.get::<B, 4>(a.up.weight.id).is_some();
            assert_eq!(has, ![6, 9].contains(&i), "conv adapter {i}");
        }
    }

    /// y = W x + s up(down(x)) by hand on a 1 x 1 convolution, 2 -> 1 channels, rank 1.
    #[test]
    fn conv_adapter_by_hand() {
        let dev = Default::default();
        let mut base = Conv2dConfig::new([2, 1], [1, 1])
            .with_bias(false)
            .init::<B>(&dev);
        base.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32, 2.0], [1, 2, 1, 1]),
            &dev,
        ));
        let mut a = ConvLora::for_conv(&base, 1, &dev);
        a.down.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.5f32, -1.0], [1, 2, 1, 1]),
            &dev,
        ));
        a.up.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![3.0f32], [1, 1, 1, 1]),
            &dev,
        ));
        let lora = UNetLora {
            convs: vec![a],
            linears: vec![],
        };
        let x = Tensor::<B, 4>::from_data(TensorData::new(vec![4.0f32, 1.0], [1, 2, 1, 1]), &dev);
        let mut ad = Adapt::new(Some((&lora, 2.0)));
        let y: f32 = ad.conv(&base, x).into_scalar();
        // W x = 4 + 2 = 6; down = 2 - 1 = 1; up = 3; 6 + 2 * 3 = 12.
        assert_eq!(y, 12.0);
    }
}
