//! Training data: the HR images of the `--data` folders, and the validation images: `--val DIR`,
//! or `--holdout N` of the `--data` images kept out of training.

use crate::imageio;
use anyhow::{bail, Result};
use flowmapsr_core::Image;
use std::path::{Path, PathBuf};

/// Validation images as `eval` reads them: (stem, decoded).
pub type ValSet = Vec<(String, imageio::Decoded)>;

/// The training images (8-bit RGB, at least `min_side` a side) and the validation set: the
/// folder `val`, or `holdout` images of `dirs` spread evenly over their sorted list (so every
/// folder gives its share), which are then not trained on.
pub fn load_split(
    dirs: &[PathBuf],
    min_side: usize,
    val: Option<&Path>,
    holdout: usize,
) -> Result<(Vec<Image>, Option<ValSet>)> {
    let mut files = crate::upscale::collect_inputs(dirs)?;
    let val = match (val, holdout) {
        (Some(_), h) if h > 0 => {
            bail!("--val and --holdout both name the validation images: pick one")
        }
        (Some(dir), _) => Some(crate::eval::load_folder(dir)?),
        (None, 0) => None,
        (None, h) => {
            if h >= files.len() {
                bail!(
                    "--holdout {h} leaves nothing to train on ({} images)",
                    files.len()
                );
            }
            let picked: Vec<usize> = (0..h).map(|i| i * files.len() / h).collect();
            let mut kept = Vec::new();
            let mut held = Vec::new();
            for (i, f) in files.into_iter().enumerate() {
                if picked.contains(&i) {
                    held.push(f);
                } else {
                    kept.push(f);
                }
            }
            files = kept;
            Some(
                held.iter()
                    .map(|f| {
                        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
                        Ok((stem.to_string(), imageio::read(f, u64::MAX)?))
                    })
                    .collect::<Result<_>>()?,
            )
        }
    };
    let mut out = Vec::new();
    for f in files {
        let d = imageio::read(&f, u64::MAX)?;
        if d.rgb.width >= min_side && d.rgb.height >= min_side {
            out.push(d.rgb.quantized(255.0));
        }
    }
    if out.is_empty() {
        bail!("no training images of at least {min_side}x{min_side} pixels");
    }
    Ok((out, val))
}

#[cfg(test)]
mod tests {
    use super::load_split;
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

    /// --holdout takes images evenly over the sorted list out of training; with --val it is an
    /// error, as is holding out everything.
    #[test]
    fn holdout_keeps_validation_images_out_of_training() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            image::RgbImage::from_pixel(8, 8, image::Rgb([i * 20, 0, 0]))
                .save(dir.path().join(format!("im{i}.png")))
                .unwrap();
        }
        let dirs = [dir.path().to_path_buf()];
        let (train, val) = load_split(&dirs, 8, None, 3).unwrap();
        let val = val.unwrap();
        let names: Vec<&str> = val.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["im0", "im3", "im6"]);
        assert_eq!(train.len(), 7);
        let reds: Vec<f32> = train.iter().map(|t| t.plane(0)[0]).collect();
        for (_, v) in &val {
            assert!(!reds.contains(&v.rgb.quantized(255.0).plane(0)[0]));
        }
        let (train, val) = load_split(&dirs, 8, None, 0).unwrap();
        assert_eq!((train.len(), val.is_none()), (10, true));
        assert!(load_split(&dirs, 8, Some(dir.path()), 2).is_err());
        assert!(load_split(&dirs, 8, None, 10).is_err());
    }
}
