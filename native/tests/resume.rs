//! Real training runs killed with SIGKILL at several points (before the first checkpoint,
//! between a checkpoint and the first validation, after a validation) resume with `--resume` to
//! exactly the result of the uninterrupted run: for the flow-map trainer and the adversarial one.

use flowmapsr_tests::synthetic_images;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use std::process::{Command, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowmapsr"));
    c.env("RUST_LOG", "info");
    c
}

/// Checkpoints every 2 steps, validation every 3, a log line every step.
fn write_config(dir: &Path, name: &str, adversarial: bool) -> PathBuf {
    let mut cfg = serde_json::json!({
        "model": {
            "unet": { "channels": 12, "widths": [8, 16], "blocks": [1, 1], "cond": { "dim": 16, "octaves": 3 } },
            "bridge": { "sigma_b": 0.005, "sigma_0": 0.1 },
            "notes": "test"
        },
        "objective": "shortcut",
        "degrade": { "p_bicubic": 0.5 },
        "scale_mix": [0.3, 0.4, 0.3],
        "crop": 32, "batch": 4, "steps": 8, "lr": 0.002, "warmup": 2,
        "ema_decay": 0.9, "seed": 7, "log_every": 1, "val_every": 3, "ckpt_every": 2
    });
    if adversarial {
        cfg.as_object_mut().unwrap().remove("model");
        cfg["adversarial"] = serde_json::json!({
            "lora": { "rank": 2 }, "discriminator": { "widths": [8, 8] }, "lr_d": 0.002
        });
    }
    let p = dir.join(name);
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn train_cmd(d: &Path, config: &Path, out: &str, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("train")
        .arg("--config")
        .arg(config)
        .arg("--data")
        .arg(d.join("data"))
        .arg("--val")
        .arg(d.join("val"))
        .arg("--out")
        .arg(d.join(out))
        .args(extra);
    c
}

/// Runs to the end; its log.
fn run_ok(mut c: Command) -> String {
    let o = c.output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    log
}

/// Starts the run and SIGKILLs it as soon as its log shows `trigger`.
fn kill_at(mut c: Command, trigger: &str) {
    let mut child = c.stderr(Stdio::piped()).spawn().unwrap();
    let mut log = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let hit = line.contains(trigger);
        log.push(line);
        if hit {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run ended before '{trigger}':\n{}",
        log.join("\n")
    );
}

/// The state of the run folder's latest checkpoint, if any.
fn latest_state(out: &Path) -> Option<serde_json::Value> {
    let name = std::fs::read_to_string(out.join("latest")).ok()?;
    let p = out.join(name.trim()).join("state.json");
    Some(serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
}

/// The largest difference between the x4 outputs of two weights folders (at LoRA `lora`).
/// Weight files are not compared byte for byte: burn records carry per-process parameter ids.
fn max_gap(a: &Path, b: &Path, lora: f32) -> f32 {
    type B = burn::backend::Flex;
    let dev = burn::backend::flex::FlexDevice;
    let lr =
        flowmapsr_core::Image::new(10, 6, 3, (0..180).map(|i| (i % 17) as f32 / 16.0).collect())
            .unwrap();
    let opts = flowmapsr_core::sampler::SampleOptions {
        tile: 32,
        overlap: 8,
        ..Default::default()
    };
    let sr = |dir: &Path| {
        let (m, cfg) = flowmapsr_cli::weights::load_adapted::<B>(Some(dir), &dev).unwrap();
        let net = m.at(lora).unwrap();
        flowmapsr_core::sampler::upscale(&net, &cfg, &lr, 4, &opts, &dev, &mut |_, _| true).unwrap()
    };
    let (x, y) = (sr(a), sr(b));
    x.data
        .iter()
        .zip(&y.data)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max)
}

/// Kills a run (started with `extra`) at each point, checks what the kill left on disk, resumes
/// it, and compares the final files with the uninterrupted run's.
fn kill_and_resume_everywhere(d: &Path, config: &Path, extra: &[&str], lora: f32) {
    run_ok(train_cmd(d, config, "full", extra));
    // (trigger in the log, what the latest checkpoint must hold when the kill lands)
    // (name, trigger in the log, what the latest checkpoint must hold when the kill lands, what
    // the resumed run says)
    type Left = fn(Option<serde_json::Value>) -> bool;
    let points: [(&str, &str, Left, &str); 3] = [
        ("before-ckpt", "step 1 ", |s| s.is_none(), "no checkpoint"),
        (
            "ckpt-no-val",
            "step 3 ",
            |s| s.is_some_and(|s| s["step"] == 2 && s["history"].as_array().unwrap().is_empty()),
            "at step 2",
        ),
        (
            "after-val",
            "step 5 ",
            |s| s.is_some_and(|s| s["step"] == 4 && s["history"].as_array().unwrap().len() == 1),
            "at step 4",
        ),
    ];
    for (name, trigger, left, says) in points {
        kill_at(train_cmd(d, config, name, extra), trigger);
        let state = latest_state(&d.join(name));
        assert!(left(state.clone()), "{name}: latest checkpoint {state:?}");
        // --resume needs nothing else: the adversarial trainer keeps its base in OUT/base.
        let log = run_ok(train_cmd(d, config, name, &["--resume"]));
        assert!(
            log.contains(says),
            "{name}: the resumed run should say '{says}':\n{log}"
        );
        let gap = max_gap(&d.join("full/final"), &d.join(name).join("final"), lora);
        assert!(
            gap < 1e-6,
            "{name}: the resumed run ends {gap} away from the uninterrupted one"
        );
        let full = latest_state(&d.join("full")).unwrap();
        let resumed = latest_state(&d.join(name)).unwrap();
        assert_eq!(full["step"], resumed["step"], "{name}");
        assert_eq!(
            full["history"].as_array().unwrap().len(),
            resumed["history"].as_array().unwrap().len(),
            "{name}"
        );
    }
}

#[test]
fn flow_map_runs_resume_from_any_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    synthetic_images(&d.join("data"), 3);
    synthetic_images(&d.join("val"), 1);
    let cfg = write_config(d, "flow.json", false);
    kill_and_resume_everywhere(d, &cfg, &[], 0.0);
}

/// Training and validation images in `d`, and a flow-map base trained 2 steps on them: the
/// `--init` of the adversarial runs (its `final/`).
fn trained_base(d: &Path) -> PathBuf {
    synthetic_images(&d.join("data"), 3);
    synthetic_images(&d.join("val"), 1);
    let base = write_config(d, "base.json", false);
    run_ok(train_cmd(d, &base, "base", &["--max-steps", "2"]));
    d.join("base/final")
}

#[test]
fn adversarial_runs_resume_from_any_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let init = trained_base(d);
    let cfg = write_config(d, "adv.json", true);
    kill_and_resume_everywhere(d, &cfg, &["--init", init.to_str().unwrap()], 2.0);
}

/// A whole-network adversarial run packed at its latest checkpoint (`flowmapsr pack`: the
/// generator and its EMA in f16, no generator optimiser, the base beside them) resumes from the
/// pack alone and finishes the same schedule close to the run that kept its folder.
#[test]
fn packed_whole_network_runs_resume_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let init = trained_base(d);
    // The base grown by one block at the second level, trained whole.
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(write_config(d, "x.json", false)).unwrap()).unwrap();
    cfg["model"]["unet"]["blocks"] = serde_json::json!([1, 2]);
    cfg["adversarial"] = serde_json::json!({
        "generator": "full", "discriminator": { "widths": [8, 8] }, "lr_d": 0.002
    });
    let full = d.join("full.json");
    std::fs::write(&full, cfg.to_string()).unwrap();
    let init = init.to_str().unwrap();
    run_ok(train_cmd(
        d,
        &full,
        "run",
        &["--init", init, "--max-steps", "4"],
    ));

    let pack = |run: &str, out: &str, config: &Path| {
        let mut c = bin();
        c.arg("pack")
            .arg("--config")
            .arg(config)
            .arg("--run")
            .arg(d.join(run))
            .arg("--output")
            .arg(d.join(out));
        c.output().unwrap()
    };
    let o = pack("run", "packed", &full);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(step 4)"));
    let ck = |out: &str| {
        let name = std::fs::read_to_string(d.join(out).join("latest")).unwrap();
        d.join(out).join(name.trim())
    };
    let (kept, packed) = (ck("run"), ck("packed"));
    assert!(kept.join("optim_g.bin").exists() && !packed.join("optim_g.bin").exists());
    for f in ["model.bin", "ema.bin"] {
        let (a, b) = (
            std::fs::read(kept.join(f)).unwrap(),
            std::fs::read(packed.join(f)).unwrap(),
        );
        assert_eq!(&b[..8], b"FMSRWTH1", "{f} is not f16");
        assert!(
            b.len() * 10 < a.len() * 6,
            "{f}: {} bytes of {}",
            b.len(),
            a.len()
        );
    }
    for f in ["disc.bin", "optim_d.bin"] {
        assert_eq!(
            std::fs::read(kept.join(f)).unwrap(),
            std::fs::read(packed.join(f)).unwrap()
        );
    }
    // Refused: into itself, and a run of another kind (a LoRA config).
    assert!(!pack("run", "run", &full).status.success());
    let lora = write_config(d, "lora.json", true);
    let o = pack("run", "other", &lora);
    assert!(!o.status.success() && !d.join("other").exists());
    assert!(String::from_utf8_lossy(&o.stderr).contains("whole-network"));

    // Both finish the schedule: the pack from its own folder, the run from its own.
    let log = run_ok(train_cmd(d, &full, "packed", &["--resume"]));
    assert!(
        log.contains("at step 4") && log.contains("starts fresh"),
        "{log}"
    );
    let kept_log = run_ok(train_cmd(d, &full, "run", &["--resume"]));
    // The fresh Adam's first step is taken at half the learning rate (warm-up 2, as at step 0).
    let lr = |log: &str| -> f64 {
        let at = log.find("step 5 lr ").expect("step 5 logged") + "step 5 lr ".len();
        log[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (a, b) = (lr(&kept_log), lr(&log));
    assert!(
        (b / a - 0.5).abs() < 0.01,
        "lr {b} after the pack, {a} without"
    );
    let (a, b) = (
        latest_state(&d.join("run")).unwrap(),
        latest_state(&d.join("packed")).unwrap(),
    );
    assert_eq!((a["step"].clone(), b["step"].clone()), (8.into(), 8.into()));
    let (ha, hb) = (
        a["history"].as_array().unwrap(),
        b["history"].as_array().unwrap(),
    );
    // The validations up to the pack (steps 3 and 4, the end of the first invocation) are
    // carried as they were; those at steps 6 and 8 are the resumed runs' own.
    let steps = |h: &[serde_json::Value]| h.iter().map(|p| p["step"].clone()).collect::<Vec<_>>();
    assert_eq!(steps(ha), [3, 4, 6, 8].map(serde_json::Value::from));
    assert_eq!(steps(hb), steps(ha));
    assert_eq!(ha[..2], hb[..2]);
    let gap = max_gap(&d.join("run/final"), &d.join("packed/final"), 0.0);
    eprintln!("the packed run ends {gap} away from the kept one");
    assert!(
        gap.is_finite() && gap < 0.05,
        "the packed run ends {gap} away"
    );
}
