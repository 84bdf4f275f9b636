//! `flowmapsr train`: random HR crops (8 dihedral transforms) -> online degradations at a scale
//! drawn from x2/x4/x8 -> objective -> Adam -> EMA; periodic validation (PSNR-Y, x4, NFE 1,
//! fidelity mode, EMA weights) and atomic checkpoints that `--resume` continues from exactly:
//! each step's randomness is derived from (seed, step), so a resumed run draws the same batches.

use crate::backend::DeviceKind;
use crate::imageio;
use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use flowmapsr_core::adversarial::AdversarialConfig;
use flowmapsr_core::bridge::Mode;
use flowmapsr_core::degrade::{degrade, DegradeConfig};
use flowmapsr_core::objectives::eulerian::eulerian;
use flowmapsr_core::objectives::flow_matching::{flow_matching, FlowMatchingConfig};
use flowmapsr_core::objectives::guidance::{negative_target, GuidanceConfig};
use flowmapsr_core::objectives::lagrangian::lagrangian;
use flowmapsr_core::objectives::shortcut::{shortcut, ShortcutConfig};
use flowmapsr_core::objectives::weighting::{LossWeight, LossWeightConfig};
use flowmapsr_core::objectives::{Batch, RowGuide, SelfDistillConfig};
use flowmapsr_core::precision::{Mixed, Precision};
use flowmapsr_core::resize::upscale as bicubic_up;
use flowmapsr_core::sampler::SampleOptions;
use flowmapsr_core::space::unshuffle;
use flowmapsr_core::unet::UNet;
use flowmapsr_core::weights::{
    module_from_bytes, module_to_bytes, record_from_bytes, record_to_bytes, write_atomic,
    ModelConfig,
};
use flowmapsr_core::{ema, Image};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training config (JSON, see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Folders of HR training images.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Folder of HR validation images (scored x4, NFE 1, fidelity mode).
    #[arg(long)]
    pub val: Option<PathBuf>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    Shortcut,
    Lagrangian,
    Eulerian,
    FlowMatching,
}

/// Uniform: the plain mean of the per-sample losses. Learned: exp(-u(s, t)) L + u(s, t) with a
/// jointly trained u (core objectives/weighting.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    #[default]
    Uniform,
    Learned,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub objective: Objective,
    #[serde(default = "ShortcutConfig::new")]
    pub shortcut: ShortcutConfig,
    #[serde(default = "FlowMatchingConfig::new")]
    pub flow_matching: FlowMatchingConfig,
    #[serde(default = "SelfDistillConfig::new")]
    pub lagrangian: SelfDistillConfig,
    #[serde(default = "SelfDistillConfig::new")]
    pub eulerian: SelfDistillConfig,
    #[serde(default)]
    pub weighting: Weighting,
    #[serde(default = "LossWeightConfig::new")]
    pub loss_weight: LossWeightConfig,
    /// Network compute precision (master weights, optimiser and EMA stay f32).
    #[serde(default)]
    pub precision: Precision,
    #[serde(default)]
    pub degrade: DegradeConfig,
    /// Positive/negative prompt guidance (core objectives/guidance.rs); shortcut objective only.
    #[serde(default)]
    pub guidance: Option<GuidanceConfig>,
    /// Adversarial LoRA fine-tuning of the `--init` model (core adversarial.rs) instead of
    /// training the flow map.
    #[serde(default)]
    pub adversarial: Option<AdversarialConfig>,
    /// Probabilities of x2, x4, x8.
    pub scale_mix: [f32; 3],
    /// HR crop side (a multiple of 8 and of the model's alignment).
    pub crop: usize,
    /// Images are drawn with probability proportional to (their number of crop positions)^p:
    /// 0 (or absent) draws every image equally often, so T91's small images (8% of the
    /// pixels) gave half the crops; 1 draws every crop position of the data equally often.
    #[serde(default)]
    pub image_weight_power: Option<f32>,
    pub batch: usize,
    pub steps: usize,
    pub lr: f64,
    #[serde(default)]
    pub lr_min: f64,
    #[serde(default)]
    pub warmup: usize,
    pub ema_decay: f32,
    #[serde(default = "default_grad_clip")]
    pub grad_clip: Option<f32>,
    pub seed: u64,
    pub log_every: usize,
    pub val_every: usize,
    pub ckpt_every: usize,
}

fn default_grad_clip() -> Option<f32> {
    Some(1.0)
}

impl TrainConfig {
    /// A complete config file (an adversarial one without `model` needs its base: see
    /// [`TrainConfig::from_value`]).
    pub fn load(path: &Path) -> Result<Self> {
        let s =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v = serde_json::from_str(&s).with_context(|| format!("parsing {}", path.display()))?;
        Self::from_value(v, || {
            bail!("an adversarial config without `model` takes its base's: train it with --init")
        })
        .with_context(|| format!("config {}", path.display()))
    }

    /// A config from parsed JSON. An adversarial config may leave `model` out: the base's own
    /// config.json states it, and `base` reads it (only then).
    pub fn from_value(
        mut file: serde_json::Value,
        base: impl FnOnce() -> Result<ModelConfig>,
    ) -> Result<Self> {
        let adversarial = file.get("adversarial").is_some_and(|a| !a.is_null());
        if adversarial && file.get("model").is_none() {
            file["model"] = serde_json::to_value(base()?)?;
        }
        let c: Self = serde_json::from_value(file)?;
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> Result<()> {
        let align = self.model.align() * 8;
        if self.crop == 0 || !self.crop.is_multiple_of(align) {
            bail!("crop {} must be a positive multiple of {align} (the model's alignment x the largest scale)", self.crop);
        }
        if self.batch == 0 || self.steps == 0 {
            bail!("batch and steps must be positive");
        }
        if let Some(p) = self.image_weight_power {
            if !(p.is_finite() && p >= 0.0) {
                bail!("image_weight_power must be a finite number >= 0, not {p}");
            }
        }
        if self.scale_mix.iter().any(|p| *p < 0.0) || self.scale_mix.iter().sum::<f32>() <= 0.0 {
            bail!("scale_mix must be non-negative and not all zero");
        }
        let w = self.shortcut.range_weight();
        if !(w.is_finite() && w >= 0.0) {
            bail!("shortcut.anchor_range_weight must be a finite number >= 0, not {w}");
        }
        if let Some(g) = &self.guidance {
            g.check()?;
            if self.objective != Objective::Shortcut {
                bail!("guidance trains with the shortcut objective (its guided teacher)");
            }
            if (self.model.w_max() - g.w_max).abs() > 1e-6 {
                bail!(
                    "model.w_max ({}) must equal guidance.w_max ({}): it tells inference which w the weights know",
                    self.model.w_max(),
                    g.w_max
                );
            }
        }
        Ok(())
    }

    /// Cosine decay from lr to lr_min after a linear warm-up.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let p = (step - self.warmup) as f64 / (self.steps - self.warmup).max(1) as f64;
        self.lr_min
            + 0.5 * (self.lr - self.lr_min) * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos())
    }
}

/// Persistent state beside the checkpoint's weights.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    pub step: usize,
    pub best_psnr: f64,
    pub train_secs: f64,
    pub history: Vec<ValPoint>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValPoint {
    pub step: usize,
    pub psnr_y: f64,
    pub train_secs: f64,
}

/// HR training images as 8-bit RGB.
pub fn load_images(dirs: &[PathBuf], min_side: usize) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    for f in crate::upscale::collect_inputs(dirs)? {
        let d = imageio::read(&f, u64::MAX)?;
        if d.rgb.width >= min_side && d.rgb.height >= min_side {
            out.push(d.rgb.quantized(255.0));
        }
    }
    if out.is_empty() {
        bail!("no training images of at least {min_side}x{min_side} pixels");
    }
    Ok(out)
}

/// Cumulative image weights (crop positions)^p, or None for the plain uniform draw (p absent
/// or 0, which keeps older runs' batches bit for bit).
fn image_weights(images: &[Image], crop: usize, p: Option<f32>) -> Option<Vec<f64>> {
    let p = p.filter(|p| *p != 0.0)? as f64;
    let mut acc = 0.0;
    Some(
        images
            .iter()
            .map(|img| {
                let pos = ((img.width - crop + 1) * (img.height - crop + 1)) as f64;
                acc += pos.powf(p);
                acc
            })
            .collect(),
    )
}

/// The index whose cumulative weight first exceeds u x total, u in [0, 1).
fn pick(cum: &[f64], u: f64) -> usize {
    let target = u * cum[cum.len() - 1];
    cum.partition_point(|&c| c <= target).min(cum.len() - 1)
}

/// One of the 8 dihedral transforms of a square crop.
fn dihedral(img: &Image, k: u8) -> Image {
    let n = img.width;
    let mut out = img.clone();
    for c in 0..img.channels {
        let src = img.plane(c);
        let dst = out.plane_mut(c);
        for y in 0..n {
            for x in 0..n {
                let (mut sx, mut sy) = (x, y);
                if k & 1 != 0 {
                    sx = n - 1 - sx;
                }
                if k & 2 != 0 {
                    sy = n - 1 - sy;
                }
                if k & 4 != 0 {
                    std::mem::swap(&mut sx, &mut sy);
                }
                dst[y * n + x] = src[sy * n + sx];
            }
        }
    }
    out
}

/// Rows `rows` of the batch for `step`: a pure function of (images, config, step, row), so a
/// data-parallel worker builds exactly its share of the global batch.
pub fn make_batch<B: AutodiffBackend>(
    images: &[Image],
    cfg: &TrainConfig,
    step: usize,
    rows: std::ops::Range<usize>,
    device: &B::Device,
) -> Result<Batch<B>> {
    let c = cfg.crop;
    let total: f32 = cfg.scale_mix.iter().sum();
    let n = rows.len();
    let weights = image_weights(images, c, cfg.image_weight_power);
    // Rows are seeded by (seed, step, row) alone, so building them in parallel (the GPU
    // trainer would otherwise wait on one CPU core) gives the same batch as in order.
    let built: Vec<(Vec<f32>, Vec<f32>, RowGuide, u32)> = rows
        .into_par_iter()
        .map(|row| -> Result<_> {
            let mut rng = ChaCha8Rng::seed_from_u64(
                cfg.seed
                    ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (row as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
            );
            let img = &images[match &weights {
                None => rng.random_range(0..images.len()),
                Some(cum) => pick(cum, rng.random::<f64>()),
            }];
            let (x, y) = (
                rng.random_range(0..=img.width - c),
                rng.random_range(0..=img.height - c),
            );
            let hr = dihedral(&img.crop(x, y, c, c), rng.random_range(0..8));
            let mut u = rng.random::<f32>() * total;
            let mut scale = 8;
            for (p, s) in cfg.scale_mix.iter().zip([2u32, 4, 8]) {
                if u < *p {
                    scale = s;
                    break;
                }
                u -= p;
            }
            let lr = degrade(&hr, scale, &cfg.degrade, rng.random())?;
            let x0 = bicubic_up(&lr, scale).to_signed();
            // Drawn after everything else, so runs without guidance keep their batches.
            let g = match &cfg.guidance {
                Some(gc) => gc.draw(&mut rng),
                None => RowGuide::FIDELITY,
            };
            let x1 = match &cfg.guidance {
                Some(gc) if g.negative => negative_target(&hr, gc, rng.random())?.to_signed(),
                _ => hr.to_signed(),
            };
            Ok((x0, x1, g, scale))
        })
        .collect::<Result<_>>()?;
    let (mut x0, mut x1, mut guide, mut scales) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, b, g, s) in built {
        x0.extend(a);
        x1.extend(b);
        guide.push(g);
        scales.push(s);
    }
    // The range projector of each row's downscale, when the objective weights that part.
    let range = if cfg.objective == Objective::Shortcut && cfg.shortcut.range_weight() != 1.0 {
        let mut by_scale = std::collections::HashMap::new();
        let mut data = Vec::with_capacity(n * 3 * c * c);
        for s in &scales {
            if !by_scale.contains_key(s) {
                by_scale.insert(*s, flowmapsr_core::projection::range_projector(c, *s)?);
            }
            for _ in 0..3 {
                data.extend_from_slice(&by_scale[s]);
            }
        }
        Some(Tensor::<B, 4>::from_data(
            TensorData::new(data, [n, 3, c, c]),
            device,
        ))
    } else {
        None
    };
    let shape = [n, 3, c, c];
    let t = |v: Vec<f32>| {
        unshuffle(
            Tensor::<B, 4>::from_data(TensorData::new(v, shape), device),
            2,
        )
    };
    Ok(Batch {
        x0: t(x0),
        x1: t(x1),
        guide,
        range,
    })
}

/// Validation of any flow map (a plain model, or one with its LoRA at some scale): the eval
/// report (mean PSNR-Y, HF ratio, ...) at x4, NFE 1, fidelity mode.
pub fn validate<B: burn::tensor::backend::Backend>(
    net: &impl flowmapsr_core::objectives::FlowNet<B>,
    cfg: &ModelConfig,
    images: &[(String, imageio::Decoded)],
    mode: Mode,
    temperature: f32,
    device: &B::Device,
) -> Result<crate::eval::EvalReport> {
    let opts = SampleOptions {
        tile: 512,
        overlap: 64,
        mode,
        temperature,
        ..Default::default()
    };
    crate::eval::evaluate(
        images,
        4,
        None,
        crate::eval::model_fn(net, cfg, 4, opts, device),
    )
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
        crate::adversarial::base_model(&crate::adversarial::base_dir(args)?, None)
    })
    .with_context(|| format!("config {}", args.config.display()))?;
    run_config(args, cfg)
}

/// The step of the run folder's latest checkpoint (0 without one).
pub fn latest_step(out: &Path) -> Result<usize> {
    let Some(dir) = latest_checkpoint(out) else {
        return Ok(0);
    };
    let state: RunState = serde_json::from_slice(&read_in(&dir, "state.json")?)?;
    Ok(state.step)
}

/// The run folder's latest checkpoint, if it has one.
pub(crate) fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(out.join(LATEST)).ok()?;
    Some(out.join(name.trim()))
}

/// `dir/f`'s bytes, the path named in the error.
pub(crate) fn read_in(dir: &Path, f: &str) -> Result<Vec<u8>> {
    std::fs::read(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()))
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
        train::<burn::backend::Autodiff<B>>(args, &cfg, devices)
    })
}

/// Where this process sits in a data-parallel run.
#[derive(Clone, Debug)]
struct Topology {
    /// Devices in the whole run (all nodes).
    world: usize,
    /// Global rank of this process's first device.
    first_rank: usize,
    /// burn-collective's config, when world > 1.
    collective: Option<CollectiveConfig>,
}

impl Topology {
    fn new(node: &NodeArgs, local: usize, batch: usize) -> Result<Self> {
        if node.nodes == 0 || node.node_rank >= node.nodes {
            bail!(
                "--node-rank {} must be below --nodes {}",
                node.node_rank,
                node.nodes
            );
        }
        let world = local * node.nodes as usize;
        if !batch.is_multiple_of(world) {
            bail!("batch {batch} must be divisible by the number of devices in the run ({world})");
        }
        let mut collective = None;
        if world > 1 {
            let mut c = CollectiveConfig::default().with_num_devices(local);
            if node.nodes > 1 {
                let (Some(o), Some(a), Some(p)) =
                    (&node.orchestrator, &node.node_address, node.data_port)
                else {
                    bail!("--nodes > 1 needs --orchestrator, --node-address and --data-port");
                };
                let addr = |s: &str| {
                    s.parse::<burn_communication::Address>()
                        .map_err(|e| anyhow::anyhow!("bad address '{s}': {e}"))
                };
                c = c
                    .with_num_nodes(node.nodes)
                    .with_global_address(addr(o)?)
                    .with_node_address(addr(a)?)
                    .with_data_service_port(p);
            }
            collective = Some(c);
        }
        Ok(Self {
            world,
            first_rank: node.node_rank as usize * local,
            collective,
        })
    }
}

/// What every worker shares (read-only).
struct Shared<'a> {
    args: &'a TrainArgs,
    cfg: &'a TrainConfig,
    images: Vec<Image>,
    val: Option<Vec<(String, imageio::Decoded)>>,
    topo: Topology,
}

pub(crate) const LATEST: &str = "latest";

fn save_checkpoint<
    B: AutodiffBackend,
    O: Optimizer<UNet<B>, B>,
    OW: Optimizer<LossWeight<B>, B>,
>(
    out: &Path,
    model: &UNet<B>,
    ema_net: &UNet<B::InnerBackend>,
    optim: &O,
    weight: Option<(&LossWeight<B>, &OW)>,
    state: &RunState,
) -> Result<()> {
    let (tmp, name) = checkpoint_tmp(out, state.step)?;
    std::fs::write(tmp.join("model.bin"), module_to_bytes(model.valid()))?;
    std::fs::write(tmp.join("ema.bin"), module_to_bytes(ema_net.clone()))?;
    std::fs::write(
        tmp.join("optim.bin"),
        record_to_bytes::<B, _>(optim.to_record()),
    )?;
    if let Some((w, o)) = weight {
        std::fs::write(tmp.join("weight.bin"), module_to_bytes(w.valid()))?;
        std::fs::write(
            tmp.join("weight_optim.bin"),
            record_to_bytes::<B, _>(o.to_record()),
        )?;
    }
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    publish_checkpoint(out, &tmp, &name)
}

/// An empty `OUT/.ckpt-STEP.tmp` to fill, and the checkpoint's name: a checkpoint is written
/// whole beside the last one, then published by [`publish_checkpoint`].
pub(crate) fn checkpoint_tmp(out: &Path, step: usize) -> Result<(PathBuf, String)> {
    let name = format!("ckpt-{step:08}");
    let tmp = out.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    Ok((tmp, name))
}

/// Renames the filled folder into place, points `latest` at it (atomically) and only then
/// removes the previous checkpoint, so a kill at any moment leaves one whole checkpoint.
pub(crate) fn publish_checkpoint(out: &Path, tmp: &Path, name: &str) -> Result<()> {
    let dst = out.join(name);
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::rename(tmp, &dst)?;
    let prev = std::fs::read_to_string(out.join(LATEST)).ok();
    write_atomic(&out.join(LATEST), name.as_bytes())?;
    if let Some(p) = prev.filter(|p| p.trim() != name) {
        let _ = std::fs::remove_dir_all(out.join(p.trim()));
    }
    Ok(())
}

fn train<B: AutodiffBackend>(
    args: &TrainArgs,
    cfg: &TrainConfig,
    devices: Vec<B::Device>,
) -> Result<()> {
    let topo = Topology::new(&args.node, devices.len(), cfg.batch)?;
    std::fs::create_dir_all(&args.out)?;
    let images = load_images(&args.data, cfg.crop)?;
    let val = args
        .val
        .as_deref()
        .map(crate::eval::load_folder)
        .transpose()?;
    if topo.first_rank == 0 {
        tracing::info!(
            "{} training images, {} validation images, {} device(s) here, {} in the run, {}",
            images.len(),
            val.as_ref().map_or(0, |v| v.len()),
            devices.len(),
            topo.world,
            args.devices
                .as_ref()
                .map_or(args.device.to_string(), |d| format!("{d:?}"))
        );
    }
    std::fs::write(
        args.out.join("train_config.json"),
        serde_json::to_vec_pretty(cfg)?,
    )?;
    if let Some(adv) = &cfg.adversarial {
        if devices.len() > 1 || topo.world > 1 {
            bail!("adversarial LoRA training runs on one device");
        }
        let device = devices.into_iter().next().expect("one device");
        return crate::adversarial::train_lora::<B>(
            args,
            cfg,
            adv,
            &images,
            val.as_deref(),
            device,
        );
    }

    // Seeded initialisation on the first device; every replica starts from a copy.
    B::seed(&devices[0], cfg.seed);
    let mut model: UNet<B> = cfg.model.unet.init(&devices[0]);
    if let Some(dir) = &args.init {
        let bytes = std::fs::read(dir.join("model.bin"))
            .with_context(|| format!("reading {}", dir.join("model.bin").display()))?;
        // A config with more residual blocks than the --init weights deepens them (identity
        // blocks, unet.rs `deepen`); any other difference fails to load below.
        let trained = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| flowmapsr_core::weights::ModelConfig::from_json(&b).ok());
        let extra = trained.as_ref().and_then(|t| {
            cfg.model
                .unet
                .extra_blocks(&t.unet)
                .filter(|e| e.iter().any(|&k| k > 0))
        });
        model = match (trained, extra) {
            (Some(t), Some(extra)) => {
                let m = module_from_bytes(t.unet.init::<B>(&devices[0]), &bytes, &devices[0])
                    .with_context(|| format!("--init {}", dir.display()))?;
                tracing::info!("deepened: {extra:?} identity blocks added per level");
                m.deepen(&cfg.model.unet, &devices[0])
            }
            _ => module_from_bytes(model, &bytes, &devices[0])
                .with_context(|| format!("--init {}", dir.display()))?,
        };
        tracing::info!("initialised from {}", dir.display());
    }
    // Drawn now, in module order, so every replica forked from it starts identical.
    let model = flowmapsr_core::weights::materialize(model);
    let weight = (cfg.weighting == Weighting::Learned)
        .then(|| flowmapsr_core::weights::materialize(cfg.loss_weight.init::<B>(&devices[0])));
    let shared = Shared {
        args,
        cfg,
        images,
        val,
        topo,
    };
    let shared = &shared;
    std::thread::scope(|s| {
        let others: Vec<_> = devices[1..]
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let replica = model.clone().fork(d);
                let w = weight.clone().map(|w| w.fork(d));
                let d = d.clone();
                s.spawn(move || worker::<B>(shared, replica, w, d, i + 1))
            })
            .collect();
        let mut result = worker::<B>(shared, model, weight, devices[0].clone(), 0);
        for h in others {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a training worker panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// Averages the gradients (of the model, then of the loss-weight net if any) and the loss over
/// every replica of the run with one burn-collective all-reduce of one flat vector (parameters in
/// module order, then the loss): one exchange per step, and every replica stops together if the
/// loss is not finite.
fn all_reduce_mean<B: AutodiffBackend>(
    model: &UNet<B>,
    grads: &mut GradientsParams,
    mut weight: Option<(&LossWeight<B>, &mut GradientsParams)>,
    loss: Tensor<B::InnerBackend, 1>,
    peer: PeerId,
) -> Result<Tensor<B::InnerBackend, 1>> {
    struct Take<'a, I: burn::tensor::backend::Backend>(&'a mut GradientsParams, Vec<Tensor<I, 1>>);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Take<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            let g = self.0.remove::<B::InnerBackend, D>(p.id);
            let g = g.unwrap_or_else(|| Tensor::<B, D>::zeros(p.shape(), &p.device()).inner());
            self.1.push(g.flatten(0, D - 1));
        }
    }
    struct Put<'a, I: burn::tensor::backend::Backend>(&'a mut GradientsParams, Tensor<I, 1>, usize);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Put<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            let shape = p.shape();
            let n = shape.num_elements();
            let g = self.1.clone().narrow(0, self.2, n).reshape(shape);
            self.0.register::<B::InnerBackend, D>(p.id, g);
            self.2 += n;
        }
    }
    let mut take = Take(grads, Vec::new());
    model.visit(&mut take);
    let mut parts = take.1;
    if let Some((w, g)) = weight.as_mut() {
        let mut take = Take(g, Vec::new());
        w.visit(&mut take);
        parts.extend(take.1);
    }
    let n: usize = parts.iter().map(|t| t.dims()[0]).sum();
    parts.push(loss);
    let flat = Tensor::cat(parts, 0);
    let flat: Tensor<B::InnerBackend, 1> =
        Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(
            burn_collective::all_reduce::<B::InnerBackend>(
                peer,
                flat.into_primitive().tensor(),
                ReduceOperation::Mean,
            )
            .map_err(|e| anyhow::anyhow!("gradient all-reduce: {e:?}"))?,
        ));
    let loss = flat.clone().narrow(0, n, 1);
    let mut put = Put(grads, flat, 0);
    model.visit(&mut put);
    let (flat, at) = (put.1, put.2);
    if let Some((w, g)) = weight {
        w.visit(&mut Put(g, flat, at));
    }
    Ok(loss)
}

/// One data-parallel replica: its share of every batch, gradients averaged over the run, the
/// same Adam step everywhere (so replicas stay identical). Local device 0 of each node writes
/// checkpoints to that node's --out; global rank 0 also validates and logs.
fn worker<B: AutodiffBackend>(
    sh: &Shared,
    mut model: UNet<B>,
    mut weight: Option<LossWeight<B>>,
    device: B::Device,
    local: usize,
) -> Result<()> {
    let (args, cfg, topo) = (sh.args, sh.cfg, &sh.topo);
    let rank = topo.first_rank + local;
    let writer = local == 0;
    let lead = rank == 0;
    let peer = PeerId::from(rank as u32);
    if let Some(c) = &topo.collective {
        burn_collective::register::<B::InnerBackend>(peer, device.clone(), c.clone())
            .map_err(|e| anyhow::anyhow!("joining the collective as peer {rank}: {e:?}"))?;
    }
    let mut ema_net: UNet<B::InnerBackend> = model.valid();
    let mut adam = AdamConfig::new();
    if let Some(c) = cfg.grad_clip {
        adam = adam.with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(c)));
    }
    let mut optim = adam.clone().init::<B, UNet<B>>();
    let mut optim_w = adam.init::<B, LossWeight<B>>();
    let mut state = RunState {
        best_psnr: f64::NEG_INFINITY,
        ..Default::default()
    };
    if args.resume {
        match latest_checkpoint(&args.out) {
            Some(dir) => {
                let read = |f: &str| read_in(&dir, f);
                model = module_from_bytes(model, &read("model.bin")?, &device)?;
                ema_net = module_from_bytes(ema_net, &read("ema.bin")?, &device)?;
                optim = optim.load_record(record_from_bytes::<B, _>(&read("optim.bin")?, &device)?);
                if let Some(w) = weight.take() {
                    if !dir.join("weight.bin").exists() {
                        bail!(
                            "{} has no loss-weight net: the run was trained with uniform weighting \
                             (resume with --weighting uniform)",
                            dir.display()
                        );
                    }
                    weight = Some(module_from_bytes(w, &read("weight.bin")?, &device)?);
                    optim_w = optim_w.load_record(record_from_bytes::<B, _>(
                        &read("weight_optim.bin")?,
                        &device,
                    )?);
                }
                state = serde_json::from_slice(&read("state.json")?)?;
                if lead {
                    tracing::info!("resumed from {} at step {}", dir.display(), state.step);
                }
            }
            None if lead => tracing::warn!(
                "--resume: no checkpoint in {}, starting fresh",
                args.out.display()
            ),
            None => {}
        }
    }
    if lead {
        tracing::info!(
            "model: {} parameters, {:.0} FLOP per output pixel, {} compute",
            burn::module::Module::num_params(&model),
            cfg.model.unet.flops_per_pixel(),
            cfg.precision
        );
    }

    let end = args
        .max_steps
        .map_or(cfg.steps, |m| (state.step + m).min(cfg.steps));
    let pb = if lead {
        indicatif::ProgressBar::new(cfg.steps as u64).with_position(state.step as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap(),
    );
    let per = cfg.batch / topo.world;
    let mut log_acc: Vec<(&'static str, f64)> = Vec::new();
    let mut log_n = 0usize;
    let mut t_log = Instant::now();
    while state.step < end {
        let t0 = Instant::now();
        let step = state.step;
        let batch = make_batch::<B>(&sh.images, cfg, step, rank * per..(rank + 1) * per, &device)?;
        let mut rng = ChaCha8Rng::seed_from_u64(
            cfg.seed.wrapping_add(1)
                ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
                ^ (rank as u64).wrapping_mul(0x94D0_49BB_1331_11EB),
        );
        // Half-precision views of the f32 student and teacher (identity for f32).
        let student = Mixed::new(&model, cfg.precision);
        let teacher = Mixed::new(&ema_net, cfg.precision);
        let loss = match cfg.objective {
            Objective::Shortcut => shortcut(
                &student,
                &teacher,
                &batch,
                &cfg.shortcut,
                &cfg.model.bridge,
                &mut rng,
            ),
            Objective::Lagrangian => lagrangian(
                &student,
                &teacher,
                &batch,
                &cfg.lagrangian,
                &cfg.model.bridge,
                &mut rng,
            ),
            Objective::Eulerian => eulerian(
                &student,
                &teacher,
                &batch,
                &cfg.eulerian,
                &cfg.model.bridge,
                &mut rng,
            ),
            Objective::FlowMatching => flow_matching(
                &student,
                &batch,
                &cfg.flow_matching,
                &cfg.model.bridge,
                &mut rng,
            ),
        };
        let objective = match &weight {
            Some(w) => w.weigh(&loss),
            None => loss.total.clone(),
        };
        let mut g = objective.clone().backward();
        let mut grads = GradientsParams::from_module(&mut g, &model);
        let mut grads_w = weight
            .as_ref()
            .map(|w| GradientsParams::from_module(&mut g, w));
        let mut total = objective.inner();
        if topo.collective.is_some() {
            let wg = weight.as_ref().zip(grads_w.as_mut());
            total = all_reduce_mean(&model, &mut grads, wg, total, peer)?;
        }
        let total: f64 = total.into_scalar().elem();
        if !total.is_finite() {
            bail!("loss is {total} at step {step}: diverged (lower lr?) — the last checkpoint is intact");
        }
        for (name, t) in &loss.terms {
            let v: f64 = t.clone().into_scalar().elem();
            match log_acc.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 += v,
                None => log_acc.push((name, v)),
            }
        }
        if weight.is_some() {
            match log_acc.iter_mut().find(|(n, _)| *n == "weighted") {
                Some(e) => e.1 += total,
                None => log_acc.push(("weighted", total)),
            }
        }
        log_n += 1;
        model = optim.step(cfg.lr_at(step), model, grads);
        if let (Some(w), Some(g)) = (weight.take(), grads_w) {
            weight = Some(optim_w.step(cfg.lr_at(step), w, g));
        }
        ema_net = ema::update(ema_net, &model.valid(), cfg.ema_decay);
        state.step += 1;
        state.train_secs += t0.elapsed().as_secs_f64();
        pb.set_position(state.step as u64);

        if lead && (state.step.is_multiple_of(cfg.log_every) || state.step == end) {
            let terms: Vec<String> = log_acc
                .iter()
                .map(|(n, v)| format!("{n} {:.5}", v / log_n as f64))
                .collect();
            tracing::info!(
                "step {} lr {:.2e} {} | {:.2} s/step",
                state.step,
                cfg.lr_at(step),
                terms.join(" "),
                t_log.elapsed().as_secs_f64() / log_n as f64
            );
            pb.set_message(terms.join(" "));
            log_acc.clear();
            log_n = 0;
            t_log = Instant::now();
        }
        let last = state.step == end;
        if let (true, Some(v)) = (lead, &sh.val) {
            if state.step.is_multiple_of(cfg.val_every) || last {
                let psnr = validate(&ema_net, &cfg.model, v, Mode::Fidelity, 1.0, &device)?.psnr_y;
                state.history.push(ValPoint {
                    step: state.step,
                    psnr_y: psnr,
                    train_secs: state.train_secs,
                });
                let best = psnr > state.best_psnr;
                tracing::info!(
                    "step {} validation PSNR-Y x4 {:.3} dB{}",
                    state.step,
                    psnr,
                    if best { " (best)" } else { "" }
                );
                if best {
                    state.best_psnr = psnr;
                    flowmapsr_core::weights::save_dir(
                        &ema_net,
                        &cfg.model,
                        &args.out.join("best"),
                    )?;
                }
            }
        }
        if writer && (state.step.is_multiple_of(cfg.ckpt_every) || last) {
            let w = weight.as_ref().map(|w| (w, &optim_w));
            save_checkpoint(&args.out, &model, &ema_net, &optim, w, &state)?;
        }
    }
    pb.finish_and_clear();
    if topo.collective.is_some() {
        burn_collective::finish_collective::<B::InnerBackend>(peer)
            .map_err(|e| anyhow::anyhow!("leaving the collective: {e:?}"))?;
    }
    if writer {
        flowmapsr_core::weights::save_dir(&ema_net, &cfg.model, &args.out.join("final"))?;
    }
    if lead {
        tracing::info!(
            "stopped at step {} after {:.0} s of training; EMA weights in {}",
            state.step,
            state.train_secs,
            args.out.join("final").display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every config in the repo still loads (fields added later must be optional) and passes
    /// its checks; the pipeline's stages too.
    #[test]
    fn every_config_in_the_repo_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for dir in [root.clone(), root.join("pilots")] {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                if v.get("stages").is_some() {
                    assert!(!crate::pipeline::stages(&v).unwrap().is_empty());
                } else {
                    // Adversarial configs without `model` are checked on the shipped base.
                    TrainConfig::from_value(v, || {
                        crate::adversarial::base_model(&root.join("../weights"), None)
                    })
                    .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                }
                n += 1;
            }
        }
        assert!(n >= 10, "{n} configs");
        let c = TrainConfig::load(&root.join("fidelity_range_ft.json")).unwrap();
        assert_eq!(c.shortcut.range_weight(), 0.25);
        let c = TrainConfig::load(&root.join("fidelity_ft.json")).unwrap();
        assert_eq!(c.shortcut.range_weight(), 1.0);
    }

    /// Each row depends on (seed, step, row) alone: the rows built in parallel, a shard of them
    /// (data-parallel training) and a second call all give the same numbers.
    #[test]
    fn batch_rows_are_independent_and_reproducible() {
        type B = burn::backend::Autodiff<burn::backend::Flex>;
        let mut cfg: TrainConfig =
            serde_json::from_str(include_str!("../../configs/fidelity_ft.json")).unwrap();
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
            let b = make_batch::<B>(&images, &cfg, 7, r, &dev).unwrap();
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
        assert!(make_batch::<B>(&images, &cfg, 7, 0..4, &dev)
            .unwrap()
            .range
            .is_none());
        cfg.shortcut.anchor_range_weight = Some(0.5);
        let b = make_batch::<B>(&images, &cfg, 7, 0..4, &dev).unwrap();
        let r = b.range.unwrap();
        assert_eq!(r.dims(), [4, 3, 32, 32]);
        let x0 = flowmapsr_core::space::shuffle(b.x0, 2);
        let back = r.clone().matmul(x0.clone()).matmul(r);
        let err = (back - x0).abs().max().into_scalar();
        assert!(err < 1e-4, "{err}");
    }

    /// Crop-position weights by hand: a 4x4 and a 6x5 image with 3-px crops have 2x2 = 4 and
    /// 4x3 = 12 positions.
    #[test]
    fn image_weights_by_crop_positions() {
        let images = vec![Image::zeros(4, 4, 3), Image::zeros(6, 5, 3)];
        assert_eq!(image_weights(&images, 3, None), None);
        assert_eq!(image_weights(&images, 3, Some(0.0)), None);
        assert_eq!(image_weights(&images, 3, Some(1.0)), Some(vec![4.0, 16.0]));
        let cum = image_weights(&images, 3, Some(0.5)).unwrap();
        assert_eq!(cum, vec![2.0, 2.0 + 12f64.sqrt()]);
        // u below 4/16 picks the first image, at or above it the second.
        let cum = image_weights(&images, 3, Some(1.0)).unwrap();
        assert_eq!(pick(&cum, 0.0), 0);
        assert_eq!(pick(&cum, 0.2499), 0);
        assert_eq!(pick(&cum, 0.25), 1);
        assert_eq!(pick(&cum, 0.9999), 1);
        // Over many draws the shares follow the weights (1/4 and 3/4).
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let first = (0..4000)
            .filter(|_| pick(&cum, rng.random::<f64>()) == 0)
            .count();
        assert!((900..1100).contains(&first), "{first}");
        let mut cfg: TrainConfig =
            serde_json::from_str(include_str!("../../configs/fidelity_ft.json")).unwrap();
        cfg.image_weight_power = Some(-1.0);
        assert!(cfg.check().is_err());
    }

    #[test]
    fn dihedral_group() {
        let img = Image::new(3, 3, 1, (0..9).map(|v| v as f32).collect()).unwrap();
        let all: Vec<Vec<f32>> = (0..8).map(|k| dihedral(&img, k).data).collect();
        for i in 0..8 {
            for j in 0..i {
                assert_ne!(all[i], all[j], "{i} {j}");
            }
        }
        // Horizontal flip by hand.
        assert_eq!(all[1], vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0, 8.0, 7.0, 6.0]);
    }
}
