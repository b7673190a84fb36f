//! The data plane: a tower `Service` that forwards every request to an
//! upstream unchanged (but for hop-by-hop headers and the optional usage
//! injection) and wraps inference responses in the observer.

pub mod context;
pub mod headers;
pub mod request;
pub mod upstream;

use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::LabelSet;
use crate::record::Recorder;
use crate::stream::body::ObservedBody;
use bytes::Bytes;
use context::RequestCtx;
use http::{HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
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

/// The body of every response the proxy sends.
pub type ResponseBody = Either<ObservedBody, Full<Bytes>>;

/// State shared by all requests of one gateway.
pub struct Shared {
    pub cfg: Config,
    pub client: UpstreamClient,
    /// Swapped whole on a hot reload; a request keeps the fleet it started with.
    pub fleet: arc_swap::ArcSwap<crate::fleet::Fleet>,
    observer: Arc<ObserverConfig>,
    /// Same as `observer`, with usage-event stripping on.
    observer_strip: Arc<ObserverConfig>,
    pub recorder: Recorder,
    pub models: LabelSet,
    pub draining: AtomicBool,
    /// The fleet's probe tasks (restarted on reload, stopped on shutdown).
    pub probes: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
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
        let next = crate::fleet::Fleet::reloaded(cfg, Some(&self.fleet.load()))?;
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
        Ok(Self {
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
            probes: std::sync::Mutex::new(Vec::new()),
            cfg,
        })
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

fn gateway_error(ctx: &mut RequestCtx, err: GatewayError) -> Response<ResponseBody> {
    ctx.fail(&err);
    err.to_response().map(Either::Right)
}

async fn forward(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ResponseBody> {
    let t_recv = Instant::now();
    let (parts, body) = req.into_parts();
    let endpoint = Endpoint::classify(&parts.method, parts.uri.path());
    let id = parts
        .headers
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_default();
    let mut ctx = RequestCtx::new(
        Arc::clone(&shared),
        t_recv,
        id,
        &parts.method,
        parts.uri.path(),
        endpoint,
    );

    // Inference bodies are read whole (they are small and bounded) to learn
    // the model and stream flags, and to inject usage; every other body
    // streams through untouched.
    let mut injected = false;
    let mut features = Features::default();
    let up_body = if endpoint.is_inference() {
        let bytes = match Limited::new(body, shared.cfg.max_request_body_bytes)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let err = if e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    GatewayError::BodyTooLarge {
                        limit: shared.cfg.max_request_body_bytes,
                    }
                } else {
                    GatewayError::BodyRead(e.to_string())
                };
                return gateway_error(&mut ctx, err);
            }
        };
        features = Features::parse_with_prefix(&bytes, shared.cfg.prefix_bytes);
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
    let backend = match fleet.pick(arm, &mut info) {
        Ok(b) => b,
        Err(e) => {
            crate::metrics::no_backend();
            return gateway_error(&mut ctx, GatewayError::NoBackend(e.to_string()));
        }
    };
    ctx.set_backend(Arc::clone(&backend), info);
    let up = &backend.upstream;
    let uri = match up.uri_for(parts.uri.path_and_query()) {
        Ok(u) => u,
        Err(e) => {
            return gateway_error(
                &mut ctx,
                GatewayError::BodyRead(format!("bad request target: {e}")),
            )
        }
    };
    let mut up_req = Request::new(up_body);
    *up_req.method_mut() = parts.method;
    *up_req.uri_mut() = uri;
    *up_req.version_mut() = Version::HTTP_11;
    let mut hdrs = parts.headers;
    headers::remove_hop_by_hop(&mut hdrs);
    hdrs.remove(http::header::HOST);
    if endpoint.is_inference() {
        // The body was read whole (and maybe rewritten): send its length.
        hdrs.remove(http::header::CONTENT_LENGTH);
    }
    *up_req.headers_mut() = hdrs;

    let secs = shared.cfg.upstream_header_timeout_secs;
    let resp = match tokio::time::timeout(Duration::from_secs(secs), shared.client.request(up_req))
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if e.is_connect() {
                fleet.on_failure(&backend);
            }
            let reason = error_chain(&e);
            let backend = up.name.to_string();
            return gateway_error(
                &mut ctx,
                GatewayError::UpstreamUnreachable { backend, reason },
            );
        }
        Err(_) => {
            let backend = up.name.to_string();
            return gateway_error(&mut ctx, GatewayError::UpstreamTimeout { backend, secs });
        }
    };
    backend.on_success();
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
    let strip = injected && kind == BodyKind::Sse && rparts.status.is_success();
    if strip {
        rparts.headers.remove(http::header::CONTENT_LENGTH);
    }
    if shared.cfg.adds_response_headers() {
        if let Ok(v) = HeaderValue::from_str(&ctx.id) {
            rparts.headers.insert(headers::TG_REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(ctx.backend_name()) {
            rparts.headers.insert(headers::TG_BACKEND, v);
        }
        if fleet.arms.len() > 1 {
            if let Ok(v) = HeaderValue::from_str(ctx.arm_name()) {
                rparts.headers.insert(headers::TG_ARM, v);
            }
        }
    }
    let cfg = if strip {
        &shared.observer_strip
    } else {
        &shared.observer
    };
    let obs = Observer::new(Arc::clone(cfg), kind);
    Response::from_parts(
        rparts,
        Either::Left(ObservedBody::new(rbody, obs, ctx, strip)),
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
