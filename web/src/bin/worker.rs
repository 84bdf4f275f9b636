//! The upscaler, in a dedicated web worker: picks WebGPU (burn wgpu) or the CPU (burn flex),
//! loads the shipped weights (and the adversarial LoRA adapter when one is shipped beside them),
//! and runs core's sampler tile by tile, posting each finished tile.
//! On WebGPU the tiles are blended on the GPU by our WGSL kernels (flowmapsr-shaders) and only
//! 8-bit previews and the 8-bit result come back, asynchronously (a blocking read panics in a
//! browser); images whose accumulator exceeds the device's storage-buffer limit blend on the CPU.
//! Cancel is `Worker.terminate()` on the page's side: nothing here needs to poll for it.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the worker runs in a browser: build it with `trunk build --release`");
}

#[cfg(target_arch = "wasm32")]
fn main() {
    console_error_panic_hook::set_once();
    wasm::start();
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    use burn::backend::wgpu::{graphics::WebGpu, init_setup_async, WgpuDevice};
    use burn::backend::Flex;
    use burn::tensor::backend::Backend;
    use flowmapsr_core::image::set_alpha;
    use flowmapsr_core::lora::Adapted;
    use flowmapsr_core::sampler::{upscale_async, CpuBlender, TileDone};
    use flowmapsr_core::weights::{load_lora, load_model, ModelConfig};
    use flowmapsr_shaders::{Gpu, GpuBlender};
    use flowmapsr_web::{
        js_error, split_rgba, user_message, web_limits, FromWorker, Job, ToWorker,
    };
    use js_sys::{Array, Function, Promise, Reflect, Uint8Array};
    use std::cell::RefCell;
    use std::rc::Rc;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;
    use wasm_bindgen_futures::{spawn_local, JsFuture};
    use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

    enum Engine {
        Gpu(Adapted<Gpu>, WgpuDevice),
        Cpu(Adapted<Flex>),
    }

    struct Model {
        engine: Engine,
        cfg: ModelConfig,
    }

    thread_local! {
        static MODEL: RefCell<Option<Rc<Model>>> = const { RefCell::new(None) };
    }

    fn scope() -> DedicatedWorkerGlobalScope {
        js_sys::global().unchecked_into()
    }

    /// Messages are [json, pixels?]; pixel buffers are transferred, not copied.
    fn post(msg: &FromWorker, pixels: Option<Vec<u8>>) {
        let arr = Array::new();
        arr.push(&JsValue::from_str(
            &serde_json::to_string(msg).expect("plain data"),
        ));
        let transfer = Array::new();
        if let Some(p) = pixels {
            let u = Uint8Array::from(&p[..]);
            transfer.push(&u.buffer());
            arr.push(&u);
        }
        if let Err(e) = scope().post_message_with_transfer(&arr, &transfer) {
            web_sys::console::error_2(&"postMessage failed".into(), &e);
        }
    }

    pub fn start() {
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(|ev: MessageEvent| {
            let data: Array = ev.data().unchecked_into();
            let msg = data.get(0).as_string().unwrap_or_default();
            let pixels = data
                .get(1)
                .dyn_into::<Uint8Array>()
                .ok()
                .map(|u| u.to_vec());
            spawn_local(async move {
                if let Err(e) = handle(&msg, pixels).await {
                    post(&FromWorker::Error { message: e }, None);
                }
            });
        });
        scope().set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        on_message.forget();
        post(&FromWorker::Loaded, None);
    }

    async fn handle(msg: &str, pixels: Option<Vec<u8>>) -> Result<(), String> {
        match serde_json::from_str::<ToWorker>(msg).map_err(|e| format!("bad message: {e}"))? {
            ToWorker::Init { force_cpu } => init(force_cpu).await,
            ToWorker::Upscale(job) => {
                let px = pixels.ok_or("an upscale message needs its pixels")?;
                run(job, px).await
            }
        }
    }

    /// The body of a successful response; any other status is an error naming `url`.
    async fn body(resp: web_sys::Response, url: &str) -> Result<Vec<u8>, String> {
        if !resp.ok() {
            return Err(format!("fetching {url}: HTTP {}", resp.status()));
        }
        let buf = JsFuture::from(resp.array_buffer().map_err(js_error)?)
            .await
            .map_err(|e| format!("reading {url}: {}", js_error(e)))?;
        Ok(Uint8Array::new(&buf).to_vec())
    }

    async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
        let resp = JsFuture::from(scope().fetch_with_str(url))
            .await
            .map_err(|e| format!("fetching {url}: {}", js_error(e)))?;
        body(resp.unchecked_into(), url).await
    }

    /// An optional file: None when the server has none (404) or the network is gone (offline
    /// without it in the cache); other failures are errors.
    async fn fetch_optional(url: &str) -> Result<Option<Vec<u8>>, String> {
        let Ok(resp) = JsFuture::from(scope().fetch_with_str(url)).await else {
            return Ok(None);
        };
        let resp: web_sys::Response = resp.unchecked_into();
        if resp.status() == 404 {
            return Ok(None);
        }
        body(resp, url).await.map(Some)
    }

    /// The base model, with its LoRA adapter when both adapter files came. A broken adapter
    /// leaves the base model usable; why it was left out is returned for the page to show.
    fn load<B: Backend>(
        cfg_bytes: &[u8],
        bin: &[u8],
        lora: Option<&(Vec<u8>, Vec<u8>)>,
        device: &B::Device,
    ) -> Result<(Adapted<B>, ModelConfig, Option<String>), String> {
        let (net, cfg) =
            load_model::<B>(cfg_bytes, bin, device).map_err(|e| format!("weights: {e}"))?;
        let (lora, why) = match lora.map(|(j, b)| load_lora(&net, j, b, device)) {
            Some(Ok((l, _))) => (Some(l), None),
            Some(Err(e)) => (None, Some(format!("LoRA adapter left out: {e}"))),
            None => (None, None),
        };
        Ok((Adapted { net, lora }, cfg, why))
    }

    /// Ok(adapter description) when WebGPU can give us an adapter; Err(why not) otherwise.
    /// Probed here first because burn's own init panics (aborting the worker) without one.
    async fn probe_webgpu() -> Result<String, String> {
        let nav = Reflect::get(&scope(), &"navigator".into()).map_err(js_error)?;
        let gpu = Reflect::get(&nav, &"gpu".into()).map_err(js_error)?;
        if gpu.is_undefined() || gpu.is_null() {
            return Err("navigator.gpu is missing: this browser has no WebGPU here".into());
        }
        let request: Function = Reflect::get(&gpu, &"requestAdapter".into())
            .map_err(js_error)?
            .dyn_into()
            .map_err(|_| "navigator.gpu.requestAdapter is not a function".to_string())?;
        let p: Promise = request
            .call0(&gpu)
            .map_err(js_error)?
            .dyn_into()
            .map_err(|_| "requestAdapter did not return a promise".to_string())?;
        let adapter = JsFuture::from(p)
            .await
            .map_err(|e| format!("requestAdapter failed: {}", js_error(e)))?;
        if adapter.is_null() || adapter.is_undefined() {
            return Err("navigator.gpu.requestAdapter() found no adapter".into());
        }
        let info = Reflect::get(&adapter, &"info".into()).unwrap_or(JsValue::UNDEFINED);
        let field = |k: &str| {
            Reflect::get(&info, &k.into())
                .ok()
                .and_then(|v| v.as_string())
                .filter(|s| !s.is_empty())
        };
        let desc = [field("vendor"), field("architecture"), field("description")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        Ok(if desc.is_empty() {
            "adapter".into()
        } else {
            desc
        })
    }

    async fn init(force_cpu: bool) -> Result<(), String> {
        let base = "weights/";
        let cfg_bytes = fetch_bytes(&format!("{base}config.json")).await?;
        let bin = fetch_bytes(&format!("{base}model.bin")).await?;
        let lora = match (
            fetch_optional(&format!("{base}lora.json")).await?,
            fetch_optional(&format!("{base}lora.bin")).await?,
        ) {
            (Some(j), Some(b)) => Some((j, b)),
            _ => None,
        };
        let gpu = if force_cpu {
            Err("the CPU was chosen (WebGPU failed earlier in this tab)".to_string())
        } else {
            probe_webgpu().await
        };
        let (model, backend, detail) = match gpu {
            Ok(adapter) => {
                let device = WgpuDevice::default();
                init_setup_async::<WebGpu>(&device, Default::default()).await;
                let (net, cfg, why) = load::<Gpu>(&cfg_bytes, &bin, lora.as_ref(), &device)?;
                let m = Model {
                    engine: Engine::Gpu(net, device),
                    cfg,
                };
                (m, "WebGPU", with_note(adapter, why))
            }
            Err(why) => {
                let (net, cfg, note) =
                    load::<Flex>(&cfg_bytes, &bin, lora.as_ref(), &Default::default())?;
                let m = Model {
                    engine: Engine::Cpu(net),
                    cfg,
                };
                (m, "CPU", with_note(why, note))
            }
        };
        let w_max = model.cfg.w_max();
        let has_lora = match &model.engine {
            Engine::Gpu(a, _) => a.lora.is_some(),
            Engine::Cpu(a) => a.lora.is_some(),
        };
        MODEL.with(|m| *m.borrow_mut() = Some(Rc::new(model)));
        post(
            &FromWorker::Ready {
                backend: backend.into(),
                detail,
                w_max,
                lora: has_lora,
            },
            None,
        );
        Ok(())
    }

    fn with_note(detail: String, note: Option<String>) -> String {
        match note {
            Some(n) => format!("{detail}; {n}"),
            None => detail,
        }
    }

    fn now() -> f64 {
        Reflect::get(&scope(), &"performance".into())
            .ok()
            .and_then(|p| p.dyn_into::<web_sys::Performance>().ok())
            .map_or(0.0, |p| p.now())
    }

    async fn run(job: Job, rgba: Vec<u8>) -> Result<(), String> {
        let model = MODEL
            .with(|m| m.borrow().clone())
            .ok_or("the model is not loaded yet")?;
        let has_lora = match &model.engine {
            Engine::Gpu(a, _) => a.lora.is_some(),
            Engine::Cpu(a) => a.lora.is_some(),
        };
        job.check(&web_limits(model.cfg.w_max(), has_lora))
            .map_err(|e| user_message(&e))?;
        let (rgb, alpha) = split_rgba(&rgba, job.width, job.height).map_err(|e| e.to_string())?;
        drop(rgba);
        let opts = job.options();
        let t0 = now();
        let mut on_tile = |t: TileDone<'_>| {
            let r = t.rect;
            post(
                &FromWorker::Tile {
                    done: t.done,
                    total: t.total,
                    x: r.x,
                    y: r.y,
                    w: r.w,
                    h: r.h,
                },
                Some(t.rgba.to_vec()),
            );
            true
        };
        let (cfg, scale) = (&model.cfg, job.request.scale);
        let (width, height) = (job.width * scale as usize, job.height * scale as usize);
        let (out, blend) = match &model.engine {
            Engine::Gpu(adapted, dev) => {
                let net = &adapted.at(job.request.lora()).map_err(|e| e.to_string())?;
                let mut gpu = GpuBlender::new(dev);
                if gpu.fits(width, height) {
                    let r =
                        upscale_async(net, cfg, &rgb, scale, &opts, dev, &mut gpu, &mut on_tile);
                    (r.await, "GPU")
                } else {
                    let mut cpu = CpuBlender::default();
                    let r =
                        upscale_async(net, cfg, &rgb, scale, &opts, dev, &mut cpu, &mut on_tile);
                    (r.await, "CPU")
                }
            }
            Engine::Cpu(adapted) => {
                let net = &adapted.at(job.request.lora()).map_err(|e| e.to_string())?;
                let (dev, mut cpu) = (Default::default(), CpuBlender::default());
                let r = upscale_async(net, cfg, &rgb, scale, &opts, &dev, &mut cpu, &mut on_tile);
                (r.await, "CPU")
            }
        };
        let mut px = out.map_err(|e| e.to_string())?;
        if let Some(a) = alpha {
            set_alpha(&mut px, &flowmapsr_core::resize::upscale_alpha(&a, scale));
        }
        post(
            &FromWorker::Done {
                width,
                height,
                ms: now() - t0,
                blend: blend.into(),
            },
            Some(px),
        );
        Ok(())
    }
}
