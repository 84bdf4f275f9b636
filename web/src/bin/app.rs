//! The page: pick, drop or paste an image; upscale it in the worker (WebGPU or CPU) with each
//! finished tile painted as it arrives; cancel; compare before/after with a slider and zoom;
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
        download_name, js_error, user_message, web_limits, FromWorker, Job, ToWorker,
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

    const WORKER_URL: &str = "./worker_loader.js";

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
        force_cpu: bool,
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
        let worker = match Worker::new_with_options(WORKER_URL, &opts) {
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
                let was_gpu = sig.backend.get_untracked() == "WebGPU"
                    || (sig.backend.get_untracked().is_empty() && !c.borrow().force_cpu);
                if was_gpu && !c.borrow().force_cpu {
                    {
                        let mut b = c.borrow_mut();
                        b.force_cpu = true;
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
                            force_cpu: c.force_cpu,
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
            } => {
                sig.w_max.set(w_max);
                sig.has_lora.set(lora);
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
                sig.state.set(State::Done);
                sig.message
                    .set(format!("done in {ms:.0} ms (tiles blended on the {blend})"));
            }
            FromWorker::Error { message } => {
                sig.state.set(State::Failed);
                sig.message.set(message);
            }
        }
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
        if w * h > 16 << 20 {
            return Err(format!(
                "{name} is {w}x{h} = {:.1} MP: the browser demo takes images up to 16 MP \
                 (crop or shrink it, or use `flowmapsr upscale`)",
                (w * h) as f64 / 1e6
            ));
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
            let lossy = match JsFuture::from(blob.array_buffer()).await {
                Ok(buf) => {
                    flowmapsr_core::projection::lossy_encoding(&Uint8Array::new(&buf).to_vec())
                }
                Err(_) => false,
            };
            match decode(blob, name).await {
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
        };
        let scale = RwSignal::new(4u32);
        let steps = RwSignal::new(1usize);
        let tile = RwSignal::new(128usize);
        let seed = RwSignal::new(0u64);
        let guidance = RwSignal::new(1.0f32);
        let lora = RwSignal::new(0.0f32);
        // The Result menu: it sets steps, guidance and LoRA, which stay adjustable after.
        let preset = RwSignal::new(Preset::Faithful);
        // Grain 0: the fidelity map; above 0: the stochastic mode at that temperature.
        let grain = RwSignal::new(0.0f32);
        let projection = sig.projection;
        let split = RwSignal::new(50.0f64);
        let zoom = RwSignal::new("fit".to_string());
        let ctl = Rc::new(RefCell::new(Ctl::default()));
        let out_ref = NodeRef::<leptos::html::Canvas>::new();
        let before_ref = NodeRef::<leptos::html::Canvas>::new();
        let file_ref = NodeRef::<leptos::html::Input>::new();

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
                let grain_t = grain.get_untracked();
                let has_lora = sig.has_lora.get_untracked();
                let job = Job {
                    width: input.width,
                    height: input.height,
                    request: SampleRequest {
                        scale: scale.get_untracked(),
                        preset: preset.get_untracked(),
                        steps: Some(steps.get_untracked()),
                        tile: tile.get_untracked(),
                        overlap: (tile.get_untracked() / 8).max(8),
                        seed: seed.get_untracked(),
                        mode: if grain_t > 0.0 {
                            Mode::Stochastic
                        } else {
                            Mode::Fidelity
                        },
                        temperature: if grain_t > 0.0 { grain_t } else { 1.0 },
                        guidance: Some(guidance.get_untracked().min(sig.w_max.get_untracked())),
                        lora: Some(if has_lora { lora.get_untracked() } else { 0.0 }),
                        projection: if projection.get_untracked() {
                            Policy::On
                        } else {
                            Policy::Off
                        },
                    },
                };
                if let Err(e) = job.check(&web_limits(sig.w_max.get_untracked(), has_lora)) {
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
                sig.state.set(State::Running);
                sig.message.set("upscaling…".into());
                send(worker, &ToWorker::Upscale(job), Some(&input.rgba));
            }
        };
        let on_cancel = {
            let ctl = ctl.clone();
            move |_| {
                // The worker may be deep in a CPU tile: terminating it is the only prompt stop.
                spawn_worker(&ctl, sig);
                // The half-painted result goes too: only a finished result is ever shown.
                if let Some(o) = ctl.borrow().out.clone() {
                    o.set_width(o.width());
                }
                sig.has_output.set(false);
                sig.done.set(0);
                sig.total.set(0);
                sig.message.set("cancelled; reloading the model…".into());
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
        let view_width = move || {
            let (w, _) = sig.out_size.get();
            match zoom.get().as_str() {
                "1" => format!("{w}px"),
                "2" => format!("{}px", 2 * w),
                _ => "100%".to_string(),
            }
        };

        view! {
            <header>
                <h1>"flowmapsr"</h1>
                <p class="tag">"One-step flow-map super-resolution, running in your browser: your image is processed on your device and never uploaded."</p>
                <p id="backend" data-backend=move || sig.backend.get()>
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
                        <label title="Faithful: the closest to what the photo can tell. Realistic: sharper detail, less faithful. Each sets Steps, Guidance and LoRA, which you can still adjust">
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
                        <label>"Steps "
                            <input id="steps" type="number" min="1" max="8" prop:value=move || steps.get().to_string()
                                on:change=move |ev| steps.set(event_target_value(&ev).parse().unwrap_or(1).clamp(1, 8)) />
                        </label>
                        <label>"Tile "
                            <select id="tile" on:change=move |ev| tile.set(event_target_value(&ev).parse().unwrap_or(128))>
                                <option value="64">"64"</option>
                                <option value="128" selected>"128"</option>
                                <option value="256">"256"</option>
                            </select>
                        </label>
                        <label class:muted=move || grain.get() <= 0.0
                            title="Seed of the grain (the stochastic mode's noise); used only when Grain is above 0">"Seed "
                            <input id="seed" type="number" min="0" prop:value=move || seed.get().to_string()
                                disabled=move || grain.get() <= 0.0
                                on:change=move |ev| seed.set(event_target_value(&ev).parse().unwrap_or(0)) />
                        </label>
                    </div>
                    <div class="row">
                        <label class:muted=move || sig.w_max.get() <= 1.0
                            title="Guidance: 1 is faithful, higher is sharper (one network call at any w)">
                            "Guidance w "
                            <input id="guidance" type="range" min="1" step="0.25"
                                prop:max=move || sig.w_max.get().max(1.0).to_string()
                                prop:value=move || guidance.get().to_string()
                                disabled=move || sig.w_max.get() <= 1.0
                                on:input=move |ev| guidance.set(event_target_value(&ev).parse().unwrap_or(1.0)) />
                            <span id="guidance-value">{move || format!("{:.2}", guidance.get())}</span>
                        </label>
                        <label class:muted=move || !sig.has_lora.get()
                            title="LoRA: 0 is the faithful base model, higher adds the adversarially trained detail">
                            "LoRA "
                            <input id="lora" type="range" min="0" max="3" step="0.25"
                                prop:value=move || lora.get().to_string()
                                disabled=move || !sig.has_lora.get()
                                on:input=move |ev| lora.set(event_target_value(&ev).parse().unwrap_or(0.0)) />
                            <span id="lora-value">{move || format!("{:.2}", lora.get())}</span>
                        </label>
                        <label title="Grain: 0 is the deterministic (faithful) result; above 0 the source carries seeded noise of that temperature (see Seed), for photographic grain">
                            "Grain "
                            <input id="grain" type="range" min="0" max="1" step="0.05"
                                prop:value=move || grain.get().to_string()
                                on:input=move |ev| grain.set(event_target_value(&ev).parse().unwrap_or(0.0)) />
                            <span id="grain-value">{move || format!("{:.2}", grain.get())}</span>
                        </label>
                        <label title="Consistent with the input: the result is corrected so that shrinking it gives back your image exactly (no extra network call); off shows the network's raw output">
                            <input id="projection" type="checkbox" prop:checked=move || projection.get()
                                on:change=move |ev| projection.set(event_target_checked(&ev)) />
                            " Consistent"
                        </label>
                        <span class="note">{move || match (sig.w_max.get() > 1.0, sig.has_lora.get()) {
                            (false, false) => "(guidance and LoRA: not in the loaded model)",
                            (true, false) => "(LoRA: no adapter beside the loaded model)",
                            (false, true) => "(guidance: not in the loaded model)",
                            (true, true) => "",
                        }}</span>
                    </div>
                    <div class="row">
                        <button id="upscale" on:click=on_upscale disabled=move || busy() || !sig.has_input.get()>"Upscale"</button>
                        <button id="cancel" on:click=on_cancel disabled=move || !running()>"Cancel"</button>
                        <button id="download" on:click=on_download disabled=move || !sig.has_output.get()>"Download PNG"</button>
                    </div>
                    <div class="row">
                        <progress max="100" value=move || percent().to_string()></progress>
                        <span id="progress">{move || format!("{} / {} tiles", sig.done.get(), sig.total.get())}</span>
                    </div>
                    <p id="status" data-state=move || sig.state.get().as_str()>{move || sig.message.get()}</p>
                </section>
                <section class="viewer">
                    <div class="row">
                        <label>"Before | after "
                            <input id="split" type="range" min="0" max="100" prop:value=move || split.get().to_string()
                                on:input=move |ev| split.set(event_target_value(&ev).parse().unwrap_or(50.0)) />
                        </label>
                        <label>"Zoom "
                            <select id="zoom" on:change=move |ev| zoom.set(event_target_value(&ev))>
                                <option value="fit" selected>"fit"</option>
                                <option value="1">"100%"</option>
                                <option value="2">"200%"</option>
                            </select>
                        </label>
                    </div>
                    <div class="stage">
                        <div class="layers" style:width=view_width>
                            <canvas id="out" node_ref=out_ref></canvas>
                            <canvas id="before" node_ref=before_ref
                                style:clip-path=move || format!("inset(0 {}% 0 0)", 100.0 - split.get())
                                style:display=move || if sig.has_input.get() { "block" } else { "none" }></canvas>
                        </div>
                    </div>
                </section>
            </main>
        }
    }
}
