//! `flowmapsr eval`: the standard SR protocol (ALGORITHM.md §8) on a folder of HR images.
//! HR cropped to a multiple of the scale -> MATLAB-bicubic LR (8-bit) -> SR (8-bit) -> PSNR-Y /
//! SSIM-Y with the border shaved by `scale`, GMSD, HF ratio. Matches `sr_score.py score`.

use crate::backend::DeviceKind;
use crate::imageio;
use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use flowmapsr_core::metrics::{score, Scores};
use flowmapsr_core::resize::{crop_to_multiple, downscale_lr, imresize};
use flowmapsr_core::sampler::{upscale, SampleOptions};
use flowmapsr_core::unet::UNet;
use flowmapsr_core::weights::ModelConfig;
use flowmapsr_core::Image;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Folder of HR images.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 4, value_parser = crate::upscale::parse_scale)]
    pub scale: u32,
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    #[arg(long, value_enum, default_value_t = Method::Model)]
    pub method: Method,
    #[arg(long, value_enum, default_value_t = crate::upscale::ModeArg::Fidelity)]
    pub mode: crate::upscale::ModeArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tile side in input pixels.
    #[arg(long, default_value_t = 128)]
    pub tile: usize,
    #[arg(long, default_value_t = 16)]
    pub overlap: usize,
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the SR images here (PNG, same stems) for `sr_score.py score`.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Model,
    Bicubic,
}

#[derive(serde::Serialize)]
pub struct EvalReport {
    pub psnr_y: f64,
    pub ssim_y: f64,
    pub gmsd: f64,
    pub hf_ratio: f64,
    pub ms_per_image: f64,
    pub n: usize,
    pub images: Vec<ImageReport>,
}

#[derive(serde::Serialize)]
pub struct ImageReport {
    pub name: String,
    #[serde(flatten)]
    pub scores: Scores,
    pub ms: f64,
}

/// HR images of a folder, sorted by name: (stem, decoded).
pub fn load_folder(dir: &Path) -> Result<Vec<(String, imageio::Decoded)>> {
    let files = crate::upscale::collect_inputs(&[dir.to_path_buf()])?;
    files
        .iter()
        .map(|f| {
            let stem = f
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("image")
                .to_string();
            Ok((stem, imageio::read(f, u64::MAX)?))
        })
        .collect()
}

/// Evaluate `sr_fn` (LR -> SR, RGB in [0, 1]) on every HR image.
pub fn evaluate(
    images: &[(String, imageio::Decoded)],
    scale: u32,
    save: Option<&Path>,
    mut sr_fn: impl FnMut(&Image) -> Result<Image>,
) -> Result<EvalReport> {
    let mut reports = Vec::new();
    for (name, img) in images {
        let hr = crop_to_multiple(&img.rgb.quantized(255.0), scale);
        let lr = downscale_lr(&hr, scale)?;
        let t0 = Instant::now();
        let sr = sr_fn(&lr)
            .with_context(|| format!("super-resolving {name}"))?
            .quantized(255.0);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if let Some(dir) = save {
            std::fs::create_dir_all(dir)?;
            imageio::write(&dir.join(format!("{name}.png")), &sr, None, false)?;
        }
        reports.push(ImageReport {
            name: name.clone(),
            scores: score(&sr, &hr, scale as usize, img.gray),
            ms,
        });
    }
    let mean = Scores::mean(&reports.iter().map(|r| r.scores).collect::<Vec<_>>());
    Ok(EvalReport {
        psnr_y: mean.psnr_y,
        ssim_y: mean.ssim_y,
        gmsd: mean.gmsd,
        hf_ratio: mean.hf_ratio,
        ms_per_image: reports.iter().map(|r| r.ms).sum::<f64>() / reports.len().max(1) as f64,
        n: reports.len(),
        images: reports,
    })
}

/// The model as an LR -> SR function.
pub fn model_fn<'a, B: Backend>(
    net: &'a UNet<B>,
    cfg: &'a ModelConfig,
    scale: u32,
    opts: SampleOptions,
    device: &'a B::Device,
) -> impl FnMut(&Image) -> Result<Image> + 'a {
    move |lr| {
        Ok(upscale(net, cfg, lr, scale, &opts, device, &mut |_, _| {
            true
        })?)
    }
}

pub fn bicubic_fn(scale: u32) -> impl FnMut(&Image) -> Result<Image> {
    move |lr| Ok(imresize(lr, scale as f64, true))
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let images = load_folder(&args.data)?;
    let report = match args.method {
        Method::Bicubic => evaluate(
            &images,
            args.scale,
            args.save.as_deref(),
            bicubic_fn(args.scale),
        )?,
        Method::Model => crate::with_backend!(args.device, |B, device| {
            let (net, cfg) = crate::weights::load::<B>(args.weights.as_deref(), &device)?;
            let opts = crate::upscale::sample_options(
                args.steps,
                args.mode.into(),
                args.seed,
                args.scale,
                args.tile,
                args.overlap,
            );
            evaluate(
                &images,
                args.scale,
                args.save.as_deref(),
                model_fn(&net, &cfg, args.scale, opts, &device),
            )?
        }),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for r in &report.images {
            println!(
                "{:24} PSNR {:7.3}  SSIM {:.4}  GMSD {:.4}  HF {:.3}  {:8.1} ms",
                r.name, r.scores.psnr_y, r.scores.ssim_y, r.scores.gmsd, r.scores.hf_ratio, r.ms
            );
        }
        println!(
            "{:24} PSNR {:7.3}  SSIM {:.4}  GMSD {:.4}  HF {:.3}  {:8.1} ms/image  (n={}, x{}, {:?}, steps {})",
            "MEAN", report.psnr_y, report.ssim_y, report.gmsd, report.hf_ratio, report.ms_per_image, report.n, args.scale, args.method, args.steps
        );
    }
    Ok(())
}
