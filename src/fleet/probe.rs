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

/// Scrape one engine's state into its backend.
async fn scrape(client: &UpstreamClient, b: &Backend) {
    let mut sample = match get(client, b, "/metrics").await {
        Some((s, body)) if (200..300).contains(&s) => {
            thinkgate_asu::engine::parse(&String::from_utf8_lossy(&body))
        }
        // Unknown state is better than stale state.
        _ => thinkgate_asu::engine::EngineSample::default(),
    };
    // llama.cpp exports no KV gauge: derived from its slots
    if sample.kv_usage.is_none() && b.flavor == crate::config::Flavor::Llamacpp {
        sample.kv_usage = match get(client, b, "/slots").await {
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

/// Probe one engine's health into its backend (and the pool's panic gauge).
async fn check(client: &UpstreamClient, fleet: &Fleet, b: &Backend) {
    let ok = matches!(get(client, b, "/health").await, Some((s, _)) if (200..300).contains(&s));
    fleet.set_health(b, ok);
    crate::metrics::backend_health(&b.upstream.name, fleet.reported_healthy(b));
    let panicking = fleet.panicking_pools();
    crate::metrics::panic_routing(&b.pool, panicking.contains(&b.pool));
}

/// A loop per backend, every `every` (none when zero): an engine that
/// accepts and never answers holds its own probe for the timeout, never the
/// others'.
fn per_backend<F, Fut>(
    fleet: &Arc<Fleet>,
    client: &UpstreamClient,
    every: Duration,
    probe: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(UpstreamClient, Arc<Fleet>, usize) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if every.is_zero() {
        return Vec::new();
    }
    (0..fleet.backends.len())
        .map(|i| {
            let (fleet, client) = (Arc::clone(fleet), client.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    probe(client.clone(), Arc::clone(&fleet), i).await;
                }
            })
        })
        .collect()
}

/// Start the probes; they stop when the returned handles are aborted.
pub fn spawn(
    fleet: Arc<Fleet>,
    client: UpstreamClient,
    health_every: Duration,
    scrape_every: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = per_backend(
        &fleet,
        &client,
        health_every,
        |client, fleet, i| async move {
            if let Some(b) = fleet.backends.get(i) {
                check(&client, &fleet, b).await;
            }
        },
    );
    tasks.extend(per_backend(
        &fleet,
        &client,
        scrape_every,
        |client, fleet, i| async move {
            if let Some(b) = fleet.backends.get(i) {
                scrape(&client, b).await;
            }
        },
    ));
    tasks
}
