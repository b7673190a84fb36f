//! Sending a request upstream, with retries on another backend for failures
//! that happen before any byte could reach the client: connect errors,
//! connections reset before the response head, and the configured 5xx
//! statuses. A retry never repeats output the client saw, because the
//! client has seen nothing yet.

use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::fleet::{Backend, Fleet};
use crate::metrics::{RetryReason, TlsSide};
use crate::state::Shared;
use crate::straggler::action::Action;
use crate::straggler::extra_legs::LegKind;
use crate::tls::TlsFailure;
use crate::upstream::UpBody;
use crate::upstream::UpstreamBody;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::{BodyExt, Either, Full};
use std::sync::Arc;
use std::time::Duration;

/// What to send; the body is replayable for retries only when it is bytes.
pub struct Outgoing {
    pub method: Method,
    pub path_q: Option<http::uri::PathAndQuery>,
    pub headers: HeaderMap,
    pub body: Option<UpstreamBody>,
    /// The request's trace (each attempt is a leg with its own span and
    /// `traceparent`), when tracing is on.
    pub trace: Option<Arc<crate::trace::context::RequestTrace>>,
    /// What the next attempt is sent for.
    pub leg: crate::trace::context::LegKind,
}

impl Outgoing {
    /// The same request (method, target, headers) with another body: a
    /// managed request's first leg, a continuation.
    pub fn with_body(&self, body: Full<Bytes>) -> Self {
        Self {
            method: self.method.clone(),
            path_q: self.path_q.clone(),
            headers: self.headers.clone(),
            body: Some(Either::Left(body)),
            trace: self.trace.clone(),
            leg: self.leg,
        }
    }

    /// The same request again (a hedge), when its body is bytes.
    pub fn again(&self) -> Option<Self> {
        match &self.body {
            Some(Either::Left(f)) => Some(self.with_body(f.clone())),
            _ => None,
        }
    }

    fn replayable(&self) -> bool {
        matches!(self.body, Some(Either::Left(_)))
    }

    pub(crate) fn request_for(
        &mut self,
        b: &Backend,
    ) -> Result<Request<UpstreamBody>, GatewayError> {
        let uri = b
            .upstream
            .uri_for(self.path_q.as_ref())
            .map_err(|e| GatewayError::BadRequest(format!("bad request target: {e}")))?;
        let body = match &self.body {
            Some(Either::Left(full)) => Either::Left(full.clone()),
            _ => self.body.take().ok_or_else(|| {
                GatewayError::BodyRead("request body already sent upstream".into())
            })?,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        Ok(req)
    }
}

/// Full bytes as an upstream body.
pub fn bytes_body(b: Bytes) -> Option<UpstreamBody> {
    Some(Either::Left(Full::new(b)))
}

/// The backends one request was sent to, shared by its retries and its
/// hedge: neither goes where the other already is. Touched once per
/// attempt, never per chunk.
#[derive(Debug, Default)]
pub struct Tried(std::sync::Mutex<Vec<usize>>);

impl Tried {
    pub fn add(&self, backend: usize) {
        if let Ok(mut t) = self.0.lock() {
            if !t.contains(&backend) {
                t.push(backend);
            }
        }
    }

    pub fn list(&self) -> Vec<usize> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Send `out` to `backend`, retrying elsewhere per `[straggler]`. On
/// success the request's context is on the backend that answered.
pub async fn send(
    shared: &Shared,
    fleet: &Fleet,
    ctx: &mut RequestCtx,
    backend: Arc<Backend>,
    out: &mut Outgoing,
) -> Result<(Arc<Backend>, Response<UpBody>), GatewayError> {
    send_tracked(shared, fleet, ctx, backend, out, &Tried::default()).await
}

/// As [`send`], with the backends tried shared with a hedge of the same
/// request (retries avoid the hedge's backend, the hedge avoids every
/// backend the retries went to). The retries allowed count this request's
/// own attempts.
pub async fn send_tracked(
    shared: &Shared,
    fleet: &Fleet,
    ctx: &mut RequestCtx,
    mut backend: Arc<Backend>,
    out: &mut Outgoing,
    tried_by_all: &Tried,
) -> Result<(Arc<Backend>, Response<UpBody>), GatewayError> {
    let cfg = &fleet.straggler;
    let secs = shared.cfg.upstream_header_timeout_secs;
    let mut tried = vec![backend.index];
    tried_by_all.add(backend.index);
    loop {
        let res =
            tokio::time::timeout(Duration::from_secs(secs), once(shared, &backend, out)).await;
        let can_retry = out.replayable() && (tried.len() as u32) <= cfg.retries;
        let failed = match res {
            Ok(Ok(resp)) => {
                backend.on_success();
                let status = resp.status().as_u16();
                if !(can_retry && cfg.retry_statuses.contains(&status)) {
                    return Ok((backend, resp));
                }
                Failed::Status(Box::new(resp))
            }
            Ok(Err(Sent::Gateway(e))) => return Err(e),
            Ok(Err(Sent::Failed {
                connect,
                tls,
                reason,
            })) => {
                if connect {
                    fleet.on_failure(&backend);
                }
                let backend = backend.upstream.name.to_string();
                let error = match tls {
                    Some(kind) => {
                        crate::metrics::tls_error(TlsSide::Upstream, kind);
                        GatewayError::UpstreamTls {
                            backend,
                            kind: kind.as_str(),
                            why: kind.explain(),
                            reason,
                        }
                    }
                    None => GatewayError::UpstreamUnreachable { backend, reason },
                };
                let why = if connect {
                    RetryReason::Connect
                } else {
                    RetryReason::Reset
                };
                Failed::Error(why, error)
            }
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout {
                    backend: backend.upstream.name.to_string(),
                    secs,
                })
            }
        };
        let next = if can_retry {
            let mut info = ctx.route().clone();
            let mut exclude = tried_by_all.list();
            exclude.extend(&tried);
            fleet
                .pick_excluding(ctx.arm_index(), &mut info, &exclude)
                .ok()
        } else {
            None
        };
        // A retry after a connect error costs no engine anything; any other
        // spends from the budget retries share with hedges.
        let free = matches!(failed, Failed::Error(RetryReason::Connect, _));
        let next = next.filter(|_| {
            let ok = free
                || shared
                    .extra_legs
                    .try_spend(LegKind::Retry, cfg.extra_legs_per_sec);
            if !ok {
                ctx.act(Action::ExtraRefused {
                    kind: LegKind::Retry,
                });
            }
            ok
        });
        let Some(next) = next else {
            // Nowhere else to go: the failure stands, as the engine gave it.
            return match failed {
                Failed::Status(resp) => Ok((backend, *resp)),
                Failed::Error(_, e) => Err(e),
            };
        };
        let reason = match failed {
            Failed::Status(resp) => RetryReason::Status(resp.status().as_u16()),
            Failed::Error(r, _) => r,
        };
        ctx.act(Action::Retry {
            backend: backend.upstream.name.to_string(),
            reason,
        });
        tried.push(next.index);
        tried_by_all.add(next.index);
        out.leg = crate::trace::context::LegKind::Retry;
        ctx.switch_backend(Arc::clone(&next));
        backend = next;
    }
}

/// Why one attempt gave no response.
pub(crate) enum Sent {
    /// The request itself is bad (answered by the gateway, not retried).
    Gateway(GatewayError),
    /// The upstream failed; `connect` when the connection never opened
    /// (its TLS handshake included: `tls` says why that failed).
    Failed {
        connect: bool,
        tls: Option<TlsFailure>,
        reason: String,
    },
}

/// One attempt on `b`: bytes bodies go through the lean HTTP/1.1 client
/// (the response is read straight off the socket), others through hyper's.
pub(crate) async fn once(
    shared: &Shared,
    b: &Backend,
    out: &mut Outgoing,
) -> Result<Response<UpBody>, Sent> {
    let Some(trace) = out.trace.clone() else {
        return once_untraced(shared, b, out).await;
    };
    let leg = trace.begin_leg(out.leg, &b.upstream.name, &mut out.headers);
    // a leg dropped before its head (a race's loser) ends when dropped
    let mut open = OpenLeg(Some((&trace, leg)));
    let r = once_untraced(shared, b, out).await;
    open.0 = None;
    trace.end_leg(
        leg,
        match &r {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(Sent::Failed { reason, .. }) => Err(reason.clone()),
            Err(Sent::Gateway(e)) => Err(e.to_string()),
        },
    );
    r
}

/// A traced leg still waiting for its head: dropped so, it was cancelled.
struct OpenLeg<'a>(Option<(&'a crate::trace::context::RequestTrace, usize)>);

impl Drop for OpenLeg<'_> {
    fn drop(&mut self) {
        if let Some((t, i)) = self.0.take() {
            t.cancel_leg(i);
        }
    }
}

async fn once_untraced(
    shared: &Shared,
    b: &Backend,
    out: &mut Outgoing,
) -> Result<Response<UpBody>, Sent> {
    if let Some(Either::Left(full)) = &out.body {
        let body = full
            .clone()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let up = &b.upstream;
        let pq = out.path_q.as_ref().map_or("/", |p| p.as_str());
        let path = if up.prefix.is_empty() {
            std::borrow::Cow::Borrowed(pq)
        } else {
            std::borrow::Cow::Owned(format!("{}{pq}", up.prefix))
        };
        let to = super::h1::Target {
            authority: &up.authority,
            tls: up.scheme == http::uri::Scheme::HTTPS,
        };
        return super::h1::request(&shared.h1, to, &out.method, &path, &out.headers, &body)
            .await
            .map(|r| r.map(UpBody::Raw))
            .map_err(|e| Sent::Failed {
                connect: e.is_connect(),
                tls: e.tls(),
                reason: error_chain(&e),
            });
    }
    let req = out.request_for(b).map_err(Sent::Gateway)?;
    shared
        .client
        .request(req)
        .await
        .map(|r| r.map(UpBody::Hyper))
        .map_err(|e| Sent::Failed {
            connect: e.is_connect(),
            tls: TlsFailure::find(&e),
            reason: error_chain(&e),
        })
}

enum Failed {
    /// A status the config retries (the response is dropped on retry).
    Status(Box<Response<UpBody>>),
    Error(RetryReason, GatewayError),
}

pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::tls::describe(e)
}
