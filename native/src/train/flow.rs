//! The flow-map training loop: one worker per local device, each drawing its share of every
//! batch, the objective (core objectives/), Adam, EMA teacher, validation and checkpoints.

use super::checkpoint::{Checkpoint, RunState, ValPoint};
use super::distributed::{all_reduce_mean, join_workers, Topology};
use super::log::StepLog;
use super::{load_split, TrainArgs, TrainConfig, Weighting};
use crate::imageio;
use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use burn_collective::PeerId;
use flowmapsr_core::batch::make_batch;
use flowmapsr_core::bridge::Mode;
use flowmapsr_core::ema;
use flowmapsr_core::objectives::weighting::LossWeight;
use flowmapsr_core::precision::Mixed;
use flowmapsr_core::sampler::SampleOptions;
use flowmapsr_core::unet::UNet;
use flowmapsr_core::weights::{
    module_from_bytes, module_to_bytes, record_from_bytes, record_to_bytes, ModelConfig,
};
use flowmapsr_core::Image;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Validation of any flow map (a plain model, or one with its LoRA at some scale): the eval
/// report (mean PSNR-Y, HF ratio, ...) at x4, NFE 1, in `mode` at `temperature` and `guidance`.
pub fn validate<B: burn::tensor::backend::Backend>(
    net: &impl flowmapsr_core::objectives::FlowNet<B>,
    cfg: &ModelConfig,
    images: &[(String, imageio::Decoded)],
    mode: Mode,
    temperature: f32,
    guidance: f32,
    device: &B::Device,
) -> Result<crate::eval::EvalReport> {
    let opts = SampleOptions {
        tile: 512,
        overlap: 64,
        mode,
        temperature,
        guidance,
        ..Default::default()
    };
    crate::eval::evaluate(
        images,
        4,
        None,
        crate::eval::model_fn(net, cfg, 4, opts, device),
    )
}

/// What every worker shares (read-only).
struct Shared<'a> {
    args: &'a TrainArgs,
    cfg: &'a TrainConfig,
    images: Vec<Image>,
    val: Option<Vec<(String, imageio::Decoded)>>,
    topo: Topology,
}

pub fn train<B: AutodiffBackend>(
    args: &TrainArgs,
    cfg: &TrainConfig,
    devices: Vec<B::Device>,
) -> Result<()> {
    let topo = Topology::new(&args.node, devices.len(), cfg.batch)?;
    std::fs::create_dir_all(&args.out)?;
    let (images, val) = load_split(&args.data, cfg.crop, args.val.as_deref(), args.holdout)?;
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
        let full = adv.generator == flowmapsr_core::adversarial::Generator::Full;
        if topo.world > devices.len() || (devices.len() > 1 && !full) {
            bail!(
                "adversarial training runs on one node, and on several devices only with \
                 \"generator\": \"full\""
            );
        }
        return crate::adversarial::train_lora::<B>(
            args,
            cfg,
            adv,
            &images,
            val.as_deref(),
            devices,
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
        let lead = worker::<B>(shared, model, weight, devices[0].clone(), 0);
        join_workers(lead, others)
    })
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
    let mut state = RunState::default();
    if let Some(ck) = Checkpoint::resume(args, lead)? {
        model = module_from_bytes(model, &ck.read("model.bin")?, &device)?;
        ema_net = module_from_bytes(ema_net, &ck.read("ema.bin")?, &device)?;
        optim = optim.load_record(record_from_bytes::<B, _>(&ck.read("optim.bin")?, &device)?);
        if let Some(w) = weight.take() {
            if !ck.has("weight.bin") {
                bail!(
                    "{} has no loss-weight net: the run was trained with uniform weighting \
                     (resume with --weighting uniform)",
                    ck.dir.display()
                );
            }
            weight = Some(module_from_bytes(w, &ck.read("weight.bin")?, &device)?);
            let rec = record_from_bytes::<B, _>(&ck.read("weight_optim.bin")?, &device)?;
            optim_w = optim_w.load_record(rec);
        }
        state = ck.state;
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
    let mut log = StepLog::default();
    while state.step < end {
        let t0 = Instant::now();
        let step = state.step;
        let rows = rank * per..(rank + 1) * per;
        let batch = make_batch::<B>(&sh.images, &cfg.batch_spec(), step, rows, &device)?;
        let mut rng = ChaCha8Rng::seed_from_u64(
            cfg.seed.wrapping_add(1)
                ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
                ^ (rank as u64).wrapping_mul(0x94D0_49BB_1331_11EB),
        );
        // Half-precision views of the f32 student and teacher (identity for f32).
        let student = Mixed::new(&model, cfg.precision);
        let teacher = Mixed::new(&ema_net, cfg.precision);
        let loss = cfg.objective.loss(
            &student,
            &teacher,
            &batch,
            &cfg.objectives(),
            &cfg.model.bridge,
            &mut rng,
        );
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
            log.add(name, t.clone().into_scalar().elem());
        }
        if weight.is_some() {
            log.add("weighted", total);
        }
        log.step();
        model = optim.step(cfg.lr_at(step), model, grads);
        if let (Some(w), Some(g)) = (weight.take(), grads_w) {
            weight = Some(optim_w.step(cfg.lr_at(step), w, g));
        }
        ema_net = ema::update(ema_net, &model.valid(), cfg.ema_decay);
        state.step += 1;
        state.train_secs += t0.elapsed().as_secs_f64();
        pb.set_position(state.step as u64);

        if lead && (state.step.is_multiple_of(cfg.log_every) || state.step == end) {
            let (terms, secs) = log.take();
            tracing::info!(
                "step {} lr {:.2e} {terms} | {secs:.2} s/step",
                state.step,
                cfg.lr_at(step),
            );
            pb.set_message(terms);
        }
        let last = state.step == end;
        if let (true, Some(v)) = (lead, &sh.val) {
            if state.step.is_multiple_of(cfg.val_every) || last {
                let psnr =
                    validate(&ema_net, &cfg.model, v, Mode::Fidelity, 1.0, 1.0, &device)?.psnr_y;
                state.history.push(ValPoint {
                    step: state.step,
                    psnr_y: psnr,
                    train_secs: state.train_secs,
                    gmsd: None,
                    hf_ratio: None,
                    pattern: None,
                });
                let best = state.best_psnr.is_none_or(|b| psnr > b);
                tracing::info!(
                    "step {} validation PSNR-Y x4 {:.3} dB{}",
                    state.step,
                    psnr,
                    if best { " (best)" } else { "" }
                );
                if best {
                    state.best_psnr = Some(psnr);
                    flowmapsr_core::weights::save_dir(
                        &ema_net,
                        &cfg.model,
                        &args.out.join("best"),
                    )?;
                }
            }
        }
        if writer && (state.step.is_multiple_of(cfg.ckpt_every) || last) {
            let mut files = vec![
                ("model.bin", module_to_bytes(model.valid())),
                ("ema.bin", module_to_bytes(ema_net.clone())),
                ("optim.bin", record_to_bytes::<B, _>(optim.to_record())),
            ];
            if let Some(w) = &weight {
                files.push(("weight.bin", module_to_bytes(w.valid())));
                files.push((
                    "weight_optim.bin",
                    record_to_bytes::<B, _>(optim_w.to_record()),
                ));
            }
            Checkpoint::save(&args.out, &state, &files)?;
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
