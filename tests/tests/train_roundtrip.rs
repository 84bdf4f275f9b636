//! A seconds-long training run on synthetic images: train -> checkpoint -> resume -> save ->
//! load -> upscale, and the resumed run equals the uninterrupted one.

use flowmapsr_cli::train::{run, TrainArgs};
use flowmapsr_tests::synthetic_images;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `train` seeds burn's process-wide generator before drawing the initial weights; tests that
/// train run one at a time so that parallel runs cannot reseed it between seed and draw.
static TRAINING: Mutex<()> = Mutex::new(());

fn config(dir: &Path, steps: usize) -> PathBuf {
    let cfg = serde_json::json!({
        "model": {
            "unet": { "channels": 12, "widths": [8, 16], "blocks": [1, 1], "cond": { "dim": 16, "octaves": 3 } },
            "bridge": { "sigma_b": 0.005, "sigma_0": 0.1 },
            "notes": "test"
        },
        "objective": "shortcut",
        "degrade": { "p_bicubic": 0.5 },
        "scale_mix": [0.3, 0.4, 0.3],
        "crop": 32, "batch": 4, "steps": steps, "lr": 0.002, "warmup": 2,
        "ema_decay": 0.9, "seed": 7, "log_every": 2, "val_every": 3, "ckpt_every": 2
    });
    let p = dir.join("train.json");
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    p
}

/// A run folder with `n` training and 1 validation synthetic images and the test config (for
/// `steps` steps), which the test edits as JSON and writes back with `save_config`.
fn setup(n: usize, steps: usize) -> (tempfile::TempDir, PathBuf, serde_json::Value) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    synthetic_images(&d.join("data"), n);
    synthetic_images(&d.join("val"), 1);
    let p = config(&d, steps);
    let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    (tmp, d, v)
}

fn save_config(d: &Path, v: &serde_json::Value) {
    std::fs::write(d.join("train.json"), v.to_string()).unwrap();
}

fn args(dir: &Path, out: &str, resume: bool, max_steps: Option<usize>) -> TrainArgs {
    TrainArgs {
        config: dir.join("train.json"),
        data: vec![dir.join("data")],
        val: Some(dir.join("val")),
        holdout: 0,
        out: dir.join(out),
        resume,
        device: "cpu".parse().unwrap(),
        max_steps,
        init: None,
        init_critic: None,
        devices: None,
        node: Default::default(),
        objective: None,
        weighting: None,
        precision: None,
        stage: None,
    }
}

/// A 10 x 6 LR test image.
fn test_lr() -> flowmapsr_core::Image {
    flowmapsr_core::Image::new(10, 6, 3, (0..180).map(|i| (i % 17) as f32 / 16.0).collect())
        .unwrap()
}

/// 32-px tiles with an 8-px overlap (several tiles on the test image).
fn opts32() -> flowmapsr_core::sampler::SampleOptions {
    flowmapsr_core::sampler::SampleOptions {
        tile: 32,
        overlap: 8,
        ..Default::default()
    }
}

/// The largest per-value difference of two images.
fn gap(a: &flowmapsr_core::Image, b: &flowmapsr_core::Image) -> f32 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// state.json of the run folder's latest checkpoint.
fn latest_state(run: &Path) -> serde_json::Value {
    let name = std::fs::read_to_string(run.join("latest")).unwrap();
    serde_json::from_slice(&std::fs::read(run.join(name.trim()).join("state.json")).unwrap())
        .unwrap()
}

#[test]
fn train_save_load_upscale_and_exact_resume() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    synthetic_images(&d.join("data"), 3);
    synthetic_images(&d.join("val"), 1);
    config(d, 6);

    // Uninterrupted: 6 steps.
    run(&args(d, "full", false, None)).unwrap();
    // Interrupted after 3 steps (checkpoint at 2 and at the stop), then resumed to the end.
    run(&args(d, "split", false, Some(3))).unwrap();
    run(&args(d, "split", true, None)).unwrap();

    for f in ["final/model.bin", "final/config.json", "best/model.bin"] {
        assert!(d.join("full").join(f).exists(), "{f}");
    }
    let state = latest_state(&d.join("full"));
    assert_eq!(state["step"], 6);
    assert_eq!(
        state["history"].as_array().unwrap().len(),
        2,
        "validated at steps 3 and 6"
    );

    // Load the trained weights and upscale; the model moved away from the identity (bicubic).
    let dev = burn::backend::flex::FlexDevice;
    let lr = test_lr();
    let opts = opts32();
    let upscale = |run: &str| {
        let (net, cfg) = flowmapsr_core::weights::load_dir::<burn::backend::Flex>(
            &d.join(run).join("final"),
            &dev,
        )
        .unwrap();
        flowmapsr_core::sampler::upscale(&net, &cfg, &lr, 4, &opts, &dev, &mut |_, _| true).unwrap()
    };
    let sr = upscale("full");
    assert_eq!((sr.width, sr.height), (40, 24));
    // The interrupted-and-resumed run ends with the same weights (same outputs).
    let resumed = upscale("split");
    let gap = gap(&sr, &resumed);
    assert!(
        gap < 1e-6,
        "a resumed run must end where the uninterrupted one does (gap {gap})"
    );
    let bic = flowmapsr_core::resize::upscale(&lr, 4);
    let diff = sr
        .data
        .iter()
        .zip(&bic.data)
        .map(|(a, b)| (a - b.clamp(0.0, 1.0)).abs())
        .fold(0.0, f32::max);
    assert!(diff > 1e-4, "training changed nothing");
}

/// Guidance training (core objectives/guidance.rs) through `train`: the weights record the w they
/// know, w is a live input of the trained network, w beyond it is a clear error, and guidance
/// with another objective or a mismatched model.w_max is refused.
#[test]
fn guidance_trains_and_records_its_range() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, d, mut v) = setup(2, 6);
    let d = d.as_path();
    // The raw weights (no EMA lag), with and without guidance from the same seed.
    v["ema_decay"] = 0.0.into();
    v["steps"] = 12.into();
    save_config(d, &v);
    run(&args(d, "plain", false, None)).unwrap();
    v["guidance"] = serde_json::json!({ "w_max": 3.0, "p_negative": 0.3 });
    v["model"]["w_max"] = 3.0.into();
    save_config(d, &v);
    run(&args(d, "g", false, None)).unwrap();

    let dev = burn::backend::flex::FlexDevice;
    let (net, cfg) =
        flowmapsr_core::weights::load_dir::<burn::backend::Flex>(&d.join("g").join("final"), &dev)
            .unwrap();
    assert_eq!(cfg.w_max(), 3.0);
    let lr = test_lr();
    let at = |w: f32| {
        let opts = flowmapsr_core::sampler::SampleOptions {
            tile: 32,
            overlap: 8,
            guidance: w,
            ..Default::default()
        };
        flowmapsr_core::sampler::upscale(&net, &cfg, &lr, 2, &opts, &dev, &mut |_, _| true)
    };
    let (w1, w3) = (at(1.0).unwrap(), at(3.0).unwrap());
    // w is a live input (12 steps are too few for a large effect: the output layer starts at 0).
    assert!(gap(&w1, &w3) > 0.0, "w must change the output");
    // Guidance changed what was learned: negative targets and guided rows are in the batches.
    let (pnet, pcfg) = flowmapsr_core::weights::load_dir::<burn::backend::Flex>(
        &d.join("plain").join("final"),
        &dev,
    )
    .unwrap();
    let opts = opts32();
    let p1 = flowmapsr_core::sampler::upscale(&pnet, &pcfg, &lr, 2, &opts, &dev, &mut |_, _| true)
        .unwrap();
    assert!(
        gap(&w1, &p1) > 1e-5,
        "guidance training changed nothing ({})",
        gap(&w1, &p1)
    );
    let e = at(3.5).unwrap_err().to_string();
    assert!(e.contains("[1, 3]"), "{e}");

    let mut bad = v.clone();
    bad["objective"] = "lagrangian".into();
    save_config(d, &bad);
    let e = format!("{:#}", run(&args(d, "x", false, None)).unwrap_err());
    assert!(e.contains("shortcut"), "{e}");
    let mut bad = v;
    bad["model"]["w_max"] = 1.0.into();
    save_config(d, &bad);
    let e = format!("{:#}", run(&args(d, "x", false, None)).unwrap_err());
    assert!(e.contains("w_max"), "{e}");
}

/// Adversarial LoRA (core adversarial.rs) through `train`: it needs --init, keeps the base
/// frozen, resumes exactly, and its adapter loads beside the base weights and acts by its scale.
#[test]
fn adversarial_lora_trains_resumes_and_loads() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, d, mut v) = setup(2, 2);
    let d = d.as_path();
    run(&args(d, "base", false, None)).unwrap();
    v["steps"] = 4.into();
    v["adversarial"] = serde_json::json!({
        "lora": { "rank": 2 }, "discriminator": { "widths": [8, 8] }, "lr_d": 0.002
    });
    save_config(d, &v);
    let e = format!("{:#}", run(&args(d, "x", false, None)).unwrap_err());
    assert!(e.contains("--init"), "{e}");
    let adv = |out: &str, resume: bool, max: Option<usize>| {
        let mut a = args(d, out, resume, max);
        a.init = Some(d.join("base/final"));
        run(&a).unwrap();
    };
    adv("full", false, None);
    adv("split", false, Some(2));
    adv("split", true, None);
    // `model` may be left out: the base's config.json states it (and final/ keeps it, notes and
    // all); a stated model that is not the base's is refused by name, before any record loads.
    let base_cfg = std::fs::read_to_string(d.join("base/final/config.json")).unwrap();
    let mut bare = v.clone();
    bare.as_object_mut().unwrap().remove("model");
    save_config(d, &bare);
    adv("bare", false, Some(1));
    assert_eq!(
        std::fs::read_to_string(d.join("bare/final/config.json")).unwrap(),
        base_cfg
    );
    let mut other = v.clone();
    other["model"]["unet"]["blocks"] = serde_json::json!([2, 1]);
    save_config(d, &other);
    let mut a = args(d, "other", false, None);
    a.init = Some(d.join("base/final"));
    let e = format!("{:#}", run(&a).unwrap_err());
    assert!(
        e.contains("differs from the base") && e.contains("[2,1]"),
        "{e}"
    );
    save_config(d, &v);
    let fin = d.join("full/final");
    for f in ["config.json", "model.bin", "lora.json", "lora.bin"] {
        assert!(fin.join(f).exists(), "{f}");
    }
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    // The base is untouched.
    assert_eq!(
        read(fin.join("model.bin")),
        read(d.join("base/final/model.bin"))
    );

    let dev = burn::backend::flex::FlexDevice;
    let (model, cfg) =
        flowmapsr_cli::weights::load_adapted::<burn::backend::Flex>(Some(&fin), &dev).unwrap();
    let (resumed, _) = flowmapsr_cli::weights::load_adapted::<burn::backend::Flex>(
        Some(&d.join("split/final")),
        &dev,
    )
    .unwrap();
    assert!(model.lora.is_some());
    let lr = test_lr();
    let opts = opts32();
    let at = |s: f32| {
        flowmapsr_core::sampler::upscale(
            &model.at(s).unwrap(),
            &cfg,
            &lr,
            2,
            &opts,
            &dev,
            &mut |_, _| true,
        )
        .unwrap()
    };
    let plain =
        flowmapsr_core::sampler::upscale(&model.net, &cfg, &lr, 2, &opts, &dev, &mut |_, _| true)
            .unwrap();
    assert_eq!(at(0.0), plain);
    // The interrupted-and-resumed run ends with the same adapter (same outputs).
    let again = flowmapsr_core::sampler::upscale(
        &resumed.at(2.0).unwrap(),
        &cfg,
        &lr,
        2,
        &opts,
        &dev,
        &mut |_, _| true,
    )
    .unwrap();
    let r = gap(&at(2.0), &again);
    assert!(
        r < 1e-6,
        "a resumed adversarial run must end where the uninterrupted one does ({r})"
    );
    let (g1, g2) = (gap(&at(1.0), &plain), gap(&at(2.0), &plain));
    assert!(g1 > 1e-6 && g2 > g1, "LoRA 1: {g1}, LoRA 2: {g2}");
    assert!(model.at(3.5).is_err());
    // Weights without an adapter refuse a LoRA scale.
    let (base, _) = flowmapsr_cli::weights::load_adapted::<burn::backend::Flex>(
        Some(&d.join("base/final")),
        &dev,
    )
    .unwrap();
    assert!(base
        .at(1.0)
        .unwrap_err()
        .to_string()
        .contains("no LoRA adapter"));
}

/// Whole-network adversarial training (`"generator": "full"`, native adversarial/full.rs, with
/// every loss term, the EMA's artifact map included): deepened from the base, validated (best/ by GMSD), resumed exactly; the dial between base and
/// result (`flowmapsr interpolate`) is the base at 0 and the result at 1; another network shape
/// is refused by name.
#[test]
fn whole_network_adversarial_deepens_resumes_and_interpolates() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, d, mut v) = setup(2, 2);
    let d = d.as_path();
    run(&args(d, "base", false, None)).unwrap();
    v["steps"] = 4.into();
    v["model"]["unet"]["blocks"] = serde_json::json!([2, 2]);
    v["adversarial"] = serde_json::json!({
        "generator": "full", "discriminator": { "widths": [8, 8] }, "lr_d": 0.002,
        "gan_weight": 0.1, "rec_weight": 0.0, "rec_l1_weight": 1.0, "fm_weight": 1.0,
        "gms_weight": 1.0, "ldl_weight": 100.0
    });
    save_config(d, &v);
    let adv = |out: &str, resume: bool, max: Option<usize>| {
        let mut a = args(d, out, resume, max);
        a.init = (!resume).then(|| d.join("base/final"));
        run(&a)
    };
    adv("full", false, None).unwrap();
    adv("split", false, Some(2)).unwrap();
    adv("split", true, None).unwrap();
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    for f in ["final/model.bin", "final/config.json", "best/model.bin"] {
        assert!(d.join("full").join(f).exists(), "{f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&read(d.join("full/final/config.json"))).unwrap();
    assert_eq!(cfg["unet"]["blocks"], serde_json::json!([2, 2]));
    let state = latest_state(&d.join("full"));
    let hist = state["history"].as_array().unwrap();
    assert_eq!(hist.len(), 2, "validated at steps 3 and 4");
    assert!(hist[0]["gmsd"].as_f64().is_some() && hist[0]["hf_ratio"].as_f64().is_some());
    assert!(state["best_gmsd"].as_f64().is_some());
    // Every validated EMA is kept; the last one is final/.
    assert!(d.join("full/val/3/model.bin").exists());
    assert_eq!(
        read(d.join("full/val/4/model.bin")),
        read(d.join("full/final/model.bin"))
    );

    // --init-critic: a new run starts its discriminator from another run's checkpoint. With
    // lr_d 0 the discriminator it saves is the one it was given, byte for byte.
    let ck = d.join("full").join(
        std::fs::read_to_string(d.join("full/latest"))
            .unwrap()
            .trim(),
    );
    let mut vw = v.clone();
    vw["adversarial"]["lr_d"] = 0.0.into();
    std::fs::write(d.join("warm.json"), vw.to_string()).unwrap();
    let warm = |critic: &Path, out: &str| {
        let mut a = args(d, out, false, Some(1));
        a.config = d.join("warm.json");
        a.init = Some(d.join("full/final"));
        a.init_critic = Some(critic.to_path_buf());
        run(&a)
    };
    warm(&ck, "warm").unwrap();
    let wck = d.join("warm").join(
        std::fs::read_to_string(d.join("warm/latest"))
            .unwrap()
            .trim(),
    );
    assert_eq!(read(wck.join("disc.bin")), read(ck.join("disc.bin")));
    // A discriminator of another shape is refused, naming the file.
    let mut other = v.clone();
    other["adversarial"]["discriminator"]["widths"] = serde_json::json!([8, 16]);
    save_config(d, &other);
    adv("other", false, Some(1)).unwrap();
    let e = format!(
        "{:#}",
        warm(&d.join("other").join("ckpt-00000001"), "warm2").unwrap_err()
    );
    assert!(e.contains("disc.bin"), "{e}");
    save_config(d, &v);

    let dev = burn::backend::flex::FlexDevice;
    let lr = test_lr();
    let opts = opts32();
    let up = |dir: &Path| {
        let (net, cfg) =
            flowmapsr_core::weights::load_dir::<burn::backend::Flex>(dir, &dev).unwrap();
        flowmapsr_core::sampler::upscale(&net, &cfg, &lr, 4, &opts, &dev, &mut |_, _| true).unwrap()
    };
    let (base, full) = (up(&d.join("base/final")), up(&d.join("full/final")));
    assert!(gap(&base, &full) > 1e-5, "training changed nothing");
    let r = gap(&full, &up(&d.join("split/final")));
    assert!(
        r < 1e-6,
        "a resumed run must end where the uninterrupted one does ({r})"
    );

    let interp = |alpha: f32, out: &str| {
        flowmapsr_cli::weights::interpolate(&flowmapsr_cli::weights::InterpolateArgs {
            from: Some(d.join("base/final")),
            to: d.join("full/final"),
            alpha,
            output: d.join(out),
        })
    };
    interp(0.0, "a0").unwrap();
    interp(1.0, "a1").unwrap();
    interp(0.5, "a5").unwrap();
    assert_eq!(up(&d.join("a0")), base);
    assert_eq!(up(&d.join("a1")), full);
    let mid = up(&d.join("a5"));
    assert!(gap(&mid, &base) > 1e-6 && gap(&mid, &full) > 1e-6);
    // Never over an input.
    let before = read(d.join("full/final/model.bin"));
    let e = interp(0.5, "full/final").unwrap_err().to_string();
    assert!(e.contains("refusing to overwrite"), "{e}");
    assert_eq!(read(d.join("full/final/model.bin")), before);
    // Missing weights are said as such (two missing paths are not one file).
    let e = format!(
        "{:#}",
        flowmapsr_cli::weights::interpolate(&flowmapsr_cli::weights::InterpolateArgs {
            from: None,
            to: d.join("missing"),
            alpha: 0.5,
            output: d.join("also-missing"),
        })
        .unwrap_err()
    );
    assert!(!e.contains("refusing") && e.contains("missing"), "{e}");

    // A shape that is not the base deepened is refused by name.
    v["model"]["unet"]["widths"] = serde_json::json!([8, 24]);
    save_config(d, &v);
    let e = format!("{:#}", adv("wide", false, None).unwrap_err());
    assert!(
        e.contains("more residual blocks") && e.contains("[8, 24]"),
        "{e}"
    );
}

/// The staged pipeline (native pipeline.rs) from one config: warm-start -> self-distillation ->
/// guidance -> adversarial LoRA, each stage from the last one's final weights.
#[test]
fn staged_pipeline_runs_every_stage_from_the_last() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let (_tmp, d, mut v) = setup(2, 2);
    let d = d.as_path();
    v["stages"] = serde_json::json!([
        { "name": "warmup", "objective": "flow-matching" },
        { "name": "distill" },
        { "name": "guidance", "guidance": { "w_max": 2.0 }, "model": { "w_max": 2.0 } },
        { "name": "adversarial", "model": { "w_max": 2.0 },
          "adversarial": { "lora": { "rank": 2 }, "discriminator": { "widths": [8] } } }
    ]);
    save_config(d, &v);
    // One stage alone needs the ones before it.
    let mut a = args(d, "pipe", false, None);
    a.stage = Some("distill".into());
    let e = format!("{:#}", run(&a).unwrap_err());
    assert!(e.contains("does not exist yet"), "{e}");
    run(&args(d, "pipe", false, None)).unwrap();
    for st in ["warmup", "distill", "guidance", "adversarial"] {
        assert!(d.join("pipe").join(st).join("DONE").exists(), "{st}");
        assert!(
            d.join("pipe").join(st).join("final/model.bin").exists(),
            "{st}"
        );
    }
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    let fin = d.join("pipe/adversarial/final");
    assert!(fin.join("lora.bin").exists());
    // The adversarial stage froze the guidance stage's weights, which started from distill's.
    assert_eq!(
        read(fin.join("model.bin")),
        read(d.join("pipe/guidance/final/model.bin"))
    );
    assert_ne!(
        read(d.join("pipe/guidance/final/model.bin")),
        read(d.join("pipe/distill/final/model.bin"))
    );
    let cfg: serde_json::Value = serde_json::from_slice(&read(fin.join("config.json"))).unwrap();
    assert_eq!(cfg["w_max"], 2.0);
    // --stage NAME --init DIR runs that stage alone from the given weights.
    let mut one = args(d, "one", false, None);
    one.stage = Some("adversarial".into());
    one.init = Some(d.join("pipe/guidance/final"));
    run(&one).unwrap();
    assert!(!d.join("one/guidance").exists());
    assert_eq!(
        read(d.join("one/adversarial/final/model.bin")),
        read(d.join("pipe/guidance/final/model.bin"))
    );
    // --resume on a finished pipeline skips every stage; --stage reruns one.
    run(&args(d, "pipe", true, None)).unwrap();
    let mut a = args(d, "pipe", false, None);
    a.stage = Some("nope".into());
    assert!(format!("{:#}", run(&a).unwrap_err()).contains("no stage 'nope'"));
}

/// configs/release.json, the recipe of the shipped weights, end to end at a toy size: every stage
/// as written (objectives, guidance, deepening, the adversarial adapter) at 2 steps of batch 2,
/// crops of 64 px and a narrow network; and at full size it ends in the shipped architecture.
#[test]
fn release_recipe_runs_end_to_end_at_toy_size() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("configs/release.json")).unwrap())
            .unwrap();
    let shipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("weights/config.json")).unwrap())
            .unwrap();
    let stages = v["stages"].as_array_mut().unwrap();
    let last = &stages.last().unwrap()["model"];
    for k in ["unet", "bridge", "w_max"] {
        assert_eq!(
            last[k], shipped[k],
            "the recipe's last stage must build the shipped {k}"
        );
    }
    let names: Vec<String> = stages
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    for st in stages.iter_mut() {
        st["model"]["unet"]["widths"] = serde_json::json!([8, 16, 16]);
        st["model"]["unet"]["cond"]["dim"] = 16.into();
        if st.get("stop_after").is_some() {
            st["steps"] = 3.into();
            st["stop_after"] = 2.into();
        } else {
            st["steps"] = 2.into();
        }
        st["warmup"] = 1.into();
        st["batch"] = 2.into();
        st["crop"] = 64.into();
        for k in ["log_every", "val_every", "ckpt_every"] {
            st[k] = 1.into();
        }
        if st.get("adversarial").is_some() {
            st["adversarial"]["discriminator"]["widths"] = serde_json::json!([8, 8]);
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    synthetic_images(&d.join("data"), 2);
    // Crops of 64 px need images at least that big.
    for i in 0..2 {
        let img = image::RgbImage::from_fn(80, 72, |x, y| {
            image::Rgb([(x * 3 + i) as u8, (y * 5) as u8, ((x * y) % 251) as u8])
        });
        img.save(d.join("data").join(format!("big{i}.png")))
            .unwrap();
    }
    synthetic_images(&d.join("val"), 1);
    save_config(d, &v);
    run(&args(d, "release", false, None)).unwrap();
    for st in &names {
        let done = std::fs::read_to_string(d.join("release").join(st).join("DONE"))
            .unwrap_or_else(|e| panic!("{st}: {e}"));
        // Two steps each; the guidance stage stops at 2 of its 3 (`stop_after`).
        assert_eq!(done.trim(), "2", "{st}");
    }
    let fin = d.join("release").join(names.last().unwrap()).join("final");
    assert!(fin.join("lora.bin").exists());
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fin.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["unet"]["blocks"], shipped["unet"]["blocks"]);
    assert_eq!(cfg["w_max"], shipped["w_max"]);
}

#[test]
fn bad_training_config_is_a_clear_error() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    synthetic_images(&d.join("data"), 1);
    std::fs::write(d.join("train.json"), r#"{"model": 3}"#).unwrap();
    let e = run(&args(d, "x", false, None)).unwrap_err();
    assert!(format!("{e:#}").contains("train.json"), "{e:#}");
    let p = config(d, 4);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["crop"] = 30.into();
    save_config(d, &v);
    let e = run(&args(d, "x", false, None)).unwrap_err();
    assert!(format!("{e:#}").contains("crop"), "{e:#}");
}

#[test]
fn every_objective_trains_on_the_unet() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    use flowmapsr_cli::train::Objective;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    synthetic_images(&d.join("data"), 2);
    synthetic_images(&d.join("val"), 1);
    config(d, 2);
    for o in [
        Objective::Shortcut,
        Objective::Lagrangian,
        Objective::Eulerian,
        Objective::FlowMatching,
    ] {
        let name = format!("{o:?}");
        let mut a = args(d, &name, false, None);
        a.objective = Some(o);
        run(&a).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(d.join(&name).join("final/model.bin").exists(), "{name}");
    }
}

/// Learned weighting: its net and optimiser are checkpointed, so an interrupted run resumes to
/// exactly the uninterrupted one; and it changes training (the weights differ from uniform's).
#[test]
fn learned_weighting_checkpoints_and_resumes_exactly() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    use flowmapsr_cli::train::Weighting;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    synthetic_images(&d.join("data"), 2);
    synthetic_images(&d.join("val"), 1);
    config(d, 6);
    let learned = |out: &str, resume: bool, max: Option<usize>| {
        let mut a = args(d, out, resume, max);
        a.weighting = Some(Weighting::Learned);
        a
    };
    run(&learned("full", false, None)).unwrap();
    run(&learned("split", false, Some(3))).unwrap();
    let ckpt = std::fs::read_to_string(d.join("split/latest")).unwrap();
    for f in ["weight.bin", "weight_optim.bin"] {
        assert!(d.join("split").join(ckpt.trim()).join(f).exists(), "{f}");
    }
    // Resuming a learned-weighting run without its weighting is refused, not silently changed.
    let e = {
        let mut a = args(d, "uniform-then-learned", false, Some(2));
        run(&a).unwrap();
        a.resume = true;
        a.weighting = Some(Weighting::Learned);
        a.max_steps = None;
        run(&a).unwrap_err()
    };
    assert!(format!("{e:#}").contains("uniform weighting"), "{e:#}");
    run(&learned("split", true, None)).unwrap();
    run(&args(d, "uniform", false, None)).unwrap();
    let out = |run: &str| {
        let dev = burn::backend::flex::FlexDevice;
        let (net, cfg) = flowmapsr_core::weights::load_dir::<burn::backend::Flex>(
            &d.join(run).join("final"),
            &dev,
        )
        .unwrap();
        let lr =
            flowmapsr_core::Image::new(8, 8, 3, (0..192).map(|i| (i % 13) as f32 / 12.0).collect())
                .unwrap();
        let opts = flowmapsr_core::sampler::SampleOptions::default();
        flowmapsr_core::sampler::upscale(&net, &cfg, &lr, 4, &opts, &dev, &mut |_, _| true)
            .unwrap()
            .data
    };
    let gap = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    let (full, split) = (out("full"), out("split"));
    assert!(
        gap(&full, &split) < 1e-6,
        "resumed run differs: {}",
        gap(&full, &split)
    );
    // u starts at 0 (uniform), so the runs part only after the weighting net has moved.
    let bytes = |run: &str| std::fs::read(d.join(run).join("final/model.bin")).unwrap();
    assert_ne!(
        bytes("full"),
        bytes("uniform"),
        "learned weighting changed nothing"
    );
}

/// `--precision bf16`: the network computes in bf16 while the weights stay f32; the run saves f32
/// weights that load and upscale, and it trains like f32 (same data, same seed: close, not equal).
#[test]
fn bf16_training_keeps_f32_weights_and_follows_f32() {
    let _one_at_a_time = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    use flowmapsr_core::precision::Precision;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    synthetic_images(&d.join("data"), 2);
    synthetic_images(&d.join("val"), 1);
    config(d, 4);
    let mut a = args(d, "bf16", false, None);
    a.precision = Some(Precision::Bf16);
    run(&a).unwrap();
    run(&args(d, "f32", false, None)).unwrap();
    // No steps: final/ holds the initial weights (the same seed draws the same init).
    run(&args(d, "init", false, Some(0))).unwrap();
    let dev = burn::backend::flex::FlexDevice;
    let params = |run: &str| {
        let (net, _) = flowmapsr_core::weights::load_dir::<burn::backend::Flex>(
            &d.join(run).join("final"),
            &dev,
        )
        .unwrap();
        let mut v = Vec::new();
        burn::module::Module::visit(&net, &mut Collect(&mut v));
        v
    };
    let (bf, f, w0) = (params("bf16"), params("f32"), params("init"));
    assert_eq!(bf.len(), f.len());
    // Both runs moved the weights from the same init by nearly the same update (measured: 0.3%
    // apart).
    let (mut diff, mut moved) = (0f64, 0f64);
    for ((a, b), w) in bf.iter().zip(&f).zip(&w0) {
        diff += ((a - b) as f64).powi(2);
        moved += ((b - w) as f64).powi(2);
    }
    let rel = (diff / moved).sqrt();
    eprintln!("bf16 vs f32 update: relative L2 {rel}");
    assert!(moved > 0.0, "f32 training did not move the weights");
    assert!(
        rel > 0.0,
        "bf16 and f32 runs are identical: bf16 was not used"
    );
    assert!(
        rel < 0.05,
        "bf16's update differs from f32's by {rel} (relative L2)"
    );
}

struct Collect<'a>(&'a mut Vec<f32>);

impl burn::module::ModuleVisitor<burn::backend::Flex> for Collect<'_> {
    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<burn::backend::Flex, D>>,
    ) {
        assert_eq!(param.val().dtype(), burn::tensor::DType::F32);
        self.0
            .extend(param.val().into_data().to_vec::<f32>().unwrap());
    }
}
