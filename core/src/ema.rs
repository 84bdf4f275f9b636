//! Exponential moving average of parameters: theta_ema <- decay theta_ema + (1 - decay) theta.
//! The EMA model is the self-distillation teacher and the one that is validated and shipped.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};

struct Collect<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().flatten(0, D - 1));
    }
}

struct Blend<B: Backend> {
    src: std::vec::IntoIter<Tensor<B, 1>>,
    decay: f32,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let src = self
            .src
            .next()
            .expect("EMA and model have the same parameters");
        let decay = self.decay;
        param.map(|e| {
            let shape = e.shape();
            e * decay + src.reshape(shape) * (1.0 - decay)
        })
    }
}

/// One EMA step of `ema` towards `model` (same architecture, same backend).
pub fn update<B: Backend, M: Module<B>>(ema: M, model: &M, decay: f32) -> M {
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    ema.map(&mut Blend {
        src: c.0.into_iter(),
        decay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn blends_by_hand() {
        let dev = Default::default();
        let a: Linear<Flex> = LinearConfig::new(2, 2)
            .with_initializer(burn::module::Initializer::Zeros)
            .init(&dev);
        let b: Linear<Flex> = LinearConfig::new(2, 2)
            .with_initializer(burn::module::Initializer::Ones)
            .init(&dev);
        let e = update(a, &b, 0.75);
        // 0.75 * 0 + 0.25 * 1
        assert_eq!(
            e.weight.val().to_data().to_vec::<f32>().unwrap(),
            vec![0.25; 4]
        );
        let e = update(e, &b, 0.5);
        assert_eq!(
            e.bias.unwrap().val().to_data().to_vec::<f32>().unwrap(),
            vec![0.625; 2]
        );
    }
}
