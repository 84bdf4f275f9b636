//! `flowmapsr eval`: the standard SR protocol (docs/algorithm.md §8) on a folder of HR images.
//! HR cropped to a multiple of the scale -> MATLAB-bicubic LR (8-bit) -> SR (8-bit) -> PSNR-Y /
//! SSIM-Y with the border shaved by `scale`, GMSD, HF ratio. Matches `sr_score.py score`.
//!
//! `--consistency` measures the paper's core claim (docs/algorithm.md §2): from the same source noise
//! (stochastic mode), the flow map at NFE 1, 2 and 4 against the N-step Euler ODE of the model's
//! own diagonal velocity v(x, t, t): agreement PSNR-Y between the two outputs, and each one's
//! scores against HR.

use crate::imageio;
use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use flowmapsr_core::bridge::Mode;
use flowmapsr_core::metrics::{score, Scores};
use flowmapsr_core::request::SampleRequest;
use flowmapsr_core::resize::{crop_to_multiple, downscale_lr, imresize};
use flowmapsr_core::sampler::{upscale, SampleOptions, Solver};
use flowmapsr_core::weights::ModelConfig;
use flowmapsr_core::Image;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Folder of HR images.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value_t = Method::Model)]
    pub method: Method,
    /// The sampling knobs (as `upscale`); the LR images scored here are made without loss, so
    /// `--projection auto` is on. With --consistency the mode is always stochastic.
    #[command(flatten)]
    pub request: SampleRequest,
    #[command(flatten)]
    pub model: crate::weights::ModelArgs,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the SR images here (PNG, same stems) for `sr_score.py score`.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Flow map at NFE 1, 2, 4 against the --ode-steps Euler ODE of the diagonal velocity, from
    /// the same noise.
    #[arg(long, conflicts_with_all = ["method", "save", "steps"])]
    pub consistency: bool,
    #[arg(long, default_value_t = 64, requires = "consistency")]
    pub ode_steps: usize,
    /// Centre-crop every HR image to at most this side first (quick checks; the standard
    /// protocol scores whole images).
    #[arg(long)]
    pub max_side: Option<usize>,
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
    pub pattern: f64,
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

/// Centre crop to at most `side` x `side`.
fn centre_crop(img: &Image, side: usize) -> Image {
    let (w, h) = (img.width.min(side), img.height.min(side));
    img.crop((img.width - w) / 2, (img.height - h) / 2, w, h)
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
        pattern: mean.pattern,
        ms_per_image: reports.iter().map(|r| r.ms).sum::<f64>() / reports.len().max(1) as f64,
        n: reports.len(),
        images: reports,
    })
}

/// The model as an LR -> SR function.
pub fn model_fn<'a, B: Backend>(
    net: &'a impl flowmapsr_core::objectives::FlowNet<B>,
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

/// NFE counts of the flow map that `--consistency` compares with the ODE.
pub const CONSISTENCY_NFE: [usize; 3] = [1, 2, 4];

/// Means over the images; agreement_* is PSNR-Y of the NFE-N output against the ODE's (same
/// shave as the protocol, capped at 100 dB for identical images).
#[derive(serde::Serialize)]
pub struct ConsistencyReport {
    pub agreement_psnr_nfe1: f64,
    pub agreement_psnr_nfe2: f64,
    pub agreement_psnr_nfe4: f64,
    pub psnr_y_nfe1: f64,
    pub psnr_y_nfe2: f64,
    pub psnr_y_nfe4: f64,
    pub psnr_y_ode: f64,
    pub ssim_y_nfe1: f64,
    pub ssim_y_ode: f64,
    pub gmsd_nfe1: f64,
    pub gmsd_nfe2: f64,
    pub gmsd_nfe4: f64,
    pub gmsd_ode: f64,
    pub hf_ratio_nfe1: f64,
    pub hf_ratio_nfe2: f64,
    pub hf_ratio_nfe4: f64,
    pub hf_ratio_ode: f64,
    pub ode_steps: usize,
    pub n: usize,
    pub ms_per_image: f64,
}

/// `sr(lr, steps, solver)` must use the same source noise for every call on one image.
pub fn consistency(
    images: &[(String, imageio::Decoded)],
    scale: u32,
    ode_steps: usize,
    mut sr: impl FnMut(&Image, usize, Solver) -> Result<Image>,
    mut per_image: impl FnMut(&str, &[f64; 3]),
) -> Result<ConsistencyReport> {
    let t0 = Instant::now();
    let mut ode_scores = Vec::new();
    let mut nfe_scores: [Vec<Scores>; 3] = Default::default();
    let mut agree_sum = [0.0; 3];
    for (name, img) in images {
        let hr = crop_to_multiple(&img.rgb.quantized(255.0), scale);
        let lr = downscale_lr(&hr, scale)?;
        let sh = scale as usize;
        let ode = sr(&lr, ode_steps, Solver::EulerDiagonal)
            .with_context(|| format!("ODE on {name}"))?
            .quantized(255.0);
        ode_scores.push(score(&ode, &hr, sh, img.gray));
        let mut agree = [0.0; 3];
        for (k, nfe) in CONSISTENCY_NFE.iter().enumerate() {
            let y = sr(&lr, *nfe, Solver::FlowMap)
                .with_context(|| format!("NFE {nfe} on {name}"))?
                .quantized(255.0);
            nfe_scores[k].push(score(&y, &hr, sh, img.gray));
            agree[k] = score(&y, &ode, sh, img.gray).psnr_y.min(100.0);
            agree_sum[k] += agree[k];
        }
        per_image(name, &agree);
    }
    let n = images.len().max(1) as f64;
    let ode = Scores::mean(&ode_scores);
    let [n1, n2, n4] = nfe_scores.map(|v| Scores::mean(&v));
    Ok(ConsistencyReport {
        agreement_psnr_nfe1: agree_sum[0] / n,
        agreement_psnr_nfe2: agree_sum[1] / n,
        agreement_psnr_nfe4: agree_sum[2] / n,
        psnr_y_nfe1: n1.psnr_y,
        psnr_y_nfe2: n2.psnr_y,
        psnr_y_nfe4: n4.psnr_y,
        psnr_y_ode: ode.psnr_y,
        ssim_y_nfe1: n1.ssim_y,
        ssim_y_ode: ode.ssim_y,
        gmsd_nfe1: n1.gmsd,
        gmsd_nfe2: n2.gmsd,
        gmsd_nfe4: n4.gmsd,
        gmsd_ode: ode.gmsd,
        hf_ratio_nfe1: n1.hf_ratio,
        hf_ratio_nfe2: n2.hf_ratio,
        hf_ratio_nfe4: n4.hf_ratio,
        hf_ratio_ode: ode.hf_ratio,
        ode_steps,
        n: images.len(),
        ms_per_image: t0.elapsed().as_secs_f64() * 1e3 / n,
    })
}

pub fn bicubic_fn(scale: u32) -> impl FnMut(&Image) -> Result<Image> {
    move |lr| Ok(imresize(lr, scale as f64, true))
}

fn run_consistency(args: &EvalArgs, images: &[(String, imageio::Decoded)]) -> Result<()> {
    if args.ode_steps == 0 {
        anyhow::bail!("--ode-steps must be positive");
    }
    // The comparison starts from source noise: the stochastic mode.
    let req = SampleRequest {
        mode: Mode::Stochastic,
        ..args.request.clone()
    };
    let scale = req.scale;
    let r = crate::with_backend!(args.model.device, |B, device| {
        let (model, cfg) = crate::weights::load_checked::<B>(&args.model, &req, &device)?;
        let net = model.at(req.lora())?;
        let sr = |lr: &Image, steps: usize, solver: Solver| {
            let opts = SampleOptions {
                steps,
                solver,
                ..req.options(false)
            };
            Ok(upscale(
                &net,
                &cfg,
                lr,
                scale,
                &opts,
                &device,
                &mut |_, _| true,
            )?)
        };
        let quiet = args.json;
        consistency(images, scale, args.ode_steps, sr, |name, a| {
            if !quiet {
                println!(
                    "{name:24} agreement with the {}-step ODE: NFE1 {:.2} dB  NFE2 {:.2} dB  NFE4 {:.2} dB",
                    args.ode_steps, a[0], a[1], a[2]
                );
            }
        })?
    });
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "MEAN agreement PSNR-Y with the {}-step ODE ({:?} mode, seed {}, x{}, n={}):",
            r.ode_steps, req.mode, req.seed, scale, r.n
        );
        println!(
            "  NFE1 {:.2} dB  NFE2 {:.2} dB  NFE4 {:.2} dB",
            r.agreement_psnr_nfe1, r.agreement_psnr_nfe2, r.agreement_psnr_nfe4
        );
        for (name, p, g, h) in [
            ("NFE1", r.psnr_y_nfe1, r.gmsd_nfe1, r.hf_ratio_nfe1),
            ("NFE2", r.psnr_y_nfe2, r.gmsd_nfe2, r.hf_ratio_nfe2),
            ("NFE4", r.psnr_y_nfe4, r.gmsd_nfe4, r.hf_ratio_nfe4),
            ("ODE", r.psnr_y_ode, r.gmsd_ode, r.hf_ratio_ode),
        ] {
            println!("  {name:5} vs HR: PSNR {p:7.3}  GMSD {g:.4}  HF {h:.3}");
        }
        println!("  {:.1} ms/image", r.ms_per_image);
    }
    Ok(())
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let scale = args.request.scale;
    let mut images = load_folder(&args.data)?;
    if let Some(side) = args.max_side {
        if side < 8 * scale as usize {
            anyhow::bail!("--max-side {side} is too small for x{scale}");
        }
        for (_, d) in images.iter_mut() {
            d.rgb = centre_crop(&d.rgb, side);
        }
    }
    if args.consistency {
        return run_consistency(args, &images);
    }
    let report = match args.method {
        Method::Bicubic => evaluate(&images, scale, args.save.as_deref(), bicubic_fn(scale))?,
        Method::Model => crate::with_backend!(args.model.device, |B, device| {
            let (model, cfg) =
                crate::weights::load_checked::<B>(&args.model, &args.request, &device)?;
            let net = model.at(args.request.lora())?;
            let opts = args.request.options(false);
            evaluate(
                &images,
                scale,
                args.save.as_deref(),
                model_fn(&net, &cfg, scale, opts, &device),
            )?
        }),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for r in &report.images {
            println!(
                "{:24} PSNR {:7.3}  SSIM {:.4}  GMSD {:.4}  HF {:.3}  PATTERN {:.2}  {:8.1} ms",
                r.name,
                r.scores.psnr_y,
                r.scores.ssim_y,
                r.scores.gmsd,
                r.scores.hf_ratio,
                r.scores.pattern,
                r.ms
            );
        }
        println!(
            "{:24} PSNR {:7.3}  SSIM {:.4}  GMSD {:.4}  HF {:.3}  PATTERN {:.2}  {:8.1} ms/image  (n={}, x{}, {:?}, steps {})",
            "MEAN", report.psnr_y, report.ssim_y, report.gmsd, report.hf_ratio, report.pattern, report.ms_per_image, report.n, scale, args.method, args.request.steps()
        );
    }
    Ok(())
}
