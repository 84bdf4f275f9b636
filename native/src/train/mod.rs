//! `flowmapsr train`: random HR crops -> online degradations at a scale drawn from x2/x4/x8 ->
//! objective -> Adam -> EMA; periodic validation (PSNR-Y, x4, NFE 1, fidelity mode, EMA weights)
//! and atomic checkpoints that `--resume` continues from exactly: each step's randomness is
//! derived from (seed, step), so a resumed run draws the same batches.
//!
//! By concern: [`config`] (the JSON schema and its checks), [`data`] (images), [`checkpoint`]
//! (the run folder's checkpoints, shared with the adversarial trainer), [`distributed`]
//! (data-parallel topology and the gradient all-reduce), [`flow`] (the flow-map training loop).
//! Batches and objectives themselves live in core (`batch.rs`, `objectives/`).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod flow;
pub mod log;

pub(crate) use checkpoint::read_in;
pub use checkpoint::{latest_step, Checkpoint, RunState, ValPoint};
pub use config::{TrainConfig, Weighting};
pub use data::load_split;
pub use flow::validate;
pub use flowmapsr_core::objectives::Objective;

use crate::backend::DeviceKind;
use anyhow::{bail, Context, Result};
use flowmapsr_core::precision::Precision;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training config (JSON, see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Folders of HR training images.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Folder of HR validation images (scored x4, NFE 1, fidelity mode). Never a test set.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Validate on this many of the --data images instead, spread evenly over their sorted list
    /// and kept out of training.
    #[arg(long, default_value_t = 0, conflicts_with = "val")]
    pub holdout: usize,
    /// Run folder: checkpoints, logs, best/ and final/ weights.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the run folder's last checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Stop after this many steps in this invocation (the schedule still spans `steps`).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Start a fresh run from these weights (config.json + model.bin, e.g. an earlier run's
    /// best/): fine-tuning or a longer schedule. The architecture must match the config's.
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// With --init on an adversarial config: start the discriminator from DIR (disc.bin, and its
    /// optimiser from optim_d.bin when DIR has one), e.g. an earlier run's checkpoint folder or
    /// checkpoints/realistic-critic/, so that a new run continues the contest where the last one
    /// stopped instead of facing an untrained discriminator.
    #[arg(long, requires = "init")]
    pub init_critic: Option<PathBuf>,
    /// Data-parallel training on several local devices of one kind, e.g. `cpu,cpu` or
    /// `cuda:0,cuda:1`: each device takes an equal share of the batch and the gradients are
    /// averaged with burn-collective's all-reduce. Replaces --device.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    pub devices: Option<Vec<DeviceKind>>,
    /// Override the config's objective.
    #[arg(long, value_enum)]
    pub objective: Option<Objective>,
    /// Override the config's loss weighting.
    #[arg(long, value_enum)]
    pub weighting: Option<Weighting>,
    /// Override the config's compute precision: f32, or bf16 / f16 compute with f32 master
    /// weights (core precision.rs; bf16 is the one to use on GPUs).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// With a staged config (`stages`, see pipeline.rs): run only this stage.
    #[arg(long)]
    pub stage: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// One process per node: every node runs `flowmapsr train` with the same config and data,
/// its own --node-rank, and the address of one `flowmapsr orchestrator` (docs/distributed.md).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Number of nodes (processes) in the run.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// This node's index in 0..nodes (node 0 validates and logs).
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    /// Address of `flowmapsr orchestrator`, e.g. ws://10.0.0.1:3000.
    #[arg(long)]
    pub orchestrator: Option<String>,
    /// This node's data-service address as the other nodes reach it, e.g. ws://10.0.0.2:3001.
    #[arg(long)]
    pub node_address: Option<String>,
    /// Port this node's data service listens on (the port of --node-address).
    #[arg(long)]
    pub data_port: Option<u16>,
}

impl Default for NodeArgs {
    fn default() -> Self {
        Self {
            nodes: 1,
            node_rank: 0,
            orchestrator: None,
            node_address: None,
            data_port: None,
        }
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let s = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let file: serde_json::Value =
        serde_json::from_str(&s).with_context(|| format!("parsing {}", args.config.display()))?;
    if file.get("stages").is_some() {
        return crate::pipeline::run(args, &file)
            .with_context(|| format!("pipeline {}", args.config.display()));
    }
    if args.stage.is_some() {
        bail!("--stage needs a config with `stages`");
    }
    let cfg = TrainConfig::from_value(file, || {
        crate::adversarial::base_model(&crate::adversarial::base_dir(args)?, None, false)
    })
    .with_context(|| format!("config {}", args.config.display()))?;
    run_config(args, cfg)
}

/// One run with `cfg` (the CLI's overrides applied here).
pub fn run_config(args: &TrainArgs, mut cfg: TrainConfig) -> Result<()> {
    if let Some(o) = args.objective {
        cfg.objective = o;
    }
    if let Some(w) = args.weighting {
        cfg.weighting = w;
    }
    if let Some(p) = args.precision {
        cfg.precision = p;
    }
    if let (Some(dir), None) = (&args.init_critic, &cfg.adversarial) {
        bail!(
            "--init-critic {}: the config has no `adversarial` section, so there is no \
             discriminator to start",
            dir.display()
        );
    }
    let kinds = args.devices.clone().unwrap_or_else(|| vec![args.device]);
    let first = *kinds.first().context("--devices is empty")?;
    if kinds
        .iter()
        .any(|k| std::mem::discriminant(k) != std::mem::discriminant(&first))
    {
        bail!("--devices must all be of one kind (cpu, wgpu or cuda:N)");
    }
    crate::with_backend!(first, |B, device| {
        let mut devices = vec![device];
        devices.extend(
            kinds[1..]
                .iter()
                .map(|k| <B as crate::backend::DeviceOf>::device_of(*k)),
        );
        flow::train::<burn::backend::Autodiff<B>>(args, &cfg, devices)
    })
}
