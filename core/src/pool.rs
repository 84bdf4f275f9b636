//! The sampler with its network calls on a pool (docs/algorithm.md §6): the tiles of one step are
//! independent, so they can run on several workers at once (web workers in a browser, where wasm
//! has one thread each).
//!
//! [`upscale_pooled`] is [`crate::sampler::upscale_async`] with the CPU blender, except that each
//! tile's call x <- X_{t_k, t_k+1}(x) goes to a [`TilePool`] ([`TileCall`] out, the signed tile
//! back) with up to twice the pool's capacity in flight. Blending stays here and runs in tile
//! order, so the result does not depend on the pool's size or on the order in which calls finish:
//! for the same network it is bit for bit the single-worker result.

use crate::error::{Error, Result};
use crate::image::Image;
use crate::objectives::FlowNet;
use crate::sampler::{
    bridge_source, prepare, tensor_to_image, tile_preview, tile_step, SampleOptions, TileDone,
};
use crate::weights::ModelConfig;
use burn::tensor::backend::Backend;
use std::collections::VecDeque;
use std::future::Future;

/// One network call: step `step` of the sampler on one tile. `x` and `x0` are the tile's cut of
/// the current image and of the source (signed, RGB, the tile's padded size).
#[derive(Clone, Debug)]
pub struct TileCall {
    pub step: usize,
    pub x: Image,
    pub x0: Image,
}

/// Where [`upscale_pooled`] sends its network calls.
pub trait TilePool {
    type Pending: Future<Output = Result<Image>>;
    /// How many calls run at once (the sampler keeps twice this many queued).
    fn capacity(&self) -> usize;
    /// Queue `call`; the future resolves to its signed output, the size of `call.x`.
    /// Submitting must start the work: the future may be awaited much later.
    fn submit(&self, call: TileCall) -> Self::Pending;
}

/// What a pool's worker runs for a [`TileCall`]: the sampler's own tile step, read back.
pub fn run_call<B: Backend>(
    net: &impl FlowNet<B>,
    call: TileCall,
    opts: &SampleOptions,
    device: &B::Device,
) -> Result<Image> {
    if (call.x.width, call.x.height, call.x.channels)
        != (call.x0.width, call.x0.height, call.x0.channels)
        || call.x.channels != 3
    {
        return Err(Error::BadParam(format!(
            "tile call: x is {}x{}x{}, x0 is {}x{}x{}",
            call.x.width,
            call.x.height,
            call.x.channels,
            call.x0.width,
            call.x0.height,
            call.x0.channels
        )));
    }
    if call.step >= opts.steps {
        return Err(Error::BadParam(format!(
            "tile call: step {} of {}",
            call.step, opts.steps
        )));
    }
    let out = tensor_to_image(tile_step(net, &[call.x, call.x0], call.step, opts, device))?;
    Ok(out)
}

/// [`crate::sampler::upscale`] with the network calls on `pool`: RGB in [0, 1] in, the result as
/// opaque RGBA8 (`to_rgba` of what `upscale` returns). `on_tile` sees each tile as it is blended
/// and returns false to cancel.
pub async fn upscale_pooled<P: TilePool>(
    cfg: &ModelConfig,
    lr: &Image,
    scale: u32,
    opts: &SampleOptions,
    pool: &P,
    on_tile: &mut (dyn FnMut(TileDone<'_>) -> bool + '_),
) -> Result<Vec<u8>> {
    let x0 = bridge_source(lr, scale)?;
    let (plan, mut x) = prepare(cfg, &x0, opts)?;
    let n = plan.tiles.len();
    let total = opts.steps * n;
    let ahead = 2 * pool.capacity().max(1);
    let mut done = 0;
    for step in 0..opts.steps {
        let mut blend = plan.blend(3);
        let mut pending = VecDeque::with_capacity(ahead);
        let mut next = 0;
        for i in 0..n {
            while next < n && next < i + ahead {
                let call = TileCall {
                    step,
                    x: plan.extract(&x, next),
                    x0: plan.extract(&x0, next),
                };
                pending.push_back(pool.submit(call));
                next += 1;
            }
            let out = pending
                .pop_front()
                .expect("tile i was submitted")
                .await
                .map_err(|e| match e {
                    e @ Error::Tile { .. } => e,
                    e => plan.tile_error(i, e),
                })?;
            blend.add(i, &out)?;
            let r = plan.tiles[i].src;
            let rgba = tile_preview(&out, r.w, r.h);
            done += 1;
            if !on_tile(TileDone {
                done,
                total,
                rect: r,
                rgba: &rgba,
            }) {
                return Err(Error::Cancelled);
            }
        }
        x = blend.finish();
    }
    let y = crate::sampler::finish(&x, lr, scale, opts)?;
    Ok(crate::image::to_rgba(&y, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::{BridgeConfig, Mode};
    use crate::sampler::{upscale, CpuBlender};
    use crate::unet::{UNet, UNetConfig};
    use burn::backend::Flex;
    use std::cell::{Cell, RefCell};
    use std::future::{ready, Ready};

    type B = Flex;

    fn model() -> (UNet<B>, ModelConfig) {
        let dev = Default::default();
        let cfg = ModelConfig::new(UNetConfig::tiny(), BridgeConfig::new());
        let mut net = cfg.unet.init::<B>(&dev);
        // A fresh UNet is the identity flow map: perturb it so that tiles and steps matter.
        net.perturb_output(0.05, 7, &dev);
        (net, cfg)
    }

    fn lr(w: usize, h: usize) -> Image {
        let data = (0..3 * w * h)
            .map(|i| ((i * 37 % 101) as f32 / 100.0).clamp(0.0, 1.0))
            .collect();
        Image::new(w, h, 3, data).unwrap()
    }

    /// Runs calls here, at once, and records the order they were submitted in.
    struct Local<'a> {
        net: &'a UNet<B>,
        opts: SampleOptions,
        capacity: usize,
        submitted: RefCell<Vec<usize>>,
        fail_at: Option<usize>,
        count: Cell<usize>,
    }

    impl TilePool for Local<'_> {
        type Pending = Ready<Result<Image>>;
        fn capacity(&self) -> usize {
            self.capacity
        }
        fn submit(&self, call: TileCall) -> Self::Pending {
            let k = self.count.get();
            self.count.set(k + 1);
            self.submitted.borrow_mut().push(call.step);
            if Some(k) == self.fail_at {
                return ready(Err(Error::BadParam("worker 2 crashed".into())));
            }
            ready(run_call(self.net, call, &self.opts, &Default::default()))
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn pooled_equals_the_single_worker_sampler_bit_for_bit() {
        let (net, cfg) = model();
        let img = lr(40, 28);
        for (steps, mode, temperature, projection, grain_cut) in [
            (1, Mode::Fidelity, 1.0, true, false),
            (2, Mode::Stochastic, 0.5, false, false),
            (3, Mode::Fidelity, 1.0, false, false),
            (1, Mode::Fidelity, 1.0, true, true),
            (2, Mode::Stochastic, 0.5, false, true),
        ] {
            let opts = SampleOptions {
                steps,
                mode,
                temperature,
                seed: 3,
                tile: 48,
                overlap: 16,
                lr_projection: projection,
                grain_cut,
                ..Default::default()
            };
            let want = upscale::<B>(
                &net,
                &cfg,
                &img,
                2,
                &opts,
                &Default::default(),
                &mut |_, _| true,
            )
            .unwrap();
            let want = crate::image::to_rgba(&want, None);
            let mut cpu = CpuBlender::default();
            let asynced = block_on(crate::sampler::upscale_async::<B>(
                &net,
                &cfg,
                &img,
                2,
                &opts,
                &Default::default(),
                &mut cpu,
                &mut |_| true,
            ))
            .unwrap();
            assert_eq!(asynced, want);
            for capacity in [1, 2, 5] {
                let pool = Local {
                    net: &net,
                    opts: opts.clone(),
                    capacity,
                    submitted: RefCell::new(vec![]),
                    fail_at: None,
                    count: Cell::new(0),
                };
                let mut seen = vec![];
                let got = block_on(upscale_pooled(&cfg, &img, 2, &opts, &pool, &mut |t| {
                    seen.push((t.done, t.total, t.rgba.len() == 4 * t.rect.w * t.rect.h));
                    true
                }))
                .unwrap();
                assert_eq!(got, want, "steps {steps}, capacity {capacity}");
                let per_step = seen.len() / steps;
                assert!(per_step > 1, "the test image spans several tiles");
                assert_eq!(seen.last().unwrap().0, seen.last().unwrap().1);
                assert!(seen.iter().all(|s| s.2));
                // Calls go out step by step (a step needs the previous one blended).
                let sub = pool.submitted.borrow();
                assert_eq!(sub.len(), steps * per_step);
                assert!(sub.windows(2).all(|w| w[0] <= w[1]));
            }
        }
    }

    #[test]
    fn a_failed_call_names_its_tile_and_cancel_stops() {
        let (net, cfg) = model();
        let img = lr(40, 28);
        let opts = SampleOptions {
            tile: 48,
            overlap: 16,
            ..Default::default()
        };
        let pool = Local {
            net: &net,
            opts: opts.clone(),
            capacity: 2,
            submitted: RefCell::new(vec![]),
            fail_at: Some(2),
            count: Cell::new(0),
        };
        let e = block_on(upscale_pooled(&cfg, &img, 2, &opts, &pool, &mut |_| true))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tile 2") && e.contains("worker 2 crashed"),
            "{e}"
        );
        let pool = Local {
            fail_at: None,
            count: Cell::new(0),
            submitted: RefCell::new(vec![]),
            ..pool
        };
        let mut calls = 0;
        let e = block_on(upscale_pooled(&cfg, &img, 2, &opts, &pool, &mut |_| {
            calls += 1;
            calls < 2
        }))
        .unwrap_err();
        assert!(matches!(e, Error::Cancelled), "{e}");
        assert_eq!(calls, 2);
        // A call of the wrong shape is refused, not run.
        let bad = TileCall {
            step: 0,
            x: Image::zeros(16, 16, 3),
            x0: Image::zeros(8, 16, 3),
        };
        assert!(run_call(&net, bad, &opts, &Default::default()).is_err());
    }
}
