//! Whole-network adversarial fine-tuning (`"generator": "full"`, docs/algorithm.md §5): every
//! weight of the flow map trains against the discriminator with the loss of core adversarial.rs,
//! from the --init base grown first by Net2Net identity blocks when the config's `model` has more
//! residual blocks per level (the function is unchanged at step 0, the capacity is new).
//! The EMA of the generator is what is validated and saved. `best/` keeps the EMA weights of the
//! lowest validation GMSD at the run's w: it falls as edges are drawn where the photo has them
//! and rises with artifacts, where PSNR only falls as detail appears. `val/STEP/` keeps the EMA
//! of every validation, since the preset is chosen among them at several w afterwards
//! (scripts/candidate.sh). The dial between the base and the result is network interpolation
//! (ESRGAN §3.4), `flowmapsr interpolate`.

use super::{
    adversarial_step, base_dir, base_model, generator_adam, load_base, load_optim, validate_fake,
    Critic, StepInput,
};
use crate::imageio;
use crate::train::log::StepLog;
use crate::train::{Checkpoint, RunState, TrainArgs, TrainConfig, ValPoint};
use anyhow::Result;
use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use flowmapsr_core::adversarial::AdversarialConfig;
use flowmapsr_core::ema;
use flowmapsr_core::unet::UNet;
use flowmapsr_core::weights::{
    materialize, module_from_bytes, module_to_bytes, record_to_bytes, save_dir,
};
use flowmapsr_core::Image;
use std::time::Instant;

pub fn train_full<B: AutodiffBackend>(
    args: &TrainArgs,
    cfg: &TrainConfig,
    adv: &AdversarialConfig,
    images: &[Image],
    val: Option<&[(String, imageio::Decoded)]>,
    device: B::Device,
) -> Result<()> {
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
        optim_g = load_optim(optim_g, &ck.dir, "optim_g.bin", &device)?;
        state = ck.state;
    }
    tracing::info!(
        "adversarial, whole network from {}: {extra:?} identity blocks added per level, {} \
         parameters, {:.0} FLOP per output pixel; discriminator {} parameters",
        init.display(),
        net.num_params(),
        cfg.model.unet.flops_per_pixel(),
        critic.disc.num_params()
    );
    let end = args
        .max_steps
        .map_or(cfg.steps, |m| (state.step + m).min(cfg.steps));
    let mut log = StepLog::default();
    while state.step < end {
        let t0 = Instant::now();
        let step = state.step;
        let mut inp = StepInput::<B>::draw(images, cfg, adv, step, &device)?;
        let v = net.velocity_lora(inp.src.clone(), inp.batch.x0.clone(), &inp.cond, None);
        let fake = inp.src.clone() + v;
        // The artifact term's stable model: the EMA's fake of the same draw, no gradient.
        let stable = (adv.ldl_weight > 0.0).then(|| {
            let src = inp.src.clone().inner();
            let c = adv.cond(cfg.batch, &device);
            let v = ema_net.velocity_lora(src.clone(), inp.batch.x0.clone().inner(), &c, None);
            Tensor::from_inner(src + v)
        });
        let lg;
        (critic, lg) = adversarial_step(critic, adv, &mut inp, fake, stable, step, &mut log)?;
        let gg = GradientsParams::from_grads(lg.total.backward(), &net);
        net = optim_g.step(cfg.lr_at(step), net, gg);
        ema_net = ema::update(ema_net, &net.valid(), cfg.ema_decay);
        state.step += 1;
        state.train_secs += t0.elapsed().as_secs_f64();
        let last = state.step == end;
        if state.step.is_multiple_of(cfg.log_every) || last {
            let (terms, secs) = log.take();
            tracing::info!(
                "step {} lr {:.2e} {terms} | {secs:.2} s/step",
                state.step,
                cfg.lr_at(step)
            );
        }
        // val_every beyond the schedule: no validation at all (a lent GPU trains only; the
        // checkpoints are validated on another machine).
        if let (Some(v), true) = (val, cfg.val_every <= cfg.steps) {
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
        if state.step.is_multiple_of(cfg.ckpt_every) || last {
            let mut files = vec![
                ("model.bin", module_to_bytes(net.valid())),
                ("ema.bin", module_to_bytes(ema_net.clone())),
                ("optim_g.bin", record_to_bytes::<B, _>(optim_g.to_record())),
            ];
            files.extend(critic.files());
            Checkpoint::save(&args.out, &state, &files)?;
        }
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
