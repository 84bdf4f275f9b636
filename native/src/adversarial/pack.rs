//! `flowmapsr pack`: a whole-network adversarial run's latest checkpoint as a compact run folder
//! that `train --resume` continues on another machine. The generator and its EMA go to f16 (core
//! weights.rs: each parameter within 2^-11 relative, a one-time rounding far below one Adam
//! step), the discriminator and its optimiser stay as they are, the frozen base is copied, and
//! the generator's Adam state (twice the generator) is left out: the resumed run starts it fresh.
//! A run of thousands of CPU steps can so span machines whose run folders do not survive.

use super::base_model;
use crate::train::{read_in, Checkpoint, TrainConfig};
use anyhow::{bail, Context, Result};
use flowmapsr_core::adversarial::Generator;
use flowmapsr_core::unet::UNet;
use flowmapsr_core::weights::{module_from_bytes, module_to_bytes_as, write_atomic, Precision};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PackArgs {
    /// The run's training config (a whole-network adversarial one: `"generator": "full"`).
    #[arg(long)]
    pub config: PathBuf,
    /// The run folder (`train --out`).
    #[arg(long)]
    pub run: PathBuf,
    /// The compact run folder to write (its earlier pack, if any, is replaced); continue with
    /// `train --resume --out` on a copy of it.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// The checkpoint files kept as they are; the generator's are re-encoded, `optim_g.bin` dropped.
const KEPT: [&str; 2] = ["disc.bin", "optim_d.bin"];
const GENERATOR: [&str; 2] = ["model.bin", "ema.bin"];

pub fn pack(a: &PackArgs) -> Result<()> {
    let (run, out) = (
        crate::upscale::resolved(&a.run),
        crate::upscale::resolved(&a.output),
    );
    if run == out {
        bail!(
            "refusing to pack {} into itself: pick another --output",
            a.run.display()
        );
    }
    let base = a.run.join("base");
    let cfg = TrainConfig::load_with(&a.config, || base_model(&base, None, false))?;
    if !matches!(&cfg.adversarial, Some(adv) if adv.generator == Generator::Full) {
        bail!(
            "{}: pack takes whole-network adversarial runs (`\"generator\": \"full\"`)",
            a.config.display()
        );
    }
    let Some(ck) = Checkpoint::latest(&a.run)? else {
        bail!("{} holds no checkpoint", a.run.display());
    };
    // The base must be what the config grows from, or the resumed run would refuse it later.
    base_model(&base, Some(&cfg.model), true)?;
    let device = burn::backend::flex::FlexDevice;
    let mut files = Vec::new();
    for f in GENERATOR {
        let net: UNet<burn::backend::Flex> = cfg.model.unet.init(&device);
        let net = module_from_bytes(net, &ck.read(f)?, &device)
            .with_context(|| format!("{}: not the config's network", ck.dir.join(f).display()))?;
        files.push((f, module_to_bytes_as(net, Precision::Half)?));
    }
    for f in KEPT {
        files.push((f, ck.read(f)?));
    }
    std::fs::create_dir_all(out.join("base"))?;
    for f in ["model.bin", "config.json"] {
        write_atomic(&out.join("base").join(f), &read_in(&base, f)?)?;
    }
    Checkpoint::save(&out, &ck.state, &files)?;
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    println!(
        "packed {} (step {}) into {}: {:.1} MB of checkpoint, the generator's optimiser left out",
        ck.dir.display(),
        ck.state.step,
        a.output.display(),
        bytes as f64 / 1e6
    );
    Ok(())
}
