//! The data plane: a tower `Service` that forwards every request to an
//! upstream unchanged (but for hop-by-hop headers and the optional usage
//! injection) and wraps inference responses in the observer.

pub mod admission;
pub mod context;
pub mod h1;
pub mod headers;
pub mod request;
pub mod send;
pub mod upstream;

use crate::config::{Config, Flavor};
use crate::error::GatewayError;
use crate::metrics::LabelSet;
use crate::record::Recorder;
use crate::straggler::driver::ChunkUsageMode;
use crate::straggler::Plan;
use crate::stream::body::ObservedBody;
use bytes::{Bytes, BytesMut};
use context::RequestCtx;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use request::{Endpoint, Features};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use thinkgate_asu::{BodyKind, Observer, ObserverConfig};
use upstream::UpstreamClient;

pub use crate::stream::response::ResponseBody;

/// State shared by all requests of one gateway.
pub struct Shared {
    pub cfg: Config,
    pub client: UpstreamClient,
    /// The lean HTTP/1.1 client's idle connections (inference requests).
    pub h1: Arc<h1::Pool>,
    /// Swapped whole on a hot reload; a request keeps the fleet it started with.
    pub fleet: arc_swap::ArcSwap<crate::fleet::Fleet>,
    pub(crate) observer: Arc<ObserverConfig>,
    /// Same as `observer`, with usage-event stripping on.
    observer_strip: Arc<ObserverConfig>,
    /// For a managed request's first leg: text captured (a forced answer
    /// needs the thinking so far), with and without usage stripping.
    pub(crate) observer_capture: Arc<ObserverConfig>,
    pub(crate) observer_capture_strip: Arc<ObserverConfig>,
    pub(crate) markers: thinkgate_asu::Markers,
    /// Bounds hedges to `max_ratio` of requests over time.
    pub(crate) hedge_budget: crate::straggler::hedge::HedgeBudget,
    pub recorder: Recorder,
    pub models: LabelSet,
    pub draining: AtomicBool,
    /// Slots of `max_inflight`, and the bounded wait for one.
    pub(crate) admission: admission::Admission,
    /// The fleet's probe tasks (restarted on reload, stopped on shutdown).
    pub probes: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The configuration last loaded (at start or by a reload), and the
    /// backends `[discovery]` found; the fleet is built from both.
    base: std::sync::Mutex<Config>,
    discovered: std::sync::Mutex<Vec<crate::config::BackendConfig>>,
}

impl Shared {
    /// (Re)start the probes of the current fleet.
    pub fn restart_probes(&self) {
        let fresh = crate::fleet::probe::spawn(
            self.fleet.load_full(),
            self.client.clone(),
            Duration::from_millis(self.cfg.health_interval_ms),
            Duration::from_millis(self.cfg.scrape_interval_ms),
        );
        if let Ok(mut p) = self.probes.lock() {
            for old in p.drain(..) {
                old.abort();
            }
            *p = fresh;
        }
    }

    pub fn stop_probes(&self) {
        if let Ok(mut p) = self.probes.lock() {
            for old in p.drain(..) {
                old.abort();
            }
        }
    }

    /// Hot reload: route new requests by `cfg`'s backends, routing,
    /// experiment and pool. In-flight requests keep the fleet they started
    /// with. Other settings (listeners, timeouts, limits) need a restart.
    pub fn reload(&self, cfg: &Config) -> Result<(), crate::error::ConfigError> {
        cfg.validate()?;
        if let Ok(mut b) = self.base.lock() {
            *b = cfg.clone();
        }
        self.rebuild()
    }

    /// Replace the backends found by `[discovery]` and rebuild the fleet.
    pub fn set_discovered(
        &self,
        backends: Vec<crate::config::BackendConfig>,
    ) -> Result<(), crate::error::ConfigError> {
        if let Ok(mut d) = self.discovered.lock() {
            *d = backends;
        }
        self.rebuild()
    }

    /// The last configuration given plus the discovered backends.
    fn effective(&self) -> Config {
        let mut cfg = self
            .base
            .lock()
            .map(|b| b.clone())
            .unwrap_or_else(|_| self.cfg.clone());
        if let Ok(d) = self.discovered.lock() {
            cfg.backends.extend(d.iter().cloned());
        }
        cfg
    }

    fn rebuild(&self) -> Result<(), crate::error::ConfigError> {
        let cfg = self.effective();
        let next = crate::fleet::Fleet::reloaded(&cfg, Some(&self.fleet.load()))?;
        self.fleet.store(Arc::new(next));
        self.restart_probes();
        Ok(())
    }

    pub fn new(cfg: Config, recorder: Recorder) -> Result<Self, crate::error::ConfigError> {
        cfg.validate()?;
        let fleet = crate::fleet::Fleet::new(&cfg)?;
        let obs = cfg.observer_config()?;
        let strip = ObserverConfig {
            strip_usage_only: true,
            ..obs.clone()
        };
        let capture = ObserverConfig {
            capture_text: true,
            ..obs.clone()
        };
        let capture_strip = ObserverConfig {
            strip_usage_only: true,
            ..capture.clone()
        };
        Ok(Self {
            markers: cfg.markers()?,
            observer_capture: Arc::new(capture),
            observer_capture_strip: Arc::new(capture_strip),
            hedge_budget: Default::default(),
            h1: h1::Pool::new(
                Duration::from_millis(cfg.connect_timeout_ms),
                cfg.pool_max_idle_per_host,
            ),
            client: upstream::client(
                Duration::from_millis(cfg.connect_timeout_ms),
                cfg.pool_max_idle_per_host,
            ),
            fleet: arc_swap::ArcSwap::from_pointee(fleet),
            observer: Arc::new(obs),
            observer_strip: Arc::new(strip),
            recorder,
            models: LabelSet::new(cfg.max_model_labels),
            draining: AtomicBool::new(false),
            admission: admission::Admission::default(),
            probes: std::sync::Mutex::new(Vec::new()),
            base: std::sync::Mutex::new(cfg.clone()),
            discovered: std::sync::Mutex::new(Vec::new()),
            cfg,
        })
    }
}

impl Shared {
    /// The `x-thinkgate-*` response headers, when they are on.
    pub(crate) fn add_response_headers(
        &self,
        h: &mut http::HeaderMap,
        ctx: &RequestCtx,
        fleet: &crate::fleet::Fleet,
    ) {
        if !self.cfg.adds_response_headers() {
            return;
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.id) {
            h.insert(headers::TG_REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(ctx.backend_name()) {
            h.insert(headers::TG_BACKEND, v);
        }
        if fleet.arms.len() > 1 {
            if let Ok(v) = HeaderValue::from_str(ctx.arm_name()) {
                h.insert(headers::TG_ARM, v);
            }
        }
    }
}

/// The proxy as a tower service.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl tower::Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { Ok(forward(shared, req).await) })
    }
}

/// An inference body, whole, within the size limit and the body timeout.
/// A body refused for its size is drained in the background for a moment
/// (bounded in time and bytes), so the client reads the 413 instead of
/// a reset caused by its unread upload.
async fn read_body(mut body: Incoming, cfg: &crate::config::Config) -> Result<Bytes, GatewayError> {
    let limit = cfg.max_request_body_bytes;
    let secs = cfg.client_body_timeout_secs;
    let mut buf = BytesMut::new();
    let read = async {
        // a declared length over the limit is refused before any byte
        if http_body::Body::size_hint(&body).lower() > limit as u64 {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| GatewayError::BodyRead(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(GatewayError::BodyTooLarge { limit });
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    let result = match tokio::time::timeout(Duration::from_secs(secs), read).await {
        Ok(r) => r,
        Err(_) => Err(GatewayError::BodyTimeout { secs }),
    };
    if let Err(GatewayError::BodyTooLarge { .. }) = &result {
        tokio::spawn(async move {
            let mut left: usize = 64 << 20;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(f)) = body.frame().await {
                    left = left.saturating_sub(f.data_ref().map_or(0, |d| d.len()));
                    if left == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
    result.map(|()| buf.freeze())
}

fn gateway_error(ctx: &mut RequestCtx, err: GatewayError) -> Response<ResponseBody> {
    ctx.fail(&err);
    err.to_response().map(ResponseBody::Full)
}

async fn forward(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ResponseBody> {
    let t_recv = Instant::now();
    let (parts, body) = req.into_parts();
    let endpoint = Endpoint::classify(&parts.method, parts.uri.path());
    // The client's `x-request-id` is the request's id and is forwarded as
    // it came; without one the gateway makes its own, which reaches the
    // engine only when configured (vLLM builds response ids from it).
    let client_id = parts
        .headers
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let minted = client_id.is_none();
    let id = client_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut ctx = RequestCtx::new(
        Arc::clone(&shared),
        t_recv,
        id,
        &parts.method,
        parts.uri.path(),
        endpoint,
    );

    // Admission: past the global limit, a bounded wait (if configured),
    // then a fast 503.
    let limit = shared.cfg.max_inflight;
    if limit > 0 {
        let adm = &shared.admission;
        let admitted = adm.try_admit(limit)
            || adm
                .wait(shared.cfg.max_queued, shared.cfg.queue_timeout(), || {
                    adm.try_admit(limit).then_some(())
                })
                .await
                .is_some();
        if !admitted {
            return gateway_error(&mut ctx, GatewayError::Overloaded { limit });
        }
        ctx.hold_slot();
    }

    // Inference bodies are read whole (they are small and bounded) to learn
    // the model and stream flags, and to inject usage; every other body
    // streams through untouched.
    let mut injected = false;
    let mut features = Features::default();
    let mut original = Bytes::new();
    // the inference body as it goes upstream (usage injected)
    let mut sent = Bytes::new();
    let up_body = if endpoint.is_inference() {
        let bytes = match read_body(body, &shared.cfg).await {
            Ok(b) => b,
            Err(e) => return gateway_error(&mut ctx, e),
        };
        features = Features::parse_with_prefix(&bytes, shared.cfg.prefix_bytes);
        original = bytes.clone();
        let bytes = if shared.cfg.injects_usage() && features.wants_injection() {
            match request::inject_include_usage(&bytes) {
                Some(b) => {
                    injected = true;
                    b
                }
                None => bytes,
            }
        } else {
            bytes
        };
        ctx.set_features(features.clone());
        sent = bytes.clone();
        Either::Left(Full::new(bytes))
    } else {
        Either::Right(body)
    };
    if injected {
        ctx.note_usage_injected();
    }

    let mut info = request::route_info(&features, &parts.headers, &shared.cfg.session_header);
    let fleet = shared.fleet.load_full();
    let arm = fleet.assign(&info);
    ctx.set_arm(Arc::clone(&fleet), arm);
    let limits = fleet.arms.get(arm).map(|a| a.limits).unwrap_or_default();
    let plan = if endpoint.is_inference() && !shared.cfg.passthrough_strict {
        match Plan::resolve(
            &fleet.straggler,
            limits,
            features.model.as_deref(),
            &parts.headers,
            true,
        ) {
            Ok(p) => p,
            Err(e) => return gateway_error(&mut ctx, e),
        }
    } else {
        Plan::default()
    };
    let mut picked = fleet.pick(arm, &mut info);
    if picked.is_err() && fleet.busy_limit().is_some() {
        let waited = shared
            .admission
            .wait(shared.cfg.max_queued, shared.cfg.queue_timeout(), || {
                fleet.pick(arm, &mut info).ok()
            })
            .await;
        if let Some(b) = waited {
            picked = Ok(b);
        }
    }
    let backend = match picked {
        Ok(b) => b,
        Err(e) => {
            let err = match fleet.busy_limit() {
                Some(limit) => GatewayError::BackendsBusy { limit },
                None => {
                    crate::metrics::no_backend();
                    GatewayError::NoBackend(e.to_string())
                }
            };
            return gateway_error(&mut ctx, err);
        }
    };
    ctx.set_backend(Arc::clone(&backend), info);
    let mut hdrs = parts.headers;
    headers::remove_hop_by_hop(&mut hdrs);
    hdrs.remove(http::header::HOST);
    hdrs.remove(crate::straggler::BUDGET_HEADER);
    hdrs.remove(crate::straggler::DEADLINE_HEADER);
    if minted && shared.cfg.sends_request_id() {
        if let Ok(v) = HeaderValue::from_str(&ctx.id) {
            hdrs.insert(headers::REQUEST_ID, v);
        }
    }
    if endpoint.is_inference() {
        // The body was read whole (and maybe rewritten): send its length.
        hdrs.remove(http::header::CONTENT_LENGTH);
    }
    // A managed request needs one choice and a body it can rewrite.
    let managed = plan.manages() && features.parsed && features.n <= 1;
    if managed {
        let native = plan.budget.filter(|_| fleet.straggler.native_budget);
        let client_streams = features.stream;
        // vLLM says how many tokens each chunk carried when asked: a budget
        // the gateway enforces is then exact in tokens (`straggler::exact`)
        let chunk_usage = match (plan.force_budget, backend.flavor) {
            (Some(_), Flavor::Vllm) if features.include_usage && features.continuous_usage => {
                ChunkUsageMode::Keep
            }
            (Some(_), Flavor::Vllm) => ChunkUsageMode::Strip,
            _ => ChunkUsageMode::Off,
        };
        let leg_body = match (&up_body, client_streams && native.is_none()) {
            (Either::Left(f), true) if chunk_usage == ChunkUsageMode::Off => Some(f.clone()),
            // the body as sent (usage injected) gets the native budget
            (Either::Left(_), _) => crate::straggler::driver::first_leg_body(
                &sent,
                client_streams,
                native,
                backend.flavor,
                chunk_usage != ChunkUsageMode::Off,
            )
            .map(Full::new),
            (Either::Right(_), _) => None,
        };
        // usage the client did not ask for is kept from it
        let adds_usage = chunk_usage == ChunkUsageMode::Strip && !features.include_usage;
        if adds_usage && !injected && client_streams {
            ctx.note_usage_injected();
        }
        let injected = injected || adds_usage;
        if let Some(leg_body) = leg_body {
            ctx.plan = plan;
            let m = crate::straggler::driver::Managed {
                shared: Arc::clone(&shared),
                fleet: Arc::clone(&fleet),
                ctx,
                backend,
                out: send::Outgoing {
                    method: parts.method,
                    path_q: parts.uri.path_and_query().cloned(),
                    headers: hdrs,
                    body: Some(Either::Left(leg_body)),
                },
                original,
                client_streams,
                client_wants_usage: features.include_usage,
                injected: injected && client_streams,
                chunk_usage,
            };
            return crate::straggler::driver::respond(m).await;
        }
    }

    let mut out = send::Outgoing {
        method: parts.method,
        path_q: parts.uri.path_and_query().cloned(),
        headers: hdrs,
        body: Some(up_body),
    };
    let resp = match send::send(&shared, &fleet, &mut ctx, backend, &mut out).await {
        Ok((_, r)) => r,
        Err(e) => return gateway_error(&mut ctx, e),
    };
    ctx.t_upstream_ns = Some(ctx.elapsed_ns());
    ctx.status = resp.status().as_u16();
    let (mut rparts, rbody) = resp.into_parts();
    headers::remove_hop_by_hop(&mut rparts.headers);
    let kind = if endpoint.is_inference() {
        let ct = rparts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        BodyKind::from_content_type(ct)
    } else {
        BodyKind::Opaque
    };
    let sse_ok = kind == BodyKind::Sse && rparts.status.is_success();
    let strip = injected && sse_ok;
    if strip {
        rparts.headers.remove(http::header::CONTENT_LENGTH);
    }
    shared.add_response_headers(&mut rparts.headers, &ctx, &fleet);
    let cfg = if strip {
        &shared.observer_strip
    } else {
        &shared.observer
    };
    // strict passthrough never adds a byte, and a length-framed response
    // cannot take one: there a failure stays a cut
    let clean_end = sse_ok
        && !shared.cfg.passthrough_strict
        && !rparts.headers.contains_key(http::header::CONTENT_LENGTH);
    let obs = Observer::new(Arc::clone(cfg), kind);
    Response::from_parts(
        rparts,
        ResponseBody::Observed(ObservedBody::new(
            rbody,
            obs,
            ctx,
            strip,
            clean_end,
            shared.cfg.idle_timeout(),
        )),
    )
}
