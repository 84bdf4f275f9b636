//! Training data: the HR images of the `--data` folders.

use crate::imageio;
use anyhow::{bail, Result};
use flowmapsr_core::Image;
use std::path::PathBuf;

/// HR training images as 8-bit RGB.
pub fn load_images(dirs: &[PathBuf], min_side: usize) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    for f in crate::upscale::collect_inputs(dirs)? {
        let d = imageio::read(&f, u64::MAX)?;
        if d.rgb.width >= min_side && d.rgb.height >= min_side {
            out.push(d.rgb.quantized(255.0));
        }
    }
    if out.is_empty() {
        bail!("no training images of at least {min_side}x{min_side} pixels");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use flowmapsr_core::batch::make_batch;
    use flowmapsr_core::Image;

    /// Each row depends on (seed, step, row) alone: the rows built in parallel, a shard of them
    /// (data-parallel training) and a second call all give the same numbers.
    #[test]
    fn batch_rows_are_independent_and_reproducible() {
        type B = burn::backend::Autodiff<burn::backend::Flex>;
        let mut cfg = super::super::config::release_stage("fidelity");
        cfg.crop = 32;
        // Two images of different content, so the image draw matters too.
        let img = |k: usize| {
            let data = (0..48 * 40 * 3)
                .map(|i| ((i * (7 + k)) % 251) as f32 / 255.0)
                .collect();
            Image::new(48, 40, 3, data).unwrap()
        };
        let images = vec![img(0), img(1)];
        let dev = Default::default();
        let rows = |r: std::ops::Range<usize>| {
            let b = make_batch::<B>(&images, &cfg.batch_spec(), 7, r, &dev).unwrap();
            (b.x0.into_data(), b.x1.into_data(), b.guide)
        };
        let all = rows(0..4);
        assert_eq!(all.0.shape.to_vec(), vec![4, 12, 16, 16]);
        let again = rows(0..4);
        assert_eq!(all.0, again.0);
        assert_eq!(all.1, again.1);
        assert_eq!(all.2, again.2);
        let (head, tail) = (rows(0..2), rows(2..4));
        let x0 = all.0.to_vec::<f32>().unwrap();
        let x1 = all.1.to_vec::<f32>().unwrap();
        let half = x0.len() / 2;
        assert_eq!(head.0.to_vec::<f32>().unwrap(), x0[..half]);
        assert_eq!(tail.0.to_vec::<f32>().unwrap(), x0[half..]);
        assert_eq!(tail.1.to_vec::<f32>().unwrap(), x1[half..]);
        assert_eq!([head.2, tail.2].concat(), all.2);
        // Rows differ from each other (a constant batch would pass the checks above).
        assert_ne!(x0[..half / 2], x0[half / 2..half]);
        // Only an objective that weights the range part gets the range projectors: per row, the
        // one of that row's scale (its x0 is the bicubic up of its LR, so R x0 R = x0 exactly).
        assert!(make_batch::<B>(&images, &cfg.batch_spec(), 7, 0..4, &dev)
            .unwrap()
            .range
            .is_none());
        cfg.shortcut.anchor_range_weight = Some(0.5);
        let b = make_batch::<B>(&images, &cfg.batch_spec(), 7, 0..4, &dev).unwrap();
        let r = b.range.unwrap();
        assert_eq!(r.dims(), [4, 3, 32, 32]);
        let x0 = flowmapsr_core::space::shuffle(b.x0, 2);
        let back = r.clone().matmul(x0.clone()).matmul(r);
        let err = (back - x0).abs().max().into_scalar();
        assert!(err < 1e-4, "{err}");
    }
}
