//! Cross-crate tests live in tests/tests/*.rs; this library holds what test files of several
//! crates share (it depends on nothing of the workspace, so any crate may dev-depend on it).

use std::path::Path;

/// `n` small synthetic training images (48 x 40, smooth waves and a ramp) in `dir`.
pub fn synthetic_images(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            let f = 0.2 + 0.1 * i as f32;
            let v = ((x as f32 * f).sin() + (y as f32 * f * 0.7).cos()) * 60.0 + 128.0;
            image::Rgb([v as u8, (255.0 - v) as u8, ((x + y) * 3 % 256) as u8])
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
}
