//! `flowmapsr upscale`: files or folders in, upscaled files out, one progress bar over tiles.

use crate::imageio;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use flowmapsr_core::request::SampleRequest;
use flowmapsr_core::sampler::upscale;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct UpscaleArgs {
    /// Input images or folders of images (PNG, JPEG, WebP).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output file (one input) or folder (created if needed; names get an `_x{scale}` suffix).
    /// Never one of the inputs.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub request: SampleRequest,
    #[command(flatten)]
    pub model: crate::weights::ModelArgs,
    /// Largest accepted input, in pixels.
    #[arg(long, default_value_t = imageio::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

// Shared with the browser worker (web/), so both turn the same knobs into the same run.
pub use flowmapsr_core::resize::upscale_alpha;

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

/// Where `input`'s result goes (nothing is created here).
fn output_path(args: &UpscaleArgs, input: &Path, single: bool) -> Result<PathBuf> {
    let out = &args.output;
    if single && out.extension().is_some() && !out.is_dir() {
        imageio::format_for(out)?;
        return Ok(out.clone());
    }
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image");
    let ext = input
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("png")
        .to_ascii_lowercase();
    Ok(out.join(format!("{stem}_x{}.{ext}", args.request.scale)))
}

/// `p` resolved (links, `..`) as far as it exists, the rest appended: two paths to one file,
/// existing or not yet, resolve alike.
pub(crate) fn resolved(p: &Path) -> PathBuf {
    let mut tail = Vec::new();
    let mut cur = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    loop {
        if let Ok(mut r) = cur.canonicalize() {
            r.extend(tail.iter().rev());
            return r;
        }
        match (cur.file_name(), cur.parent()) {
            (Some(name), Some(parent)) => {
                tail.push(name.to_os_string());
                cur = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// Every input's output path, checked before any work: none is an input, no two coincide.
fn plan_outputs(args: &UpscaleArgs, inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let single = inputs.len() == 1;
    if !single && args.output.extension().is_some() && !args.output.is_dir() {
        bail!(
            "{} inputs need an output folder, not the file {}",
            inputs.len(),
            args.output.display()
        );
    }
    let sources: Vec<PathBuf> = inputs.iter().map(|p| resolved(p)).collect();
    let mut seen = std::collections::HashMap::new();
    let mut outs = Vec::with_capacity(inputs.len());
    for input in inputs {
        let out = output_path(args, input, single)?;
        let r = resolved(&out);
        if let Some(i) = sources.iter().position(|s| *s == r) {
            bail!(
                "the output {} is the input {}: refusing to overwrite it (choose another -o)",
                out.display(),
                inputs[i].display()
            );
        }
        if let Some(prev) = seen.insert(r, input) {
            bail!(
                "{} and {} would both be written to {}: upscale them into different folders",
                prev.display(),
                input.display(),
                out.display()
            );
        }
        outs.push(out);
    }
    Ok(outs)
}

pub fn run(args: &UpscaleArgs) -> Result<()> {
    let inputs = collect_inputs(&args.inputs)?;
    let outputs = plan_outputs(args, &inputs)?;
    crate::with_backend!(args.model.device, |B, device| run_on::<B>(
        args, &inputs, &outputs, &device
    ))
}

fn run_on<B: Backend>(
    args: &UpscaleArgs,
    inputs: &[PathBuf],
    outputs: &[PathBuf],
    device: &B::Device,
) -> Result<()> {
    let (model, cfg) = crate::weights::load_checked::<B>(&args.model, &args.request, device)?;
    let net = model.at(args.request.lora())?;
    for dir in outputs.iter().filter_map(|o| o.parent()) {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let mut failures = 0;
    for (input, out) in inputs.iter().zip(outputs) {
        match upscale_one(&net, &cfg, args, input, out, device) {
            Ok(()) => tracing::info!("{} -> {}", input.display(), out.display()),
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
    input: &Path,
    out_path: &Path,
    device: &B::Device,
) -> Result<()> {
    let img = imageio::read(input, args.max_pixels)?;
    let opts = args.request.options(img.lossy);
    let scale = args.request.scale;
    let pb = ProgressBar::new(0).with_message(input.display().to_string());
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tiles {elapsed}").unwrap(),
    );
    let rgb = upscale(
        net,
        cfg,
        &img.rgb,
        scale,
        &opts,
        device,
        &mut |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
            true
        },
    )
    .with_context(|| format!("upscaling {}", input.display()))?;
    pb.finish_and_clear();
    let alpha = img.alpha.as_ref().map(|a| upscale_alpha(a, scale));
    // Written to a temporary file beside it and renamed: a crash leaves no partial output.
    imageio::write(out_path, &rgb, alpha.as_ref(), img.sixteen_bit)
}
