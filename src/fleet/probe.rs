//! Background probes of every backend: an active health check
//! (`GET /health`) and a scrape of the engine's `/metrics` (KV use, running
//! and waiting requests, preemptions) for policies such as `least_kv`.
//! They run off the request path, on their own timers.

use super::{Backend, Fleet};
use crate::upstream::UpstreamClient;
use http_body_util::{BodyExt, Either, Full};
use std::sync::Arc;
use std::time::Duration;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn get(
    client: &UpstreamClient,
    b: &Backend,
    path: &'static str,
) -> Option<(u16, bytes::Bytes)> {
    let uri = b
        .upstream
        .uri_for(Some(&http::uri::PathAndQuery::from_static(path)))
        .ok()?;
    let req = http::Request::get(uri)
        .body(Either::Left(Full::new(bytes::Bytes::new())))
        .ok()?;
    let resp = tokio::time::timeout(PROBE_TIMEOUT, client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(PROBE_TIMEOUT, resp.into_body().collect())
        .await
        .ok()?
        .ok()?;
    Some((status, body.to_bytes()))
}

/// Start the probes; they stop when the returned handle is aborted.
pub fn spawn(
    fleet: Arc<Fleet>,
    client: UpstreamClient,
    health_every: Duration,
    scrape_every: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if !health_every.is_zero() {
        let (fleet, client) = (Arc::clone(&fleet), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(health_every);
            loop {
                tick.tick().await;
                for b in &fleet.backends {
                    let ok = matches!(get(&client, b, "/health").await, Some((s, _)) if (200..300).contains(&s));
                    fleet.set_health(b, ok);
                    crate::metrics::backend_health(&b.upstream.name, fleet.reported_healthy(b));
                }
                let panicking = fleet.panicking_pools();
                for p in fleet.backends.iter().map(|b| b.pool.as_str()) {
                    crate::metrics::panic_routing(p, panicking.iter().any(|x| x == p));
                }
            }
        }));
    }
    if !scrape_every.is_zero() {
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(scrape_every);
            loop {
                tick.tick().await;
                for b in &fleet.backends {
                    let mut sample = match get(&client, b, "/metrics").await {
                        Some((s, body)) if (200..300).contains(&s) => {
                            thinkgate_asu::engine::parse(&String::from_utf8_lossy(&body))
                        }
                        // Unknown state is better than stale state.
                        _ => thinkgate_asu::engine::EngineSample::default(),
                    };
                    // llama.cpp exports no KV gauge: derived from its slots
                    if sample.kv_usage.is_none() && b.flavor == crate::config::Flavor::Llamacpp {
                        sample.kv_usage = match get(&client, b, "/slots").await {
                            Some((s, body)) if (200..300).contains(&s) => {
                                thinkgate_asu::engine::llamacpp_slots_kv(&body)
                            }
                            _ => None,
                        };
                    }
                    b.kv_usage.set(sample.kv_usage);
                    b.running.set(sample.running);
                    b.waiting.set(sample.waiting);
                    b.preemptions.set(sample.preemptions);
                    crate::metrics::backend_kv(&b.upstream.name, sample.kv_usage);
                }
            }
        }));
    }
    tasks
}
