//! What all requests of one gateway share: the configuration, the fleet
//! (swapped whole on a reload), the upstream clients, the observer settings,
//! the records writer and the admission slots; and its lifecycle (probes,
//! reloads, discovered backends).

pub mod admission;
pub mod discovery;

use crate::config::Config;
use crate::metrics::LabelSet;
use crate::record::Recorder;
use crate::upstream::{h1, UpstreamClient};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use thinkgate_asu::ObserverConfig;

/// State shared by all requests of one gateway.
pub struct Shared {
    pub cfg: Config,
    /// The route policy and the client keys in force.
    pub access: Arc<crate::access::Access>,
    pub client: UpstreamClient,
    /// The lean HTTP/1.1 client's idle connections (inference requests).
    pub h1: Arc<h1::Pool>,
    /// Swapped whole on a hot reload; a request keeps the fleet it started with.
    pub fleet: arc_swap::ArcSwap<crate::fleet::Fleet>,
    pub(crate) observer: Arc<ObserverConfig>,
    /// Same as `observer`, with usage-event stripping on.
    pub(crate) observer_strip: Arc<ObserverConfig>,
    /// For a managed request's first leg: text captured (a forced answer
    /// needs the thinking so far), with and without usage stripping.
    pub(crate) observer_capture: Arc<ObserverConfig>,
    pub(crate) observer_capture_strip: Arc<ObserverConfig>,
    pub(crate) markers: thinkgate_asu::Markers,
    /// Bounds retries and hedges together (and hedges to their own share).
    pub(crate) extra_legs: crate::straggler::extra_legs::ExtraLegs,
    pub recorder: Recorder,
    /// OpenTelemetry traces, when on.
    pub tracing: Option<crate::trace::Tracing>,
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
        zero_series(&next);
        set_arms(&self.recorder, &next);
        self.fleet.store(Arc::new(next));
        self.restart_probes();
        Ok(())
    }

    pub fn new(cfg: Config, recorder: Recorder) -> Result<Self, crate::error::ConfigError> {
        cfg.validate()?;
        let fleet = crate::fleet::Fleet::new(&cfg)?;
        zero_series(&fleet);
        set_arms(&recorder, &fleet);
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
        let access = crate::access::Access::new(cfg.routes.clone(), &cfg.auth)
            .map_err(crate::error::ConfigError::Invalid)?;
        let tls = crate::tls::client::config(&cfg.upstream_tls)?;
        Ok(Self {
            access: Arc::new(access),
            markers: cfg.markers()?,
            observer_capture: Arc::new(capture),
            observer_capture_strip: Arc::new(capture_strip),
            extra_legs: Default::default(),
            h1: h1::Pool::new(
                Duration::from_millis(cfg.connect_timeout_ms),
                cfg.pool_max_idle_per_host,
                Arc::clone(&tls),
            ),
            client: crate::upstream::client(
                Duration::from_millis(cfg.connect_timeout_ms),
                cfg.pool_max_idle_per_host,
                &tls,
            ),
            fleet: arc_swap::ArcSwap::from_pointee(fleet),
            observer: Arc::new(obs),
            observer_strip: Arc::new(strip),
            recorder,
            tracing: None,
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

/// The live experiment view follows the fleet's arms.
fn set_arms(recorder: &Recorder, fleet: &crate::fleet::Fleet) {
    let names: Vec<String> = fleet.arms.iter().map(|a| a.name.to_string()).collect();
    if let Ok(mut s) = recorder.stats.lock() {
        s.set_arms(&names, fleet.guardrail.clone());
    }
    if names.len() > 1 {
        let stopped = recorder.stopped.mask();
        for (i, n) in names.iter().enumerate() {
            crate::metrics::experiment_arm_stopped(n, i < 64 && stopped & (1 << i) != 0);
        }
    }
}

/// The fleet's known series at 0 (see `metrics::zero_series`), and each
/// backend's health as the fleet sees it now (healthy until a check says
/// otherwise).
fn zero_series(fleet: &crate::fleet::Fleet) {
    for b in &fleet.backends {
        crate::metrics::backend_health(&b.upstream.name, fleet.reported_healthy(b));
    }
    let backends: Vec<_> = fleet
        .backends
        .iter()
        .map(|b| b.upstream.name.clone())
        .collect();
    let arms: Vec<_> = fleet.arms.iter().map(|a| a.name.clone()).collect();
    crate::metrics::zero_series(&backends, &arms);
    let panicking = fleet.panicking_pools();
    for b in &fleet.backends {
        crate::metrics::panic_routing(&b.pool, panicking.contains(&b.pool));
    }
}
