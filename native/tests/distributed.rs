//! Data-parallel training on burn-collective: a step on 2 devices with global batch B must give
//! the same weights as a step on 1 device with batch B — two CPU devices in one process, and two
//! processes (one per "node") joined through `flowmapsr orchestrator` on 127.0.0.1.
//!
//! The objective is the fidelity anchor alone (no random times or noise), so the only difference
//! between the runs is how the batch is split and the gradients are averaged. Tolerance: 1e-6 on
//! every weight, against a change of up to ~5e-4 per weight per step (lr 1e-3, Adam) — a replica
//! that stepped on its own half-batch without the all-reduce differs by that much and fails.

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};
use flowmapsr_cli::train::{run, NodeArgs, TrainArgs};
use flowmapsr_tests::synthetic_images;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn setup(d: &Path) {
    synthetic_images(&d.join("data"), 3);
    let cfg = serde_json::json!({
        "model": {
            "unet": { "channels": 12, "widths": [8, 16], "blocks": [1, 1], "cond": { "dim": 16, "octaves": 3 } },
            "bridge": { "sigma_b": 0.005, "sigma_0": 0.1 },
            "notes": "distributed test"
        },
        "objective": "shortcut",
        "shortcut": { "sc_fraction": 0.0, "anchor_fraction": 1.0, "max_log2": 3, "p_source_noise": 0.0 },
        "degrade": { "p_bicubic": 1.0 },
        "scale_mix": [0.3, 0.4, 0.3],
        "crop": 32, "batch": 4, "steps": 2, "lr": 0.001, "warmup": 0,
        "ema_decay": 0.9, "seed": 11, "log_every": 1, "val_every": 100, "ckpt_every": 1
    });
    std::fs::write(d.join("train.json"), cfg.to_string()).unwrap();
}

fn args(d: &Path, out: &str, devices: &[&str]) -> TrainArgs {
    TrainArgs {
        config: d.join("train.json"),
        data: vec![d.join("data")],
        val: None,
        holdout: 0,
        out: d.join(out),
        resume: false,
        device: "cpu".parse().unwrap(),
        max_steps: None,
        init: None,
        init_critic: None,
        devices: Some(devices.iter().map(|s| s.parse().unwrap()).collect()),
        node: NodeArgs::default(),
        objective: None,
        weighting: None,
        precision: None,
        stage: None,
    }
}

/// One test at a time in this process: burn-collective registers a run's peers process-wide,
/// and the CPU backend's seeded generator is one per process (a test that draws from it between
/// another's seed and initialisation would give that run other weights).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

struct Collect(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        self.0.extend(p.val().into_data().to_vec::<f32>().unwrap());
    }
}

/// All weights of the student in `run/ckpt-XXXXXXXX/model.bin`.
fn weights(run: &Path, step: usize) -> Vec<f32> {
    let json = std::fs::read(run.join("final/config.json")).unwrap();
    let cfg = flowmapsr_core::weights::ModelConfig::from_json(&json).unwrap();
    let dev = Default::default();
    let bytes = std::fs::read(run.join(format!("ckpt-{step:08}/model.bin"))).unwrap();
    let net = cfg.unet.init::<Flex>(&dev);
    let net = flowmapsr_core::weights::module_from_bytes(net, &bytes, &dev).unwrap();
    let mut c = Collect(Vec::new());
    net.visit(&mut c);
    c.0
}

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const TOL: f32 = 1e-6;

#[test]
fn two_devices_one_process_and_two_nodes_match_one_device() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);

    run(&args(d, "one", &["cpu"])).unwrap();
    run(&args(d, "two", &["cpu", "cpu"])).unwrap();
    let one = weights(&d.join("one"), 2);
    let two = weights(&d.join("two"), 2);
    // The same run stopped after one step: how far the second step moved the weights.
    let mut a = args(d, "one_step", &["cpu"]);
    a.max_steps = Some(1);
    run(&a).unwrap();
    let moved = max_gap(&one, &weights(&d.join("one_step"), 1));
    assert!(moved > 1e-4, "training did not move the weights ({moved})");
    let gap = max_gap(&one, &two);
    eprintln!("second step moved weights by up to {moved:.3e}; 2 devices vs 1: {gap:.3e}");
    assert!(
        gap < TOL,
        "2 devices vs 1: max weight gap {gap} (step moved {moved})"
    );

    // Two processes standing in for two nodes, one CPU device each.
    run_two_nodes(d, "train.json", "node", &[]);
    let n0 = weights(&d.join("node0"), 2);
    let n1 = weights(&d.join("node1"), 2);
    assert_eq!(max_gap(&n0, &n1), 0.0, "the two nodes' replicas differ");
    let gap = max_gap(&one, &n0);
    eprintln!("2 nodes vs 1 device: {gap:.3e}");
    assert!(gap < TOL, "2 nodes vs 1 device: max weight gap {gap}");
}

/// Kills a child process when the test ends, pass or fail.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `flowmapsr train` as two nodes (outputs `{prefix}0`, `{prefix}1`) through an orchestrator
/// on 127.0.0.1 and waits for both.
fn run_two_nodes(d: &Path, config: &str, prefix: &str, extra: &[&str]) {
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let bin = env!("CARGO_BIN_EXE_flowmapsr");
    let orch_port = free_port();
    let _orch = Kill(
        Command::new(bin)
            .args(["orchestrator", "--port", &orch_port.to_string()])
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let nodes: Vec<Kill> = (0..2)
        .map(|r| {
            let port = free_port();
            let out: PathBuf = d.join(format!("{prefix}{r}"));
            Kill(
                Command::new(bin)
                    .args(["train", "--config"])
                    .arg(d.join(config))
                    .arg("--data")
                    .arg(d.join("data"))
                    .arg("--out")
                    .arg(&out)
                    .args([
                        "--device",
                        "cpu",
                        "--nodes",
                        "2",
                        "--node-rank",
                        &r.to_string(),
                    ])
                    .args(["--orchestrator", &format!("ws://127.0.0.1:{orch_port}")])
                    .args(["--node-address", &format!("ws://127.0.0.1:{port}")])
                    .args(["--data-port", &port.to_string()])
                    .args(extra)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for mut n in nodes {
        loop {
            if let Some(st) = n.0.try_wait().unwrap() {
                assert!(st.success(), "a node exited with {st}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "multi-node run did not finish in 120 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Learned loss weighting across nodes: each node's rows have their own (s, t), so the nodes'
/// loss-weight nets only stay identical if their gradients are averaged too (the model's are
/// averaged either way). u starts at exactly 0 and must have moved.
#[test]
fn learned_weighting_nets_stay_identical_across_nodes() {
    let _one = one_at_a_time();
    use flowmapsr_core::objectives::weighting::{LossWeight, LossWeightConfig};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("train.json")).unwrap()).unwrap();
    cfg["shortcut"] = serde_json::json!({ "sc_fraction": 0.25, "anchor_fraction": 0.25, "max_log2": 3, "p_source_noise": 0.5 });
    cfg["steps"] = 3.into();
    std::fs::write(d.join("lw.json"), cfg.to_string()).unwrap();
    run_two_nodes(d, "lw.json", "lw", &["--weighting", "learned"]);
    let net = |r: usize| -> LossWeight<Flex> {
        let bytes = std::fs::read(d.join(format!("lw{r}/ckpt-00000003/weight.bin"))).unwrap();
        let dev = Default::default();
        flowmapsr_core::weights::module_from_bytes(LossWeightConfig::new().init(&dev), &bytes, &dev)
            .unwrap()
    };
    let (s, t) = ([0.0, 0.2, 0.5, 0.0], [0.0, 0.7, 0.5, 1.0]);
    let u = |r: usize| {
        net(r)
            .forward(&s, &t, &Default::default())
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let (u0, u1) = (u(0), u(1));
    eprintln!("u after 3 steps, node 0: {u0:?}, node 1: {u1:?}");
    assert_eq!(u0, u1, "the nodes' loss-weight nets differ");
    assert!(u0.iter().any(|v| v.abs() > 1e-6), "u never moved: {u0:?}");
}

/// Whole-network adversarial training on 2 CPU devices (native adversarial/full.rs): each takes
/// half the batch, and the discriminator's and the generator's gradients are each averaged over
/// the replicas, so 2 steps match 1 device's.
#[test]
fn adversarial_on_two_devices_matches_one_device() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let adv = adversarial_setup(d, 0);
    adv("adv_one", &["cpu"], None);
    adv("adv_two", &["cpu", "cpu"], None);
    adv("adv_one_step", &["cpu"], Some(1));
    let one = weights(&d.join("adv_one"), 2);
    // A stopped run has no final/; its network is the finished one's.
    std::fs::create_dir_all(d.join("adv_one_step/final")).unwrap();
    std::fs::copy(
        d.join("adv_one/final/config.json"),
        d.join("adv_one_step/final/config.json"),
    )
    .unwrap();
    let moved = max_gap(&one, &weights(&d.join("adv_one_step"), 1));
    assert!(moved > 1e-4, "training did not move the weights ({moved})");
    let gap = max_gap(&one, &weights(&d.join("adv_two"), 2));
    eprintln!(
        "adversarial: second step moved weights by up to {moved:.3e}; 2 devices vs 1: {gap:.3e}"
    );
    assert!(
        gap < TOL,
        "2 devices vs 1: max weight gap {gap} (step moved {moved})"
    );
}

/// A fresh discriminator before step 1 (`critic_reset_every` 1): the lead draws it and hands it
/// to the other replica, so 2 devices still match 1 (a replica that drew its own would judge the
/// fakes by other weights, and its half of the generator's gradient would differ), and the run
/// differs from one that kept its discriminator.
#[test]
fn a_fresh_discriminator_is_the_same_on_every_replica() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let adv = adversarial_setup(d, 1);
    adv("reset_one", &["cpu"], None);
    adv("reset_two", &["cpu", "cpu"], None);
    let one = weights(&d.join("reset_one"), 2);
    let gap = max_gap(&one, &weights(&d.join("reset_two"), 2));
    assert!(
        gap < TOL,
        "2 devices vs 1 with a fresh discriminator: {gap}"
    );
    write_adversarial(d, 0, false);
    adv("kept", &["cpu"], None);
    let apart = max_gap(&one, &weights(&d.join("kept"), 2));
    eprintln!("fresh discriminator: 2 devices vs 1 {gap:.3e}; against a kept one {apart:.3e}");
    assert!(
        apart > 1e-6,
        "a fresh discriminator changed nothing ({apart})"
    );
}

/// `grain_cut`: the discriminator and every generator term judge the cut images, the same way on
/// every replica (2 devices match 1), and the run is not the one without the cut.
#[test]
fn the_grain_cut_trains_on_two_devices_as_on_one() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let adv = adversarial_setup(d, 0);
    adv("uncut", &["cpu"], None);
    write_adversarial(d, 0, true);
    adv("cut_one", &["cpu"], None);
    adv("cut_two", &["cpu", "cpu"], None);
    let one = weights(&d.join("cut_one"), 2);
    let gap = max_gap(&one, &weights(&d.join("cut_two"), 2));
    let apart = max_gap(&one, &weights(&d.join("uncut"), 2));
    eprintln!("grain cut: 2 devices vs 1 {gap:.3e}; against no cut {apart:.3e}");
    assert!(gap < TOL, "2 devices vs 1 with the grain cut: {gap}");
    assert!(apart > 1e-6, "the grain cut changed nothing ({apart})");
}

/// A trained base in `d/base` and the adversarial config `d/adv.json`; returns a launcher
/// `(out, devices, max_steps)` of runs from that base with that config.
fn adversarial_setup(
    d: &Path,
    critic_reset_every: usize,
) -> impl Fn(&str, &[&str], Option<usize>) + '_ {
    setup(d);
    run(&args(d, "base", &["cpu"])).unwrap();
    write_adversarial(d, critic_reset_every, false);
    move |out: &str, devices: &[&str], max: Option<usize>| {
        let mut a = args(d, out, devices);
        a.config = d.join("adv.json");
        a.init = Some(d.join("base/final"));
        a.max_steps = max;
        run(&a).unwrap();
    }
}

/// `d/adv.json`: `d/train.json` with a U-Net discriminator with spectral normalisation, R1/R2
/// off (their perturbations are drawn per replica), a fresh discriminator every
/// `critic_reset_every` steps (0: never) and the images judged with the grain cut or not.
fn write_adversarial(d: &Path, critic_reset_every: usize, grain_cut: bool) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("train.json")).unwrap()).unwrap();
    v["val_every"] = 100.into();
    v["adversarial"] = serde_json::json!({
        "generator": "full",
        "discriminator": { "widths": [8, 8, 8], "unet": true, "spectral_norm": true },
        "gamma": 0.0, "lr_d": 0.002, "gan_weight": 0.1, "rec_weight": 0.0,
        "rec_l1_weight": 1.0, "fm_weight": 1.0, "gms_weight": 1.0,
        "critic_reset_every": critic_reset_every, "grain_cut": grain_cut
    });
    std::fs::write(d.join("adv.json"), v.to_string()).unwrap();
}
