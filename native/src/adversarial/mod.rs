//! `flowmapsr train` with an `adversarial` section: LoRA adapters on a frozen flow map, trained
//! with RPGAN + finite-difference R1/R2 + reconstruction (core adversarial.rs, docs/algorithm.md §5).
//! The base weights come from `--init` (the previous stage); checkpoints hold the adapters, the
//! discriminator and both optimisers, so a killed run resumes exactly; `final/` holds the base
//! weights with lora.json + lora.bin beside them. No `best/`: PSNR falls as the adapters learn
//! detail by design, so the best-PSNR adapter would be the untrained one; validation (PSNR and
//! HF ratio) is logged to judge the run, and the trade-off is chosen with the LoRA scale.

use crate::eval::EvalReport;
use crate::imageio;
use crate::train::distributed::all_reduce_mean;
use crate::train::log::StepLog;
use crate::train::{read_in, validate, Checkpoint, RunState, TrainArgs, TrainConfig, ValPoint};
use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use burn::tensor::Tensor;
use burn_collective::PeerId;
use flowmapsr_core::adversarial::{
    cut_grain, discriminator_loss, generator_loss, AdvLoss, AdversarialConfig, Discriminator,
    Generator,
};
use flowmapsr_core::batch::make_batch;
use flowmapsr_core::bridge::{noise, Mode};
use flowmapsr_core::cond::Cond;
use flowmapsr_core::lora::{Adapted, UNetLora};
use flowmapsr_core::objectives::{Batch, FlowNet};
use flowmapsr_core::unet::UNet;
use flowmapsr_core::weights::ModelConfig;
use flowmapsr_core::weights::{
    module_from_bytes, module_to_bytes, record_from_bytes, record_to_bytes, save_dir, save_lora,
    write_atomic,
};
use flowmapsr_core::Image;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod full;
pub mod pack;

/// Where the frozen base comes from: `--init DIR`, or on `--resume` the copy kept in OUT/base.
pub(crate) fn base_dir(args: &TrainArgs) -> Result<PathBuf> {
    let kept = args.out.join("base");
    match args.init.as_deref() {
        Some(d) => Ok(d.to_path_buf()),
        None if args.resume && kept.join("model.bin").exists() => Ok(kept),
        None => bail!(
            "adversarial LoRA training fine-tunes a trained model: pass --init DIR (config.json + model.bin)"
        ),
    }
}

/// The base's model config: `dir/config.json`, which states the architecture of the weights
/// beside it, so an adversarial config need not repeat it. A config that does state a model must
/// agree with it (network, bridge, w_max; notes may differ), or with `deeper` (a whole-network
/// stage, which grows the base) may have more residual blocks per level: refused here, by name,
/// rather than when the record fails to load. Weights without a config.json take the stated model.
pub(crate) fn base_model(
    dir: &Path,
    stated: Option<&ModelConfig>,
    deeper: bool,
) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    let found = match std::fs::read(&path) {
        Ok(b) => ModelConfig::from_json(&b).with_context(|| format!("{}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return stated.cloned().with_context(|| {
                format!(
                    "{} is missing: the base's architecture is unknown (state `model` in the config)",
                    path.display()
                )
            })
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(s) = stated {
        let arch = |m: &ModelConfig| serde_json::json!({ "unet": m.unet, "bridge": m.bridge, "w_max": m.w_max() });
        let rest = |m: &ModelConfig| serde_json::json!({ "bridge": m.bridge, "w_max": m.w_max() });
        let fits = if deeper {
            s.unet.extra_blocks(&found.unet).is_some() && rest(s) == rest(&found)
        } else {
            arch(s) == arch(&found)
        };
        if !fits {
            let how = if deeper {
                format!(
                    "a whole-network stage takes the base's network or the same with more residual \
                     blocks per level (base blocks {:?} widths {:?}, config blocks {:?} widths {:?})",
                    found.unet.blocks, found.unet.widths, s.unet.blocks, s.unet.widths
                )
            } else {
                "an adversarial stage adapts the base as it is: drop `model` from the config (it is \
                 read from --init) or pass the --init it describes"
                    .into()
            };
            bail!(
                "the config's `model` differs from the base's {}:\n  config: {}\n  base:   {}\n{how}",
                path.display(),
                arch(s),
                arch(&found)
            );
        }
    }
    Ok(found)
}

/// The base's weights, read from `init` (`model` states their network) and kept in OUT/base so
/// that `--resume` needs nothing else.
pub(crate) fn load_base<B: AutodiffBackend>(
    args: &TrainArgs,
    init: &Path,
    model: &ModelConfig,
    device: &B::Device,
) -> Result<UNet<B>> {
    let kept = args.out.join("base");
    let bytes = std::fs::read(init.join("model.bin"))
        .with_context(|| format!("reading {}", init.join("model.bin").display()))?;
    if init != kept {
        std::fs::create_dir_all(&kept)?;
        write_atomic(&kept.join("model.bin"), &bytes)?;
        write_atomic(&kept.join("config.json"), model.to_json().as_bytes())?;
    }
    module_from_bytes(model.unet.init(device), &bytes, device)
        .with_context(|| format!("--init {}", init.display()))
}

/// The held-out report of a generator as its fake is made (mode, temperature, guidance).
pub(crate) fn validate_fake<B: Backend>(
    net: &impl FlowNet<B>,
    model: &ModelConfig,
    val: &[(String, imageio::Decoded)],
    adv: &AdversarialConfig,
    device: &B::Device,
) -> Result<EvalReport> {
    validate(
        net,
        model,
        val,
        adv.mode,
        adv.temperature,
        adv.guidance,
        device,
    )
}

/// One step's draw: the batch (seeded by step), the fake's source and condition, and the step's
/// RNG for the R1/R2 perturbations. fake = X_{0,1}(src) at NFE 1, w = adv.guidance (or per
/// sample around it, `guidance_spread`; `ws`); src = x0
/// (fidelity) or x0 + temperature sigma_0 eps (stochastic); D is conditioned on the clean x0
/// either way.
pub(crate) struct StepInput<B: AutodiffBackend> {
    pub batch: Batch<B>,
    pub src: Tensor<B, 4>,
    pub cond: Cond<B>,
    /// The w of each row's fake, which `cond` holds.
    pub ws: Vec<f32>,
    pub rng: ChaCha8Rng,
}

impl<B: AutodiffBackend> StepInput<B> {
    pub fn draw(
        images: &[Image],
        cfg: &TrainConfig,
        adv: &AdversarialConfig,
        step: usize,
        rows: std::ops::Range<usize>,
        rank: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let n = rows.len();
        let batch = make_batch::<B>(images, &cfg.batch_spec(), step, rows, device)?;
        // Rank 0 (the only one on one device) keeps the single-device stream.
        let mut rng = ChaCha8Rng::seed_from_u64(
            cfg.seed.wrapping_add(2)
                ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
                ^ (rank as u64).wrapping_mul(0x94D0_49BB_1331_11EB),
        );
        let src = match adv.mode {
            Mode::Fidelity => batch.x0.clone(),
            Mode::Stochastic => {
                batch.x0.clone()
                    + noise::<B, 4>(batch.x0.dims(), &mut rng, device)
                        * (adv.temperature * cfg.model.bridge.sigma_0)
            }
        };
        let ws = adv.fake_ws(n, &mut rng);
        let cond = adv.cond_at(&ws, device);
        Ok(Self {
            batch,
            src,
            cond,
            ws,
            rng,
        })
    }
}

/// The discriminator's Adam step on (real, detached fake), then the generator's loss against the
/// updated D (its terms logged); a non-finite loss stops the run with the last checkpoint intact.
/// With `peer` (a data-parallel replica) D's gradients are averaged over the replicas first.
pub(crate) fn adversarial_step<B: AutodiffBackend>(
    critic: Critic<B>,
    adv: &AdversarialConfig,
    inp: &mut StepInput<B>,
    fake: Tensor<B, 4>,
    stable: Option<Tensor<B, 4>>,
    step: usize,
    peer: Option<PeerId>,
    log: &mut StepLog,
) -> Result<(Critic<B>, AdvLoss<B>)> {
    let Critic { disc, mut optim } = critic;
    let (x0, x1) = (inp.batch.x0.clone(), inp.batch.x1.clone());
    let (x1, fake, stable) = if adv.grain_cut {
        (cut_grain(x1), cut_grain(fake), stable.map(cut_grain))
    } else {
        (x1, fake, stable)
    };
    let ld = discriminator_loss(
        &disc,
        x1.clone(),
        fake.clone().detach(),
        x0.clone(),
        adv,
        &mut inp.rng,
    );
    let mut gd = GradientsParams::from_grads(ld.total.backward(), &disc);
    if let Some(p) = peer {
        all_reduce_mean(&disc, &mut gd, None, ld.total.clone().inner(), p)?;
    }
    let disc = optim.step(adv.lr_d, disc, gd);
    let lg = generator_loss(&disc, x1, fake, x0, stable, adv);
    // Data-parallel: the caller checks the generator's loss once it is averaged, so that every
    // replica stops together.
    let total: f64 = lg.total.clone().into_scalar().elem();
    if peer.is_none() && !total.is_finite() {
        bail!("loss is {total} at step {step}: diverged — the last checkpoint is intact");
    }
    for (name, t) in ld.terms.iter().chain(&lg.terms) {
        log.add(name, t.clone().into_scalar().elem());
    }
    log.step();
    Ok((Critic { disc, optim }, lg))
}

/// The discriminator and its optimiser (Adam with beta_1 = 0, beta_2 = 0.99, R3GAN's), as both
/// trainers make, resume and checkpoint them.
pub(crate) struct Critic<B: AutodiffBackend> {
    pub disc: Discriminator<B>,
    optim: OptimizerAdaptor<Adam, Discriminator<B>, B>,
}

impl<B: AutodiffBackend> Critic<B> {
    pub fn new(adv: &AdversarialConfig, device: &B::Device) -> Self {
        Self {
            disc: adv.discriminator.init(device),
            optim: AdamConfig::new()
                .with_beta_1(0.0)
                .with_beta_2(0.99)
                .init::<B, Discriminator<B>>(),
        }
    }

    /// With this discriminator (a replica's copy of the lead's).
    pub fn with(self, disc: Discriminator<B>) -> Self {
        Self { disc, ..self }
    }

    /// As a checkpoint holds it (disc.bin, optim_d.bin).
    pub fn resume(self, ck: &Checkpoint, device: &B::Device) -> Result<Self> {
        Ok(self.load(&ck.dir, false, device)?.0)
    }

    /// With `--init-critic DIR`: the discriminator from DIR/disc.bin, its optimiser from
    /// DIR/optim_d.bin when DIR has one (a fresh optimiser otherwise). On `--resume` the run's
    /// own checkpoint takes over.
    pub fn warm(self, args: &TrainArgs, device: &B::Device) -> Result<Self> {
        let Some(dir) = args.init_critic.as_deref().filter(|_| !args.resume) else {
            return Ok(self);
        };
        let (critic, with_optim) = self.load(dir, true, device)?;
        let how = if with_optim {
            " with its optimiser"
        } else {
            ""
        };
        tracing::info!("discriminator from {}{how}", dir.display());
        Ok(critic)
    }

    /// DIR/disc.bin and DIR/optim_d.bin (which may be missing when `optim_optional`: the
    /// optimiser then stays fresh); returns whether the optimiser was loaded.
    fn load(self, dir: &Path, optim_optional: bool, device: &B::Device) -> Result<(Self, bool)> {
        let disc = module_from_bytes(self.disc, &read_in(dir, "disc.bin")?, device).with_context(
            || {
                format!(
                    "{}: not a discriminator of the config's shape (adversarial.discriminator)",
                    dir.join("disc.bin").display()
                )
            },
        )?;
        let with_optim = !optim_optional || dir.join("optim_d.bin").exists();
        let optim = if with_optim {
            load_optim(self.optim, dir, "optim_d.bin", device)?
        } else {
            self.optim
        };
        Ok((Self { disc, optim }, with_optim))
    }

    /// Its checkpoint files.
    pub fn files(&self) -> [(&'static str, Vec<u8>); 2] {
        [
            ("disc.bin", module_to_bytes(self.disc.valid())),
            (
                "optim_d.bin",
                record_to_bytes::<B, _>(self.optim.to_record()),
            ),
        ]
    }
}

/// The generator's Adam: the run's gradient clipping.
pub(crate) fn generator_adam(cfg: &TrainConfig) -> AdamConfig {
    AdamConfig::new().with_grad_clipping(
        cfg.grad_clip
            .map(burn::grad_clipping::GradientClippingConfig::Norm),
    )
}

/// An optimiser's state as the file `name` in `dir` (a checkpoint's folder) holds it.
pub(crate) fn load_optim<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    optim: O,
    dir: &Path,
    name: &str,
    device: &B::Device,
) -> Result<O> {
    Ok(optim.load_record(record_from_bytes::<B, _>(&read_in(dir, name)?, device)?))
}

pub fn train_lora<B: AutodiffBackend>(
    args: &TrainArgs,
    cfg: &TrainConfig,
    adv: &AdversarialConfig,
    images: &[Image],
    val: Option<&[(String, imageio::Decoded)]>,
    devices: Vec<B::Device>,
) -> Result<()> {
    if adv.generator == Generator::Full {
        return full::train_full::<B>(args, cfg, adv, images, val, devices);
    }
    let device = devices.into_iter().next().context("no device")?;
    // The frozen base: --init, kept in OUT/base so that `--resume` needs nothing else. Its
    // config.json states its architecture; the run's model config is that one.
    let init = base_dir(args)?;
    let init = init.as_path();
    let cfg = &TrainConfig {
        model: base_model(init, Some(&cfg.model), false)?,
        ..cfg.clone()
    };
    cfg.check()
        .with_context(|| format!("with the model of --init {}", init.display()))?;
    B::seed(&device, cfg.seed);
    let base: UNet<B> = load_base(args, init, &cfg.model, &device)?;
    // Frozen: gradients pass through it to the adapters, none are kept for it.
    let base = base.no_grad();
    let mut lora: UNetLora<B> = adv.lora.init(&base, &device);
    if adv.skip_shuffle {
        lora = lora.freeze_convs(&base.shuffle_fed());
    }
    let mut critic = Critic::<B>::new(adv, &device).warm(args, &device)?;
    let mut optim_g = generator_adam(cfg).init::<B, UNetLora<B>>();
    // best_psnr stays unused here (no best/, see above).
    let mut state = RunState::default();
    if let Some(ck) = Checkpoint::resume(args, true)? {
        lora = module_from_bytes(lora, &ck.read("lora.bin")?, &device)?;
        critic = critic.resume(&ck, &device)?;
        optim_g = load_optim(optim_g, &ck.dir, "optim_g.bin", &device)?;
        state = ck.state;
    }
    tracing::info!(
        "adversarial LoRA on {}: rank {}, {} adapter and {} discriminator parameters",
        init.display(),
        adv.lora.rank,
        lora.num_params(),
        critic.disc.num_params()
    );
    let end = args
        .max_steps
        .map_or(cfg.steps, |m| (state.step + m).min(cfg.steps));
    let base_eval = base.valid();
    let mut log = StepLog::default();
    while state.step < end {
        let t0 = Instant::now();
        let step = state.step;
        let mut inp = StepInput::<B>::draw(images, cfg, adv, step, 0..cfg.batch, 0, &device)?;
        let v = base.velocity_lora(
            inp.src.clone(),
            inp.batch.x0.clone(),
            &inp.cond,
            Some((&lora, adv.train_scale)),
        );
        let fake = inp.src.clone() + v;
        let lg;
        (critic, lg) = adversarial_step(critic, adv, &mut inp, fake, None, step, None, &mut log)?;
        let gg = GradientsParams::from_grads(lg.total.backward(), &lora);
        lora = optim_g.step(cfg.lr_at(step), lora, gg);
        state.step += 1;
        state.train_secs += t0.elapsed().as_secs_f64();
        let last = state.step == end;
        if state.step % cfg.log_every == 0 || last {
            let (terms, secs) = log.take();
            tracing::info!("step {} {terms} | {secs:.2} s/step", state.step);
        }
        if let Some(v) = val {
            if state.step % cfg.val_every == 0 || last {
                let model = Adapted {
                    net: base_eval.clone(),
                    lora: Some(lora.valid()),
                };
                let r = validate_fake(&model.at(adv.train_scale)?, &cfg.model, v, adv, &device)?;
                let (psnr, hf) = (r.psnr_y, r.hf_ratio);
                state.history.push(ValPoint {
                    step: state.step,
                    psnr_y: psnr,
                    train_secs: state.train_secs,
                    gmsd: Some(r.gmsd),
                    hf_ratio: Some(hf),
                    pattern: Some(r.pattern),
                });
                tracing::info!(
                    "step {} validation x4 at LoRA {} ({:?}, temperature {}): PSNR-Y {psnr:.3} dB, HF ratio {hf:.3}, GMSD {:.4}, pattern {:.2}",
                    state.step,
                    adv.train_scale,
                    adv.mode,
                    adv.temperature,
                    r.gmsd,
                    r.pattern
                );
            }
        }
        if state.step % cfg.ckpt_every == 0 || last {
            let mut files = vec![
                ("lora.bin", module_to_bytes(lora.valid())),
                ("optim_g.bin", record_to_bytes::<B, _>(optim_g.to_record())),
            ];
            files.extend(critic.files());
            Checkpoint::save(&args.out, &state, &files)?;
        }
    }
    let fin = args.out.join("final");
    save_dir(&base_eval, &cfg.model, &fin)?;
    save_lora(&lora.valid(), &adv.lora, &fin)?;
    tracing::info!(
        "stopped at step {} after {:.0} s; base weights + LoRA adapter in {}",
        state.step,
        state.train_secs,
        fin.display()
    );
    Ok(())
}
