//! The shipped weights are compiled into the binary (weights/ at the repository root), so
//! `flowmapsr upscale` works from any folder; `--weights DIR` loads others. A build without the
//! `embedded-weights` feature reads them from weights/ under the current folder instead.

use crate::backend::DeviceKind;
use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use flowmapsr_core::lora::Adapted;
use flowmapsr_core::request::{Limits, Preset, SampleRequest};
use flowmapsr_core::unet::UNet;
use flowmapsr_core::weights::{load_dir, load_lora, load_lora_dir, load_model, ModelConfig};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// A file of the shipped weights (a path under weights/): compiled into the binary (feature
/// `embedded-weights`, a default), or, in a build without them, read from weights/ under the
/// current folder (the GPU trainer's binary: the weights would double what a lent GPU is sent).
#[cfg(feature = "embedded-weights")]
fn shipped(name: &str) -> Result<Cow<'static, [u8]>> {
    let bytes: &'static [u8] = match name {
        "config.json" => include_bytes!("../../weights/config.json"),
        "model.bin" => include_bytes!("../../weights/model.bin"),
        // The shipped adversarial LoRA adapter (`--lora S`), trained on the shipped model.
        "lora.json" => include_bytes!("../../weights/lora.json"),
        "lora.bin" => include_bytes!("../../weights/lora.bin"),
        // The realistic preset's weights: the whole network, deepened and trained against a
        // discriminator; no adapter.
        "realistic/config.json" => include_bytes!("../../weights/realistic/config.json"),
        "realistic/model.bin" => include_bytes!("../../weights/realistic/model.bin"),
        _ => anyhow::bail!("no shipped weights file {name}"),
    };
    Ok(Cow::Borrowed(bytes))
}

#[cfg(not(feature = "embedded-weights"))]
fn shipped(name: &str) -> Result<Cow<'static, [u8]>> {
    let path = Path::new("weights").join(name);
    std::fs::read(&path).map(Cow::Owned).with_context(|| {
        format!(
            "reading {}: this build has no weights compiled in (built without the \
             `embedded-weights` feature): run it from the repository root or pass --weights",
            path.display()
        )
    })
}

/// Which weights, on which device: the flags of every command that runs the model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Weights folder (config.json + model.bin [+ lora.json + lora.bin]); default: the shipped weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
}

/// The weights of `m`, with `req` checked against what they can do (and the command line's
/// limits) before any work.
pub fn load_checked<B: Backend>(
    m: &ModelArgs,
    req: &SampleRequest,
    device: &B::Device,
) -> Result<(Adapted<B>, ModelConfig)> {
    let (model, cfg) = load_preset::<B>(m.weights.as_deref(), req.preset, device)?;
    req.validate(&Limits::for_model(cfg.w_max(), model.lora.is_some()))?;
    Ok((model, cfg))
}

pub fn load<B: Backend>(dir: Option<&Path>, device: &B::Device) -> Result<(UNet<B>, ModelConfig)> {
    match dir {
        Some(d) => {
            load_dir(d, device).with_context(|| format!("loading weights from {}", d.display()))
        }
        None => load_model(&shipped("config.json")?, &shipped("model.bin")?, device)
            .context("loading the shipped weights"),
    }
}

/// The base network and its LoRA adapter: the shipped pair, or the one in `dir` when it holds
/// lora.json + lora.bin (none otherwise).
pub fn load_adapted<B: Backend>(
    dir: Option<&Path>,
    device: &B::Device,
) -> Result<(Adapted<B>, ModelConfig)> {
    let (net, cfg) = load::<B>(dir, device)?;
    let lora = match dir {
        Some(d) => load_lora_dir(&net, d, device)
            .with_context(|| format!("loading the LoRA adapter in {}", d.display()))?
            .map(|(l, _)| l),
        None => Some(
            load_lora(&net, &shipped("lora.json")?, &shipped("lora.bin")?, device)
                .context("loading the shipped LoRA adapter")?
                .0,
        ),
    };
    Ok((Adapted { net, lora }, cfg))
}

/// The weights a request runs on: `dir` when given (for every preset), else the preset's shipped
/// weights (the faithful ones with their adapter, or the realistic ones).
pub fn load_preset<B: Backend>(
    dir: Option<&Path>,
    preset: Preset,
    device: &B::Device,
) -> Result<(Adapted<B>, ModelConfig)> {
    match (dir, preset) {
        (None, Preset::Realistic) => {
            let (net, cfg) = load_model(
                &shipped("realistic/config.json")?,
                &shipped("realistic/model.bin")?,
                device,
            )
            .context("loading the shipped realistic weights")?;
            Ok((Adapted { net, lora: None }, cfg))
        }
        _ => load_adapted(dir, device),
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Safetensors,
    F16,
    F32,
}

pub fn export(a: &crate::ExportArgs) -> Result<()> {
    use flowmapsr_core::weights::Precision;
    match a.format {
        ExportFormat::Safetensors => export_safetensors(a.weights.as_deref(), &a.output),
        ExportFormat::F16 => export_folder(a.weights.as_deref(), &a.output, Precision::Half),
        ExportFormat::F32 => export_folder(a.weights.as_deref(), &a.output, Precision::Full),
    }
}

/// Write the weights (and their LoRA adapter, if they have one) as a weights folder with the
/// parameters in `precision` (core weights.rs): f16 is half the bytes, for the browser.
pub fn export_folder(
    dir: Option<&Path>,
    out: &Path,
    precision: flowmapsr_core::weights::Precision,
) -> Result<()> {
    use flowmapsr_core::weights::{save_dir_as, save_lora_as};
    let device = burn::backend::flex::FlexDevice;
    let input = dir.unwrap_or(Path::new("weights"));
    if crate::upscale::resolved(input) == crate::upscale::resolved(out) {
        anyhow::bail!(
            "refusing to overwrite the input weights {}: pick another --output",
            input.display()
        );
    }
    let (net, cfg) = load::<burn::backend::Flex>(dir, &device)?;
    let lora = match dir {
        Some(d) => load_lora_dir(&net, d, &device)
            .with_context(|| format!("loading the LoRA adapter in {}", d.display()))?,
        None => Some(
            load_lora(&net, &shipped("lora.json")?, &shipped("lora.bin")?, &device)
                .context("loading the shipped LoRA adapter")?,
        ),
    };
    if lora.is_none() && (out.join("lora.json").exists() || out.join("lora.bin").exists()) {
        // It would load as these weights' adapter.
        anyhow::bail!(
            "{} holds a LoRA adapter that these weights do not have: pick another --output",
            out.display()
        );
    }
    save_dir_as(&net, &cfg, out, precision)
        .with_context(|| format!("writing {}", out.display()))?;
    if let Some((l, lcfg)) = &lora {
        save_lora_as(l, lcfg, out, precision)
            .with_context(|| format!("writing the adapter into {}", out.display()))?;
    }
    let size = |f: &str| std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} in {}: model.bin {} bytes{}",
        out.display(),
        precision.name(),
        size("model.bin"),
        if lora.is_some() {
            format!(", lora.bin {} bytes", size("lora.bin"))
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Write the weights as safetensors (tensor names are the module paths, e.g. `down.1.blocks.0.conv1.weight`).
pub fn export_safetensors(dir: Option<&Path>, out: &Path) -> Result<()> {
    use burn::store::{ModuleSnapshot, SafetensorsStore};
    let device = burn::backend::flex::FlexDevice;
    let (net, cfg) = load::<burn::backend::Flex>(dir, &device)?;
    let mut store = SafetensorsStore::from_file(out)
        .overwrite(true)
        .metadata("flowmapsr_config", cfg.to_json());
    net.save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", out.display()))?;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct InterpolateArgs {
    /// The faithful end (alpha 0): a weights folder; default: the shipped weights.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// The adversarial end (alpha 1): weights trained from `--from` (the same network, or it
    /// deepened), e.g. a whole-network adversarial run's final/ or best/.
    #[arg(long)]
    pub to: PathBuf,
    /// Where on the path between them: 0 is `--from`, 1 is `--to`.
    #[arg(long)]
    pub alpha: f32,
    /// Output weights folder (config.json + model.bin); it must not be either input.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Network interpolation (core interpolate.rs): writes the weights at `alpha` between two ends.
pub fn interpolate(a: &InterpolateArgs) -> Result<()> {
    let device = burn::backend::flex::FlexDevice;
    let out = crate::upscale::resolved(&a.output);
    for input in a.from.iter().chain([&a.to]) {
        if crate::upscale::resolved(input) == out {
            anyhow::bail!(
                "refusing to overwrite the input weights {}: pick another --output",
                input.display()
            );
        }
    }
    let base = load::<burn::backend::Flex>(a.from.as_deref(), &device)?;
    let (gan, mut cfg) = load::<burn::backend::Flex>(Some(&a.to), &device)?;
    let net = flowmapsr_core::interpolate::interpolate((base.0, &base.1), (&gan, &cfg), a.alpha)?;
    cfg.notes = format!(
        "network interpolation at alpha {} from {} to {} ({})",
        a.alpha,
        a.from
            .as_deref()
            .map_or("the shipped weights".into(), |p| p.display().to_string()),
        a.to.display(),
        cfg.notes
    );
    flowmapsr_core::weights::save_dir(&net, &cfg, &a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    println!("wrote {} (alpha {})", a.output.display(), a.alpha);
    Ok(())
}
