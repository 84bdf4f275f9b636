//! `flowmapsr bench`: inference speed of one tile at NFE N on the chosen backend, beside the
//! model's cost per output pixel and the backend's own matmul throughput (an attainable peak),
//! so the fraction of the machine in use is visible.

use anyhow::Result;
use burn::tensor::{backend::Backend, Distribution, Tensor};
use flowmapsr_core::objectives::FlowNet;
use flowmapsr_core::precision::{Mixed, Precision};
use flowmapsr_core::request::SampleRequest;
use flowmapsr_core::sampler::{upscale, SampleOptions};
use flowmapsr_core::weights::ModelConfig;
use flowmapsr_core::Image;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The sampling knobs (as `upscale`): one tile of `--tile` input pixels is timed whole (no
    /// overlap, no LR projection) at `--steps`, `--guidance` and `--lora`.
    #[command(flatten)]
    pub request: SampleRequest,
    #[command(flatten)]
    pub model: crate::weights::ModelArgs,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    #[arg(long)]
    pub json: bool,
    /// Time training steps instead (Shortcut objective, Adam, EMA teacher, on random batches so
    /// data loading is not measured): batch x crop x crop HR pixels per step.
    #[arg(long)]
    pub train: bool,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub crop: usize,
    /// Network compute precision: f32, or bf16 / f16 with f32 weights (core precision.rs).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

#[derive(serde::Serialize)]
pub struct TrainBenchReport {
    pub device: String,
    pub precision: String,
    pub batch: usize,
    pub crop: usize,
    pub ms_per_step: f64,
    pub steps_per_s: f64,
    pub hr_mp_per_s: f64,
}

#[derive(serde::Serialize)]
pub struct BenchReport {
    pub device: String,
    pub precision: String,
    pub tile: usize,
    pub scale: u32,
    pub steps: usize,
    /// The knobs it ran at (a preset's, or the flags').
    pub guidance: f32,
    pub lora: f32,
    pub ms_per_tile: f64,
    pub output_mp_per_s: f64,
    pub model_flops_per_output_pixel: f64,
    pub model_gflops_per_s: f64,
    pub matmul_gflops_per_s: f64,
    pub fraction_of_matmul_peak: f64,
    /// The LR projection of one output of this size (on the CPU, whatever the device): timed
    /// apart, so ms_per_tile stays the network's.
    pub lr_projection_ms: f64,
    /// The grain cut of that output (`--grain-cut`; on the CPU, whatever the device), timed apart
    /// as the projection.
    pub grain_cut_ms: f64,
}

fn matmul_gflops<B: Backend>(device: &B::Device) -> f64 {
    // The timed expression is warmed up whole (a GPU compiles and autotunes the matmul and the
    // sum on first use), and n grows until one product takes 10 ms, so a GPU's launch and
    // read-back latency do not dominate.
    let mut n = 512;
    loop {
        let a = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
        let b = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
        let once = || {
            let _ = a.clone().matmul(b.clone()).sum().into_data();
        };
        once();
        let t = Instant::now();
        once();
        let one = t.elapsed().as_secs_f64();
        if one < 0.01 && n < 8192 {
            n *= 2;
            continue;
        }
        let reps = ((0.3 / one).ceil() as usize).clamp(1, 50);
        let t0 = Instant::now();
        for _ in 0..reps {
            once();
        }
        return 2.0 * (n as f64).powi(3) * reps as f64 / t0.elapsed().as_secs_f64() / 1e9;
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.train {
        let r = crate::with_backend!(args.model.device, |B, device| {
            train_bench::<burn::backend::Autodiff<B>>(args, &device)?
        });
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "device {} {} | training batch {} x {}x{} HR | {:.1} ms/step | {:.2} steps/s | {:.3} HR MP/s",
                r.device, r.precision, r.batch, r.crop, r.crop, r.ms_per_step, r.steps_per_s, r.hr_mp_per_s
            );
        }
        return Ok(());
    }
    let r = crate::with_backend!(args.model.device, |B, device| bench_on::<B>(args, &device)?);
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "device {} {} | tile {}x{} x{} NFE {} | {:.1} ms/tile | {:.3} output MP/s | {:.0} FLOP/output px | {:.1} GFLOP/s model, {:.1} GFLOP/s f32 matmul peak ({:.0}%) | LR projection of that output {:.1} ms, grain cut {:.1} ms (CPU)",
            r.device, r.precision, r.tile, r.tile, r.scale, r.steps, r.ms_per_tile, r.output_mp_per_s,
            r.model_flops_per_output_pixel, r.model_gflops_per_s, r.matmul_gflops_per_s, 100.0 * r.fraction_of_matmul_peak,
            r.lr_projection_ms, r.grain_cut_ms
        );
    }
    Ok(())
}

fn bench_on<B: Backend>(args: &BenchArgs, device: &B::Device) -> Result<BenchReport> {
    // One tile is timed whole: there is no overlap.
    let req = &SampleRequest {
        overlap: 0,
        ..args.request.clone()
    };
    let (model, cfg) = crate::weights::load_checked::<B>(&args.model, req, device)?;
    if req.lora() != 0.0 && args.precision != Precision::F32 {
        anyhow::bail!("--lora is timed in f32 (the adapters have no half-precision path)");
    }
    let t = req.tile;
    let data = (0..3 * t * t)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    let lr = Image::new(t, t, 3, data)?;
    let out = t * req.scale as usize;
    let opts = SampleOptions {
        overlap: 0,
        lr_projection: false,
        grain_cut: false,
        ..req.options(false)
    };
    let secs = if req.lora() != 0.0 {
        time_tile(
            &model.at(req.lora())?,
            &cfg,
            &lr,
            req.scale,
            &opts,
            args.reps,
            device,
        )?
    } else {
        let net = Mixed::new(&model.net, args.precision);
        time_tile(&net, &cfg, &lr, req.scale, &opts, args.reps, device)?
    };
    let px = (out * out) as f64;
    let fpp = cfg.unet.flops_per_pixel() * req.steps() as f64;
    let model_gflops = fpp * px / secs / 1e9;
    let peak = matmul_gflops::<B>(device);
    let sr = upscale(
        &model.net,
        &cfg,
        &lr,
        req.scale,
        &opts,
        device,
        &mut |_, _| true,
    )?;
    let t0 = Instant::now();
    for _ in 0..args.reps {
        flowmapsr_core::projection::project(&sr, &lr, req.scale)?;
    }
    let proj = t0.elapsed().as_secs_f64() / args.reps as f64;
    let t0 = Instant::now();
    for _ in 0..args.reps {
        flowmapsr_core::grain::cut_grain(&sr);
    }
    let cut = t0.elapsed().as_secs_f64() / args.reps as f64;
    Ok(BenchReport {
        device: args.model.device.to_string(),
        precision: args.precision.to_string(),
        tile: t,
        scale: req.scale,
        steps: req.steps(),
        guidance: req.guidance(),
        lora: req.lora(),
        ms_per_tile: secs * 1e3,
        output_mp_per_s: px / secs / 1e6,
        model_flops_per_output_pixel: fpp,
        model_gflops_per_s: model_gflops,
        matmul_gflops_per_s: peak,
        fraction_of_matmul_peak: model_gflops / peak,
        lr_projection_ms: proj * 1e3,
        grain_cut_ms: cut * 1e3,
    })
}

/// Seconds per call of the sampler on `lr`, after one warm-up (kernel compilation, autotune,
/// allocation).
fn time_tile<B: Backend>(
    net: &impl FlowNet<B>,
    cfg: &ModelConfig,
    lr: &Image,
    scale: u32,
    opts: &SampleOptions,
    reps: usize,
    device: &B::Device,
) -> Result<f64> {
    let run = || upscale(net, cfg, lr, scale, opts, device, &mut |_, _| true);
    run()?;
    let t0 = Instant::now();
    for _ in 0..reps {
        run()?;
    }
    Ok(t0.elapsed().as_secs_f64() / reps.max(1) as f64)
}

fn train_bench<B: burn::tensor::backend::AutodiffBackend>(
    args: &BenchArgs,
    device: &B::Device,
) -> Result<TrainBenchReport> {
    use burn::module::AutodiffModule;
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use flowmapsr_core::objectives::{shortcut, Batch};
    use rand::SeedableRng;
    let (_, cfg) = crate::weights::load::<B::InnerBackend>(args.model.weights.as_deref(), device)?;
    let align = 2 * cfg.unet.align();
    if args.crop == 0 || !args.crop.is_multiple_of(align) {
        anyhow::bail!("--crop must be a positive multiple of {align}");
    }
    let mut model = cfg.unet.init::<B>(device);
    let mut optim = AdamConfig::new().init::<B, flowmapsr_core::unet::UNet<B>>();
    let h = args.crop / 2;
    let shape = [args.batch, 12, h, h];
    let batch = Batch::new(
        Tensor::<B, 4>::random(shape, Distribution::Uniform(-1.0, 1.0), device),
        Tensor::<B, 4>::random(shape, Distribution::Uniform(-1.0, 1.0), device),
    );
    let sc = shortcut::ShortcutConfig::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut step = |model: flowmapsr_core::unet::UNet<B>| {
        let teacher = Mixed::new(&model.valid(), args.precision);
        let student = Mixed::new(&model, args.precision);
        let loss = shortcut::shortcut(&student, &teacher, &batch, &sc, &cfg.bridge, &mut rng);
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        let model = optim.step(1e-4, model, grads);
        // Wait for the device to finish the step.
        B::sync(device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
        anyhow::Ok(model)
    };
    model = step(model)?; // warm-up (kernel compilation, autotune, allocation)
    let t0 = Instant::now();
    for _ in 0..args.reps {
        model = step(model)?;
    }
    let secs = t0.elapsed().as_secs_f64() / args.reps as f64;
    Ok(TrainBenchReport {
        device: args.model.device.to_string(),
        precision: args.precision.to_string(),
        batch: args.batch,
        crop: args.crop,
        ms_per_step: secs * 1e3,
        steps_per_s: 1.0 / secs,
        hr_mp_per_s: (args.batch * args.crop * args.crop) as f64 / secs / 1e6,
    })
}
