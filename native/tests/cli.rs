//! The `flowmapsr` binary on good and bad input: every failure exits non-zero with a message
//! and writes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowmapsr"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("running flowmapsr")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A small textured RGB test picture.
fn picture(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = ((x as f32 * 0.4).sin() * (y as f32 * 0.3).cos() * 100.0 + 128.0) as u8;
        image::Rgb([v, (x * 7 % 256) as u8, (y * 5 % 256) as u8])
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn upscales_png_jpeg_webp_with_the_shipped_weights() {
    let dir = tempfile::tempdir().unwrap();
    let img = picture(24, 16);
    for ext in ["png", "jpg", "webp"] {
        let input = dir.path().join(format!("in.{ext}"));
        img.save(&input).unwrap();
        let out = dir.path().join(format!("out.{ext}"));
        let o = run(&["upscale", s(&input), "-o", s(&out), "--scale", "2"]);
        assert!(o.status.success(), "{ext}: {}", stderr(&o));
        let res = image::open(&out).unwrap();
        assert_eq!((res.width(), res.height()), (48, 32), "{ext}");
    }
}

/// The shipped weights carry the dial: guidance and the LoRA adapter each change the output,
/// and LoRA 0 at w = 1 is exactly the default.
#[test]
fn the_shipped_dial_moves_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    picture(24, 16).save(&input).unwrap();
    let up = |name: &str, knobs: &[&str]| {
        let out = dir.path().join(name);
        let mut argv = vec!["upscale", s(&input), "-o", s(&out), "--scale", "4"];
        argv.extend_from_slice(knobs);
        let o = run(&argv);
        assert!(o.status.success(), "{knobs:?}: {}", stderr(&o));
        image::open(&out).unwrap().to_rgb8().into_raw()
    };
    let base = up("base.png", &[]);
    assert_eq!(base, up("zero.png", &["--guidance", "1", "--lora", "0"]));
    assert_eq!(base, up("faithful.png", &["--preset", "faithful"]));
    assert_ne!(base, up("w3l3.png", &["--guidance", "3", "--lora", "3"]));
    // The realistic preset is its own weights (weights/realistic) at its w, without an adapter;
    // an explicit knob overrides the preset's, and --weights replaces its weights.
    let w = flowmapsr_core::request::Preset::Realistic
        .knobs()
        .1
        .to_string();
    let realistic = up("realistic.png", &["--preset", "realistic"]);
    assert_ne!(base, realistic);
    assert_ne!(
        realistic,
        up("w-preset.png", &["--guidance", &w]),
        "the faithful weights at the preset's w"
    );
    let real = concat!(env!("CARGO_MANIFEST_DIR"), "/../weights/realistic");
    assert_eq!(
        realistic,
        up("real-dir.png", &["--weights", real, "--guidance", &w])
    );
    assert_eq!(
        up("real-w3.png", &["--preset", "realistic", "--guidance", "3"]),
        up("real-dir-w3.png", &["--weights", real, "--guidance", "3"])
    );
    let o = run(&[
        "upscale",
        s(&input),
        "-o",
        s(&dir.path().join("x.png")),
        "--preset",
        "realistic",
        "--lora",
        "1",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("no LoRA adapter"),
        "{}",
        stderr(&o)
    );
    // The LR projection (auto, the default, is on for a PNG): the result shrinks back to the
    // input, up to the 8-bit rounding and the clamp; the raw flow map (`--projection off`) does not.
    let lr =
        flowmapsr_core::Image::from_interleaved_u8(24, 16, 3, &picture(24, 16).into_raw()).unwrap();
    let mismatch = |px: &[u8]| {
        let sr = flowmapsr_core::Image::from_interleaved_u8(96, 64, 3, px).unwrap();
        let down = flowmapsr_core::resize::imresize(&sr, 0.25, false);
        let sum: f32 = down
            .data
            .iter()
            .zip(&lr.data)
            .map(|(a, b)| (a - b).abs())
            .sum();
        sum / lr.data.len() as f32 * 255.0
    };
    let raw = up("raw.png", &["--projection", "off"]);
    assert_ne!(base, raw);
    assert_eq!(base, up("on.png", &["--projection", "on"]));
    // A JPEG input is lossily coded: auto leaves the raw output (its coding noise would come
    // back), `on` still projects.
    let jpeg = dir.path().join("in.jpg");
    picture(24, 16).save(&jpeg).unwrap();
    let up_jpeg = |knobs: &[&str]| {
        let out = dir.path().join("j.png");
        let mut argv = vec!["upscale", s(&jpeg), "-o", s(&out), "--scale", "4"];
        argv.extend_from_slice(knobs);
        let o = run(&argv);
        assert!(o.status.success(), "{knobs:?}: {}", stderr(&o));
        image::open(&out).unwrap().to_rgb8().into_raw()
    };
    let auto = up_jpeg(&[]);
    assert_eq!(auto, up_jpeg(&["--projection", "off"]));
    assert_ne!(auto, up_jpeg(&["--projection", "on"]));
    let (projected, unprojected) = (mismatch(&base), mismatch(&raw));
    assert!(
        // 8-bit rounding alone leaves about 0.06 levels; the raw map is ~0.23 off here.
        projected < 0.12 && projected * 2.0 < unprojected,
        "mean |down(out) - in| in 8-bit levels: {projected} with the projection, {unprojected} without"
    );
    // Temperature 0 removes the source noise: the stochastic mode becomes the fidelity map.
    assert_eq!(
        base,
        up("t0.png", &["--mode", "stochastic", "--temperature", "0"])
    );
    for knobs in [["--guidance", "3"], ["--lora", "2"]] {
        let moved = base
            .iter()
            .zip(up("k.png", &knobs))
            .filter(|(a, b)| *a != b)
            .count();
        assert!(
            moved * 10 > base.len(),
            "{knobs:?}: only {moved} bytes moved"
        );
    }
}

#[test]
fn keeps_alpha_and_16_bit() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(12, 10, |x, y| {
        image::Rgba([
            (x * 5000) as u16,
            (y * 6000) as u16,
            30000,
            if x < 6 { 65535 } else { 0 },
        ])
    });
    let input = dir.path().join("a16.png");
    img.save(&input).unwrap();
    let out_dir = dir.path().join("out");
    let o = run(&["upscale", s(&input), "-o", s(&out_dir), "--scale", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let res = image::open(out_dir.join("a16_x2.png")).unwrap();
    assert_eq!(res.color(), image::ColorType::Rgba16);
    let px = res.to_rgba16();
    assert_eq!(px.get_pixel(0, 0)[3], 65535);
    assert_eq!(px.get_pixel(23, 0)[3], 0);
}

#[test]
fn folders_in_folder_out() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in");
    std::fs::create_dir(&inp).unwrap();
    picture(8, 8).save(inp.join("a.png")).unwrap();
    picture(9, 7).save(inp.join("b.jpg")).unwrap();
    std::fs::write(inp.join("notes.txt"), "ignored").unwrap();
    let out = dir.path().join("out");
    let o = run(&[
        "upscale",
        s(&inp),
        "-o",
        s(&out),
        "--scale",
        "4",
        "--tile",
        "16",
        "--overlap",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(out.join("a_x4.png")).unwrap().width(), 32);
    assert_eq!(image::open(out.join("b_x4.jpg")).unwrap().height(), 28);
}

/// A tiny PNG whose header claims `w` x `h` (valid chunk CRCs, a few bytes of pixel data): what
/// a decompression bomb looks like before it is inflated.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(&c);
        v.extend_from_slice(&crc32fast::hash(&c).to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    v
}

fn assert_fails_cleanly(name: &str, bytes: &[u8], extra: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(name);
    std::fs::write(&input, bytes).unwrap();
    let out = dir.path().join("out.png");
    let mut args = vec!["upscale", s(&input), "-o", s(&out)];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(!o.status.success(), "{name} should fail");
    let err = stderr(&o);
    assert!(
        err.to_lowercase().contains(needle),
        "{name}: expected '{needle}' in: {err}"
    );
    let left: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &input)
        .collect();
    assert!(left.is_empty(), "{name}: files left behind: {left:?}");
}

#[test]
fn bad_images_fail_cleanly() {
    let mut png = Vec::new();
    picture(40, 40)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert_fails_cleanly("empty.png", b"", &[], "empty file");
    assert_fails_cleanly(
        "garbage.png",
        b"this is not an image at all",
        &[],
        "not a recognised image",
    );
    assert_fails_cleanly(
        "truncated.png",
        &png[..png.len() / 2],
        &[],
        "corrupt or truncated",
    );
    assert_fails_cleanly(
        "bomb.png",
        &png_claiming(100_000, 100_000),
        &[],
        "too large",
    );
    assert_fails_cleanly("zero.png", &png_claiming(0, 10), &[], "");
    assert_fails_cleanly("big.png", &png, &["--max-pixels", "1000"], "too large");
}

/// No input is ever overwritten, and bad tiles are refused before any work.
#[test]
fn never_overwrites_an_input_and_refuses_bad_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.png");
    picture(8, 8).save(&input).unwrap();
    let before = std::fs::read(&input).unwrap();
    // The same file, named the same way, through `..`, and through a link.
    let via_dotdot = dir.path().join("sub/../a.png");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let link = dir.path().join("link.png");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    for out in [&input, &via_dotdot, &link] {
        let o = run(&["upscale", s(&input), "-o", s(out), "--scale", "2"]);
        assert!(!o.status.success(), "{}", s(out));
        assert!(
            stderr(&o).contains("refusing to overwrite"),
            "{}",
            stderr(&o)
        );
        assert_eq!(std::fs::read(&input).unwrap(), before);
    }
    // A folder output whose `_x2` name is an input of the same run.
    let named = dir.path().join("a_x2.png");
    picture(8, 8).save(&named).unwrap();
    let o = run(&[
        "upscale",
        s(&input),
        s(&named),
        "-o",
        s(dir.path()),
        "--scale",
        "2",
    ]);
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );
    // Two inputs of one name into one folder.
    let other = dir.path().join("sub/a.png");
    picture(8, 8).save(&other).unwrap();
    let outdir = dir.path().join("out");
    let o = run(&["upscale", s(&input), s(&other), "-o", s(&outdir)]);
    assert!(
        stderr(&o).contains("would both be written"),
        "{}",
        stderr(&o)
    );
    let out = dir.path().join("out.png");
    for bad in [
        &["--tile", "0"][..],
        &["--tile", "8"],
        &["--tile", "32", "--overlap", "32"],
    ] {
        let mut argv = vec!["upscale", s(&input), "-o", s(&out)];
        argv.extend(bad);
        let o = run(&argv);
        assert!(
            !o.status.success() && stderr(&o).contains("tile"),
            "{bad:?}: {}",
            stderr(&o)
        );
    }
    assert!(!out.exists());
    // Only the finished file is left: no temporary beside it.
    let o = run(&["upscale", s(&input), "-o", s(&out), "--scale", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn bad_arguments_and_weights_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    picture(8, 8).save(&input).unwrap();
    let out = dir.path().join("out.png");
    let o = run(&["upscale", s(&input), "-o", s(&out), "--scale", "3"]);
    assert!(!o.status.success() && stderr(&o).contains("scale"));
    let o = run(&["upscale", s(&input), "-o", s(&dir.path().join("out.gif"))]);
    assert!(!o.status.success() && stderr(&o).contains("unsupported output extension"));
    let o = run(&["upscale", s(&dir.path().join("missing.png")), "-o", s(&out)]);
    assert!(!o.status.success() && stderr(&o).contains("no such file"));
    // Knobs beyond what the weights were trained for are refused, not clamped: the shipped
    // weights were trained for w in [1, 3] and LoRA scales in [0, 3].
    // Temperature is in [0, 1] and belongs to the stochastic mode.
    for knob in [
        ["--guidance", "4"],
        ["--guidance", "0.5"],
        ["--lora", "3.5"],
        ["--temperature", "0.5"],
        ["--temperature", "1.5"],
    ] {
        let mode = if knob[1] == "1.5" {
            "stochastic"
        } else {
            "fidelity"
        };
        let o = run(&[
            "upscale",
            s(&input),
            "-o",
            s(&out),
            "--mode",
            mode,
            knob[0],
            knob[1],
        ]);
        assert!(
            !o.status.success() && stderr(&o).to_lowercase().contains(&knob[0][2..]),
            "{knob:?}: {}",
            stderr(&o)
        );
    }
    let w = dir.path().join("w");
    std::fs::create_dir(&w).unwrap();
    std::fs::write(w.join("config.json"), "{}").unwrap();
    std::fs::write(w.join("model.bin"), "garbage").unwrap();
    let o = run(&["upscale", s(&input), "-o", s(&out), "--weights", s(&w)]);
    assert!(
        !o.status.success() && stderr(&o).contains("weights"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn eval_prints_json_with_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    picture(48, 40).save(dir.path().join("p.png")).unwrap();
    let o = run(&["eval", "--data", s(dir.path()), "--scale", "4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["psnr_y", "ssim_y", "gmsd", "hf_ratio", "ms_per_image", "n"] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["n"], 1);
}

/// `eval --consistency`: the documented keys; an identity model (fresh UNet, zero output layer)
/// gives the same image at every NFE and along the ODE (agreement capped at 100 dB, equal HF
/// ratios); the shipped model does not (finite agreement).
#[test]
fn eval_consistency_reports_agreement_with_the_ode() {
    use flowmapsr_core::bridge::BridgeConfig;
    use flowmapsr_core::unet::UNetConfig;
    use flowmapsr_core::weights::{save_dir, ModelConfig};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hr");
    std::fs::create_dir_all(&data).unwrap();
    picture(64, 48).save(data.join("p.png")).unwrap();
    let ident = dir.path().join("identity");
    let cfg = ModelConfig::new(UNetConfig::tiny(), BridgeConfig::new());
    save_dir(
        &cfg.unet.init::<burn::backend::Flex>(&Default::default()),
        &cfg,
        &ident,
    )
    .unwrap();
    let eval = |weights: Option<&Path>| {
        let mut a = vec![
            "eval",
            "--data",
            s(&data),
            "--consistency",
            "--ode-steps",
            "8",
            "--json",
        ];
        if let Some(w) = weights {
            a.extend(["--weights", s(w)]);
        }
        let o = run(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let v = eval(Some(&ident));
    let keys = [
        "agreement_psnr_nfe1",
        "agreement_psnr_nfe2",
        "agreement_psnr_nfe4",
        "hf_ratio_nfe1",
        "hf_ratio_ode",
        "gmsd_nfe1",
        "gmsd_ode",
    ];
    for k in keys {
        assert!(v[k].is_number(), "missing {k}: {v}");
    }
    for n in [1, 2, 4] {
        assert_eq!(v[format!("agreement_psnr_nfe{n}")], 100.0, "{v}");
    }
    assert_eq!(v["hf_ratio_nfe1"], v["hf_ratio_ode"]);
    assert_eq!(v["ode_steps"], 8);
    let shipped = eval(None);
    let a = shipped["agreement_psnr_nfe1"].as_f64().unwrap();
    assert!(a > 10.0 && a < 100.0, "{shipped}");
}

#[test]
fn bench_prints_json_with_the_network_and_the_projection_timed_apart() {
    let o = run(&["bench", "--tile", "16", "--reps", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "ms_per_tile",
        "output_mp_per_s",
        "model_flops_per_output_pixel",
        "fraction_of_matmul_peak",
        "lr_projection_ms",
        "grain_cut_ms",
    ] {
        let x = v[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {v}"));
        assert!(x.is_finite() && x > 0.0, "{k} = {x}");
    }
    assert_eq!(v["tile"], 16);
    assert_eq!(
        (v["guidance"].as_f64(), v["lora"].as_f64()),
        (Some(1.0), Some(0.0)),
        "{v}"
    );
    // It reports the knobs it ran at: a preset's (scripts/realism.sh labels its rows with them).
    let o = run(&[
        "bench",
        "--tile",
        "16",
        "--reps",
        "1",
        "--json",
        "--preset",
        "realistic",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = flowmapsr_core::request::Preset::Realistic.knobs().1;
    // (serde_json writes an f32 by its shortest decimal: compare in f32)
    assert_eq!(v["guidance"].as_f64().map(|g| g as f32), Some(w), "{v}");
}

/// `export --format f32|f16`: weights folders in either precision that load wherever `--weights`
/// does and keep the adapter. The shipped weights are f16, so their f32 export runs exactly the
/// same network, and its f16 export gives back the shipped bytes. Export never writes over the
/// weights it reads.
#[test]
fn export_writes_weights_in_either_precision() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../weights");
    let real = format!("{shipped}/realistic");
    let read = |p: &Path| std::fs::read(p).unwrap();
    let export = |format: &str, weights: Option<&str>, out: &Path| {
        let mut argv = vec!["export", "--format", format, "-o", s(out)];
        if let Some(w) = weights {
            argv.extend_from_slice(&["--weights", w]);
        }
        run(&argv)
    };
    let (f32_dir, f16_dir) = (dir.path().join("f32"), dir.path().join("f16"));
    let o = export("f32", Some(&real), &f32_dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = export("f16", Some(s(&f32_dir)), &f16_dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let shipped_bin = read(&Path::new(&real).join("model.bin"));
    let full = read(&f32_dir.join("model.bin"));
    assert!(
        shipped_bin.len() * 10 < full.len() * 6,
        "shipped {} bytes, f32 {}",
        shipped_bin.len(),
        full.len()
    );
    assert_eq!(read(&f16_dir.join("model.bin")), shipped_bin);
    assert!(
        !f32_dir.join("lora.bin").exists(),
        "the realistic weights have no adapter"
    );

    let input = dir.path().join("in.png");
    picture(32, 24).save(&input).unwrap();
    let up = |weights: &str, name: &str, knobs: &[&str]| {
        let o_path = dir.path().join(name);
        let mut argv = vec!["upscale", s(&input), "-o", s(&o_path), "--scale", "4"];
        argv.extend_from_slice(&["--weights", weights]);
        argv.extend_from_slice(knobs);
        let o = run(&argv);
        assert!(o.status.success(), "{weights}: {}", stderr(&o));
        image::open(&o_path).unwrap().to_rgb8().into_raw()
    };
    let w = ["--guidance", "2"];
    assert_eq!(up(&real, "a.png", &w), up(s(&f32_dir), "b.png", &w));

    // The shipped faithful weights carry their LoRA adapter across, and the dial still acts.
    let faithful = dir.path().join("faithful");
    let o = export("f32", None, &faithful);
    assert!(o.status.success(), "{}", stderr(&o));
    let lora_shipped = read(&Path::new(shipped).join("lora.bin")).len();
    assert!(lora_shipped * 10 < read(&faithful.join("lora.bin")).len() * 6);
    let l = ["--lora", "2"];
    assert_eq!(up(shipped, "c.png", &l), up(s(&faithful), "d.png", &l));
    assert_ne!(
        up(s(&faithful), "e.png", &[]),
        up(s(&faithful), "f.png", &l)
    );

    // Never over its input, and never beside an adapter the weights do not have.
    let before = read(&f16_dir.join("model.bin"));
    let o = export("f32", Some(s(&f16_dir)), &f16_dir);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );
    assert_eq!(before, read(&f16_dir.join("model.bin")));
    let o = export("f16", Some(&real), &faithful);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("LoRA adapter"), "{}", stderr(&o));
}
