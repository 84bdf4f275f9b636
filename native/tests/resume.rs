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

#[test]
fn adversarial_runs_resume_from_any_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    synthetic_images(&d.join("data"), 3);
    synthetic_images(&d.join("val"), 1);
    let base = write_config(d, "base.json", false);
    run_ok(train_cmd(d, &base, "base", &["--max-steps", "2"]));
    let cfg = write_config(d, "adv.json", true);
    let init = d.join("base/final");
    kill_and_resume_everywhere(d, &cfg, &["--init", init.to_str().unwrap()], 2.0);
}
