//! The page: pick, drop or paste an image; upscale it in the worker (WebGPU, or the CPU with a
//! pool of workers) with each finished tile painted as it arrives, an estimate before and the time
//! left during; cancel; compare before/after with a divider on the image, wheel zoom and drag pan;
//! download. Leptos (client-side) for the controls; the canvases and the worker are driven
//! directly, since they are imperative by nature.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the app runs in a browser: build it with `trunk build --release`");
}

#[cfg(target_arch = "wasm32")]
fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(ui::App);
    ui::register_service_worker();
}

#[cfg(target_arch = "wasm32")]
mod ui {
    use flowmapsr_core::bridge::Mode;
    use flowmapsr_core::projection::Policy;
    use flowmapsr_core::request::{Preset, SampleRequest};
    use flowmapsr_web::{
        download_name, estimate_ms, header_size, human_ms, js_error, user_message, web_limits,
        DeviceChoice, FromWorker, Job, ToWorker, MAX_INPUT_PIXELS,
    };
    use js_sys::{Array, Uint8Array};
    use leptos::prelude::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::{Clamped, JsCast};
    use wasm_bindgen_futures::{spawn_local, JsFuture};
    use web_sys::{
        CanvasRenderingContext2d, HtmlCanvasElement, ImageBitmap, ImageData, MessageEvent, Worker,
        WorkerOptions, WorkerType,
    };

    /// The worker's two builds: with WebAssembly SIMD (every current browser) and without.
    const WORKER_SIMD: &str = "./worker_simd_loader.js";
    const WORKER_PLAIN: &str = "./worker_loader.js";

    /// Whether this browser runs WebAssembly SIMD: it validates a module holding one SIMD
    /// instruction (as wasm-feature-detect does).
    fn wasm_simd() -> bool {
        const PROBE: [u8; 31] = [
            0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65,
            0, 253, 15, 253, 98, 11,
        ];
        js_sys::WebAssembly::validate(&Uint8Array::from(&PROBE[..]).into()).unwrap_or(false)
    }

    /// The picked image: its name and RGBA pixels.
    struct Input {
        name: String,
        width: usize,
        height: usize,
        rgba: Vec<u8>,
    }

    /// What lives outside the reactive graph: the worker, the input, the canvases.
    #[derive(Default)]
    struct Ctl {
        worker: Option<Worker>,
        input: Option<Input>,
        out: Option<HtmlCanvasElement>,
        before: Option<HtmlCanvasElement>,
        /// Where the visitor wants the network to run (Advanced, or `?device=` in the URL).
        device: DeviceChoice,
        /// The CPU pool's size from `?workers=N` (None: one per core).
        workers: Option<usize>,
        /// `?simd=0`: the plain build even where the browser has wasm SIMD.
        no_simd: bool,
        gpu_failure: Option<String>,
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum State {
        Loading,
        Idle,
        Running,
        Done,
        Failed,
    }

    impl State {
        fn as_str(self) -> &'static str {
            match self {
                State::Loading => "loading",
                State::Idle => "idle",
                State::Running => "running",
                State::Done => "done",
                State::Failed => "failed",
            }
        }
    }

    #[derive(Clone, Copy)]
    struct Signals {
        state: RwSignal<State>,
        backend: RwSignal<String>,
        detail: RwSignal<String>,
        message: RwSignal<String>,
        done: RwSignal<usize>,
        total: RwSignal<usize>,
        has_input: RwSignal<bool>,
        has_output: RwSignal<bool>,
        out_size: RwSignal<(usize, usize)>,
        /// The model's largest guidance scale (1: no guidance control).
        w_max: RwSignal<f32>,
        /// Whether the worker loaded an adversarial LoRA adapter.
        has_lora: RwSignal<bool>,
        /// The LR projection ("Consistent"): set on each load as `flowmapsr upscale --projection
        /// auto` decides (off for JPEG / lossy WebP files), then the user's.
        projection: RwSignal<bool>,
        /// Workers running tiles at once, and one worker's measured ms per output MP and step.
        workers: RwSignal<usize>,
        ms_per_mpx: RwSignal<f64>,
        align: RwSignal<usize>,
        /// The realistic weights' cost per pixel over the faithful ones'.
        realistic_cost: RwSignal<f64>,
        /// When the running job started (performance.now(), ms).
        started: RwSignal<f64>,
        /// Before/after divider, % of the width from the left.
        split: RwSignal<f64>,
    }

    fn now() -> f64 {
        web_sys::window()
            .and_then(|w| w.performance())
            .map_or(0.0, |p| p.now())
    }

    fn ctx2d(c: &HtmlCanvasElement) -> CanvasRenderingContext2d {
        c.get_context("2d")
            .ok()
            .flatten()
            .expect("2d canvas")
            .unchecked_into()
    }

    fn paint(canvas: &HtmlCanvasElement, px: &[u8], x: usize, y: usize, w: usize, h: usize) {
        match ImageData::new_with_u8_clamped_array_and_sh(Clamped(px), w as u32, h as u32) {
            Ok(img) => {
                let _ = ctx2d(canvas).put_image_data(&img, x as f64, y as f64);
            }
            Err(e) => web_sys::console::error_1(&e),
        }
    }

    /// (Re)start the worker: on first load, after a cancel, and after a crash (WebGPU failures
    /// can abort the worker: then the CPU is used and the page says why).
    fn spawn_worker(ctl: &Rc<RefCell<Ctl>>, sig: Signals) {
        if let Some(w) = ctl.borrow_mut().worker.take() {
            w.terminate();
        }
        let opts = WorkerOptions::new();
        opts.set_type(WorkerType::Classic);
        let simd = !ctl.borrow().no_simd && wasm_simd();
        let url = if simd { WORKER_SIMD } else { WORKER_PLAIN };
        let worker = match Worker::new_with_options(url, &opts) {
            Ok(w) => w,
            Err(e) => {
                sig.state.set(State::Failed);
                sig.message
                    .set(format!("cannot start the worker: {}", js_error(e)));
                return;
            }
        };
        sig.state.set(State::Loading);
        sig.message.set("loading the model…".into());
        let c = ctl.clone();
        let on_msg = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            let data: Array = ev.data().unchecked_into();
            let text = data.get(0).as_string().unwrap_or_default();
            let px = data.get(1).dyn_into::<Uint8Array>().ok();
            match serde_json::from_str::<FromWorker>(&text) {
                Ok(m) => on_worker_message(&c, sig, m, px),
                Err(e) => web_sys::console::error_1(&format!("bad worker message: {e}").into()),
            }
        });
        worker.set_onmessage(Some(on_msg.as_ref().unchecked_ref()));
        on_msg.forget();
        let c = ctl.clone();
        let on_err =
            Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |ev: web_sys::ErrorEvent| {
                let why = ev.message();
                let cpu = c.borrow().device == DeviceChoice::Cpu;
                let was_gpu = sig.backend.get_untracked() == "WebGPU"
                    || (sig.backend.get_untracked().is_empty() && !cpu);
                if was_gpu && !cpu {
                    {
                        let mut b = c.borrow_mut();
                        b.device = DeviceChoice::Cpu;
                        b.gpu_failure = Some(why.clone());
                    }
                    sig.message
                        .set(format!("WebGPU failed ({why}); restarting on the CPU"));
                    spawn_worker(&c, sig);
                } else {
                    sig.state.set(State::Failed);
                    sig.message.set(format!("the worker crashed: {why}"));
                }
            });
        worker.set_onerror(Some(on_err.as_ref().unchecked_ref()));
        on_err.forget();
        // Init is sent when the worker says it is listening (FromWorker::Loaded).
        ctl.borrow_mut().worker = Some(worker);
    }

    fn send(w: &Worker, msg: &ToWorker, px: Option<&[u8]>) {
        let arr = Array::new();
        arr.push(&serde_json::to_string(msg).expect("plain data").into());
        let transfer = Array::new();
        if let Some(p) = px {
            let u = Uint8Array::from(p);
            transfer.push(&u.buffer());
            arr.push(&u);
        }
        if let Err(e) = w.post_message_with_transfer(&arr, &transfer) {
            web_sys::console::error_1(&e);
        }
    }

    fn on_worker_message(
        ctl: &Rc<RefCell<Ctl>>,
        sig: Signals,
        m: FromWorker,
        px: Option<Uint8Array>,
    ) {
        match m {
            FromWorker::Loaded => {
                let c = ctl.borrow();
                if let Some(w) = &c.worker {
                    send(
                        w,
                        &ToWorker::Init {
                            device: c.device,
                            workers: c.workers,
                        },
                        None,
                    );
                }
            }
            FromWorker::Ready {
                backend,
                detail,
                w_max,
                lora,
                workers,
                ms_per_mpx,
                align,
                realistic_cost,
            } => {
                sig.realistic_cost.set(realistic_cost);
                sig.w_max.set(w_max);
                sig.has_lora.set(lora);
                sig.workers.set(workers.max(1));
                sig.ms_per_mpx.set(ms_per_mpx);
                sig.align.set(align.max(1));
                let detail = match ctl.borrow().gpu_failure.clone() {
                    Some(f) => format!("WebGPU failed in this tab ({f})"),
                    None => detail,
                };
                sig.backend.set(backend);
                sig.detail.set(detail);
                sig.state.set(State::Idle);
                sig.message.set(if sig.has_input.get_untracked() {
                    "ready".into()
                } else {
                    "ready: drop, paste or pick an image".into()
                });
            }
            FromWorker::Tile {
                done,
                total,
                x,
                y,
                w,
                h,
            } => {
                sig.done.set(done);
                sig.total.set(total);
                if done == 1 {
                    sig.split.set(50.0);
                }
                if let (Some(c), Some(px)) = (ctl.borrow().out.clone(), px) {
                    paint(&c, &px.to_vec(), x, y, w, h);
                }
            }
            FromWorker::Done {
                width,
                height,
                ms,
                blend,
            } => {
                if let (Some(c), Some(px)) = (ctl.borrow().out.clone(), px) {
                    paint(&c, &px.to_vec(), 0, 0, width, height);
                }
                sig.has_output.set(true);
                sig.split.set(50.0);
                sig.state.set(State::Done);
                sig.message
                    .set(format!("done in {ms:.0} ms (tiles blended on the {blend})"));
            }
            FromWorker::Error { message } => {
                sig.state.set(State::Failed);
                sig.message.set(message);
            }
            // Between the lead worker and its pool only.
            FromWorker::TileOut { .. } | FromWorker::TileFailed { .. } => {}
        }
    }

    fn too_big(name: &str, w: usize, h: usize) -> String {
        format!(
            "{name} is {w}x{h} = {:.1} MP: the browser demo takes images up to {} MP (crop or \
             shrink it, or use `flowmapsr upscale`)",
            (w * h) as f64 / 1e6,
            MAX_INPUT_PIXELS >> 20
        )
    }

    /// Decode an image file (or pasted blob) to RGBA without colour management, so the pixels
    /// are the file's, as `flowmapsr upscale` reads them.
    async fn decode(blob: web_sys::Blob, name: String) -> Result<Input, String> {
        let window = web_sys::window().ok_or("no window")?;
        let opts = web_sys::ImageBitmapOptions::new();
        opts.set_color_space_conversion(web_sys::ColorSpaceConversion::None);
        opts.set_premultiply_alpha(web_sys::PremultiplyAlpha::None);
        let p = window
            .create_image_bitmap_with_blob_and_image_bitmap_options(&blob, &opts)
            .map_err(js_error)?;
        let bmp: ImageBitmap = JsFuture::from(p)
            .await
            .map_err(|e| {
                format!(
                    "{name} is not an image this browser can decode ({})",
                    js_error(e)
                )
            })?
            .unchecked_into();
        let (w, h) = (bmp.width() as usize, bmp.height() as usize);
        if w == 0 || h == 0 {
            return Err(format!("{name} is empty"));
        }
        if w * h > MAX_INPUT_PIXELS {
            return Err(too_big(&name, w, h));
        }
        let doc = window.document().ok_or("no document")?;
        let c: HtmlCanvasElement = doc
            .create_element("canvas")
            .map_err(js_error)?
            .unchecked_into();
        c.set_width(w as u32);
        c.set_height(h as u32);
        let ctx = ctx2d(&c);
        ctx.draw_image_with_image_bitmap(&bmp, 0.0, 0.0)
            .map_err(js_error)?;
        let data = ctx
            .get_image_data(0.0, 0.0, w as f64, h as f64)
            .map_err(js_error)?
            .data()
            .0;
        Ok(Input {
            name,
            width: w,
            height: h,
            rgba: data,
        })
    }

    fn load_blob(ctl: Rc<RefCell<Ctl>>, sig: Signals, blob: web_sys::Blob, name: String) {
        spawn_local(async move {
            // The projection's `auto`: sniff the file's coding (an unreadable blob counts as
            // lossless; decoding it below reports the real problem).
            let head = match JsFuture::from(blob.array_buffer()).await {
                Ok(buf) => Uint8Array::new(&buf).to_vec(),
                Err(_) => Vec::new(),
            };
            let lossy = flowmapsr_core::projection::lossy_encoding(&head);
            // The size is in the header: a huge image is refused before the browser tries (and
            // fails, with a generic message) to decode it.
            let decoded = match header_size(&head) {
                Some((w, h)) if w * h > MAX_INPUT_PIXELS => Err(too_big(&name, w, h)),
                _ => decode(blob, name).await,
            };
            drop(head);
            match decoded {
                Ok(input) => {
                    sig.projection.set(!lossy);
                    let (w, h) = (input.width, input.height);
                    sig.message.set(format!("{} ({w}x{h})", input.name));
                    if let Some(b) = ctl.borrow().before.clone() {
                        b.set_width(w as u32);
                        b.set_height(h as u32);
                        paint(&b, &input.rgba, 0, 0, w, h);
                    }
                    ctl.borrow_mut().input = Some(input);
                    // The new input whole, until a result comes.
                    sig.split.set(100.0);
                    sig.has_input.set(true);
                    sig.has_output.set(false);
                    sig.done.set(0);
                    sig.total.set(0);
                    // Same aspect as the result: the before layer shows over an empty canvas.
                    if let Some(o) = ctl.borrow().out.clone() {
                        o.set_width(w as u32);
                        o.set_height(h as u32);
                    }
                    sig.out_size.set((w, h));
                    if sig.state.get_untracked() == State::Done
                        || sig.state.get_untracked() == State::Failed
                    {
                        sig.state.set(State::Idle);
                    }
                }
                Err(e) => {
                    // A rejected file replaces the previous one: nothing of that one stays on
                    // screen or can be upscaled by mistake under the new file's name.
                    ctl.borrow_mut().input = None;
                    let canvases = [ctl.borrow().before.clone(), ctl.borrow().out.clone()];
                    for c in canvases.into_iter().flatten() {
                        c.set_width(0);
                        c.set_height(0);
                    }
                    sig.has_input.set(false);
                    sig.has_output.set(false);
                    sig.done.set(0);
                    sig.total.set(0);
                    sig.out_size.set((0, 0));
                    if !matches!(sig.state.get_untracked(), State::Loading | State::Running) {
                        sig.state.set(State::Failed);
                    }
                    sig.message.set(e);
                }
            }
        });
    }

    pub fn register_service_worker() {
        let Some(w) = web_sys::window() else { return };
        let sw = w.navigator().service_worker();
        // Not available on plain http:// except localhost; the app works without it (online).
        let _ = sw.register("./sw.js");
    }

    /// `?device=cpu|webgpu|auto&workers=N&simd=0` in the page's URL: the Advanced choice, preset;
    /// the pool's size; the plain build anywhere.
    fn url_choices() -> (DeviceChoice, Option<usize>, bool) {
        let q = web_sys::window()
            .and_then(|w| w.location().search().ok())
            .unwrap_or_default();
        let mut device = DeviceChoice::Auto;
        let mut workers = None;
        let mut no_simd = false;
        for kv in q.trim_start_matches('?').split('&') {
            match kv.split_once('=') {
                Some(("device", v)) => device = DeviceChoice::parse(v).unwrap_or_default(),
                Some(("workers", v)) => workers = v.parse().ok().filter(|&n: &usize| n >= 1),
                Some(("simd", "0")) => no_simd = true,
                _ => {}
            }
        }
        (device, workers, no_simd)
    }

    /// The knobs' signals; `job` reads them as the worker's job.
    #[derive(Clone, Copy)]
    struct Knobs {
        scale: RwSignal<u32>,
        steps: RwSignal<usize>,
        tile: RwSignal<usize>,
        seed: RwSignal<u64>,
        guidance: RwSignal<f32>,
        lora: RwSignal<f32>,
        preset: RwSignal<Preset>,
        grain: RwSignal<f32>,
        /// The grain cut (`--grain-cut`): the 2-px checker hatching taken from the whole result.
        grain_cut: RwSignal<bool>,
    }

    impl Knobs {
        fn job(&self, sig: Signals, width: usize, height: usize) -> Job {
            let grain_t = self.grain.get_untracked();
            let has_lora =
                sig.has_lora.get_untracked() && self.preset.get_untracked().ships_adapter();
            Job {
                width,
                height,
                request: SampleRequest {
                    scale: self.scale.get_untracked(),
                    preset: self.preset.get_untracked(),
                    steps: Some(self.steps.get_untracked()),
                    tile: self.tile.get_untracked(),
                    overlap: (self.tile.get_untracked() / 8).max(8),
                    seed: self.seed.get_untracked(),
                    mode: if grain_t > 0.0 {
                        Mode::Stochastic
                    } else {
                        Mode::Fidelity
                    },
                    temperature: if grain_t > 0.0 { grain_t } else { 1.0 },
                    guidance: Some(self.guidance.get_untracked().min(sig.w_max.get_untracked())),
                    lora: Some(if has_lora {
                        self.lora.get_untracked()
                    } else {
                        0.0
                    }),
                    projection: if sig.projection.get_untracked() {
                        Policy::On
                    } else {
                        Policy::Off
                    },
                    grain_cut: Some(self.grain_cut.get_untracked()),
                },
            }
        }
    }

    /// The viewer's zoom (1: the image fits the stage) and pan (CSS px).
    #[derive(Clone, Copy, PartialEq)]
    struct View {
        zoom: f64,
        x: f64,
        y: f64,
    }

    const FIT: View = View {
        zoom: 1.0,
        x: 0.0,
        y: 0.0,
    };

    #[component]
    pub fn App() -> impl IntoView {
        let sig = Signals {
            state: RwSignal::new(State::Loading),
            backend: RwSignal::new(String::new()),
            detail: RwSignal::new(String::new()),
            message: RwSignal::new("starting…".into()),
            done: RwSignal::new(0),
            total: RwSignal::new(0),
            has_input: RwSignal::new(false),
            has_output: RwSignal::new(false),
            out_size: RwSignal::new((0, 0)),
            w_max: RwSignal::new(1.0),
            has_lora: RwSignal::new(false),
            projection: RwSignal::new(true),
            workers: RwSignal::new(1),
            ms_per_mpx: RwSignal::new(0.0),
            align: RwSignal::new(1),
            realistic_cost: RwSignal::new(1.0),
            started: RwSignal::new(0.0),
            split: RwSignal::new(50.0),
        };
        let knobs = Knobs {
            scale: RwSignal::new(4u32),
            steps: RwSignal::new(1usize),
            tile: RwSignal::new(128usize),
            seed: RwSignal::new(0u64),
            guidance: RwSignal::new(1.0f32),
            lora: RwSignal::new(0.0f32),
            // The Result menu: it sets steps, guidance and LoRA, which stay adjustable after.
            preset: RwSignal::new(Preset::Faithful),
            // Grain 0: the fidelity map; above 0: the stochastic mode at that temperature.
            grain: RwSignal::new(0.0f32),
            grain_cut: RwSignal::new(Preset::Faithful.grain_cut()),
        };
        let Knobs {
            scale,
            steps,
            tile,
            seed,
            guidance,
            lora,
            preset,
            grain,
            grain_cut,
        } = knobs;
        let projection = sig.projection;
        let split = sig.split;
        let view = RwSignal::new(FIT);
        let (url_device, url_workers, no_simd) = url_choices();
        let device = RwSignal::new(url_device);
        let ctl = Rc::new(RefCell::new(Ctl {
            device: url_device,
            workers: url_workers,
            no_simd,
            ..Ctl::default()
        }));
        let out_ref = NodeRef::<leptos::html::Canvas>::new();
        let before_ref = NodeRef::<leptos::html::Canvas>::new();
        let file_ref = NodeRef::<leptos::html::Input>::new();
        let stage_ref = NodeRef::<leptos::html::Div>::new();
        // The input's size, for the estimate (it is outside the reactive graph otherwise).
        let in_size = RwSignal::new((0usize, 0usize));

        {
            let ctl = ctl.clone();
            Effect::new(move |_| {
                if let (Some(o), Some(b)) = (out_ref.get(), before_ref.get()) {
                    let mut c = ctl.borrow_mut();
                    if c.out.is_none() {
                        c.out = Some(o);
                        c.before = Some(b);
                        drop(c);
                        spawn_worker(&ctl, sig);
                    }
                }
            });
        }
        {
            let ctl = ctl.clone();
            Effect::new(move |_| {
                // Track the input through has_input; its size is read untracked.
                let _ = sig.has_input.get();
                let c = ctl.borrow();
                in_size.set(c.input.as_ref().map_or((0, 0), |i| (i.width, i.height)));
            });
        }
        // Paste anywhere on the page.
        {
            let ctl = ctl.clone();
            let on_paste = Closure::<dyn FnMut(web_sys::ClipboardEvent)>::new(
                move |ev: web_sys::ClipboardEvent| {
                    let Some(files) = ev.clipboard_data().and_then(|d| d.files()) else {
                        return;
                    };
                    if let Some(f) = files.get(0) {
                        ev.prevent_default();
                        load_blob(ctl.clone(), sig, f.clone().into(), "pasted.png".into());
                    }
                },
            );
            if let Some(w) = web_sys::window() {
                let _ =
                    w.add_event_listener_with_callback("paste", on_paste.as_ref().unchecked_ref());
            }
            on_paste.forget();
        }

        let on_file = {
            let ctl = ctl.clone();
            move |_| {
                let Some(input) = file_ref.get() else { return };
                if let Some(f) = input.files().and_then(|l| l.get(0)) {
                    view.set(FIT);
                    load_blob(ctl.clone(), sig, f.clone().into(), f.name());
                }
            }
        };
        let on_drop = {
            let ctl = ctl.clone();
            move |ev: web_sys::DragEvent| {
                ev.prevent_default();
                if let Some(f) = ev
                    .data_transfer()
                    .and_then(|d| d.files())
                    .and_then(|l| l.get(0))
                {
                    view.set(FIT);
                    load_blob(ctl.clone(), sig, f.clone().into(), f.name());
                }
            }
        };
        let on_upscale = {
            let ctl = ctl.clone();
            move |_| {
                let c = ctl.borrow();
                let (Some(input), Some(worker), Some(out)) = (&c.input, &c.worker, &c.out) else {
                    return;
                };
                let job = knobs.job(sig, input.width, input.height);
                let has_lora = sig.has_lora.get_untracked();
                if let Err(e) = job.check(&web_limits(sig.w_max.get_untracked(), has_lora)) {
                    sig.state.set(State::Failed);
                    sig.message.set(user_message(&e));
                    return;
                }
                let s = job.request.scale as usize;
                out.set_width((input.width * s) as u32);
                out.set_height((input.height * s) as u32);
                sig.out_size.set((input.width * s, input.height * s));
                sig.done.set(0);
                sig.total.set(0);
                sig.has_output.set(false);
                sig.started.set(now());
                sig.state.set(State::Running);
                sig.message.set("upscaling…".into());
                send(worker, &ToWorker::Upscale(job), Some(&input.rgba));
            }
        };
        let on_cancel = {
            let ctl = ctl.clone();
            move |_| {
                // The worker may be deep in a CPU tile: terminating it (and with it its pool)
                // is the only prompt stop.
                spawn_worker(&ctl, sig);
                // The half-painted result goes too: only a finished result is ever shown.
                if let Some(o) = ctl.borrow().out.clone() {
                    o.set_width(o.width());
                }
                sig.has_output.set(false);
                sig.done.set(0);
                sig.total.set(0);
                sig.split.set(100.0);
                sig.message.set("cancelled; reloading the model…".into());
            }
        };
        let on_device = {
            let ctl = ctl.clone();
            move |ev| {
                let d = DeviceChoice::parse(&event_target_value(&ev)).unwrap_or_default();
                device.set(d);
                {
                    let mut c = ctl.borrow_mut();
                    c.device = d;
                    c.gpu_failure = None;
                }
                sig.backend.set(String::new());
                sig.detail.set(String::new());
                sig.has_output.set(false);
                sig.done.set(0);
                sig.total.set(0);
                spawn_worker(&ctl, sig);
            }
        };
        let on_download = {
            let ctl = ctl.clone();
            move |_| {
                let c = ctl.borrow();
                let (Some(out), Some(input)) = (&c.out, &c.input) else {
                    return;
                };
                let name = download_name(&input.name, scale.get_untracked());
                let cb = Closure::once_into_js(move |blob: JsValue| {
                    let Ok(blob) = blob.dyn_into::<web_sys::Blob>() else {
                        return;
                    };
                    let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else {
                        return;
                    };
                    let doc = web_sys::window()
                        .and_then(|w| w.document())
                        .expect("document");
                    let a: web_sys::HtmlAnchorElement =
                        doc.create_element("a").expect("a").unchecked_into();
                    a.set_href(&url);
                    a.set_download(&name);
                    a.click();
                    let _ = web_sys::Url::revoke_object_url(&url);
                });
                let _ = out.to_blob(cb.unchecked_ref());
            }
        };

        let running = move || sig.state.get() == State::Running;
        let busy = move || matches!(sig.state.get(), State::Running | State::Loading);
        let percent = move || {
            let t = sig.total.get();
            if t == 0 {
                0.0
            } else {
                100.0 * sig.done.get() as f64 / t as f64
            }
        };
        // Before a job: the expected time on this device; during one: the time left.
        let estimate = move || {
            let (w, h) = in_size.get();
            if w == 0 || sig.backend.get().is_empty() {
                return String::new();
            }
            // Track every knob that changes the work.
            let _ = (
                scale.get(),
                steps.get(),
                tile.get(),
                sig.workers.get(),
                sig.ms_per_mpx.get(),
                preset.get(),
            );
            let job = knobs.job(sig, w, h);
            let workers = sig.workers.get_untracked();
            let cost = if job.request.preset == Preset::Realistic {
                sig.realistic_cost.get_untracked()
            } else {
                1.0
            };
            match estimate_ms(
                &job,
                sig.align.get_untracked(),
                sig.ms_per_mpx.get_untracked() * cost,
                workers,
            ) {
                Some(ms) => format!(
                    "Expected time: {} on this device ({})",
                    human_ms(ms),
                    if sig.backend.get_untracked() == "WebGPU" {
                        "WebGPU".to_string()
                    } else if workers > 1 {
                        format!("{workers} CPU workers")
                    } else {
                        "1 CPU worker".to_string()
                    }
                ),
                None => String::new(),
            }
        };
        let progress_text = move || {
            let (d, t) = (sig.done.get(), sig.total.get());
            if d == 0 || t == 0 || d >= t || sig.state.get() != State::Running {
                return format!("{d} / {t} tiles");
            }
            let elapsed = now() - sig.started.get_untracked();
            format!(
                "{d} / {t} tiles · {} left",
                human_ms(elapsed / d as f64 * (t - d) as f64)
            )
        };
        let zoom_to = move |z: &str| {
            // "fit" is zoom 1; "100%" is one image pixel per screen pixel.
            let Some(stage) = stage_ref.get_untracked() else {
                return;
            };
            let fit_w = stage
                .query_selector("canvas#out")
                .ok()
                .flatten()
                .map_or(0.0, |c| {
                    c.get_bounding_client_rect().width() / view.get_untracked().zoom
                });
            let (w, _) = sig.out_size.get_untracked();
            let zoom = match z {
                "1" if fit_w > 0.0 => w as f64 / fit_w,
                "2" if fit_w > 0.0 => 2.0 * w as f64 / fit_w,
                _ => 1.0,
            };
            view.set(View {
                zoom: zoom.clamp(1.0, 64.0),
                x: 0.0,
                y: 0.0,
            });
        };
        // Wheel zoom about the cursor; drag pans, or moves the divider when it is grabbed.
        let on_wheel = move |ev: web_sys::WheelEvent| {
            let Some(stage) = stage_ref.get_untracked() else {
                return;
            };
            ev.prevent_default();
            let r = stage.get_bounding_client_rect();
            let (cx, cy) = (
                ev.client_x() as f64 - r.left(),
                ev.client_y() as f64 - r.top(),
            );
            let v = view.get_untracked();
            let zoom = (v.zoom * (-ev.delta_y() / 500.0).exp()).clamp(1.0, 64.0);
            let k = zoom / v.zoom;
            view.set(if zoom == 1.0 {
                FIT
            } else {
                View {
                    zoom,
                    x: cx - (cx - v.x) * k,
                    y: cy - (cy - v.y) * k,
                }
            });
        };
        // Not `on:wheel`: a delegated listener is passive, and the page would scroll as it zooms.
        Effect::new(move |_| {
            let Some(stage) = stage_ref.get() else { return };
            let cb = Closure::<dyn FnMut(web_sys::WheelEvent)>::new(on_wheel);
            let opts = web_sys::AddEventListenerOptions::new();
            opts.set_passive(false);
            let _ = stage.add_event_listener_with_callback_and_add_event_listener_options(
                "wheel",
                cb.as_ref().unchecked_ref(),
                &opts,
            );
            cb.forget();
        });
        let drag = Rc::new(RefCell::new(None::<(bool, f64, f64, View)>));
        let on_down = {
            let drag = drag.clone();
            move |ev: web_sys::PointerEvent| {
                let divider = ev
                    .target()
                    .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
                    .is_some_and(|e| e.closest(".divider").ok().flatten().is_some());
                if let Some(stage) = stage_ref.get_untracked() {
                    let _ = stage.set_pointer_capture(ev.pointer_id());
                }
                *drag.borrow_mut() = Some((
                    divider,
                    ev.client_x() as f64,
                    ev.client_y() as f64,
                    view.get_untracked(),
                ));
            }
        };
        let on_move = {
            let drag = drag.clone();
            move |ev: web_sys::PointerEvent| {
                let Some((divider, x0, y0, v)) = *drag.borrow() else {
                    return;
                };
                let (dx, dy) = (ev.client_x() as f64 - x0, ev.client_y() as f64 - y0);
                if divider {
                    let Some(stage) = stage_ref.get_untracked() else {
                        return;
                    };
                    let Some(out) = stage.query_selector("canvas#out").ok().flatten() else {
                        return;
                    };
                    let r = out.get_bounding_client_rect();
                    if r.width() > 0.0 {
                        let p = (ev.client_x() as f64 - r.left()) / r.width() * 100.0;
                        split.set(p.clamp(0.0, 100.0));
                    }
                } else if v.zoom > 1.0 {
                    view.set(View {
                        x: v.x + dx,
                        y: v.y + dy,
                        ..v
                    });
                }
            }
        };
        let on_up = {
            let drag = drag.clone();
            move |_: web_sys::PointerEvent| {
                *drag.borrow_mut() = None;
            }
        };
        // Fit: as wide as the stage, or as tall as its height allows (--aspect, style.css).
        let layers_style = move || {
            let v = view.get();
            let (w, h) = sig.out_size.get();
            let aspect = if w > 0 && h > 0 {
                w as f64 / h as f64
            } else {
                1.5
            };
            format!(
                "--aspect: {aspect:.5}; transform: translate({}px, {}px) scale({})",
                v.x, v.y, v.zoom
            )
        };
        let show_labels = move || sig.has_output.get() || running();

        view! {
            <header>
                <h1>"flowmapsr"</h1>
                <p class="tag">"One-step flow-map super-resolution in your browser. It runs on your device: nothing is uploaded."</p>
                <p id="backend" data-backend=move || sig.backend.get() data-workers=move || sig.workers.get().to_string()>
                    {move || {
                        let b = sig.backend.get();
                        if b.is_empty() { "backend: starting…".to_string() } else { format!("backend: {b}") }
                    }}
                    <span class="detail">{move || { let d = sig.detail.get(); if d.is_empty() { d } else { format!(" — {d}") } }}</span>
                </p>
            </header>
            <main>
                <section class="controls">
                    <label
                        class="drop"
                        on:dragover=|ev: web_sys::DragEvent| ev.prevent_default()
                        on:drop=on_drop
                    >
                        <input id="file" type="file" accept="image/png,image/jpeg,image/webp" node_ref=file_ref on:change=on_file />
                        <span>"Drop, paste or pick an image (PNG, JPEG, WebP)"</span>
                    </label>
                    <div class="row">
                        <label>
                            "Result "
                            <select id="preset" on:change=move |ev| {
                                let p = if event_target_value(&ev) == "realistic" {
                                    Preset::Realistic
                                } else {
                                    Preset::Faithful
                                };
                                preset.set(p);
                                let (n, w, l) = p.knobs();
                                steps.set(n);
                                guidance.set(w.min(sig.w_max.get_untracked().max(1.0)));
                                lora.set(if sig.has_lora.get_untracked() { l } else { 0.0 });
                                grain_cut.set(p.grain_cut());
                            }>
                                <option value="faithful" selected>"Faithful"</option>
                                <option value="realistic">"Realistic"</option>
                            </select>
                        </label>
                        <label>"Scale "
                            <select id="scale" on:change=move |ev| scale.set(event_target_value(&ev).parse().unwrap_or(4))>
                                <option value="2">"x2"</option>
                                <option value="4" selected>"x4"</option>
                                <option value="8">"x8"</option>
                            </select>
                        </label>
                    </div>
                    <p class="hint">{move || if preset.get() == Preset::Realistic {
                        "Realistic: sharper edges and texture; some detail is the model's guess."
                    } else {
                        "Faithful: only detail the image supports; smooth where it is unsure."
                    }}</p>
                    <details id="advanced">
                        <summary>"Advanced"</summary>
                        <div class="knob">
                            <label>"Device "
                                <select id="device" on:change=on_device prop:value=move || device.get().as_str().to_string()>
                                    <option value="auto">"Auto"</option>
                                    <option value="cpu">"CPU"</option>
                                    <option value="webgpu">"WebGPU"</option>
                                </select>
                            </label>
                            <small>"Auto uses a hardware GPU when there is one, else all CPU cores."</small>
                        </div>
                        <div class="knob">
                            <label>"Steps "
                                <input id="steps" type="number" min="1" max="8" prop:value=move || steps.get().to_string()
                                    on:change=move |ev| steps.set(event_target_value(&ev).parse().unwrap_or(1).clamp(1, 8)) />
                            </label>
                            <small>"Network calls per tile: 1 is the model's design; more costs time."</small>
                        </div>
                        <div class="knob">
                            <label class:muted=move || sig.w_max.get() <= 1.0>
                                "Guidance w "
                                <input id="guidance" type="range" min="1" step="0.25"
                                    prop:max=move || sig.w_max.get().max(1.0).to_string()
                                    prop:value=move || guidance.get().to_string()
                                    disabled=move || sig.w_max.get() <= 1.0
                                    on:input=move |ev| guidance.set(event_target_value(&ev).parse().unwrap_or(1.0)) />
                                <span id="guidance-value">{move || format!("{:.2}", guidance.get())}</span>
                            </label>
                            <small>"1 is faithful; higher sharpens (same cost)."</small>
                        </div>
                        <div class="knob">
                            <label class:muted=move || !sig.has_lora.get() || !preset.get().ships_adapter()>
                                "LoRA "
                                <input id="lora" type="range" min="0" max="3" step="0.25"
                                    prop:value=move || lora.get().to_string()
                                    disabled=move || !sig.has_lora.get() || !preset.get().ships_adapter()
                                    on:input=move |ev| lora.set(event_target_value(&ev).parse().unwrap_or(0.0)) />
                                <span id="lora-value">{move || format!("{:.2}", lora.get())}</span>
                            </label>
                            <small>"Strength of the adversarially trained detail (0: none)."</small>
                        </div>
                        <div class="knob">
                            <label>
                                "Grain "
                                <input id="grain" type="range" min="0" max="1" step="0.05"
                                    prop:value=move || grain.get().to_string()
                                    on:input=move |ev| grain.set(event_target_value(&ev).parse().unwrap_or(0.0)) />
                                <span id="grain-value">{move || format!("{:.2}", grain.get())}</span>
                            </label>
                            <small>"Photographic grain from seeded noise (0: none, the same every time)."</small>
                        </div>
                        <div class="knob">
                            <label class:muted=move || grain.get() <= 0.0>"Seed "
                                <input id="seed" type="number" min="0" prop:value=move || seed.get().to_string()
                                    disabled=move || grain.get() <= 0.0
                                    on:change=move |ev| seed.set(event_target_value(&ev).parse().unwrap_or(0)) />
                            </label>
                            <small>"Which grain: used only when Grain is above 0."</small>
                        </div>
                        <Toggle id="projection" value=projection label="Consistent"
                            hint="Shrinking the result gives back your image exactly (off for JPEG)." />
                        <Toggle id="grain-cut" value=grain_cut label="No hatching"
                            hint="Takes the finest checker pattern (2 px) off the whole result; it is error, not detail." />
                        <div class="knob">
                            <label>"Tile "
                                <select id="tile" on:change=move |ev| tile.set(event_target_value(&ev).parse().unwrap_or(128))>
                                    <option value="64">"64"</option>
                                    <option value="128" selected>"128"</option>
                                    <option value="256">"256"</option>
                                </select>
                            </label>
                            <small>"Input pixels per network call: smaller uses less memory."</small>
                        </div>
                        <p class="note">{move || match (sig.w_max.get() > 1.0, sig.has_lora.get()) {
                            (false, false) => "(guidance and LoRA: not in the loaded model)",
                            (true, false) => "(LoRA: no adapter beside the loaded model)",
                            (false, true) => "(guidance: not in the loaded model)",
                            (true, true) => "",
                        }}</p>
                    </details>
                    <div class="row">
                        <button id="upscale" on:click=on_upscale disabled=move || busy() || !sig.has_input.get()>"Upscale"</button>
                        <button id="cancel" on:click=on_cancel disabled=move || !running()>"Cancel"</button>
                        <button id="download" on:click=on_download disabled=move || !sig.has_output.get()>"Download PNG"</button>
                    </div>
                    <p id="estimate">{estimate}</p>
                    <div class="row">
                        <progress max="100" value=move || percent().to_string()></progress>
                        <span id="progress">{progress_text}</span>
                    </div>
                    <p id="status" data-state=move || sig.state.get().as_str()>{move || sig.message.get()}</p>
                </section>
                <section class="viewer">
                    <div class="row">
                        <label>"Zoom "
                            <select id="zoom" on:change=move |ev| zoom_to(&event_target_value(&ev))>
                                <option value="fit" selected>"fit"</option>
                                <option value="1">"100%"</option>
                                <option value="2">"200%"</option>
                            </select>
                        </label>
                        <span class="note">"Drag the divider to compare; scroll to zoom, drag to pan, double-click to fit."</span>
                    </div>
                    <div class="stage" node_ref=stage_ref
                        on:pointerdown=on_down on:pointermove=on_move
                        on:pointerup=on_up.clone() on:pointercancel=on_up
                        on:dblclick=move |_| view.set(FIT)>
                        <div class="layers" style=layers_style>
                            <canvas id="out" node_ref=out_ref></canvas>
                            <canvas id="before" node_ref=before_ref
                                style:clip-path=move || format!("inset(0 {}% 0 0)", 100.0 - split.get())
                                style:display=move || if sig.has_input.get() { "block" } else { "none" }></canvas>
                            <div class="divider" style:left=move || format!("{}%", split.get())
                                style:display=move || if show_labels() { "block" } else { "none" }>
                                <span class="handle" title="Drag to compare">"⇆"</span>
                            </div>
                        </div>
                        <span class="label left" style:display=move || if sig.has_input.get() { "block" } else { "none" }>"Before"</span>
                        <span class="label right" style:display=move || if show_labels() { "block" } else { "none" }>"After"</span>
                    </div>
                </section>
            </main>
        }
    }

    /// An on/off knob of the Advanced panel: a checkbox bound to `value`, with its hint.
    #[component]
    fn Toggle(
        id: &'static str,
        value: RwSignal<bool>,
        label: &'static str,
        hint: &'static str,
    ) -> impl IntoView {
        view! {
            <div class="knob">
                <label>
                    <input id=id type="checkbox" prop:checked=move || value.get()
                        on:change=move |ev| value.set(event_target_checked(&ev)) />
                    " " {label}
                </label>
                <small>{hint}</small>
            </div>
        }
    }
}
