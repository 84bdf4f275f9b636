//! The upscaler, in a dedicated web worker: picks WebGPU (burn wgpu) or the CPU (burn flex),
//! loads the shipped weights (and the adversarial LoRA adapter when one is shipped beside them),
//! and the realistic preset's weights on the first job that asks for them, and runs core's
//! sampler tile by tile, posting each finished tile.
//!
//! - WebGPU (a hardware adapter, or one the visitor chose): the tiles are blended on the GPU by
//!   our WGSL kernels (flowmapsr-shaders) and only 8-bit previews and the 8-bit result come back,
//!   asynchronously (a blocking read panics in a browser); images whose accumulator exceeds the
//!   device's storage-buffer limit blend on the CPU.
//! - CPU: wasm has one thread per worker, so this worker (the lead) starts a pool of workers
//!   (this same script, told [`ToWorker::Helper`]), one per core, and hands them the network
//!   calls of core's `pool::upscale_pooled`; it cuts, blends and projects itself. With one
//!   worker it runs the calls itself.
//!
//! Cancel is `Worker.terminate()` on the page's side: the pool's workers are the lead's children
//! and end with it, so nothing here needs to poll for it.

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
    use flowmapsr_core::pool::{run_call, upscale_pooled, TileCall, TilePool};
    use flowmapsr_core::request::{Preset, SampleRequest};
    use flowmapsr_core::sampler::{upscale_async, CpuBlender, SampleOptions, TileDone};
    use flowmapsr_core::weights::{load_lora, load_model, ModelConfig};
    use flowmapsr_core::{Error, Image};
    use flowmapsr_shaders::{Gpu, GpuBlender};
    use flowmapsr_web::{
        js_error, pool_size, software_adapter, split_rgba, user_message, web_limits, DeviceChoice,
        FromWorker, Job, ToWorker,
    };
    use js_sys::{Array, Float32Array, Function, Promise, Reflect, Uint8Array};
    use std::cell::RefCell;
    use std::collections::{HashMap, VecDeque};
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;
    use wasm_bindgen_futures::{spawn_local, JsFuture};
    use web_sys::{DedicatedWorkerGlobalScope, MessageEvent, Worker, WorkerOptions, WorkerType};

    /// How this build runs wasm: the page starts the SIMD build where the browser has it.
    const WASM: &str = if cfg!(target_feature = "simd128") {
        "wasm SIMD"
    } else {
        "no wasm SIMD (this browser lacks it, or ?simd=0)"
    };

    enum Engine {
        Gpu(Adapted<Gpu>, WgpuDevice),
        Cpu(Adapted<Flex>),
    }

    struct Model {
        engine: Engine,
        cfg: ModelConfig,
        /// The CPU pool (two or more workers); None: this worker runs every call.
        pool: Option<Pool>,
    }

    impl Model {
        fn has_lora(&self) -> bool {
            match &self.engine {
                Engine::Gpu(a, _) => a.lora.is_some(),
                Engine::Cpu(a) => a.lora.is_some(),
            }
        }
    }

    thread_local! {
        /// The faithful weights, loaded at start (with the pool on the lead).
        static MODEL: RefCell<Option<Rc<Model>>> = const { RefCell::new(None) };
        /// The realistic preset's weights, loaded on the first job or call that needs them.
        static REALISTIC: RefCell<Option<Rc<Model>>> = const { RefCell::new(None) };
    }

    /// The weights a `preset` runs on: the faithful ones, or the realistic ones, fetched and
    /// loaded on the lead's engine (WebGPU or CPU) the first time.
    async fn model_for(lead: &Rc<Model>, preset: Preset) -> Result<Rc<Model>, String> {
        if preset == Preset::Faithful {
            return Ok(lead.clone());
        }
        if let Some(m) = REALISTIC.with(|r| r.borrow().clone()) {
            return Ok(m);
        }
        let files = fetch_files(preset)
            .await
            .map_err(|e| format!("the realistic weights: {e}"))?;
        let (engine, cfg) = match &lead.engine {
            Engine::Gpu(_, dev) => {
                let (net, cfg, _) = load::<Gpu>(&files, dev)?;
                (Engine::Gpu(net, dev.clone()), cfg)
            }
            Engine::Cpu(_) => {
                let (net, cfg, _) = load::<Flex>(&files, &Default::default())?;
                (Engine::Cpu(net), cfg)
            }
        };
        let m = Rc::new(Model {
            engine,
            cfg,
            pool: None,
        });
        REALISTIC.with(|r| *r.borrow_mut() = Some(m.clone()));
        Ok(m)
    }

    /// The realistic weights' cost per output pixel over the faithful ones' (1 when they are
    /// not shipped): only their config is fetched here.
    async fn realistic_cost(faithful: &ModelConfig) -> f64 {
        let url = format!("weights/{}config.json", Preset::Realistic.weights_subdir());
        match fetch_optional(&url).await {
            Ok(Some(b)) => ModelConfig::from_json(&b).map_or(1.0, |c| {
                c.unet.flops_per_pixel() / faithful.unet.flops_per_pixel()
            }),
            _ => 1.0,
        }
    }

    fn scope() -> DedicatedWorkerGlobalScope {
        js_sys::global().unchecked_into()
    }

    /// Messages are [json, buffers...]; buffers are transferred, not copied.
    fn message(msg: &impl serde::Serialize, buffers: &[JsValue]) -> (Array, Array) {
        let arr = Array::new();
        arr.push(&JsValue::from_str(
            &serde_json::to_string(msg).expect("plain data"),
        ));
        let transfer = Array::new();
        for b in buffers {
            arr.push(b);
            if let Ok(buf) = Reflect::get(b, &"buffer".into()) {
                transfer.push(&buf);
            }
        }
        (arr, transfer)
    }

    fn post_with(msg: &FromWorker, buffers: &[JsValue]) {
        let (arr, transfer) = message(msg, buffers);
        if let Err(e) = scope().post_message_with_transfer(&arr, &transfer) {
            web_sys::console::error_2(&"postMessage failed".into(), &e);
        }
    }

    fn post(msg: &FromWorker, pixels: Option<Vec<u8>>) {
        match pixels {
            Some(p) => post_with(msg, &[Uint8Array::from(&p[..]).into()]),
            None => post_with(msg, &[]),
        }
    }

    pub fn start() {
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(|ev: MessageEvent| {
            let data: Array = ev.data().unchecked_into();
            let msg = data.get(0).as_string().unwrap_or_default();
            let buffers: Vec<JsValue> = data.iter().skip(1).collect();
            spawn_local(async move {
                match serde_json::from_str::<ToWorker>(&msg) {
                    Ok(ToWorker::Tile {
                        id,
                        step,
                        width,
                        height,
                        request,
                    }) => {
                        let r = tile(id, step, width, height, &request, &buffers).await;
                        if let Err(message) = r {
                            post(&FromWorker::TileFailed { id, message }, None);
                        }
                    }
                    Ok(m) => {
                        if let Err(e) = handle(m, buffers).await {
                            post(&FromWorker::Error { message: e }, None);
                        }
                    }
                    Err(e) => post(
                        &FromWorker::Error {
                            message: format!("bad message: {e}"),
                        },
                        None,
                    ),
                }
            });
        });
        scope().set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        on_message.forget();
        post(&FromWorker::Loaded, None);
    }

    async fn handle(msg: ToWorker, buffers: Vec<JsValue>) -> Result<(), String> {
        match msg {
            ToWorker::Init { device, workers } => init(device, workers).await,
            ToWorker::Helper => helper().await,
            ToWorker::Upscale(job) => {
                let px = buffers
                    .first()
                    .and_then(|b| b.dyn_ref::<Uint8Array>())
                    .ok_or("an upscale message needs its pixels")?
                    .to_vec();
                run(job, px).await
            }
            ToWorker::Tile { .. } => unreachable!("handled in start"),
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

    /// The shipped files: config, weights, and the adapter when both of its files came.
    struct Files {
        cfg: Vec<u8>,
        bin: Vec<u8>,
        lora: Option<(Vec<u8>, Vec<u8>)>,
    }

    async fn fetch_files(preset: Preset) -> Result<Files, String> {
        let base = format!("weights/{}", preset.weights_subdir());
        let cfg = fetch_bytes(&format!("{base}config.json")).await?;
        let bin = fetch_bytes(&format!("{base}model.bin")).await?;
        // Asking for an adapter beside weights that ship none would be two 404s.
        let lora = if !preset.ships_adapter() {
            None
        } else {
            match (
                fetch_optional(&format!("{base}lora.json")).await?,
                fetch_optional(&format!("{base}lora.bin")).await?,
            ) {
                (Some(j), Some(b)) => Some((j, b)),
                _ => None,
            }
        };
        Ok(Files { cfg, bin, lora })
    }

    /// The base model, with its LoRA adapter when both adapter files came. A broken adapter
    /// leaves the base model usable; why it was left out is returned for the page to show.
    fn load<B: Backend>(
        files: &Files,
        device: &B::Device,
    ) -> Result<(Adapted<B>, ModelConfig, Option<String>), String> {
        let (net, cfg) =
            load_model::<B>(&files.cfg, &files.bin, device).map_err(|e| format!("weights: {e}"))?;
        let (lora, why) = match files
            .lora
            .as_ref()
            .map(|(j, b)| load_lora(&net, j, b, device))
        {
            Some(Ok((l, _))) => (Some(l), None),
            Some(Err(e)) => (None, Some(format!("LoRA adapter left out: {e}"))),
            None => (None, None),
        };
        Ok((Adapted { net, lora }, cfg, why))
    }

    /// What WebGPU offers here: Ok(adapter description, why it is software if it is), or
    /// Err(why there is none). Probed here first because burn's own init panics (aborting the
    /// worker) without an adapter.
    async fn probe_webgpu() -> Result<(String, Option<String>), String> {
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
        let desc = if desc.is_empty() {
            "adapter".to_string()
        } else {
            desc
        };
        // `isFallbackAdapter` moved from the adapter to its info; either may say so.
        let fallback = [&info, &adapter].iter().any(|o| {
            Reflect::get(o, &"isFallbackAdapter".into())
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
        });
        let software = software_adapter(&desc, fallback);
        Ok((desc, software))
    }

    fn navigator_number(key: &str) -> Option<f64> {
        let nav = Reflect::get(&scope(), &"navigator".into()).ok()?;
        Reflect::get(&nav, &key.into()).ok()?.as_f64()
    }

    async fn init(device: DeviceChoice, workers: Option<usize>) -> Result<(), String> {
        let files = fetch_files(Preset::Faithful).await?;
        let gpu = match device {
            DeviceChoice::Cpu => Err("the CPU was chosen".to_string()),
            DeviceChoice::Webgpu => probe_webgpu().await.map(|(d, soft)| match soft {
                Some(s) => format!("{d}; chosen although {s}"),
                None => d,
            }),
            DeviceChoice::Auto => match probe_webgpu().await {
                Ok((_, Some(soft))) => Err(format!(
                    "{soft}, slower than the CPU path: choose WebGPU under Advanced to use it"
                )),
                Ok((d, None)) => Ok(d),
                Err(why) => Err(why),
            },
        };
        let (model, backend, detail) = match gpu {
            Ok(adapter) => {
                let device = WgpuDevice::default();
                init_setup_async::<WebGpu>(&device, Default::default()).await;
                let (net, cfg, why) = load::<Gpu>(&files, &device)?;
                let m = Model {
                    engine: Engine::Gpu(net, device),
                    cfg,
                    pool: None,
                };
                (m, "WebGPU", with_note(adapter, why))
            }
            Err(why) => {
                let (net, cfg, note) = load::<Flex>(&files, &Default::default())?;
                let n = pool_size(
                    workers,
                    navigator_number("hardwareConcurrency"),
                    navigator_number("deviceMemory"),
                );
                let (pool, path) = if n >= 2 {
                    match Pool::start(n).await {
                        Ok(p) => (Some(p), format!("{n} workers, {WASM}")),
                        Err(e) => (None, format!("1 worker, {WASM} (the pool failed: {e})")),
                    }
                } else {
                    (None, format!("1 worker, {WASM}"))
                };
                let m = Model {
                    engine: Engine::Cpu(net),
                    cfg,
                    pool,
                };
                (m, "CPU", with_note(format!("{path}; WebGPU: {why}"), note))
            }
        };
        let ms_per_mpx = calibrate(&model).await.unwrap_or(0.0);
        let realistic_cost = realistic_cost(&model.cfg).await;
        let w_max = model.cfg.w_max();
        let lora = model.has_lora();
        let workers = model.pool.as_ref().map_or(1, |p| p.size);
        let align = model.cfg.align();
        MODEL.with(|m| *m.borrow_mut() = Some(Rc::new(model)));
        post(
            &FromWorker::Ready {
                backend: backend.into(),
                detail,
                w_max,
                lora,
                workers,
                ms_per_mpx,
                align,
                realistic_cost,
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

    /// One worker's speed, for the page's time estimates: a 128 x 128 output tile at NFE 1, timed
    /// on its second run (the first compiles shaders and grows memory).
    async fn calibrate(model: &Model) -> Result<f64, Error> {
        let lr = Image::new(
            32,
            32,
            3,
            (0..3 * 32 * 32).map(|i| (i % 17) as f32 / 16.0).collect(),
        )?;
        let opts = SampleOptions {
            tile: 128,
            overlap: 0,
            lr_projection: false,
            ..Default::default()
        };
        let mut ms = 0.0;
        for _ in 0..2 {
            let t0 = now();
            let mut blender = CpuBlender::default();
            match &model.engine {
                Engine::Gpu(a, dev) => {
                    let net = a.at(0.0)?;
                    upscale_async(
                        &net,
                        &model.cfg,
                        &lr,
                        4,
                        &opts,
                        dev,
                        &mut blender,
                        &mut |_| true,
                    )
                    .await?;
                }
                Engine::Cpu(a) => {
                    let net = a.at(0.0)?;
                    let dev = Default::default();
                    upscale_async(
                        &net,
                        &model.cfg,
                        &lr,
                        4,
                        &opts,
                        &dev,
                        &mut blender,
                        &mut |_| true,
                    )
                    .await?;
                }
            }
            ms = now() - t0;
        }
        Ok(ms / (128.0 * 128.0 / 1e6))
    }

    // ---- the CPU pool (lead side) ----

    /// A call waiting for a worker, or running on one.
    struct Queued {
        id: u64,
        header: String,
        x: Float32Array,
        x0: Float32Array,
    }

    struct Waiting {
        resolve: Function,
        reject: Function,
        worker: Option<usize>,
    }

    #[derive(Default)]
    struct PoolState {
        workers: Vec<Option<Worker>>,
        idle: Vec<usize>,
        queue: VecDeque<Queued>,
        waiting: HashMap<u64, Waiting>,
        next_id: u64,
    }

    struct Pool {
        size: usize,
        state: Rc<RefCell<PoolState>>,
    }

    /// Hand queued calls to idle workers.
    fn pump(state: &Rc<RefCell<PoolState>>) {
        let mut s = state.borrow_mut();
        while !s.queue.is_empty() {
            let Some(w) = s.idle.pop() else { break };
            let q = s.queue.pop_front().expect("not empty");
            let Some(worker) = s.workers[w].clone() else {
                s.queue.push_front(q);
                continue;
            };
            if let Some(wt) = s.waiting.get_mut(&q.id) {
                wt.worker = Some(w);
            }
            let (arr, transfer) = {
                let arr = Array::new();
                arr.push(&JsValue::from_str(&q.header));
                arr.push(&q.x);
                arr.push(&q.x0);
                let t = Array::new();
                t.push(&q.x.buffer());
                t.push(&q.x0.buffer());
                (arr, t)
            };
            if let Err(e) = worker.post_message_with_transfer(&arr, &transfer) {
                if let Some(wt) = s.waiting.remove(&q.id) {
                    let _ = wt.reject.call1(&JsValue::NULL, &e);
                }
            }
        }
    }

    /// A worker of the pool failed for good: fail its call, and every queued call when none is left.
    fn lose_worker(state: &Rc<RefCell<PoolState>>, w: usize, why: &str) {
        let mut s = state.borrow_mut();
        s.workers[w] = None;
        s.idle.retain(|&i| i != w);
        let reason = JsValue::from_str(&format!("a CPU worker stopped: {why}"));
        let mine: Vec<u64> = s
            .waiting
            .iter()
            .filter(|(_, wt)| wt.worker == Some(w))
            .map(|(id, _)| *id)
            .collect();
        let mut failed: Vec<Waiting> = mine.iter().filter_map(|id| s.waiting.remove(id)).collect();
        if s.workers.iter().all(Option::is_none) {
            let queued: Vec<u64> = s.queue.drain(..).map(|q| q.id).collect();
            failed.extend(queued.iter().filter_map(|id| s.waiting.remove(id)));
        }
        drop(s);
        for wt in failed {
            let _ = wt.reject.call1(&JsValue::NULL, &reason);
        }
    }

    impl Pool {
        /// Start `n` workers and wait until each has loaded the model.
        async fn start(n: usize) -> Result<Pool, String> {
            let state = Rc::new(RefCell::new(PoolState::default()));
            let mut ready = Vec::new();
            for w in 0..n {
                let opts = WorkerOptions::new();
                opts.set_type(WorkerType::Classic);
                // The pool runs this worker's own build (SIMD or plain).
                let url = Reflect::get(&scope(), &"location".into())
                    .and_then(|l| Reflect::get(&l, &"href".into()))
                    .ok()
                    .and_then(|h| h.as_string())
                    .ok_or("this worker does not know its own URL")?;
                let worker = Worker::new_with_options(&url, &opts).map_err(js_error)?;
                let mut settle: Option<(Function, Function)> = None;
                let p = Promise::new(&mut |res, rej| settle = Some((res, rej)));
                let settle = Rc::new(RefCell::new(settle));
                let (st, st_err, set, set_err) =
                    (state.clone(), state.clone(), settle.clone(), settle.clone());
                let me = worker.clone();
                let on_msg = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
                    let data: Array = ev.data().unchecked_into();
                    let text = data.get(0).as_string().unwrap_or_default();
                    match serde_json::from_str::<FromWorker>(&text) {
                        Ok(FromWorker::Loaded) => {
                            let (arr, t) = message(&ToWorker::Helper, &[]);
                            let _ = me.post_message_with_transfer(&arr, &t);
                        }
                        Ok(FromWorker::Ready { .. }) => {
                            if let Some((res, _)) = set.borrow_mut().take() {
                                let _ = res.call0(&JsValue::NULL);
                            }
                        }
                        Ok(FromWorker::TileOut { id }) => {
                            let wt = st.borrow_mut().waiting.remove(&id);
                            if let Some(wt) = wt {
                                let _ = wt.resolve.call1(&JsValue::NULL, &data.get(1));
                            }
                            st.borrow_mut().idle.push(w);
                            pump(&st);
                        }
                        Ok(FromWorker::TileFailed { id, message }) => {
                            let wt = st.borrow_mut().waiting.remove(&id);
                            if let Some(wt) = wt {
                                let _ = wt.reject.call1(&JsValue::NULL, &message.into());
                            }
                            st.borrow_mut().idle.push(w);
                            pump(&st);
                        }
                        Ok(FromWorker::Error { message }) => {
                            if let Some((_, rej)) = set.borrow_mut().take() {
                                let _ = rej.call1(&JsValue::NULL, &message.clone().into());
                            }
                            lose_worker(&st, w, &message);
                        }
                        Ok(_) => {}
                        Err(e) => web_sys::console::error_1(
                            &format!("bad message from a CPU worker: {e}").into(),
                        ),
                    }
                });
                worker.set_onmessage(Some(on_msg.as_ref().unchecked_ref()));
                on_msg.forget();
                let on_err = Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(
                    move |ev: web_sys::ErrorEvent| {
                        let why = ev.message();
                        if let Some((_, rej)) = set_err.borrow_mut().take() {
                            let _ = rej.call1(&JsValue::NULL, &why.clone().into());
                        }
                        lose_worker(&st_err, w, &why);
                    },
                );
                worker.set_onerror(Some(on_err.as_ref().unchecked_ref()));
                on_err.forget();
                state.borrow_mut().workers.push(Some(worker));
                ready.push(p);
            }
            for p in ready {
                JsFuture::from(p).await.map_err(js_error)?;
            }
            state.borrow_mut().idle = (0..n).rev().collect();
            Ok(Pool { size: n, state })
        }
    }

    /// The pool during one job: the workers need the job's knobs with each call.
    struct JobPool<'a> {
        pool: &'a Pool,
        request: SampleRequest,
    }

    impl TilePool for JobPool<'_> {
        type Pending = Pin<Box<dyn Future<Output = flowmapsr_core::Result<Image>>>>;

        fn capacity(&self) -> usize {
            self.pool.size
        }

        fn submit(&self, call: TileCall) -> Self::Pending {
            let (w, h) = (call.x.width, call.x.height);
            let state = &self.pool.state;
            let mut s = state.borrow_mut();
            let id = s.next_id;
            s.next_id += 1;
            let request = self.request.clone();
            let header = serde_json::to_string(&ToWorker::Tile {
                id,
                step: call.step,
                width: w,
                height: h,
                request,
            })
            .expect("plain data");
            let mut settle = None;
            let p = Promise::new(&mut |res, rej| settle = Some((res, rej)));
            let (resolve, reject) = settle.expect("the executor runs at once");
            s.waiting.insert(
                id,
                Waiting {
                    resolve,
                    reject,
                    worker: None,
                },
            );
            s.queue.push_back(Queued {
                id,
                header,
                x: Float32Array::from(&call.x.data[..]),
                x0: Float32Array::from(&call.x0.data[..]),
            });
            let alive = s.workers.iter().any(Option::is_some);
            if !alive {
                s.queue.pop_back();
                if let Some(wt) = s.waiting.remove(&id) {
                    let _ = wt
                        .reject
                        .call1(&JsValue::NULL, &"every CPU worker has stopped".into());
                }
            }
            drop(s);
            pump(state);
            Box::pin(async move {
                let v = JsFuture::from(p)
                    .await
                    .map_err(|e| Error::Worker(js_error(e)))?;
                let out: Float32Array = v
                    .dyn_into()
                    .map_err(|_| Error::Worker("a tile came back without its pixels".into()))?;
                Image::new(w, h, 3, out.to_vec())
            })
        }
    }

    // ---- a worker of the pool ----

    async fn helper() -> Result<(), String> {
        let files = fetch_files(Preset::Faithful).await?;
        let (net, cfg, _) = load::<Flex>(&files, &Default::default())?;
        let model = Model {
            engine: Engine::Cpu(net),
            cfg,
            pool: None,
        };
        let (w_max, lora) = (model.cfg.w_max(), model.has_lora());
        MODEL.with(|m| *m.borrow_mut() = Some(Rc::new(model)));
        post(
            &FromWorker::Ready {
                backend: "CPU".into(),
                detail: "a worker of the CPU pool".into(),
                w_max,
                lora,
                workers: 1,
                ms_per_mpx: 0.0,
                align: 1,
                realistic_cost: 1.0,
            },
            None,
        );
        Ok(())
    }

    async fn tile(
        id: u64,
        step: usize,
        width: usize,
        height: usize,
        request: &SampleRequest,
        buffers: &[JsValue],
    ) -> Result<(), String> {
        let lead = MODEL
            .with(|m| m.borrow().clone())
            .ok_or("the model is not loaded yet")?;
        let model = model_for(&lead, request.preset).await?;
        let Engine::Cpu(adapted) = &model.engine else {
            return Err("tile calls run on the CPU".into());
        };
        let plane = |i: usize| -> Result<Image, String> {
            let a = buffers
                .get(i)
                .and_then(|b| b.dyn_ref::<Float32Array>())
                .ok_or("a tile call needs x and x0")?;
            Image::new(width, height, 3, a.to_vec()).map_err(|e| e.to_string())
        };
        let call = TileCall {
            step,
            x: plane(0)?,
            x0: plane(1)?,
        };
        let net = adapted.at(request.lora()).map_err(|e| e.to_string())?;
        let opts = request.options(false);
        let out = run_call(&net, call, &opts, &Default::default()).map_err(|e| e.to_string())?;
        post_with(
            &FromWorker::TileOut { id },
            &[Float32Array::from(&out.data[..]).into()],
        );
        Ok(())
    }

    // ---- a job ----

    async fn run(job: Job, rgba: Vec<u8>) -> Result<(), String> {
        let lead = MODEL
            .with(|m| m.borrow().clone())
            .ok_or("the model is not loaded yet")?;
        let model = model_for(&lead, job.request.preset).await?;
        job.check(&web_limits(model.cfg.w_max(), model.has_lora()))
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
        let (out, blend) = match (&model.engine, &lead.pool) {
            (Engine::Gpu(adapted, dev), _) => {
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
            (Engine::Cpu(adapted), Some(pool)) => {
                // Checked here, so that a bad knob fails before any worker is busy.
                adapted.at(job.request.lora()).map_err(|e| e.to_string())?;
                let pool = JobPool {
                    pool,
                    request: job.request.clone(),
                };
                let r = upscale_pooled(cfg, &rgb, scale, &opts, &pool, &mut on_tile).await;
                (r, "CPU")
            }
            (Engine::Cpu(adapted), None) => {
                let net = &adapted.at(job.request.lora()).map_err(|e| e.to_string())?;
                let (dev, mut cpu) = (Default::default(), CpuBlender::default());
                let r = upscale_async(net, cfg, &rgb, scale, &opts, &dev, &mut cpu, &mut on_tile);
                (r.await, "CPU")
            }
        };
        let mut px = out.map_err(|e| user_message(&e))?;
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
