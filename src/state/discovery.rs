//! Backends from DNS (`[discovery]`): every address a name resolves to
//! becomes a backend, re-resolved every `interval_ms`. With a Kubernetes
//! headless Service the gateway so routes to each engine pod itself,
//! instead of through a Service that balances connections blindly.
//!
//! A change of the address set rebuilds the fleet like a hot reload:
//! in-flight requests finish where they are. A failed lookup keeps the last
//! set (and is logged).

use crate::config::BackendConfig;
use crate::state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Start resolving, if `[discovery]` is set.
pub fn spawn(shared: Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    let d = shared.cfg.discovery.clone()?;
    Some(tokio::spawn(async move {
        let mut last: Option<Vec<SocketAddr>> = None;
        let every = Duration::from_millis(d.interval_ms.max(100));
        loop {
            match tokio::net::lookup_host((d.dns.as_str(), d.port)).await {
                Ok(found) => {
                    let mut addrs: Vec<SocketAddr> = found.collect();
                    addrs.sort();
                    addrs.dedup();
                    if last.as_ref() != Some(&addrs) {
                        tracing::info!(dns = %d.dns, backends = addrs.len(), "discovered backends");
                        let backends = addrs
                            .iter()
                            .map(|a| BackendConfig {
                                url: format!("http://{a}"),
                                weight: 1,
                                pool: d.pool.clone(),
                                models: Vec::new(),
                                flavor: d.flavor,
                            })
                            .collect();
                        if let Err(e) = shared.set_discovered(backends) {
                            tracing::warn!(error = %e, "discovered backends refused");
                        }
                        last = Some(addrs);
                    }
                }
                Err(e) => tracing::warn!(dns = %d.dns, error = %e, "discovery lookup failed"),
            }
            tokio::time::sleep(every).await;
        }
    }))
}
