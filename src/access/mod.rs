//! Who may send what through the gateway: the route policy (`routes`) and
//! optional client keys with per-key limits (`keys`). Checked first, before
//! admission, reading the body, or routing: a refused request costs a
//! header lookup and reaches no engine.

pub mod keys;
pub mod routes;

use arc_swap::ArcSwapOption;
use keys::KeyRing;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `[auth]`: client keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A TOML file of `[[keys]]` (`name`, `key`, optional `max_inflight`
    /// and `rps`); unset: no keys are asked for.
    pub keys_file: Option<PathBuf>,
    /// How often the file is checked for changes, ms.
    pub reload_interval_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys_file: None,
            reload_interval_ms: 2_000,
        }
    }
}

/// The route policy and the current keys.
#[derive(Debug)]
pub struct Access {
    pub routes: routes::RoutesConfig,
    keys: ArcSwapOption<KeyRing>,
    file: Option<PathBuf>,
}

impl Access {
    /// Read the keys file, if any: a file that cannot be read or parsed is
    /// a startup error (a gateway without its keys would refuse everyone,
    /// or worse, no one).
    pub fn new(routes: routes::RoutesConfig, auth: &AuthConfig) -> Result<Self, String> {
        let ring = match &auth.keys_file {
            Some(p) => Some(Arc::new(KeyRing::load(p)?)),
            None => None,
        };
        Ok(Self {
            routes,
            keys: ArcSwapOption::new(ring),
            file: auth.keys_file.clone(),
        })
    }

    /// The keys in force (`None`: keys are not asked for).
    pub fn keys(&self) -> Option<Arc<KeyRing>> {
        self.keys.load_full()
    }

    /// Read the keys file again; on error the keys in force stay.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(p) = &self.file else { return Ok(0) };
        let ring = KeyRing::load(p)?;
        let n = ring.len();
        self.keys.store(Some(Arc::new(ring)));
        Ok(n)
    }

    /// Watch the keys file and read it again when it changes (a mounted
    /// Secret is replaced, not written in place: the modification time of
    /// the path is what moves).
    pub fn watch(self: &Arc<Self>, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let path = self.file.clone()?;
        let me = Arc::clone(self);
        let stamp = |p: &PathBuf| -> Option<(SystemTime, u64)> {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        let mut last = stamp(&path);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamp(&path);
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                match me.reload() {
                    Ok(n) => {
                        crate::metrics::keys_reload(true);
                        tracing::info!(keys = n, "client keys reloaded");
                    }
                    Err(e) => {
                        crate::metrics::keys_reload(false);
                        tracing::warn!(error = %e, "client keys not reloaded; the previous ones stay");
                    }
                }
            }
        }))
    }
}

/// Control endpoints named on the refusal counter (`route` label); every
/// other refused path is `other`, so clients cannot make series.
pub const CONTROL_ROUTES: &[&str] = &[
    "/sleep",
    "/wake_up",
    "/is_sleeping",
    "/reset_prefix_cache",
    "/reset_mm_cache",
    "/collective_rpc",
    "/start_profile",
    "/stop_profile",
    "/server_info",
    "/scale_elastic_ep",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/flush_cache",
    "/update_weights_from_disk",
    "/update_weights_from_tensor",
    "/abort_request",
    "/get_server_info",
    "/slots",
    "/props",
    "/lora-adapters",
    "/metrics",
    "/v1/chat/completions/control",
];

/// The `route` label of a refused path.
pub fn route_label(path: &str) -> &'static str {
    CONTROL_ROUTES
        .iter()
        .find(|r| {
            path == **r
                || path
                    .strip_prefix(**r)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .copied()
        .unwrap_or("other")
}
