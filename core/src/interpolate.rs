//! Network interpolation (ESRGAN 1809.00219 §3.4): theta(a) = (1 - a) theta_base + a theta_gan,
//! the dial from the faithful weights (a = 0) to their adversarially trained descendant (a = 1).
//! Interpolating weights rather than outputs keeps one network call per tile, and since both
//! ends share their training history, the path between them is free of the artifacts of either.
//! A descendant with more residual blocks (grown from the base by Net2Net identity blocks) is
//! met by deepening the base with the descendant's blocks whose last convolution is zeroed
//! (`UNet::deepen_like`): a = 0 is then exactly the base.

use crate::error::{Error, Result};
use crate::unet::UNet;
use crate::weights::ModelConfig;
use burn::tensor::backend::Backend;

/// The network at `alpha` between `base` and `gan`, and its config (the descendant's).
pub fn interpolate<B: Backend>(
    base: (UNet<B>, &ModelConfig),
    gan: (&UNet<B>, &ModelConfig),
    alpha: f32,
) -> Result<UNet<B>> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::BadParam(format!(
            "alpha {alpha} is outside 0..1 (0: the base, 1: the adversarial weights)"
        )));
    }
    let (b, g) = (base.1, gan.1);
    if g.unet.extra_blocks(&b.unet).is_none()
        || serde_json::to_value(&b.bridge).ok() != serde_json::to_value(&g.bridge).ok()
        || b.w_max() != g.w_max()
    {
        return Err(Error::BadWeights(format!(
            "these weights do not share a network: blocks {:?} widths {:?} and blocks {:?} widths \
             {:?} (the second must be the first, or the first deepened)",
            b.unet.blocks, b.unet.widths, g.unet.blocks, g.unet.widths
        )));
    }
    let deep = base.0.deepen_like(gan.0);
    // ema::update(x, y, d) = d x + (1 - d) y.
    Ok(crate::ema::update(deep, gan.0, 1.0 - alpha))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::BridgeConfig;
    use crate::cond::Cond;
    use crate::unet::UNetConfig;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    type B = Flex;

    /// a = 0 is the base and a = 1 the descendant, bit for bit, also when the descendant has
    /// more blocks; between them the output moves; other networks and alphas are refused.
    #[test]
    fn ends_are_exact_and_mismatches_are_refused() {
        let dev = Default::default();
        let small = ModelConfig::new(UNetConfig::tiny(), BridgeConfig::new());
        let mut deep = small.clone();
        deep.unet.blocks = vec![2, 2];
        // Materialised: a lazy parameter cloned before its first use would draw twice.
        let mut base = crate::weights::materialize(small.unet.init::<B>(&dev));
        base.perturb_output(0.1, 1, &dev);
        // A descendant: trained weights everywhere, the new blocks' included.
        let mut gan = crate::weights::materialize(deep.unet.init::<B>(&dev));
        gan.perturb_output(0.1, 2, &dev);
        let x = Tensor::<B, 4>::random([1, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let x0 = Tensor::<B, 4>::random([1, 12, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let c = Cond::uniform(1, 0.0, 1.0, &dev);
        let v = |n: &UNet<B>| n.velocity(x.clone(), x0.clone(), &c).into_data();
        let at = |a: f32| interpolate((base.clone(), &small), (&gan, &deep), a).unwrap();
        assert_eq!(v(&at(0.0)), v(&base));
        assert_eq!(v(&at(1.0)), v(&gan));
        let mid = v(&at(0.5)).to_vec::<f32>().unwrap();
        let ends = (
            v(&base).to_vec::<f32>().unwrap(),
            v(&gan).to_vec::<f32>().unwrap(),
        );
        let gap = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max)
        };
        assert!(gap(&mid, &ends.0) > 1e-4 && gap(&mid, &ends.1) > 1e-4);
        // The same network at both ends works too (0.7 w + 0.3 w = w up to rounding).
        let same = v(&interpolate((base.clone(), &small), (&base, &small), 0.3).unwrap());
        assert!(gap(&same.to_vec::<f32>().unwrap(), &ends.0) < 1e-5);
        let e = interpolate((gan.clone(), &deep), (&base, &small), 0.5).unwrap_err();
        assert!(matches!(e, Error::BadWeights(_)), "{e}");
        let mut wide = small.clone();
        wide.unet.widths = vec![8, 24];
        let other = wide.unet.init::<B>(&dev);
        let e = interpolate((base.clone(), &small), (&other, &wide), 0.5).unwrap_err();
        assert!(e.to_string().contains("do not share a network"), "{e}");
        let e = interpolate((base.clone(), &small), (&gan, &deep), 1.5).unwrap_err();
        assert!(e.to_string().contains("outside 0..1"), "{e}");
    }
}
