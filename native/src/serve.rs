//! `flowmapsr serve`: an HTTP upscaling service (axum/tokio) that also hosts the web demo.
//!
//! - POST /v1/upscale: the image as the body (or the first file of a multipart form); query
//!   `scale`, `preset`, `steps`, `tile`, `seed`, `mode`, `temperature`, `guidance`, `lora`,
//!   `projection` (`auto` | `on` | `off`, as `upscale --projection`), `grain_cut` (`true` |
//!   `false`), `format`; answers the upscaled image.
//! - GET /healthz, GET /metrics (Prometheus text), GET / (the trunk-built `dist/` when present).
//!
//! The machine is protected by a body-size limit, a decoded-pixel limit checked from the header
//! (413), bounded concurrency with a bounded queue (503 + Retry-After when full) and a per-request
//! timeout that cancels the sampler between tiles. Client mistakes are 4xx with a JSON body; the
//! model is loaded once and shared; SIGTERM/SIGINT drain in-flight requests before exiting.

use crate::imageio;
use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burn::tensor::backend::Backend;
use flowmapsr_core::lora::Adapted;
use flowmapsr_core::request::{Limits, Preset, SampleRequest};
use flowmapsr_core::sampler::{upscale, SampleOptions};
use flowmapsr_core::weights::ModelConfig;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    #[command(flatten)]
    pub model: crate::weights::ModelArgs,
    /// Largest decoded input, in pixels.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_pixels: u64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub max_body: usize,
    /// Requests upscaled at the same time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Requests allowed to wait for a slot; more get 503.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Per-request limit (waiting + upscaling), in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// The web demo's build (trunk build --release).
    #[arg(long, default_value = "dist")]
    pub dist: PathBuf,
}

/// The model as a backend-erased LR -> SR function, so the HTTP layer is not generic.
type UpscaleFn = dyn Fn(
        &flowmapsr_core::Image,
        Preset,
        u32,
        &SampleOptions,
        f32,
        &AtomicBool,
    ) -> flowmapsr_core::Result<flowmapsr_core::Image>
    + Send
    + Sync;

struct AppState {
    upscale: Box<UpscaleFn>,
    /// The knobs this server accepts for each preset's model.
    limits: HashMap<Preset, Limits>,
    max_pixels: u64,
    max_body: usize,
    timeout: Duration,
    slots: tokio::sync::Semaphore,
    capacity: usize,
    admitted: AtomicUsize,
    waiting: AtomicUsize,
    metrics: Mutex<Metrics>,
}

#[derive(Default)]
struct Metrics {
    requests: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    latency_sum: f64,
    latency_count: u64,
    latency_buckets: [u64; 8],
}

const BUCKETS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Metrics {
    fn observe(&mut self, status: StatusCode, secs: f64) {
        *self.requests.entry(status.as_u16()).or_default() += 1;
        self.latency_sum += secs;
        self.latency_count += 1;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i] += 1;
            }
        }
    }
}

/// A client-facing error: status + machine-readable kind + message, as JSON.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.kind, "message": self.message })),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// The server's limits on the sampling knobs (tighter than the command line's: one request
/// must not hold the machine for long).
fn server_limits(w_max: f32, lora: bool) -> Limits {
    Limits {
        max_steps: 16,
        max_tile: 1024,
        ..Limits::for_model(w_max, lora)
    }
}

/// The query: core's [`SampleRequest`] (the command line's knobs, same names) and `format`.
fn parse_query(
    query: &str,
    limits: &HashMap<Preset, Limits>,
) -> Result<(SampleRequest, image::ImageFormat), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", m);
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| bad(e.to_string()))?;
    let (format, knobs): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|(k, _)| k == "format");
    let format = match format.last().map_or("png", |(_, v)| v.as_str()) {
        "png" => image::ImageFormat::Png,
        "jpeg" | "jpg" => image::ImageFormat::Jpeg,
        "webp" => image::ImageFormat::WebP,
        f => return Err(bad(format!("format must be png, jpeg or webp, got '{f}'"))),
    };
    let knobs = serde_urlencoded::to_string(&knobs).map_err(|e| bad(e.to_string()))?;
    let req: SampleRequest = serde_urlencoded::from_str(&knobs).map_err(|e| bad(e.to_string()))?;
    req.validate(&limits[&req.preset])
        .map_err(|e| bad(e.to_string()))?;
    Ok((req, format))
}

/// The image bytes of a request: a raw image body or the first file part of a multipart form.
async fn body_bytes(req: Request, max_body: usize) -> Result<Bytes, ApiError> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max_body as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body exceeds --max-body",
        ));
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let too_big = |e: &dyn std::fmt::Display| {
        let s = e.to_string();
        if s.contains("length limit") || s.contains("too large") {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body exceeds --max-body",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading the body: {s}"),
            )
        }
    };
    if ctype.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.to_string()))?;
        while let Some(field) = mp.next_field().await.map_err(|e| too_big(&e))? {
            if field.file_name().is_some() || field.name() == Some("image") {
                return field.bytes().await.map_err(|e| too_big(&e));
            }
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_multipart",
            "no file field in the form",
        ));
    }
    // Read (bounded by --max-body) before judging, so an early 4xx never leaves the client
    // writing into a closed connection.
    let bytes = Bytes::from_request(req, &())
        .await
        .map_err(|e| too_big(&e))?;
    let ok = ctype.is_empty()
        || ctype.starts_with("image/")
        || ctype.starts_with("application/octet-stream");
    if !ok {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the image as image/png, image/jpeg, image/webp, application/octet-stream or multipart/form-data, not '{ctype}'"),
        ));
    }
    Ok(bytes)
}

async fn upscale_handler(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let t0 = Instant::now();
    let r = handle(&st, req).await;
    let status = match &r {
        Ok(resp) => resp.status(),
        Err(e) => {
            *st.metrics.lock().unwrap().errors.entry(e.kind).or_default() += 1;
            e.status
        }
    };
    st.metrics
        .lock()
        .unwrap()
        .observe(status, t0.elapsed().as_secs_f64());
    match r {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Releases an admission when dropped (also when the client goes away mid-request).
struct Admission<'a>(&'a AtomicUsize);
impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(st: &Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    // Parsed here so a bad value is our JSON 400, not axum's plain-text rejection.
    let query = parse_query(req.uri().query().unwrap_or(""), &st.limits);
    let bytes = body_bytes(req, st.max_body).await;
    let (q, format) = query?;
    let bytes = bytes?;
    let img = imageio::decode(&bytes, st.max_pixels).map_err(|e| {
        let m = format!("{e:#}");
        if m.contains("too large") {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "image_too_large", m)
        } else {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_image", m)
        }
    })?;
    drop(bytes);
    let (preset, scale, lora, opts) = (q.preset, q.scale, q.lora(), q.options(img.lossy));

    // Admission: at most `concurrency` running + `queue` waiting.
    if st.admitted.fetch_add(1, Ordering::SeqCst) >= st.capacity {
        st.admitted.fetch_sub(1, Ordering::SeqCst);
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is busy; retry later",
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    let _admission = Admission(&st.admitted);
    let deadline = tokio::time::Instant::now() + st.timeout;
    st.waiting.fetch_add(1, Ordering::SeqCst);
    let permit = tokio::time::timeout_at(deadline, st.slots.acquire()).await;
    st.waiting.fetch_sub(1, Ordering::SeqCst);
    let _permit = match permit {
        Ok(p) => p.expect("semaphore open"),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "timed out waiting for a slot",
            ))
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let st2 = st.clone();
    let c2 = cancel.clone();
    let job = tokio::task::spawn_blocking(move || {
        let rgb = (st2.upscale)(&img.rgb, preset, scale, &opts, lora, &c2)?;
        let alpha = img
            .alpha
            .as_ref()
            .map(|a| crate::upscale::upscale_alpha(a, scale));
        Ok::<_, flowmapsr_core::Error>((rgb, alpha, img.sixteen_bit))
    });
    let (rgb, alpha, sixteen) = match tokio::time::timeout_at(deadline, job).await {
        Err(_) => {
            cancel.store(true, Ordering::SeqCst);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request exceeded --timeout",
            ));
        }
        Ok(Err(join)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                join.to_string(),
            ))
        }
        Ok(Ok(Err(e))) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                e.to_string(),
            ))
        }
        Ok(Ok(Ok(v))) => v,
    };
    let out = imageio::encode(&rgb, alpha.as_ref(), sixteen, format).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e:#}"),
        )
    })?;
    let mime = match format {
        image::ImageFormat::Jpeg => "image/jpeg",
        image::ImageFormat::WebP => "image/webp",
        _ => "image/png",
    };
    Ok(([(header::CONTENT_TYPE, mime)], out).into_response())
}

async fn metrics_handler(State(st): State<Arc<AppState>>) -> Response {
    use std::fmt::Write;
    let m = st.metrics.lock().unwrap();
    let mut s = String::new();
    s.push_str("# HELP flowmapsr_requests_total Upscale requests by HTTP status.\n# TYPE flowmapsr_requests_total counter\n");
    for (code, n) in &m.requests {
        let _ = writeln!(s, "flowmapsr_requests_total{{status=\"{code}\"}} {n}");
    }
    s.push_str("# HELP flowmapsr_errors_total Failed requests by kind.\n# TYPE flowmapsr_errors_total counter\n");
    for (kind, n) in &m.errors {
        let _ = writeln!(s, "flowmapsr_errors_total{{kind=\"{kind}\"}} {n}");
    }
    s.push_str("# HELP flowmapsr_request_seconds Upscale request latency.\n# TYPE flowmapsr_request_seconds histogram\n");
    for (b, n) in BUCKETS.iter().zip(m.latency_buckets) {
        let _ = writeln!(s, "flowmapsr_request_seconds_bucket{{le=\"{b}\"}} {n}");
    }
    let _ = writeln!(
        s,
        "flowmapsr_request_seconds_bucket{{le=\"+Inf\"}} {}",
        m.latency_count
    );
    let _ = writeln!(s, "flowmapsr_request_seconds_sum {}", m.latency_sum);
    let _ = writeln!(s, "flowmapsr_request_seconds_count {}", m.latency_count);
    s.push_str("# HELP flowmapsr_queue_depth Requests waiting for a slot.\n# TYPE flowmapsr_queue_depth gauge\n");
    let _ = writeln!(
        s,
        "flowmapsr_queue_depth {}",
        st.waiting.load(Ordering::SeqCst)
    );
    s.push_str("# HELP flowmapsr_in_flight Requests admitted (running or waiting).\n# TYPE flowmapsr_in_flight gauge\n");
    let _ = writeln!(
        s,
        "flowmapsr_in_flight {}",
        st.admitted.load(Ordering::SeqCst)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response()
}

const NO_DIST: &str = "<!doctype html><meta charset=utf-8><title>flowmapsr</title>\
<h1>flowmapsr server</h1><p>The web demo has not been built. Build it with \
<code>trunk build --release</code> at the repository root (see README.md), then restart \
<code>flowmapsr serve</code> (or pass <code>--dist DIR</code>).</p>\
<p>The API is up: <code>curl --data-binary @in.png -H 'Content-Type: image/png' 'http://HOST/v1/upscale?scale=4' -o out.png</code></p>";

fn router(st: Arc<AppState>, max_body: usize, dist: &std::path::Path) -> Router {
    let api = Router::new()
        .route("/v1/upscale", post(upscale_handler))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/metrics", get(metrics_handler))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st);
    if dist.join("index.html").exists() {
        api.fallback_service(tower_http::services::ServeDir::new(dist))
    } else {
        api.route("/", get(|| async { Html(NO_DIST) }))
    }
}

fn state_for<B: Backend>(
    models: HashMap<Preset, (Adapted<B>, ModelConfig)>,
    device: B::Device,
    args: &ServeArgs,
) -> Arc<AppState>
where
    Adapted<B>: Send + Sync,
    B::Device: Send + Sync,
{
    let limits = models
        .iter()
        .map(|(p, (m, cfg))| (*p, server_limits(cfg.w_max(), m.lora.is_some())))
        .collect();
    let f = move |lr: &flowmapsr_core::Image,
                  preset: Preset,
                  scale: u32,
                  opts: &SampleOptions,
                  lora: f32,
                  cancel: &AtomicBool| {
        let (model, cfg) = &models[&preset];
        upscale(
            &model.at(lora)?,
            cfg,
            lr,
            scale,
            opts,
            &device,
            &mut |_, _| !cancel.load(Ordering::SeqCst),
        )
    };
    Arc::new(AppState {
        limits,
        upscale: Box::new(f),
        max_pixels: args.max_pixels,
        max_body: args.max_body,
        timeout: Duration::from_secs(args.timeout),
        slots: tokio::sync::Semaphore::new(args.concurrency.max(1)),
        capacity: args.concurrency.max(1) + args.queue,
        admitted: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
        metrics: Mutex::new(Metrics::default()),
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let state = crate::with_backend!(args.model.device, |B, device| {
        // Each preset's weights (both --weights DIR when given), loaded once.
        let mut models = HashMap::new();
        for p in [Preset::Faithful, Preset::Realistic] {
            let m = crate::weights::load_preset::<B>(args.model.weights.as_deref(), p, &device)?;
            models.insert(p, m);
        }
        state_for::<B>(models, device, args)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("binding {}", args.addr))?;
        let addr = listener.local_addr()?;
        // The first stdout line names the address (tests and scripts read the port from it).
        println!("listening on http://{addr}");
        tracing::info!(
            "serving on http://{addr} (concurrency {}, queue {}, timeout {} s)",
            args.concurrency,
            args.queue,
            args.timeout
        );
        let app = router(state, args.max_body, &args.dist);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        Ok(())
    })
}
