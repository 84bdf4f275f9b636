//! The pixel-unshuffle space (docs/algorithm.md §1): [n, c, h, w] <-> [n, c r^2, h / r, w / r], a free,
//! exactly invertible "latent" in which the network runs at half resolution.

use burn::tensor::{backend::Backend, Tensor};

/// Space-to-depth by `r` (the inverse of [`shuffle`]).
pub fn unshuffle<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / r, r, w / r, r])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([n, c * r * r, h / r, w / r])
}

/// Depth-to-space by `r`.
pub fn shuffle<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let c = c / (r * r);
    x.reshape([n, c, r, r, h, w])
        .permute([0, 1, 4, 2, 5, 3])
        .reshape([n, c, h * r, w * r])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn unshuffle_by_hand_and_round_trip() {
        let dev = Default::default();
        // One 4x4 channel holding 0..16: unshuffle by 2 gathers each 2x2 phase into a channel.
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new((0..16).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 4, 4]),
            &dev,
        );
        let u = unshuffle(x.clone(), 2);
        assert_eq!(u.dims(), [1, 4, 2, 2]);
        let v = u.to_data().to_vec::<f32>().unwrap();
        assert_eq!(&v[..4], &[0.0, 2.0, 8.0, 10.0]); // phase (0, 0)
        assert_eq!(&v[4..8], &[1.0, 3.0, 9.0, 11.0]); // phase (0, 1)
        assert_eq!(&v[8..12], &[4.0, 6.0, 12.0, 14.0]); // phase (1, 0)
        let back = shuffle(u, 2);
        assert_eq!(
            back.to_data().to_vec::<f32>().unwrap(),
            x.to_data().to_vec::<f32>().unwrap()
        );
    }
}
