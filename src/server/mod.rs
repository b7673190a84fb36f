//! Listeners and lifecycle: the proxy listener (HTTP/1.1 and h2c,
//! auto-detected), the admin listener, and graceful drain on shutdown.

mod speaks;

use crate::config::Config;
use crate::error::error_response;
use crate::proxy::Proxy;
use crate::record::{self, RecorderTask};
use crate::state::Shared;
use crate::tls::listener::Tls;
use crate::tls::stream::ServerStream;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use speaks::Speaks;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

/// A running gateway.
pub struct Gateway {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Bind both listeners and start serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Self> {
        cfg.validate()?;
        let handle = crate::metrics::install();
        let (recorder, recorder_task) = record::start(
            cfg.records.clone(),
            cfg.records_queue,
            Duration::from_secs(cfg.stats_window_secs),
        )
        .await?;
        let admin_token = cfg.resolved_admin_token()?;
        // a bad certificate stops the gateway before it listens
        let tls = crate::tls::listener::Tls::new(
            &cfg.tls,
            Duration::from_secs(cfg.client_header_timeout_secs),
        )?;
        let tls_watch = tls
            .as_ref()
            .map(|t| t.watch(Duration::from_secs(cfg.tls.reload_interval_secs)));
        let admin_tls = tls.clone().filter(|_| cfg.tls.admin);
        let proxy_listener = TcpListener::bind(cfg.listen).await?;
        let admin_listener = TcpListener::bind(cfg.admin).await?;
        let proxy_addr = proxy_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let (tracing, tracing_task) =
            match crate::trace::Tracing::start(&cfg.tracing).map_err(|e| anyhow::anyhow!("{e}"))? {
                Some((t, task)) => (Some(t), Some(task)),
                None => (None, None),
            };
        let mut shared = Shared::new(cfg, recorder)?;
        shared.tracing = tracing;
        let shared = Arc::new(shared);
        shared.restart_probes();
        let discovery = crate::state::discovery::spawn(Arc::clone(&shared));
        let keys_watch = shared
            .access
            .watch(Duration::from_millis(shared.cfg.auth.reload_interval_ms));
        let (stop, stop_rx) = watch::channel(false);
        let admin = tokio::spawn(serve_admin(
            admin_listener,
            admin_tls,
            Arc::clone(&shared),
            handle,
            admin_token,
        ));
        let shared2 = Arc::clone(&shared);
        let done = tokio::spawn(async move {
            serve_proxy(
                proxy_listener,
                tls,
                Arc::clone(&shared2),
                stop_rx,
                recorder_task,
                tracing_task,
                admin,
            )
            .await;
            shared2.stop_probes();
            if let Some(d) = discovery {
                d.abort();
            }
            if let Some(k) = keys_watch {
                k.abort();
            }
            if let Some(t) = tls_watch {
                t.abort();
            }
        });
        Ok(Self {
            proxy_addr,
            admin_addr,
            shared,
            stop,
            done,
        })
    }

    /// Stop accepting, let in-flight requests finish (up to the drain
    /// timeout), flush records.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Wait until the gateway has drained and stopped.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Full<Bytes>> {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "internal gateway error",
    )
}

/// The most a client connection buffers either way: a request head up to
/// this size (431 beyond), and response bytes queued for a client that
/// reads slower than its engine writes. hyper's default (408 KiB) let a
/// slow reader of a long stream park up to that much in the gateway; at
/// 16 KiB the gateway stops reading the engine instead (TCP back-pressure,
/// as nginx with `proxy_buffering off` does with its one buffer). 16 KiB is
/// also where h11, one of uvicorn's HTTP parsers, stops a head.
pub const CLIENT_BUFFER_BYTES: usize = 16 * 1024;

fn http_builder(client_header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(client_header_timeout)
        .max_buf_size(CLIENT_BUFFER_BYTES)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new());
    b
}

/// The proxy listener's connection builders: one per HTTP version, so
/// hyper reads a connection whose version is known straight away (see
/// `speaks`), and the detecting one for the rest.
struct Builders {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    detect: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(client_header_timeout: Duration) -> Self {
        Builders {
            http1: http_builder(client_header_timeout).http1_only(),
            http2: http_builder(client_header_timeout).http2_only(),
            detect: http_builder(client_header_timeout),
        }
    }

    fn for_version(&self, speaks: Speaks) -> &auto::Builder<TokioExecutor> {
        match speaks {
            Speaks::Http1 => &self.http1,
            Speaks::Http2 => &self.http2,
            Speaks::Unknown => &self.detect,
        }
    }
}

async fn serve_proxy(
    listener: TcpListener,
    tls: Option<Tls>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    recorder: RecorderTask,
    span_export: Option<crate::trace::ExportTask>,
    admin: tokio::task::JoinHandle<()>,
) {
    // Layers, outermost first:
    let svc = ServiceBuilder::new()
        // a bug must cost one request a 500, never the process or a connection
        .layer(CatchPanicLayer::custom(panic_response))
        // the proxy; the body limit and the upstream-head timeout act
        // inside, where their errors become OpenAI-style bodies and records
        .service(Proxy::new(Arc::clone(&shared)));
    let header_timeout = Duration::from_secs(shared.cfg.client_header_timeout_secs);
    let builders = Arc::new(Builders::new(header_timeout));
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // hyper's header timeout starts once HTTP/1 is detected; a
                // connection that never completes a first request (silent,
                // or a trickled preface or handshake) is closed by this
                // watchdog instead
                let started = Arc::new(AtomicBool::new(false));
                let mark = Arc::clone(&started);
                let inner = svc.clone();
                let svc = hyper::service::service_fn(move |req| {
                    mark.store(true, Ordering::Relaxed);
                    tower::ServiceExt::oneshot(inner.clone(), req)
                });
                let (builders, watcher, tls) = (Arc::clone(&builders), graceful.watcher(), tls.clone());
                tokio::spawn(async move {
                    let conn = async {
                        // the handshake runs in the connection's own task:
                        // a slow one never holds the accept loop
                        let Some(io) = accept(stream, tls.as_ref()).await else {
                            return;
                        };
                        let builder = builders.for_version(Speaks::of(&io).await);
                        let conn = builder.serve_connection(TokioIo::new(io), svc);
                        let _ = watcher.watch(conn).await;
                    };
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = &mut conn => return,
                        _ = tokio::time::sleep(header_timeout) => {}
                    }
                    if started.load(Ordering::Relaxed) {
                        conn.await;
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    shared.draining.store(true, Ordering::SeqCst);
    let drain = Duration::from_secs(shared.cfg.drain_timeout_secs);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!("drain timeout: closing remaining streams"),
    }
    recorder.shutdown().await;
    if let Some(t) = span_export {
        t.shutdown(Duration::from_secs(5)).await;
    }
    admin.abort();
}

/// The connection as plain TCP, or after its TLS handshake (`None` when
/// that failed: counted, and only this connection is closed).
async fn accept(stream: TcpStream, tls: Option<&Tls>) -> Option<ServerStream> {
    match tls {
        None => Some(ServerStream::Plain(stream)),
        Some(t) => Some(ServerStream::Tls(Box::new(t.accept(stream).await?))),
    }
}

async fn serve_admin(
    listener: TcpListener,
    tls: Option<Tls>,
    shared: Arc<Shared>,
    handle: Option<PrometheusHandle>,
    token: Option<String>,
) {
    let builder = Arc::new(http_builder(Duration::from_secs(10)));
    let handle = Arc::new(handle);
    let token: Arc<Option<String>> = Arc::new(token);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        let handle = Arc::clone(&handle);
        let token = Arc::clone(&token);
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let shared = Arc::clone(&shared);
            let allowed = authorized(&req, token.as_deref());
            let resp = if allowed && req.uri().path() == "/feedback" {
                // the one route with a body: read it, bounded
                return Box::pin(async move {
                    Ok::<_, std::convert::Infallible>(feedback(req, &shared).await)
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>;
            } else if allowed {
                admin_route(&req, &shared, handle.as_ref().as_ref())
            } else {
                let mut r = error_response(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "admin routes other than /healthz and /readyz need `Authorization: Bearer <admin token>`",
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                r
            };
            Box::pin(async move { Ok::<_, std::convert::Infallible>(resp) })
        });
        let (builder, tls) = (Arc::clone(&builder), tls.clone());
        tokio::spawn(async move {
            if let Some(io) = accept(stream, tls.as_ref()).await {
                let _ = builder.serve_connection(TokioIo::new(io), svc).await;
            }
        });
    }
}

/// Probes stay open (they reveal nothing and kubelets send no token);
/// everything else needs the bearer token when one is set.
fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return true;
    }
    let got = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // constant time in the token's content
    got.len() == token.len()
        && got
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn admin_route(
    req: &Request<Incoming>,
    shared: &Shared,
    handle: Option<&PrometheusHandle>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => match handle {
            Some(h) => text(StatusCode::OK, "text/plain; version=0.0.4", h.render()),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "metrics recorder not installed\n",
            ),
        },
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        // Kubernetes preStop (`thinkgate pre-stop`): report not ready so
        // Services stop sending, while serving on until SIGTERM.
        "/prestop" if req.method() == http::Method::POST => {
            shared.draining.store(true, Ordering::SeqCst);
            text(StatusCode::OK, "text/plain", "draining\n")
        }
        "/readyz" => {
            // With health checks on, a gateway whose engines have never
            // answered (still loading) is not ready: Kubernetes sends it
            // no traffic yet. (Without them nothing would ever say so.)
            let fleet = shared.fleet.load();
            let loading = shared.cfg.health_interval_ms > 0
                && !fleet
                    .backends
                    .iter()
                    .any(|b| b.seen_up.load(Ordering::Relaxed));
            if shared.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else if loading {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no engine has answered yet\n",
                )
            } else {
                text(StatusCode::OK, "text/plain", "ready\n")
            }
        }
        "/stats" => {
            let mut v = match shared.recorder.stats.lock() {
                Ok(mut s) => s.summary(),
                Err(_) => serde_json::json!({}),
            };
            v["admission"] = serde_json::json!({
                "admitted": shared.admission.admitted(), "queued": shared.admission.queued(),
                "max_inflight": shared.cfg.max_inflight, "max_queued": shared.cfg.max_queued,
            });
            let fleet = shared.fleet.load_full();
            v["arms"] = fleet
                .arms
                .iter()
                .map(|a| {
                    let mut arm = serde_json::json!({"name": a.name.as_ref(), "weight": a.weight, "policy": a.policy.name(), "pool": a.pool});
                    if let Some(extra) = a.policy.stats().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
                        arm["policy_stats"] = extra;
                    }
                    arm
                })
                .collect();
            v["backends"] = fleet
                .backends
                .iter()
                .map(|b| {
                    use std::sync::atomic::Ordering::Relaxed;
                    serde_json::json!({
                        "url": b.upstream.name.as_ref(), "pool": b.pool, "healthy": fleet.reported_healthy(b),
                        "seen_up": b.seen_up.load(Relaxed),
                        "inflight": b.inflight.load(Relaxed), "inflight_tokens": b.inflight_tokens.load(Relaxed),
                        "inflight_thinking": b.inflight_thinking.load(Relaxed), "kv_usage": b.kv_usage.get(),
                        "running": b.running.get(), "waiting": b.waiting.get(),
                    })
                })
                .collect();
            v["panic_pools"] = serde_json::json!(fleet.panicking_pools());
            let body = v.to_string();
            text(StatusCode::OK, "application/json", body)
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "admin routes: /metrics /healthz /readyz /stats, POST /prestop, POST /feedback",
        ),
    }
}

/// `POST /feedback`: grades of earlier requests, queued for the records
/// file (`crate::feedback`). 202 when queued, 400 for a body that is not
/// grades, 404 without a records file, 503 when the writer is behind.
async fn feedback(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    if req.method() != http::Method::POST {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "POST grades to /feedback",
        );
    }
    if !shared.recorder.takes_feedback() {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "feedback is written with the records: start the gateway with --records FILE",
        );
    }
    const MAX: usize = 1 << 20;
    let body = http_body_util::Limited::new(req.into_body(), MAX);
    let bytes = match tokio::time::timeout(Duration::from_secs(10), body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => {
            crate::metrics::feedback("invalid", 1);
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the body could not be read (at most 1 MiB, within 10 s)",
            );
        }
    };
    let grades = match crate::feedback::parse_body(&bytes) {
        Ok(g) => g,
        Err(e) => {
            crate::metrics::feedback("invalid", 1);
            return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &e);
        }
    };
    let now = crate::feedback::now_ms();
    let n = grades.len();
    let mut queued = 0;
    for mut g in grades {
        g.unix_ms = now;
        if shared.recorder.send_feedback(g) {
            queued += 1;
        }
    }
    if queued < n {
        let mut r = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            &format!(
                "{queued} of {n} grades queued: the records writer is behind; send the rest again"
            ),
        );
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        return r;
    }
    text(
        StatusCode::ACCEPTED,
        "application/json",
        serde_json::json!({ "accepted": n }).to_string(),
    )
}

/// The Kubernetes preStop hook's work: `POST /prestop` on the admin listener
/// at `admin` (failures are reported, not fatal: the wait matters more), then
/// wait while Services stop sending to the gateway.
pub async fn pre_stop(
    admin: std::net::SocketAddr,
    wait: Duration,
    token: Option<&str>,
) -> anyhow::Result<()> {
    use http_body_util::Full;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = http::Request::post(format!("http://{admin}/prestop"));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(bytes::Bytes::new()))?;
    let sent = tokio::time::timeout(Duration::from_secs(2), client.request(req)).await;
    match sent {
        Ok(Ok(r)) if r.status().is_success() => {}
        Ok(Ok(r)) => eprintln!("thinkgate pre-stop: admin answered {}", r.status()),
        Ok(Err(e)) => eprintln!("thinkgate pre-stop: {e}"),
        Err(_) => eprintln!("thinkgate pre-stop: admin did not answer within 2 s"),
    }
    tokio::time::sleep(wait).await;
    Ok(())
}
