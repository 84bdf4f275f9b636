//! Conditioning embedding: Fourier features of s, t - s and the guidance w (docs/algorithm.md §2, §4),
//! plus a learned prompt embedding {positive, negative, null}, mixed by a small MLP.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, FloatDType, Int, Tensor, TensorData};

/// Prompt ids of the guidance embeddings.
pub const PROMPT_POSITIVE: i64 = 0;
pub const PROMPT_NEGATIVE: i64 = 1;
pub const PROMPT_NULL: i64 = 2;

#[derive(Config, Debug)]
pub struct CondConfig {
    /// Width of the conditioning vector.
    #[config(default = 64)]
    pub dim: usize,
    /// Number of octaves of sin/cos features per scalar (frequencies 2^0 .. 2^(n-1)).
    #[config(default = 6)]
    pub octaves: usize,
}

#[derive(Module, Debug)]
pub struct CondEmbed<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    prompt: Embedding<B>,
    octaves: usize,
}

/// Per-sample conditioning inputs: times s <= t, guidance w and prompt id.
#[derive(Clone, Debug)]
pub struct Cond<B: Backend> {
    pub s: Tensor<B, 1>,
    pub t: Tensor<B, 1>,
    pub w: Tensor<B, 1>,
    pub prompt: Tensor<B, 1, Int>,
}

impl<B: Backend> Cond<B> {
    /// The same (s, t) for `n` samples, w = 1, positive prompt.
    pub fn uniform(n: usize, s: f32, t: f32, device: &B::Device) -> Self {
        Self::per_sample(&vec![s; n], &vec![t; n], 1.0, PROMPT_POSITIVE, device)
    }

    pub fn per_sample(s: &[f32], t: &[f32], w: f32, prompt: i64, device: &B::Device) -> Self {
        let n = s.len();
        Self {
            s: Tensor::from_data(TensorData::new(s.to_vec(), [n]), device),
            t: Tensor::from_data(TensorData::new(t.to_vec(), [n]), device),
            w: Tensor::from_data(TensorData::new(vec![w; n], [n]), device),
            prompt: Tensor::from_data(TensorData::new(vec![prompt; n], [n]), device),
        }
    }

    /// Per-row times, guidance scales and prompt ids.
    pub fn rows(s: &[f32], t: &[f32], w: &[f32], prompt: &[i64], device: &B::Device) -> Self {
        let n = s.len();
        assert!(t.len() == n && w.len() == n && prompt.len() == n);
        Self {
            s: Tensor::from_data(TensorData::new(s.to_vec(), [n]), device),
            t: Tensor::from_data(TensorData::new(t.to_vec(), [n]), device),
            w: Tensor::from_data(TensorData::new(w.to_vec(), [n]), device),
            prompt: Tensor::from_data(TensorData::new(prompt.to_vec(), [n]), device),
        }
    }

    /// The same conditioning with its float inputs in `dtype` (mixed precision, precision.rs).
    pub fn cast(self, dtype: FloatDType) -> Self {
        Self {
            s: self.s.cast(dtype),
            t: self.t.cast(dtype),
            w: self.w.cast(dtype),
            prompt: self.prompt,
        }
    }
}

impl CondConfig {
    fn features(&self) -> usize {
        3 * (1 + 2 * self.octaves)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> CondEmbed<B> {
        CondEmbed {
            fc1: LinearConfig::new(self.features(), self.dim).init(device),
            fc2: LinearConfig::new(self.dim, self.dim).init(device),
            prompt: EmbeddingConfig::new(3, self.dim)
                .with_initializer(burn::module::Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            octaves: self.octaves,
        }
    }
}

impl<B: Backend> CondEmbed<B> {
    fn fourier(&self, v: Tensor<B, 1>) -> Tensor<B, 2> {
        let n = v.dims()[0];
        let device = v.device();
        let freqs: Vec<f32> = (0..self.octaves)
            .map(|k| std::f32::consts::PI * 2f32.powi(k as i32))
            .collect();
        let f = Tensor::<B, 2>::from_data(TensorData::new(freqs, [1, self.octaves]), &device)
            .cast(v.dtype());
        let v = v.reshape([n, 1]);
        let a = v.clone().mul(f);
        Tensor::cat(vec![v, a.clone().sin(), a.cos()], 1)
    }

    /// [n, dim] conditioning vectors.
    pub fn forward(&self, c: &Cond<B>) -> Tensor<B, 2> {
        self.forward_with(c, &mut crate::lora::Adapt::new(None))
    }

    /// The linears LoRA adapts, in forward order.
    pub(crate) fn linears(&self) -> [&Linear<B>; 2] {
        [&self.fc1, &self.fc2]
    }

    /// [`Self::forward`] with LoRA adapters on its linears.
    pub(crate) fn forward_with(&self, c: &Cond<B>, ad: &mut crate::lora::Adapt<B>) -> Tensor<B, 2> {
        let d = c.t.clone() - c.s.clone();
        // w in [1, w_max] mapped near [0, 1] so its features vary at the same rate as times.
        let w = (c.w.clone() - 1.0) / 4.0;
        let feats = Tensor::cat(
            vec![self.fourier(c.s.clone()), self.fourier(d), self.fourier(w)],
            1,
        );
        let h = silu(ad.linear(&self.fc1, feats));
        let h = ad.linear(&self.fc2, h);
        let n = c.prompt.dims()[0];
        let p = self
            .prompt
            .forward(c.prompt.clone().reshape([n, 1]))
            .reshape([n, h.dims()[1]]);
        silu(h + p)
    }
}
