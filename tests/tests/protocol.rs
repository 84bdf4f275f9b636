//! Our resampler and metrics against the reference scorer (`../shared/tools/sr_score.py`).
//! tests/fixtures/photos holds two small photographs; the other fixtures were written by that
//! tool from our own synthetic picture:
//!   sr_score.py make-lr HR LR --scale 2|4 ; sr_score.py bicubic HR SR --scale 4
//! and the reference numbers below are `sr_score.y_metrics(sr, hr, 4, gray, extra=True)`.

use flowmapsr_cli::eval::{bicubic_fn, evaluate, load_folder};
use flowmapsr_cli::imageio;
use flowmapsr_core::metrics::score;
use flowmapsr_core::resize::{downscale_lr, imresize};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn rgb(name: &str) -> flowmapsr_core::Image {
    imageio::read(&fixture(name), u64::MAX).unwrap().rgb
}

fn count_diff(a: &flowmapsr_core::Image, b: &flowmapsr_core::Image) -> (usize, u8) {
    let (a, b) = (a.to_interleaved_u8(), b.to_interleaved_u8());
    assert_eq!(a.len(), b.len());
    let n = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    let m = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    (n, m)
}

#[test]
fn matlab_bicubic_matches_the_reference_pixels() {
    let hr = rgb("pattern_hr.png");
    for (scale, name) in [(2, "pattern_lr_x2_ref.png"), (4, "pattern_lr_x4_ref.png")] {
        let ours = downscale_lr(&hr, scale).unwrap();
        let (n, max) = count_diff(&ours, &rgb(name));
        assert!(max <= 1, "x{scale}: max diff {max}");
        assert!(n * 100 <= ours.data.len(), "x{scale}: {n} values differ");
    }
    let lr = rgb("pattern_lr_x4_ref.png");
    let (n, max) = count_diff(
        &imresize(&lr, 4.0, true),
        &rgb("pattern_bicubic_x4_ref.png"),
    );
    assert!(
        max <= 1 && n * 100 <= lr.data.len() * 16,
        "upscale: {n} differ, max {max}"
    );
}

#[test]
fn metrics_match_the_reference_scorer() {
    let hr = rgb("pattern_hr.png");
    let sr = rgb("pattern_bicubic_x4_ref.png");
    for (gray, expect) in [
        (false, [18.186001, 0.462756, 0.189671, 0.011100]),
        (true, [16.864079, 0.455460, 0.193459, 0.011100]),
    ] {
        let s = score(&sr, &hr, 4, gray);
        assert!((s.psnr_y - expect[0]).abs() < 1e-5, "psnr {}", s.psnr_y);
        assert!((s.ssim_y - expect[1]).abs() < 1e-5, "ssim {}", s.ssim_y);
        assert!((s.gmsd - expect[2]).abs() < 1e-5, "gmsd {}", s.gmsd);
        assert!((s.hf_ratio - expect[3]).abs() < 1e-5, "hf {}", s.hf_ratio);
    }
}

/// The eval sets beside the repo (../shared/data/eval), where present: the test sets themselves are
/// not in the repo; the photos of the fixture cover the same checks everywhere.
fn eval_sets() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/eval");
    if root.exists() {
        Some(root)
    } else {
        eprintln!(
            "{} not present: the fixture's photos stand in",
            root.display()
        );
        None
    }
}

/// Bicubic x4 on Set5 and Set14 as `sr_score.py bicubic` + `score` print them (MEAN rows).
#[test]
fn bicubic_baseline_on_set5_and_set14() {
    let Some(root) = eval_sets() else { return };
    for (set, psnr, ssim) in [("Set5", 28.429, 0.8111), ("Set14", 25.994, 0.7029)] {
        let images = load_folder(&root.join(set)).unwrap();
        let r = evaluate(&images, 4, None, bicubic_fn(4)).unwrap();
        assert!((r.psnr_y - psnr).abs() < 0.01, "{set} PSNR {}", r.psnr_y);
        assert!((r.ssim_y - ssim).abs() < 0.0005, "{set} SSIM {}", r.ssim_y);
    }
}

/// Two photographs in no folder of ../shared (crops of scikit-image's `chelsea`, CC0, and
/// `astronaut`, public domain), with the reference scorer's numbers for bicubic x4:
/// `sr_score.py bicubic tests/fixtures/photos OUT --scale 4`, then `sr_score.y_metrics(sr, hr, 4,
/// extra=True)` per image: (PSNR-Y, SSIM-Y, GMSD, HF ratio).
const PHOTOS_BICUBIC: [(&str, [f64; 4]); 2] = [
    ("astronaut", [26.863670, 0.830924, 0.099804, 0.048046]),
    ("cat", [28.701349, 0.703567, 0.095824, 0.018425]),
];

#[test]
fn protocol_on_photos_matches_the_reference_scorer() {
    let images = load_folder(&fixture("photos")).unwrap();
    let r = evaluate(&images, 4, None, bicubic_fn(4)).unwrap();
    assert_eq!(r.images.len(), PHOTOS_BICUBIC.len());
    for (img, (name, [psnr, ssim, gmsd, hf])) in r.images.iter().zip(PHOTOS_BICUBIC) {
        assert_eq!(img.name, name);
        let s = &img.scores;
        assert!((s.psnr_y - psnr).abs() < 0.01, "{name} PSNR {}", s.psnr_y);
        assert!((s.ssim_y - ssim).abs() < 5e-4, "{name} SSIM {}", s.ssim_y);
        assert!((s.gmsd - gmsd).abs() < 5e-4, "{name} GMSD {}", s.gmsd);
        assert!((s.hf_ratio - hf).abs() < 5e-4, "{name} HF {}", s.hf_ratio);
    }
}

/// The shipped weights against bicubic x4 on the two photos of the fixture: the product's reason
/// to exist, checked on every test run (`flowmapsr eval --data tests/fixtures/photos` printed
/// 28.786 / 0.7947 / 0.0799 against bicubic's 27.783 / 0.7672 / 0.0978).
#[test]
fn shipped_weights_beat_bicubic_on_the_photos() {
    let images = load_folder(&fixture("photos")).unwrap();
    let (model, bicubic) = model_and_bicubic(&images);
    assert!(
        model.psnr_y > bicubic.psnr_y + 0.5,
        "model {:.3} vs bicubic {:.3}",
        model.psnr_y,
        bicubic.psnr_y
    );
    assert!(model.ssim_y > bicubic.ssim_y + 0.01);
    assert!(model.gmsd < bicubic.gmsd - 0.01);
}

/// The same on Set5 (the test set the product reports on).
#[test]
fn shipped_weights_beat_bicubic_on_set5() {
    let Some(root) = eval_sets() else { return };
    let (model, bicubic) = model_and_bicubic(&load_folder(&root.join("Set5")).unwrap());
    assert!(
        model.psnr_y > bicubic.psnr_y + 1.0,
        "model {:.3} vs bicubic {:.3}",
        model.psnr_y,
        bicubic.psnr_y
    );
    assert!(model.ssim_y > bicubic.ssim_y);
}

/// Mean scores of the shipped weights (default settings) and of bicubic, x4.
fn model_and_bicubic(
    images: &[(String, imageio::Decoded)],
) -> (
    flowmapsr_cli::eval::EvalReport,
    flowmapsr_cli::eval::EvalReport,
) {
    let dev = burn::backend::flex::FlexDevice;
    let (net, cfg) = flowmapsr_cli::weights::load::<burn::backend::Flex>(None, &dev).unwrap();
    let opts = flowmapsr_core::request::SampleRequest::default().options(false);
    let model = evaluate(
        images,
        4,
        None,
        flowmapsr_cli::eval::model_fn(&net, &cfg, 4, opts, &dev),
    )
    .unwrap();
    (model, evaluate(images, 4, None, bicubic_fn(4)).unwrap())
}
