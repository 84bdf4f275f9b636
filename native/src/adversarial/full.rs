//! Whole-network adversarial fine-tuning (`"generator": "full"`, docs/algorithm.md §5): every
//! weight of the flow map trains against the discriminator with the loss of core adversarial.rs,
//! from the --init base grown first by Net2Net identity blocks when the config's `model` has more
//! residual blocks per level (the function is unchanged at step 0, the capacity is new).
//! The EMA of the generator is what is validated and saved. `best/` keeps the EMA weights of the
//! lowest validation GMSD at the run's w: it falls as edges are drawn where the photo has them
//! and rises with artifacts, where PSNR only falls as detail appears. `val/STEP/` keeps the EMA
//! of every validation, since the preset is chosen among them at several w afterwards
//! (scripts/candidate.sh). The dial between the base and the result is network interpolation
//! (ESRGAN §3.4), `flowmapsr interpolate`. With `--devices cpu,cpu` (one node) the run is
//! data-parallel: each device takes an equal share of the batch, and the discriminator's and the
//! generator's gradients are each averaged over the replicas (burn-collective's all-reduce).

use super::{
    adversarial_step, base_dir, base_model, generator_adam, load_base, load_optim, validate_fake,
    Critic, StepInput,
};
use crate::imageio;
use crate::train::distributed::{all_reduce_mean, join_workers};
use crate::train::log::StepLog;
use crate::train::{Checkpoint, RunState, TrainArgs, TrainConfig, ValPoint};
use anyhow::{bail, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use burn_collective::{CollectiveConfig, PeerId};
use flowmapsr_core::adversarial::AdversarialConfig;
use flowmapsr_core::ema;
use flowmapsr_core::unet::UNet;
use flowmapsr_core::weights::{
    materialize, module_from_bytes, module_to_bytes, record_from_bytes, record_to_bytes, save_dir,
};
use flowmapsr_core::Image;
use std::sync::{Barrier, Mutex};
use std::time::Instant;

pub fn train_full<B: AutodiffBackend>(
    args: &TrainArgs,
    cfg: &TrainConfig,
    adv: &AdversarialConfig,
    images: &[Image],
    val: Option<&[(String, imageio::Decoded)]>,
    devices: Vec<B::Device>,
) -> Result<()> {
    let device = devices[0].clone();
    let init = base_dir(args)?;
    // The base as it is; the config's model is it, or it with more blocks (checked by name).
    let base_cfg = base_model(&init, Some(&cfg.model), true)?;
    let extra = cfg
        .model
        .unet
        .extra_blocks(&base_cfg.unet)
        .expect("base_model checked the deepening");
    B::seed(&device, cfg.seed);
    let base: UNet<B> = load_base(args, &init, &base_cfg, &device)?;
    let mut net = materialize(base.deepen(&cfg.model.unet, &device));
    let mut ema_net: UNet<B::InnerBackend> = net.valid();
    let mut critic = Critic::<B>::new(adv, &device).warm(args, &device)?;
    let mut optim_g = generator_adam(cfg).init::<B, UNet<B>>();
    let mut state = RunState::default();
    if let Some(ck) = Checkpoint::resume(args, true)? {
        net = module_from_bytes(net, &ck.read("model.bin")?, &device)?;
        ema_net = module_from_bytes(ema_net, &ck.read("ema.bin")?, &device)?;
        critic = critic.resume(&ck, &device)?;
        state = ck.state.clone();
        optim_g = if ck.has("optim_g.bin") {
            load_optim(optim_g, &ck.dir, "optim_g.bin", &device)?
        } else {
            // A packed checkpoint (`flowmapsr pack`) leaves it out: it is twice the generator.
            tracing::warn!(
                "{} holds no optim_g.bin (a packed checkpoint): the generator's Adam starts fresh \
                 and the learning rate warms up again over {} steps",
                ck.dir.display(),
                cfg.warmup
            );
            state.adam_from = Some(state.step);
            optim_g
        };
    }
    tracing::info!(
        "adversarial, whole network from {}: {extra:?} identity blocks added per level, {} \
         parameters, {:.0} FLOP per output pixel; discriminator {} parameters",
        init.display(),
        net.num_params(),
        cfg.model.unet.flops_per_pixel(),
        critic.disc.num_params()
    );
    let world = devices.len();
    if !cfg.batch.is_multiple_of(world) {
        bail!(
            "batch {} must be divisible by the number of devices ({world})",
            cfg.batch
        );
    }
    let collective = (world > 1).then(|| CollectiveConfig::default().with_num_devices(world));
    let run = Run {
        args,
        cfg,
        adv,
        images,
        val,
        world,
        collective,
        fresh: FreshCritic {
            bytes: Mutex::new(Vec::new()),
            met: Barrier::new(world),
        },
    };
    let run = &run;
    // Replicas of the state above on the other devices: modules forked, optimiser states
    // through their records, so every replica starts identical and stays so (one all-reduce of
    // each network's gradients per step, then the same Adam step everywhere).
    let (optim_d, optim_g_rec) = (
        record_to_bytes::<B, _>(critic.optim.to_record()),
        record_to_bytes::<B, _>(optim_g.to_record()),
    );
    std::thread::scope(|s| {
        let others: Vec<_> = devices[1..]
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = d.clone();
                let replica = Replica {
                    net: net.clone().fork(&d),
                    ema_net: ema_net.clone().fork(&d),
                    critic: Critic::<B>::new(adv, &d).with(critic.disc.clone().fork(&d)),
                    optim_g: generator_adam(cfg).init::<B, UNet<B>>(),
                    state: state.clone(),
                };
                let (od, og) = (&optim_d, &optim_g_rec);
                s.spawn(move || {
                    let r = replica.with_optims(od, og, &d)?;
                    worker::<B>(run, r, d, i + 1)
                })
            })
            .collect();
        let lead = Replica {
            net,
            ema_net,
            critic,
            optim_g,
            state,
        };
        join_workers(worker::<B>(run, lead, device, 0), others)
    })
}

/// What every replica shares.
struct Run<'a> {
    args: &'a TrainArgs,
    cfg: &'a TrainConfig,
    adv: &'a AdversarialConfig,
    images: &'a [Image],
    val: Option<&'a [(String, imageio::Decoded)]>,
    world: usize,
    collective: Option<CollectiveConfig>,
    fresh: FreshCritic,
}

/// How a fresh discriminator (`critic_reset_every`) reaches every replica: the lead draws it,
/// the others take its bytes, so the replicas stay identical.
struct FreshCritic {
    bytes: Mutex<Vec<u8>>,
    met: Barrier,
}

impl Run<'_> {
    /// A fresh discriminator and optimiser before step `step`, the same on every replica. Its
    /// initialisation is seeded by the run's seed and the step, so a resumed run draws the one
    /// the uninterrupted run drew.
    fn fresh_critic<B: AutodiffBackend>(
        &self,
        step: usize,
        rank: usize,
        device: &B::Device,
    ) -> Result<Critic<B>> {
        if rank == 0 {
            B::seed(device, self.cfg.seed ^ (step as u64).rotate_left(32));
            let critic = Critic::<B>::new(self.adv, device);
            if self.world > 1 {
                *self.fresh.bytes.lock().expect("a replica panicked") =
                    module_to_bytes(critic.disc.valid());
                self.fresh.met.wait();
                // Every replica has read the bytes before any could be written again.
                self.fresh.met.wait();
            }
            return Ok(critic);
        }
        // Drawn only once the lead's draw is done (the backend's generator may be shared).
        self.fresh.met.wait();
        let critic = Critic::<B>::new(self.adv, device);
        let bytes = self.fresh.bytes.lock().expect("a replica panicked").clone();
        let disc = module_from_bytes(critic.disc.clone(), &bytes, device);
        self.fresh.met.wait();
        Ok(critic.with(disc?))
    }
}

/// One replica's networks, optimisers and run state.
struct Replica<B: AutodiffBackend> {
    net: UNet<B>,
    ema_net: UNet<B::InnerBackend>,
    critic: Critic<B>,
    optim_g: OptimizerAdaptor<Adam, UNet<B>, B>,
    state: RunState,
}

impl<B: AutodiffBackend> Replica<B> {
    /// The lead replica's optimiser states (their records' bytes), on `device`.
    fn with_optims(mut self, optim_d: &[u8], optim_g: &[u8], device: &B::Device) -> Result<Self> {
        self.critic.optim = self
            .critic
            .optim
            .load_record(record_from_bytes::<B, _>(optim_d, device)?);
        self.optim_g = self
            .optim_g
            .load_record(record_from_bytes::<B, _>(optim_g, device)?);
        Ok(self)
    }
}

/// One data-parallel replica (rank `rank` of the run's devices): its share of every batch, the
/// discriminator's and the generator's gradients each averaged over the replicas. Rank 0 logs,
/// validates and writes checkpoints.
fn worker<B: AutodiffBackend>(
    run: &Run,
    rep: Replica<B>,
    device: B::Device,
    rank: usize,
) -> Result<()> {
    let (args, cfg, adv) = (run.args, run.cfg, run.adv);
    let Replica {
        mut net,
        mut ema_net,
        mut critic,
        mut optim_g,
        mut state,
    } = rep;
    let lead = rank == 0;
    let peer = run.collective.as_ref().map(|_| PeerId::from(rank as u32));
    if let (Some(c), Some(p)) = (&run.collective, peer) {
        burn_collective::register::<B::InnerBackend>(p, device.clone(), c.clone())
            .map_err(|e| anyhow::anyhow!("joining the collective as peer {rank}: {e:?}"))?;
    }
    let end = args
        .max_steps
        .map_or(cfg.steps, |m| (state.step + m).min(cfg.steps));
    let per = cfg.batch / run.world;
    let mut log = StepLog::default();
    while state.step < end {
        let t0 = Instant::now();
        let step = state.step;
        if adv.resets_critic_at(step) {
            critic = run.fresh_critic::<B>(step, rank, &device)?;
            if lead {
                tracing::info!(
                    "step {step}: a fresh discriminator (critic_reset_every {})",
                    adv.critic_reset_every
                );
            }
        }
        let rows = rank * per..(rank + 1) * per;
        let mut inp = StepInput::<B>::draw(run.images, cfg, adv, step, rows, rank, &device)?;
        let v = net.velocity_lora(inp.src.clone(), inp.batch.x0.clone(), &inp.cond, None);
        let fake = inp.src.clone() + v;
        // The artifact term's stable model: the EMA's fake of the same draw, no gradient.
        let stable = (adv.ldl_weight > 0.0).then(|| {
            let src = inp.src.clone().inner();
            let c = adv.cond_at(&inp.ws, &device);
            let v = ema_net.velocity_lora(src.clone(), inp.batch.x0.clone().inner(), &c, None);
            Tensor::from_inner(src + v)
        });
        let lg;
        (critic, lg) = adversarial_step(critic, adv, &mut inp, fake, stable, step, peer, &mut log)?;
        let mut gg = GradientsParams::from_grads(lg.total.backward(), &net);
        if let Some(p) = peer {
            let total = all_reduce_mean(&net, &mut gg, None, lg.total.clone().inner(), p)?;
            let total: f64 = total.into_scalar().elem();
            if !total.is_finite() {
                bail!("loss is {total} at step {step}: diverged — the last checkpoint is intact");
            }
        }
        let lr = lr_at(cfg, &state, step);
        net = optim_g.step(lr, net, gg);
        ema_net = ema::update(ema_net, &net.valid(), cfg.ema_decay);
        state.step += 1;
        state.train_secs += t0.elapsed().as_secs_f64();
        let last = state.step == end;
        // The terms logged are rank 0's, on its share of the batch.
        if lead && (state.step.is_multiple_of(cfg.log_every) || last) {
            let (terms, secs) = log.take();
            tracing::info!("step {} lr {lr:.2e} {terms} | {secs:.2} s/step", state.step);
        }
        // val_every beyond the schedule: no validation at all (a lent GPU trains only; the
        // checkpoints are validated on another machine).
        if let (Some(v), true, true) = (run.val, cfg.val_every <= cfg.steps, lead) {
            if state.step.is_multiple_of(cfg.val_every) || last {
                let r = validate_fake(&ema_net, &cfg.model, v, adv, &device)?;
                state.history.push(ValPoint {
                    step: state.step,
                    psnr_y: r.psnr_y,
                    train_secs: state.train_secs,
                    gmsd: Some(r.gmsd),
                    hf_ratio: Some(r.hf_ratio),
                    pattern: Some(r.pattern),
                });
                let best = state.record_gmsd(r.gmsd, f64::from(adv.guidance));
                tracing::info!(
                    "step {} validation x4 (EMA): PSNR-Y {:.3} dB, GMSD {:.4}, HF ratio {:.3}, pattern {:.2}{}",
                    state.step,
                    r.psnr_y,
                    r.gmsd,
                    r.hf_ratio,
                    r.pattern,
                    if best { " (best)" } else { "" }
                );
                if best {
                    save_dir(&ema_net, &cfg.model, &args.out.join("best"))?;
                }
                // Every validated EMA, to choose among on the held-out images afterwards.
                let kept = args.out.join("val").join(state.step.to_string());
                save_dir(&ema_net, &cfg.model, &kept)?;
            }
        }
        if lead && (state.step.is_multiple_of(cfg.ckpt_every) || last) {
            let mut files = vec![
                ("model.bin", module_to_bytes(net.valid())),
                ("ema.bin", module_to_bytes(ema_net.clone())),
                ("optim_g.bin", record_to_bytes::<B, _>(optim_g.to_record())),
            ];
            files.extend(critic.files());
            Checkpoint::save(&args.out, &state, &files)?;
        }
    }
    if let Some(p) = peer {
        burn_collective::finish_collective::<B::InnerBackend>(p)
            .map_err(|e| anyhow::anyhow!("leaving the collective: {e:?}"))?;
    }
    if !lead {
        return Ok(());
    }
    let fin = args.out.join("final");
    if state.step == cfg.steps {
        save_dir(&ema_net, &cfg.model, &fin)?;
    }
    tracing::info!(
        "stopped at step {} after {:.0} s; EMA weights in {}",
        state.step,
        state.train_secs,
        if state.step == cfg.steps {
            fin.display().to_string()
        } else {
            "the latest checkpoint (ema.bin)".into()
        }
    );
    Ok(())
}

/// The generator's learning rate at `step`: the config's schedule, warmed up again as at step 0
/// over `warmup` steps from where its Adam started fresh (a resume from a packed checkpoint):
/// the first steps of a fresh Adam are a full learning rate on every weight.
fn lr_at(cfg: &TrainConfig, state: &RunState, step: usize) -> f64 {
    let ramp = match state.adam_from.map(|s| step.saturating_sub(s)) {
        Some(since) if since < cfg.warmup => (since + 1) as f64 / cfg.warmup as f64,
        _ => 1.0,
    };
    cfg.lr_at(step) * ramp
}
