//! `flowmapsr upscale`: files or folders in, upscaled files out, one progress bar over tiles.

use crate::backend::DeviceKind;
use crate::imageio;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use flowmapsr_core::bridge::Mode;
use flowmapsr_core::projection::Policy;
use flowmapsr_core::sampler::{upscale, SampleOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct UpscaleArgs {
    /// Input images or folders of images (PNG, JPEG, WebP).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output file (one input) or folder (created if needed; names get an `_x{scale}` suffix).
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 4, value_parser = parse_scale)]
    pub scale: u32,
    /// Network calls per tile (flow-map steps).
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Tile side and overlap in input pixels.
    #[arg(long, default_value_t = 128)]
    pub tile: usize,
    #[arg(long, default_value_t = 16)]
    pub overlap: usize,
    /// fidelity (deterministic, best PSNR) or stochastic (source noise, seeded).
    #[arg(long, value_enum, default_value_t = ModeArg::Fidelity)]
    pub mode: ModeArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stochastic mode: source noise = temperature x the trained sigma_0, in [0, 1]; lower keeps
    /// less grain and more fidelity (SRFlow's temperature).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Guidance scale w in [1, w_max of the model]: 1 is faithful, larger is sharper
    /// (positive/negative prompt guidance, one network call per step at any w).
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f32,
    /// LoRA scale in [0, 3] (adversarial adapters: 0 is the base model, higher is more
    /// photographic); needs weights with lora.json + lora.bin.
    #[arg(long, default_value_t = 0.0)]
    pub lora: f32,
    /// LR projection: make the result exactly consistent with the input (its bicubic downscale
    /// is the input; no network call). auto: on, except for JPEG and lossy WebP inputs (their
    /// coding noise would come back); off: the flow map's raw output.
    #[arg(long, value_enum, default_value_t = ProjectionArg::Auto)]
    pub projection: ProjectionArg,
    /// Weights folder (config.json + model.bin [+ lora.json + lora.bin]); default: the shipped weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Largest accepted input, in pixels.
    #[arg(long, default_value_t = imageio::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ModeArg {
    Fidelity,
    Stochastic,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Fidelity => Mode::Fidelity,
            ModeArg::Stochastic => Mode::Stochastic,
        }
    }
}

/// 2, 4 or 8.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectionArg {
    Auto,
    On,
    Off,
}

impl From<ProjectionArg> for Policy {
    fn from(p: ProjectionArg) -> Self {
        match p {
            ProjectionArg::Auto => Policy::Auto,
            ProjectionArg::On => Policy::On,
            ProjectionArg::Off => Policy::Off,
        }
    }
}

pub fn parse_scale(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(v @ (2 | 4 | 8)) => Ok(v),
        _ => Err(format!("'{s}' is not a supported scale: use 2, 4 or 8")),
    }
}

// Shared with the browser worker (web/), so both turn the same knobs into the same run.
pub use flowmapsr_core::resize::upscale_alpha;
pub use flowmapsr_core::sampler::sample_options;

const EXTS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// Expand folders to the image files inside them (sorted; not recursive).
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading folder {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            v.sort();
            if v.is_empty() {
                bail!("no PNG, JPEG or WebP files in {}", p.display());
            }
            out.extend(v);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(out)
}

fn output_path(args: &UpscaleArgs, input: &Path, single: bool) -> Result<PathBuf> {
    let out = &args.output;
    let is_file_target = single && out.extension().is_some() && !out.is_dir();
    if is_file_target {
        imageio::format_for(out)?;
        return Ok(out.clone());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image");
    let ext = input
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("png")
        .to_ascii_lowercase();
    Ok(out.join(format!("{stem}_x{}.{ext}", args.scale)))
}

/// Before any work, the core's temperature rule (in [0, 1]; stochastic mode only) in the CLI's words.
pub fn check_temperature(t: f32, mode: ModeArg) -> Result<()> {
    flowmapsr_core::sampler::check_temperature(t, mode.into())
        .map_err(|e| anyhow::anyhow!("--temperature: {e} (see --mode)"))
}

pub fn run(args: &UpscaleArgs) -> Result<()> {
    crate::with_backend!(args.device, |B, device| run_on::<B>(args, &device))
}

fn run_on<B: Backend>(args: &UpscaleArgs, device: &B::Device) -> Result<()> {
    let (model, cfg) = crate::weights::load_adapted::<B>(args.weights.as_deref(), device)?;
    let net = model.at(args.lora)?;
    let inputs = collect_inputs(&args.inputs)?;
    let single = inputs.len() == 1;
    if !single && args.output.extension().is_some() && !args.output.is_dir() {
        bail!(
            "{} inputs need an output folder, not the file {}",
            inputs.len(),
            args.output.display()
        );
    }
    check_temperature(args.temperature, args.mode)?;
    let opts = SampleOptions {
        guidance: args.guidance,
        temperature: args.temperature,
        lr_projection: true,
        ..sample_options(
            args.steps,
            args.mode.into(),
            args.seed,
            args.scale,
            args.tile,
            args.overlap,
        )
    };
    let mut failures = 0;
    for input in &inputs {
        match upscale_one(&net, &cfg, args, &opts, input, single, device) {
            Ok(out) => tracing::info!("{} -> {}", input.display(), out.display()),
            Err(e) => {
                failures += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} images failed", inputs.len());
    }
    Ok(())
}

fn upscale_one<B: Backend>(
    net: &impl flowmapsr_core::objectives::FlowNet<B>,
    cfg: &flowmapsr_core::weights::ModelConfig,
    args: &UpscaleArgs,
    opts: &SampleOptions,
    input: &Path,
    single: bool,
    device: &B::Device,
) -> Result<PathBuf> {
    let out_path = output_path(args, input, single)?;
    let img = imageio::read(input, args.max_pixels)?;
    let opts = &SampleOptions {
        lr_projection: Policy::from(args.projection).applies(img.lossy),
        ..opts.clone()
    };
    let pb = ProgressBar::new(0).with_message(input.display().to_string());
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tiles {elapsed}").unwrap(),
    );
    let rgb = upscale(
        net,
        cfg,
        &img.rgb,
        args.scale,
        opts,
        device,
        &mut |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
            true
        },
    )
    .with_context(|| format!("upscaling {}", input.display()))?;
    pb.finish_and_clear();
    let alpha = img.alpha.as_ref().map(|a| upscale_alpha(a, args.scale));
    imageio::write(&out_path, &rgb, alpha.as_ref(), img.sixteen_bit)?;
    Ok(out_path)
}
