//! Samplers (docs/algorithm.md §2, §6): pure functions of (model, source, options) with a
//! progress/cancel callback, over a whole image with tiled network calls.
//!
//! - Flow map, N steps (NFE = N): t_k = k / N, x <- X_{t_k, t_k+1}(x) = x + (1/N) v(x, t_k, t_k+1).
//! - Reference: plain N-step Euler on the diagonal velocity, x <- x + (1/N) v(x, t_k, t_k).
//!
//! Tiles are blended after every step, so neighbouring tiles agree before the next one.

use crate::bridge::Mode;
use crate::cond::{Cond, PROMPT_POSITIVE};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::objectives::FlowNet;
use crate::space::{shuffle, unshuffle};
use crate::tile::{Rect, TilePlan};
use crate::weights::ModelConfig;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Solver {
    FlowMap,
    EulerDiagonal,
}

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub steps: usize,
    pub solver: Solver,
    pub mode: Mode,
    pub seed: u64,
    pub guidance: f32,
    /// Stochastic mode only: the source noise is temperature x sigma_0 (0 to 1; 1 is the
    /// training distribution, lower trades grain for fidelity, as SRFlow's temperature).
    pub temperature: f32,
    /// Tile side and overlap in pixels of the full-resolution image.
    pub tile: usize,
    pub overlap: usize,
    /// Project the result onto the images whose bicubic downscale is the input
    /// ([`crate::projection`]): no network call; on by default, off for the raw flow map.
    pub lr_projection: bool,
    /// Cut the 2-px grain from the whole result ([`crate::grain`]) before the LR projection:
    /// off by default (the faithful weights draw no grain).
    pub grain_cut: bool,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            steps: 1,
            solver: Solver::FlowMap,
            mode: Mode::Fidelity,
            seed: 0,
            guidance: 1.0,
            temperature: 1.0,
            tile: 512,
            overlap: 64,
            lr_projection: true,
            grain_cut: false,
        }
    }
}

impl SampleOptions {
    /// Whether the result needs the sampler's signed output on the CPU (the grain cut or the LR
    /// projection runs there), rather than only its 8-bit colours.
    pub fn finishes_on_cpu(&self) -> bool {
        self.lr_projection || self.grain_cut
    }
}

/// Called after every tile of every step with (done, total); return false to cancel.
pub type ProgressFn<'a> = dyn FnMut(usize, usize) -> bool + 'a;

pub fn image_to_tensor<B: Backend>(img: &Image, device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(
        TensorData::new(img.data.clone(), [1, img.channels, img.height, img.width]),
        device,
    )
}

pub fn tensor_to_image<B: Backend>(t: Tensor<B, 4>) -> Result<Image> {
    let [_, c, h, w] = t.dims();
    let data = t
        .try_into_data()
        .map_err(|e| Error::BadParam(format!("tensor readback: {e:?}")))?;
    data_to_image(data, w, h, c)
}

/// [`tensor_to_image`] without blocking (the only readback WebGPU allows in a browser).
pub async fn tensor_to_image_async<B: Backend>(t: Tensor<B, 4>) -> Result<Image> {
    let [_, c, h, w] = t.dims();
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::BadParam(format!("tensor readback: {e:?}")))?;
    data_to_image(data, w, h, c)
}

fn data_to_image(data: TensorData, w: usize, h: usize, c: usize) -> Result<Image> {
    let data = data
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::BadParam(format!("tensor readback: {e:?}")))?;
    Image::new(w, h, c, data)
}

/// Source noise for the stochastic mode: seeded on the CPU over the whole image, so the result
/// does not depend on the tiling or the backend.
pub fn source_noise(w: usize, h: usize, sigma: f32, seed: u64) -> Image {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data = (0..3 * w * h)
        .map(|_| {
            let e: f32 = StandardNormal.sample(&mut rng);
            sigma * e
        })
        .collect::<Vec<f32>>();
    Image::new(w, h, 3, data).expect("sizes match")
}

/// The tile plan and the starting point (x0, plus seeded source noise in the stochastic mode).
pub(crate) fn prepare(
    cfg: &ModelConfig,
    x0: &Image,
    opts: &SampleOptions,
) -> Result<(TilePlan, Image)> {
    if opts.steps == 0 || opts.steps > 1024 {
        return Err(Error::BadParam(format!(
            "steps must be in 1..=1024, got {}",
            opts.steps
        )));
    }
    let w = opts.guidance;
    if !(w.is_finite() && w >= 1.0 && w <= cfg.w_max() + 1e-6) {
        return Err(Error::BadParam(if cfg.w_max() > 1.0 {
            format!("guidance w must be in [1, {}], got {w}", cfg.w_max())
        } else {
            format!("guidance w = {w}: this model was not trained for guidance (only w = 1)")
        }));
    }
    let tau = opts.temperature;
    check_temperature(tau, opts.mode)?;
    let plan = tile_plan(x0.width, x0.height, opts, cfg.align())?;
    let mut x = x0.clone();
    if opts.mode == Mode::Stochastic {
        let n = source_noise(x0.width, x0.height, tau * cfg.bridge.sigma_0, opts.seed);
        x.data.iter_mut().zip(&n.data).for_each(|(a, b)| *a += b);
    }
    Ok((plan, x))
}

/// The tiles the sampler cuts a `width` x `height` image into with `opts`' tile and overlap, for a
/// network whose tiles must be multiples of `align` (the tile rounded down to it, the overlap
/// even and at most half a tile).
pub fn tile_plan(
    width: usize,
    height: usize,
    opts: &SampleOptions,
    align: usize,
) -> Result<TilePlan> {
    let align = align.max(1);
    let tile = (opts.tile / align).max(1) * align;
    let overlap = opts.overlap.min(tile / 2) / 2 * 2;
    TilePlan::new(width, height, tile, overlap, align)
}

/// The temperature rule of every front end (CLI, server, web): in [0, 1], and only the stochastic
/// mode has source noise to scale, so the fidelity mode takes only the neutral 1 (a temperature
/// there is refused, not silently ignored).
pub fn check_temperature(temperature: f32, mode: Mode) -> Result<()> {
    if !(temperature.is_finite() && (0.0..=1.0).contains(&temperature)) {
        return Err(Error::BadParam(format!(
            "temperature must be in [0, 1], got {temperature}"
        )));
    }
    if temperature != 1.0 && mode == Mode::Fidelity {
        return Err(Error::BadParam(format!(
            "temperature {temperature} applies to the stochastic mode (the fidelity mode has no \
             source noise)"
        )));
    }
    Ok(())
}

/// Step k of N on one tile: the network call, in image layout [1, 3, h, w] (not read back).
pub(crate) fn tile_step<B: Backend>(
    net: &impl FlowNet<B>,
    cut: &[Image],
    k: usize,
    opts: &SampleOptions,
    device: &B::Device,
) -> Tensor<B, 4> {
    let s = k as f32 / opts.steps as f32;
    let t = (k + 1) as f32 / opts.steps as f32;
    let xt = unshuffle(image_to_tensor::<B>(&cut[0], device), 2);
    let x0t = unshuffle(image_to_tensor::<B>(&cut[1], device), 2);
    let y = match opts.solver {
        Solver::FlowMap => net.flow_map(
            xt,
            x0t,
            &Cond::per_sample(&[s], &[t], opts.guidance, PROMPT_POSITIVE, device),
        ),
        Solver::EulerDiagonal => {
            let v = net.velocity(
                xt.clone(),
                x0t,
                &Cond::per_sample(&[s], &[s], opts.guidance, PROMPT_POSITIVE, device),
            );
            xt + v * (t - s)
        }
    };
    shuffle(y, 2)
}

/// Run the sampler from the signed source `x0` ([-1, 1], RGB, full resolution); returns the
/// signed result.
pub fn sample<B: Backend>(
    net: &impl FlowNet<B>,
    cfg: &ModelConfig,
    x0: &Image,
    opts: &SampleOptions,
    device: &B::Device,
    progress: &mut ProgressFn,
) -> Result<Image> {
    let (plan, mut x) = prepare(cfg, x0, opts)?;
    let total = opts.steps * plan.tiles.len();
    let mut done = 0;
    for k in 0..opts.steps {
        x = plan
            .run(&[&x, x0], 3, |_, cut| {
                let out = tensor_to_image(tile_step(net, cut, k, opts, device))?;
                done += 1;
                if !progress(done, total) {
                    return Err(Error::Cancelled);
                }
                Ok(out)
            })
            .map_err(|e| match e {
                Error::Tile { source, .. } if matches!(*source, Error::Cancelled) => {
                    Error::Cancelled
                }
                e => e,
            })?;
    }
    Ok(x)
}

/// A finished tile, for previews: its place in the image and its pixels there, as opaque RGBA8.
pub struct TileDone<'a> {
    pub done: usize,
    pub total: usize,
    pub rect: Rect,
    pub rgba: &'a [u8],
}

/// Where [`sample_async`] blends tile outputs: [`CpuBlender`] reads every tile back and blends
/// on the CPU (any backend); a device-side blender (flowmapsr-shaders, WebGPU) keeps the image
/// on the GPU and reads back 8-bit previews and the 8-bit result only.
#[allow(async_fn_in_trait)]
pub trait Blender<B: Backend> {
    /// Start one pass (a sampler step) over `plan`.
    fn begin(&mut self, plan: &TilePlan) -> Result<()>;
    /// Blend tile `i`'s signed output ([1, 3, padded_h, padded_w]); return its preview: the
    /// tile's `src` rectangle, [`to_unit`] then 8-bit RGBA, opaque.
    async fn add(&mut self, i: usize, out: Tensor<B, 4>) -> Result<Vec<u8>>;
    /// The pass's blended signed image (the next step's input).
    async fn finish(&mut self) -> Result<Image>;
    /// The pass's blended image as the final result: [`to_unit`] then 8-bit RGBA, opaque.
    async fn finish_rgba(&mut self) -> Result<Vec<u8>>;
}

/// Tile blending on the CPU ([`TilePlan::blend`]) after an asynchronous readback of each tile.
#[derive(Default)]
pub struct CpuBlender {
    blend: Option<crate::tile::Blend>,
}

impl CpuBlender {
    fn take(&mut self) -> Result<crate::tile::Blend> {
        self.blend
            .take()
            .ok_or_else(|| Error::BadParam("blender: finish before begin".into()))
    }
}

impl<B: Backend> Blender<B> for CpuBlender {
    fn begin(&mut self, plan: &TilePlan) -> Result<()> {
        self.blend = Some(plan.blend(3));
        Ok(())
    }

    async fn add(&mut self, i: usize, out: Tensor<B, 4>) -> Result<Vec<u8>> {
        let img = tensor_to_image_async(out).await?;
        let blend = self
            .blend
            .as_mut()
            .ok_or_else(|| Error::BadParam("blender: add before begin".into()))?;
        let r = blend.plan().tiles[i].src;
        blend.add(i, &img)?;
        Ok(tile_preview(&img, r.w, r.h))
    }

    async fn finish(&mut self) -> Result<Image> {
        Ok(self.take()?.finish())
    }

    async fn finish_rgba(&mut self) -> Result<Vec<u8>> {
        let y = self.take()?.finish();
        Ok(crate::image::to_rgba(&to_unit(&y)?, None))
    }
}

/// A finished tile's preview: the top-left `w` x `h` pixels of a signed [-1, 1] tile output, as
/// opaque RGBA8.
pub fn tile_preview(signed: &Image, w: usize, h: usize) -> Vec<u8> {
    let unit = to_unit(&signed.crop(0, 0, w, h)).expect("to_unit keeps the image's size");
    crate::image::to_rgba(&unit, None)
}

/// [`sample`] for backends that read results back only asynchronously (WebGPU in a browser):
/// the same tiles, network calls and blending; the result as opaque RGBA8 ([`to_unit`], rounded
/// half to even) — with [`CpuBlender`], exactly `to_rgba(to_unit(sample(..)))`. `on_tile` sees
/// each finished tile and returns false to cancel.
pub async fn sample_async<B: Backend>(
    net: &impl FlowNet<B>,
    cfg: &ModelConfig,
    x0: &Image,
    opts: &SampleOptions,
    device: &B::Device,
    blender: &mut impl Blender<B>,
    on_tile: &mut (dyn FnMut(TileDone<'_>) -> bool + '_),
) -> Result<Vec<u8>> {
    match sample_async_as(net, cfg, x0, opts, device, blender, on_tile, false).await? {
        Sampled::Rgba(px) => Ok(px),
        Sampled::Signed(y) => Ok(crate::image::to_rgba(&to_unit(&y)?, None)),
    }
}

/// The last pass of [`sample_async`] read back as 8-bit RGBA or as the signed float image.
enum Sampled {
    Rgba(Vec<u8>),
    Signed(Image),
}

#[allow(clippy::too_many_arguments)]
async fn sample_async_as<B: Backend>(
    net: &impl FlowNet<B>,
    cfg: &ModelConfig,
    x0: &Image,
    opts: &SampleOptions,
    device: &B::Device,
    blender: &mut impl Blender<B>,
    on_tile: &mut (dyn FnMut(TileDone<'_>) -> bool + '_),
    signed: bool,
) -> Result<Sampled> {
    let (plan, mut x) = prepare(cfg, x0, opts)?;
    let total = opts.steps * plan.tiles.len();
    let mut done = 0;
    // Errors name their tile (once).
    let named = |i: usize, e: Error| match e {
        e @ Error::Tile { .. } => e,
        e => plan.tile_error(i, e),
    };
    for k in 0..opts.steps {
        plan.check_inputs(&[&x, x0])?;
        blender.begin(&plan)?;
        for i in 0..plan.tiles.len() {
            let cut = [plan.extract(&x, i), plan.extract(x0, i)];
            let rgba = blender
                .add(i, tile_step(net, &cut, k, opts, device))
                .await
                .map_err(|e| named(i, e))?;
            done += 1;
            let tile = TileDone {
                done,
                total,
                rect: plan.tiles[i].src,
                rgba: &rgba,
            };
            if !on_tile(tile) {
                return Err(Error::Cancelled);
            }
        }
        if k + 1 == opts.steps && !signed {
            return Ok(Sampled::Rgba(blender.finish_rgba().await?));
        }
        x = blender.finish().await?;
    }
    Ok(Sampled::Signed(x))
}

/// Upscale an RGB image in [0, 1] by `scale`: x0 = bicubic up, then the sampler; RGB in [0, 1].
pub fn upscale<B: Backend>(
    net: &impl FlowNet<B>,
    cfg: &ModelConfig,
    lr: &Image,
    scale: u32,
    opts: &SampleOptions,
    device: &B::Device,
    progress: &mut ProgressFn,
) -> Result<Image> {
    let x0 = bridge_source(lr, scale)?;
    finish(
        &sample(net, cfg, &x0, opts, device, progress)?,
        lr,
        scale,
        opts,
    )
}

/// The whole signed result `y` of the sampler for the input `lr`, finished as `opts` say: the
/// grain cut, then [0, 1], then the LR projection (last, so that the result stays exactly
/// consistent with the input).
pub fn finish(y: &Image, lr: &Image, scale: u32, opts: &SampleOptions) -> Result<Image> {
    let y = if opts.grain_cut {
        to_unit(&crate::grain::cut_grain(y))?
    } else {
        to_unit(y)?
    };
    if opts.lr_projection {
        return crate::projection::project(&y, lr, scale);
    }
    Ok(y)
}

/// [`upscale`] with asynchronous readback (see [`sample_async`]): the result as opaque RGBA8,
/// `scale` times the size of `lr`. With the LR projection or the grain cut the last pass is read
/// back as floats (both run on the CPU), otherwise as 8-bit RGBA only.
#[allow(clippy::too_many_arguments)]
pub async fn upscale_async<B: Backend>(
    net: &impl FlowNet<B>,
    cfg: &ModelConfig,
    lr: &Image,
    scale: u32,
    opts: &SampleOptions,
    device: &B::Device,
    blender: &mut impl Blender<B>,
    on_tile: &mut (dyn FnMut(TileDone<'_>) -> bool + '_),
) -> Result<Vec<u8>> {
    let x0 = bridge_source(lr, scale)?;
    if !opts.finishes_on_cpu() {
        return sample_async(net, cfg, &x0, opts, device, blender, on_tile).await;
    }
    match sample_async_as(net, cfg, &x0, opts, device, blender, on_tile, true).await? {
        Sampled::Signed(y) => Ok(crate::image::to_rgba(&finish(&y, lr, scale, opts)?, None)),
        Sampled::Rgba(_) => unreachable!("asked for the signed result"),
    }
}

/// x0 = up(LR), signed: the start of the bridge.
pub fn bridge_source(lr: &Image, scale: u32) -> Result<Image> {
    crate::resize::check_scale(scale)?;
    if lr.channels != 3 {
        return Err(Error::BadParam(format!(
            "expected an RGB image, got {} channels",
            lr.channels
        )));
    }
    let up = crate::resize::upscale(lr, scale);
    Image::new(up.width, up.height, 3, up.to_signed())
}

/// Signed [-1, 1] to [0, 1], clamped.
pub fn to_unit(y: &Image) -> Result<Image> {
    let data = y
        .data
        .iter()
        .map(|v| ((v + 1.0) * 0.5).clamp(0.0, 1.0))
        .collect();
    Image::new(y.width, y.height, y.channels, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::BridgeConfig;
    use crate::unet::UNetConfig;
    use burn::backend::Flex;

    fn lr(w: usize, h: usize) -> Image {
        let d = (0..3 * w * h)
            .map(|i| ((i * 29) % 97) as f32 / 96.0)
            .collect();
        Image::new(w, h, 3, d).unwrap()
    }

    #[test]
    fn fresh_model_is_bicubic_and_deterministic() {
        let dev = Default::default();
        let cfg = ModelConfig::new(UNetConfig::tiny(), BridgeConfig::new());
        let net = cfg.unet.init::<Flex>(&dev);
        let img = lr(13, 7);
        let opts = SampleOptions {
            tile: 16,
            overlap: 4,
            lr_projection: false,
            ..Default::default()
        };
        let out = upscale(&net, &cfg, &img, 2, &opts, &dev, &mut |_, _| true).unwrap();
        let bic = crate::resize::upscale(&img, 2);
        assert_eq!((out.width, out.height), (26, 14));
        // Zero-initialised output: the flow map is the identity, so the result is bicubic.
        let max_err = |a: &Image, b: &Image| {
            a.data
                .iter()
                .zip(&b.data)
                .map(|(a, b)| (a - b.clamp(0.0, 1.0)).abs())
                .fold(0.0, f32::max)
        };
        let err = max_err(&out, &bic);
        assert!(err < 1e-6, "{err}");
        // With the LR projection (the default) it is bicubic made consistent with the input:
        // exactly the projection of bicubic, and its downscale is the input again (bicubic's is
        // not). Mid-grey input, so that the final clamp to [0, 1] does not bite.
        let mid = Image::new(13, 7, 3, img.data.iter().map(|v| 0.3 + 0.4 * v).collect()).unwrap();
        let projected = SampleOptions {
            lr_projection: true,
            ..opts.clone()
        };
        let p = upscale(&net, &cfg, &mid, 2, &projected, &dev, &mut |_, _| true).unwrap();
        let bic_mid = crate::resize::upscale(&mid, 2);
        let want = crate::projection::project_unclamped(&bic_mid, &mid, 2).unwrap();
        assert!(max_err(&p, &want) < 1e-5, "{}", max_err(&p, &want));
        let down = |x: &Image| crate::resize::imresize(x, 0.5, false);
        assert!(max_err(&down(&bic_mid), &mid) > 1e-2);
        assert!(
            max_err(&down(&p), &mid) < 1e-5,
            "{}",
            max_err(&down(&p), &mid)
        );
        // The grain cut runs on the whole result before [0, 1] and the projection: raw, it is the
        // cut of bicubic; projected, the result is still consistent with the input.
        let cut = SampleOptions {
            grain_cut: true,
            ..opts.clone()
        };
        let c = upscale(&net, &cfg, &img, 2, &cut, &dev, &mut |_, _| true).unwrap();
        let want = crate::grain::cut_grain(&bic);
        // (Bicubic holds little grain: the cut moves it by about 7e-5.)
        assert!(max_err(&c, &want) < 1e-6, "{}", max_err(&c, &want));
        assert!(max_err(&c, &out) > 2e-5, "{}", max_err(&c, &out));
        // A signed result with a grain of 0.1 loses all of it, then meets [0, 1].
        let grained = Image::new(
            26,
            14,
            3,
            (0..3 * 26 * 14)
                .map(|i| {
                    if (i % 26 + i / 26) % 2 == 0 {
                        0.1
                    } else {
                        -0.1
                    }
                })
                .collect(),
        )
        .unwrap();
        let f = finish(&grained, &img, 2, &cut).unwrap();
        assert!(
            f.data.iter().all(|v| (v - 0.5).abs() < 1e-4),
            "{:?}",
            &f.data[..4]
        );
        let both = SampleOptions {
            grain_cut: true,
            ..projected.clone()
        };
        let pc = upscale(&net, &cfg, &mid, 2, &both, &dev, &mut |_, _| true).unwrap();
        assert!(max_err(&down(&pc), &mid) < 1e-5);
        assert!(max_err(&pc, &p) > 1e-5, "{}", max_err(&pc, &p));
        // Seeded stochastic runs repeat; different seeds differ.
        let st = |seed| {
            let o = SampleOptions {
                mode: Mode::Stochastic,
                seed,
                steps: 2,
                ..opts.clone()
            };
            upscale(&net, &cfg, &img, 2, &o, &dev, &mut |_, _| true).unwrap()
        };
        assert_eq!(st(5), st(5));
        assert_ne!(st(5), st(6));
        // Temperature scales the source noise: the identity map shows it exactly (pixels away
        // from the [0, 1] clamp); temperature 0 is the fidelity map.
        let at = |temperature| {
            let o = SampleOptions {
                mode: Mode::Stochastic,
                seed: 5,
                temperature,
                ..opts.clone()
            };
            upscale(&net, &cfg, &img, 2, &o, &dev, &mut |_, _| true).unwrap()
        };
        assert_eq!(at(0.0), out);
        let (full, half) = (at(1.0), at(0.5));
        let mut checked = 0;
        for ((f, h), b) in full.data.iter().zip(&half.data).zip(&bic.data) {
            if *f > 0.0 && *f < 1.0 && *b > 0.0 && *b < 1.0 {
                assert!(((h - b) - 0.5 * (f - b)).abs() < 1e-5, "{f} {h} {b}");
                checked += 1;
            }
        }
        assert!(checked * 2 > full.data.len(), "{checked} pixels checked");
    }

    #[test]
    fn progress_counts_and_cancels() {
        let dev = Default::default();
        let cfg = ModelConfig::new(UNetConfig::tiny(), BridgeConfig::new());
        let net = cfg.unet.init::<Flex>(&dev);
        let img = lr(20, 20);
        let opts = SampleOptions {
            tile: 16,
            overlap: 4,
            steps: 2,
            ..Default::default()
        };
        let mut seen = Vec::new();
        upscale(&net, &cfg, &img, 2, &opts, &dev, &mut |d, t| {
            seen.push((d, t));
            true
        })
        .unwrap();
        let total = seen[0].1;
        assert_eq!(seen.len(), total);
        assert_eq!(seen.last(), Some(&(total, total)));
        let e = upscale(&net, &cfg, &img, 2, &opts, &dev, &mut |d, _| d < 3).unwrap_err();
        assert!(matches!(e, Error::Cancelled));
    }

    /// Runs a future whose readbacks complete at once (flex): no executor needed.
    fn ready<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("flex readback should be ready at once"),
        }
    }

    #[test]
    fn async_sampler_gives_the_same_image_and_reports_every_tile() {
        let dev = Default::default();
        let cfg = ModelConfig::new(UNetConfig::tiny(), BridgeConfig::new());
        let mut net = cfg.unet.init::<Flex>(&dev);
        net.perturb_output(0.05, 3, &dev);
        let img = lr(21, 13);
        let opts = SampleOptions {
            tile: 16,
            overlap: 4,
            steps: 2,
            mode: Mode::Stochastic,
            seed: 9,
            ..Default::default()
        };
        let sync = upscale(&net, &cfg, &img, 2, &opts, &dev, &mut |_, _| true).unwrap();
        let bic = crate::resize::upscale(&img, 2);
        assert!(sync
            .data
            .iter()
            .zip(&bic.data)
            .any(|(a, b)| (a - b).abs() > 1e-3));
        let mut tiles = Vec::new();
        let mut blender = CpuBlender::default();
        let out = ready(upscale_async(
            &net,
            &cfg,
            &img,
            2,
            &opts,
            &dev,
            &mut blender,
            &mut |t| {
                assert_eq!(t.rgba.len(), 4 * t.rect.w * t.rect.h);
                assert!(t.rect.x + t.rect.w <= 42 && t.rect.y + t.rect.h <= 26);
                tiles.push((t.done, t.total));
                true
            },
        ))
        .unwrap();
        assert_eq!(out, crate::image::to_rgba(&sync, None));
        let total = tiles[0].1;
        assert!(total > 2, "the image must span several tiles");
        assert_eq!(tiles, (1..=total).map(|d| (d, total)).collect::<Vec<_>>());
        let e = ready(upscale_async(
            &net,
            &cfg,
            &img,
            2,
            &opts,
            &dev,
            &mut blender,
            &mut |t| t.done < 2,
        ))
        .unwrap_err();
        assert!(matches!(e, Error::Cancelled));
    }

    #[test]
    fn bad_options_are_errors() {
        let dev = Default::default();
        let cfg = ModelConfig::new(UNetConfig::tiny(), BridgeConfig::new());
        let net = cfg.unet.init::<Flex>(&dev);
        let img = lr(8, 8);
        let bad_steps = SampleOptions {
            steps: 0,
            ..Default::default()
        };
        assert!(upscale(&net, &cfg, &img, 2, &bad_steps, &dev, &mut |_, _| true).is_err());
        for temperature in [-0.1, 1.5, f32::NAN] {
            let o = SampleOptions {
                mode: Mode::Stochastic,
                temperature,
                ..Default::default()
            };
            let e = upscale(&net, &cfg, &img, 2, &o, &dev, &mut |_, _| true).unwrap_err();
            assert!(e.to_string().contains("temperature"), "{e}");
        }
        // The fidelity mode has no source noise: only the neutral temperature 1 is accepted.
        for (temperature, ok) in [(1.0, true), (0.0, false), (0.5, false)] {
            let o = SampleOptions {
                temperature,
                ..Default::default()
            };
            let r = upscale(&net, &cfg, &img, 2, &o, &dev, &mut |_, _| true);
            assert_eq!(r.is_ok(), ok, "fidelity, temperature {temperature}");
            assert!(check_temperature(temperature, Mode::Stochastic).is_ok());
        }
        assert!(matches!(
            upscale(
                &net,
                &cfg,
                &img,
                3,
                &SampleOptions::default(),
                &dev,
                &mut |_, _| true
            ),
            Err(Error::BadScale(3))
        ));
    }
}
