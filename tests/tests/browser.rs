//! The web app in a real browser. Builds the app with `trunk build --release`,
//! upscales a small image natively with `flowmapsr upscale`, and runs tests/web/browser.mjs:
//! Debian's chromium, headless, drives the page (CPU fallback, offline reload, WebGPU) and
//! compares its pixels with the native output.
//!
//! Needs trunk, wasm-bindgen-cli, the wasm32 target, chromium, node and `npm install` in
//! tests/web, so it is `#[ignore]`d: `.ci/run` installs them and runs it with `--include-ignored`,
//! where anything missing fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
#[ignore = "needs chromium, node, trunk and wasm-bindgen-cli (.ci/run installs them and runs --include-ignored)"]
fn web_app_matches_native_on_cpu_offline_and_webgpu() {
    let root = root();
    let tmp = tempfile::tempdir().unwrap();
    // An 80x72 crop of the sample photo: x4 with 64 px tiles spans 2 x 2 tiles (blending).
    let lr = image::open(root.join("samples/coffee_lr.png"))
        .unwrap()
        .crop_imm(30, 14, 80, 72)
        .to_rgb8();
    let lr_path = tmp.path().join("lr.png");
    lr.save(&lr_path).unwrap();
    // The native references: default knobs (CPU and offline runs) and guidance 2 + LoRA 1 +
    // grain 0.3 = the stochastic mode at temperature 0.3, seed 0 (the WebGPU run sets the page's
    // sliders to those).
    let upscale = |out: &Path, knobs: &[&str]| {
        let mut argv = vec![
            "flowmapsr",
            "upscale",
            lr_path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--scale",
            "4",
            "--tile",
            "64",
            "--overlap",
            "8",
        ];
        argv.extend_from_slice(knobs);
        flowmapsr_cli::run(<flowmapsr_cli::Cli as clap::Parser>::parse_from(argv)).unwrap();
    };
    let native = tmp.path().join("native_x4.png");
    upscale(&native, &[]);
    let native_realistic = tmp.path().join("native_x4_realistic.png");
    upscale(
        &native_realistic,
        &["--preset", "realistic", "--grain-cut", "true"],
    );
    // The page's "No hatching" is checked for that run: the cut must show at 8 bits, or the
    // comparison could not tell whether the page cut at all.
    let uncut = tmp.path().join("native_x4_realistic_uncut.png");
    upscale(&uncut, &["--preset", "realistic", "--grain-cut", "false"]);
    let px = |p: &PathBuf| image::open(p).unwrap().to_rgb8().into_raw();
    let most = px(&native_realistic)
        .iter()
        .zip(px(&uncut))
        .map(|(a, b)| a.abs_diff(b))
        .max()
        .unwrap();
    assert!(most > 1, "the grain cut moves no pixel by more than 1/255");
    let native_dial = tmp.path().join("native_x4_w2_lora1_grain0.3.png");
    let dial = ["--guidance", "2", "--lora", "1"];
    let grain = ["--mode", "stochastic", "--temperature", "0.3"];
    upscale(&native_dial, &[&dial[..], &grain[..]].concat());
    let (a, b) = (
        image::open(&native).unwrap().to_rgb8(),
        image::open(&native_dial).unwrap().to_rgb8(),
    );
    let moved = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
    assert!(
        moved * 10 > a.len(),
        "guidance 2 + LoRA 1 + grain 0.3 must change the output: {moved} of {} bytes differ",
        a.len()
    );

    let status = Command::new("trunk")
        .args(["build", "--release"])
        .current_dir(&root)
        .status()
        .expect("running trunk (install: see README, Web demo)");
    assert!(status.success(), "trunk build --release failed");
    // The plain worker (for browsers without wasm SIMD, which refuse a module holding any SIMD
    // instruction) must hold none; the SIMD one must use it. binaryen's wasm-dis, as wasm-opt.
    let simd_ops = |file: &str| {
        let out = Command::new("wasm-dis")
            .arg(root.join("dist").join(file))
            .output()
            .expect("running wasm-dis (binaryen: tests/web/node_modules/.bin, see .ci/run)");
        assert!(out.status.success(), "wasm-dis {file} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        ["v128", "f32x4", "i32x4", "i8x16", "i16x8", "i64x2", "f64x2"]
            .iter()
            .map(|op| text.matches(op).count())
            .sum::<usize>()
    };
    assert_eq!(
        simd_ops("worker_bg.wasm"),
        0,
        "the plain worker holds SIMD instructions"
    );
    assert_eq!(
        simd_ops("app_bg.wasm"),
        0,
        "the page's wasm holds SIMD instructions"
    );
    let simd = simd_ops("worker_simd_bg.wasm");
    assert!(
        simd > 1000,
        "the SIMD worker holds only {simd} SIMD instructions"
    );

    let mut cmd = Command::new("node");
    cmd.arg(root.join("tests/web/browser.mjs"))
        .arg("--dist")
        .arg(root.join("dist"))
        .arg("--image")
        .arg(&lr_path)
        .arg("--native")
        .arg(&native)
        .arg("--native-realistic")
        .arg(&native_realistic)
        .arg("--native-dial")
        .arg(&native_dial)
        .args(dial)
        .args(["--grain", "0.3"])
        .args(["--tile", "64", "--scale", "4"]);
    if let Some(dir) = std::env::var_os("FLOWMAPSR_SCREENSHOTS") {
        cmd.arg("--screenshots").arg(dir);
    }
    let out = cmd.output().expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser test failed");
    assert_eq!(stdout.lines().filter(|l| l.starts_with('{')).count(), 9);
}
