//! The shipped weights are compiled into the binary (weights/ at the repository root), so
//! `flowmapsr upscale` works from any folder; `--weights DIR` loads others.

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use flowmapsr_core::lora::Adapted;
use flowmapsr_core::unet::UNet;
use flowmapsr_core::weights::{load_dir, load_lora_dir, load_model, ModelConfig};
use std::path::Path;

pub const SHIPPED_CONFIG: &[u8] = include_bytes!("../../weights/config.json");
pub const SHIPPED_MODEL: &[u8] = include_bytes!("../../weights/model.bin");

pub fn load<B: Backend>(dir: Option<&Path>, device: &B::Device) -> Result<(UNet<B>, ModelConfig)> {
    match dir {
        Some(d) => {
            load_dir(d, device).with_context(|| format!("loading weights from {}", d.display()))
        }
        None => {
            load_model(SHIPPED_CONFIG, SHIPPED_MODEL, device).context("loading the shipped weights")
        }
    }
}

/// The base network and, when `dir` holds one (lora.json + lora.bin), its LoRA adapter. The
/// shipped weights have no adapter yet.
pub fn load_adapted<B: Backend>(
    dir: Option<&Path>,
    device: &B::Device,
) -> Result<(Adapted<B>, ModelConfig)> {
    let (net, cfg) = load::<B>(dir, device)?;
    let lora = match dir {
        Some(d) => load_lora_dir(&net, d, device)
            .with_context(|| format!("loading the LoRA adapter in {}", d.display()))?
            .map(|(l, _)| l),
        None => None,
    };
    Ok((Adapted { net, lora }, cfg))
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
