//! Gateway configuration: a TOML file (`--config`), every key overridable by a
//! flag and a `THINKGATE_*` environment variable (flag > env > file >
//! default). `thinkgate serve --print-config` prints the effective result.

use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thinkgate_asu::{LoopConfig, Markers, ObserverConfig, ThinkTags};
use thinkgate_policies::PolicyConfig;

/// One backend engine (`[[backends]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL, `http://host:port`.
    pub url: String,
    /// Relative share for the `weighted` policy.
    #[serde(default = "one")]
    pub weight: u32,
    /// Pool name (e.g. `short`, `long`).
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Models it serves; empty: any.
    #[serde(default)]
    pub models: Vec<String>,
    /// The engine behind it (its wire quirks and native features, see
    /// WIRE.md); scraping reads every engine's metric names either way.
    #[serde(default)]
    pub flavor: Flavor,
}

/// Which engine a backend runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    #[default]
    Vllm,
    Sglang,
    Llamacpp,
    /// Any other OpenAI-compatible server.
    Openai,
}

/// Backends discovered by DNS (`[discovery]`), e.g. a Kubernetes headless
/// Service: one backend per address the name resolves to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The name to resolve, e.g. `vllm-headless.models.svc`.
    pub dns: String,
    /// The engines' port.
    pub port: u16,
    /// Re-resolve period, ms.
    #[serde(default = "default_discovery_ms")]
    pub interval_ms: u64,
    #[serde(default)]
    pub flavor: Flavor,
    #[serde(default = "default_pool")]
    pub pool: String,
}

fn default_discovery_ms() -> u64 {
    5_000
}

/// How requests are assigned to experiment arms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AssignBy {
    /// The session key (`session_header`, else the `user` field); requests
    /// without one are assigned at random.
    #[default]
    Session,
    /// Each request at random.
    Random,
}

/// One arm of an A/B experiment (`[[experiment.arms]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    pub name: String,
    /// Relative share of requests.
    #[serde(default = "one")]
    pub weight: u32,
    /// This arm's routing policy.
    #[serde(default)]
    pub routing: PolicyConfig,
    /// Route this arm's requests only to this pool.
    #[serde(default)]
    pub pool: Option<String>,
    /// This arm's thinking budget (tokens; 0: unlimited even if
    /// `[straggler]` sets one).
    #[serde(default)]
    pub thinking_budget: Option<u64>,
    /// This arm's end-to-end deadline (ms; 0: none).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// An A/B experiment over routing policies (`[experiment]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    #[serde(default)]
    pub assign_by: AssignBy,
    pub arms: Vec<ArmConfig>,
    /// Stop sending requests to an arm the live test finds worse beyond a
    /// margin (`[experiment.guardrail]`; off without the table).
    #[serde(default)]
    pub guardrail: Option<GuardrailConfig>,
}

/// `[experiment.guardrail]`: when the always-valid confidence sequence of
/// B - A (the live view's, over the first two arms) shows one arm worse
/// than the other by more than a margin, no new request is assigned to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GuardrailConfig {
    /// TTFVT and E2E: worse by more than this share of the better arm's
    /// mean (0.1: 10% slower).
    pub latency_margin: f64,
    /// Error rate and accuracy: worse by more than this many points
    /// (0.02: two percentage points).
    pub rate_margin: f64,
    /// The tests that may stop an arm (`ttfvt.mean`, `e2e.mean`, `errors`,
    /// `accuracy`). When the arms trade latency for accuracy (a thinking
    /// budget against none), leave the latencies out: the faster arm would
    /// win before the grades arrive.
    pub tests: Vec<String>,
}

/// The live view's tests, by name.
pub const GUARDRAIL_TESTS: [&str; 4] = ["ttfvt.mean", "e2e.mean", "errors", "accuracy"];

impl Default for GuardrailConfig {
    fn default() -> Self {
        Self {
            latency_margin: 0.1,
            rate_margin: 0.02,
            tests: GUARDRAIL_TESTS.iter().map(|t| t.to_string()).collect(),
        }
    }
}

fn one() -> u32 {
    1
}
fn default_pool() -> String {
    "default".into()
}

/// The effective gateway configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the proxy listener (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`, `/stats`).
    pub admin: SocketAddr,
    /// Upstream engines, as base URLs (`http://host:port`): shorthand for
    /// `[[backends]]` entries with default weight and pool.
    pub upstreams: Vec<String>,
    /// Backend engines with weight, pool and models.
    pub backends: Vec<BackendConfig>,
    /// More backends from DNS (a headless Service), re-resolved.
    pub discovery: Option<DiscoveryConfig>,
    /// The routing policy (`[routing]`, `type = "least_kv"`, ...).
    pub routing: PolicyConfig,
    /// Route only to this pool (default: all backends).
    pub pool: Option<String>,
    /// An A/B experiment: arms with their own policy and pool, replacing
    /// `routing` and `pool` while set.
    pub experiment: Option<ExperimentConfig>,
    /// Active health check (`GET /health`) period, ms; 0 turns it off.
    pub health_interval_ms: u64,
    /// Engine `/metrics` scrape period, ms; 0 turns it off.
    pub scrape_interval_ms: u64,
    /// Consecutive failures (health probes or connects) that take a
    /// backend out (Envoy's `unhealthy_threshold`, whose default is also 3
    /// in most deployments).
    pub eject_after_failures: u32,
    /// Consecutive passing health probes that bring it back (Envoy's
    /// `healthy_threshold`).
    pub healthy_after_successes: u32,
    /// A backend never yet seen up (a probe passed or a response came) is
    /// starting: its failures do not count for this long after the gateway
    /// started, and it is routed to only when no other backend of its pool
    /// is up.
    pub startup_grace_secs: u64,
    /// Below this share of healthy backends in a pool, route over all of
    /// them (Envoy's panic threshold, 50% there too): a probe's blip never
    /// turns into refusing everything; a pool of one never refuses.
    pub panic_threshold: f64,
    /// Without active health checks, how long an ejected backend rests.
    pub eject_secs: u64,
    /// Header carrying a session key for affinity (else the `user` field).
    pub session_header: String,
    /// Bytes of the prompt hashed into the prefix key.
    pub prefix_bytes: usize,
    /// Add `stream_options.include_usage` to streamed requests that lack it,
    /// and remove the usage-only event before it reaches the client.
    pub inject_usage: bool,
    /// Never modify a request or a response body (disables `inject_usage`
    /// and the `x-thinkgate-*` response headers).
    pub passthrough_strict: bool,
    /// Add `x-thinkgate-request-id` and `x-thinkgate-backend` to responses.
    pub response_headers: bool,
    /// Send the gateway's request id to the engine as `x-request-id` when
    /// the client sent none. Off by default: vLLM builds its response ids
    /// from that header (`chatcmpl-<x-request-id>`), so adding one changes
    /// what every client sees. A client's own `x-request-id` is always
    /// forwarded as it came.
    pub upstream_request_id: bool,
    /// Inline thinking markers in `content`: `auto`, `starts_in_thinking`
    /// (DeepSeek-R1 family) or `off`.
    pub think_tags: ThinkTags,
    pub think_open: String,
    pub think_close: String,
    /// Write one JSON line per finished request here.
    pub records: Option<PathBuf>,
    /// Include prompt-free output text (reasoning and content) in records.
    pub records_include_text: bool,
    /// Records waiting for the writer before new ones are dropped (counted).
    pub records_queue: usize,
    /// Largest inference request body read (413 beyond).
    pub max_request_body_bytes: usize,
    /// TCP connect timeout to an upstream (502 beyond).
    pub connect_timeout_ms: u64,
    /// Time allowed for the upstream's response head (504 beyond). A
    /// non-streamed reasoning request sends its head only when it is done.
    pub upstream_header_timeout_secs: u64,
    /// Time a client has to send a complete request head (HTTP/1).
    pub client_header_timeout_secs: u64,
    /// Time a client has to send a whole inference request body once its
    /// head arrived (408 beyond): a slow body cannot hold a slot.
    pub client_body_timeout_secs: u64,
    /// Bearer token the admin listener requires on every route but
    /// `/healthz` and `/readyz` (unset: no token). Never printed by
    /// `--print-config`; prefer `THINKGATE_ADMIN_TOKEN` or
    /// `admin_token_file`.
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,
    /// File holding the admin token (a mounted Secret); read at startup.
    pub admin_token_file: Option<PathBuf>,
    /// After the response head, how long the upstream may send nothing
    /// before the gateway ends the response (0: no limit). Keep it above the
    /// longest queue wait an engine may impose before the first token.
    pub upstream_idle_timeout_secs: u64,
    /// Idle keep-alive connections kept per upstream.
    pub pool_max_idle_per_host: usize,
    /// On SIGTERM/SIGINT: how long in-flight streams may run before exit.
    pub drain_timeout_secs: u64,
    /// Window of `/stats`.
    pub stats_window_secs: u64,
    /// Distinct `model` label values before new ones are reported as `other`.
    pub max_model_labels: usize,
    /// Requests in flight through the gateway at most (0: no limit); beyond,
    /// an immediate 503 with `Retry-After`, never a queue.
    pub max_inflight: usize,
    /// Requests in flight per backend at most (0: no limit); a backend at
    /// its limit is not offered to the routing policy, and when every one
    /// is, the request gets 503 with `Retry-After`.
    pub max_inflight_per_backend: u64,
    /// Requests that may wait for a slot when a limit is reached (0: none
    /// wait; beyond, the 503 is immediate).
    pub max_queued: usize,
    /// How long a queued request waits for a slot before its 503, ms.
    pub queue_timeout_ms: u64,
    /// Thinking budgets, deadlines, hedging, retries, long-thinker
    /// isolation (`[straggler]`; reloaded with the fleet).
    pub straggler: crate::straggler::StragglerConfig,
    /// Thinking-loop detection (`[loops]`; read at startup). Loops are
    /// counted by default; what to do about one is `straggler.on_loop`.
    pub loops: LoopsConfig,
    /// Which methods and paths clients may send (`[routes]`; read at
    /// startup): the engines' client API by default, never their control
    /// endpoints.
    pub routes: crate::access::routes::RoutesConfig,
    /// Client keys (`[auth]`): off by default.
    pub auth: crate::access::AuthConfig,
    /// The proxy listener over TLS (`[tls]`; off without a certificate).
    pub tls: crate::tls::ListenerTlsConfig,
    /// How `https://` engines are checked, and the client certificate
    /// shown to them (`[upstream_tls]`).
    pub upstream_tls: crate::tls::UpstreamTlsConfig,
    /// OpenTelemetry traces over OTLP (`[tracing]`; off unless an endpoint
    /// is set here or in the standard `OTEL_*` variables).
    pub tracing: crate::trace::config::TracingConfig,
}

/// `[loops]`: how a thinking loop is recognised (see
/// `thinkgate_asu::repeat` and `docs/stragglers.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoopsConfig {
    /// Watch every streamed response's thinking for loops.
    pub detect: bool,
    /// Words over which the repeated share is taken (8..=4096).
    pub window_words: u16,
    /// Longest repeated span looked for, in words (1..=4096).
    pub max_period_words: u16,
    /// Share of the window that must repeat at one period (0.5..=1).
    pub min_match: f32,
}

impl Default for LoopsConfig {
    fn default() -> Self {
        let d = LoopConfig::default();
        Self {
            detect: true,
            window_words: d.window_words,
            max_period_words: d.max_period_words,
            min_match: d.min_match,
        }
    }
}

impl LoopsConfig {
    fn validate(&self) -> Result<(), String> {
        if !(8..=4096).contains(&self.window_words) {
            return Err("loops.window_words must be in 8..=4096".into());
        }
        if !(1..=4096).contains(&self.max_period_words) {
            return Err("loops.max_period_words must be in 1..=4096".into());
        }
        if !(0.5..=1.0).contains(&self.min_match) {
            return Err("loops.min_match must be in 0.5..=1".into());
        }
        Ok(())
    }

    /// The detector's settings, when detection is on.
    pub fn detector(&self) -> Option<LoopConfig> {
        self.detect.then_some(LoopConfig {
            window_words: self.window_words,
            max_period_words: self.max_period_words,
            min_match: self.min_match,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin: SocketAddr::from(([0, 0, 0, 0], 9090)),
            upstreams: Vec::new(),
            backends: Vec::new(),
            discovery: None,
            routing: PolicyConfig::default(),
            pool: None,
            experiment: None,
            health_interval_ms: 2_000,
            scrape_interval_ms: 1_000,
            eject_after_failures: 3,
            healthy_after_successes: 2,
            startup_grace_secs: 300,
            panic_threshold: 0.5,
            eject_secs: 10,
            session_header: "x-thinkgate-session".into(),
            prefix_bytes: 64,
            inject_usage: true,
            passthrough_strict: false,
            response_headers: true,
            upstream_request_id: false,
            think_tags: ThinkTags::Auto,
            think_open: "<think>".into(),
            think_close: "</think>".into(),
            records: None,
            records_include_text: false,
            records_queue: 65_536,
            max_request_body_bytes: 32 << 20,
            connect_timeout_ms: 5_000,
            upstream_header_timeout_secs: 1_800,
            client_header_timeout_secs: 30,
            client_body_timeout_secs: 60,
            upstream_idle_timeout_secs: 600,
            admin_token: None,
            admin_token_file: None,
            pool_max_idle_per_host: 1_024,
            drain_timeout_secs: 600,
            stats_window_secs: 300,
            max_model_labels: 64,
            max_inflight: 0,
            max_inflight_per_backend: 0,
            max_queued: 0,
            queue_timeout_ms: 1_000,
            straggler: Default::default(),
            loops: LoopsConfig::default(),
            routes: Default::default(),
            auth: Default::default(),
            tls: Default::default(),
            upstream_tls: Default::default(),
            tracing: Default::default(),
        }
    }
}

impl Config {
    /// Read a TOML file; a missing `path` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), Box::new(e)))
    }

    /// Check what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let all = self.all_backends();
        if all.is_empty() && self.discovery.is_none() {
            return Err(ConfigError::Invalid(
                "at least one upstream is required (--upstream URL, [[backends]] or [discovery])"
                    .into(),
            ));
        }
        if let Some(d) = &self.discovery {
            if d.dns.is_empty() || d.port == 0 {
                return Err(ConfigError::Invalid(
                    "[discovery] needs a dns name and a port".into(),
                ));
            }
        }
        for b in &all {
            crate::upstream::parse_base(&b.url)?;
        }
        if self.tls.admin && !self.tls.enabled() {
            return Err(ConfigError::Invalid(
                "tls.admin needs the listener's certificate (tls.cert_file, tls.key_file)".into(),
            ));
        }
        let arm_pools = self
            .experiment
            .iter()
            .flat_map(|e| e.arms.iter().filter_map(|a| a.pool.as_ref()));
        let discovered_pool = self.discovery.as_ref().map(|d| &d.pool);
        for p in self.pool.iter().chain(arm_pools) {
            if !all.iter().any(|b| &b.pool == p) && discovered_pool != Some(p) {
                return Err(ConfigError::Invalid(format!("pool {p:?} has no backend")));
            }
        }
        if let Some(e) = &self.experiment {
            if e.arms.is_empty() || e.arms.iter().all(|a| a.weight == 0) {
                return Err(ConfigError::Invalid(
                    "an experiment needs arms with weight > 0".into(),
                ));
            }
            let mut names: Vec<&str> = e.arms.iter().map(|a| a.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            if names.len() != e.arms.len() || names.iter().any(|n| n.is_empty() || n.len() > 64) {
                return Err(ConfigError::Invalid(
                    "experiment arm names must be unique, 1..=64 chars".into(),
                ));
            }
            if e.arms.len() > 64 {
                return Err(ConfigError::Invalid(
                    "an experiment has 64 arms at most".into(),
                ));
            }
            if let Some(g) = &e.guardrail {
                let ok = |m: f64| m.is_finite() && m >= 0.0;
                if !ok(g.latency_margin) || !ok(g.rate_margin) || g.rate_margin > 1.0 {
                    return Err(ConfigError::Invalid(
                        "experiment.guardrail margins must be >= 0 (rate_margin at most 1)".into(),
                    ));
                }
                if let Some(t) = g
                    .tests
                    .iter()
                    .find(|t| !GUARDRAIL_TESTS.contains(&t.as_str()))
                {
                    return Err(ConfigError::Invalid(format!(
                        "experiment.guardrail.tests: unknown test {t:?} (known: {})",
                        GUARDRAIL_TESTS.join(", ")
                    )));
                }
            }
        }
        self.markers()?;
        self.straggler.validate().map_err(ConfigError::Invalid)?;
        self.loops.validate().map_err(ConfigError::Invalid)?;
        if !(0.0..=1.0).contains(&self.panic_threshold) {
            return Err(ConfigError::Invalid(
                "panic_threshold must be in 0..=1".into(),
            ));
        }
        if self.records_queue == 0 {
            return Err(ConfigError::Invalid("records_queue must be > 0".into()));
        }
        Ok(())
    }

    /// `upstreams` (shorthand) followed by `backends`.
    /// The admin token from `admin_token`, else `admin_token_file`.
    pub fn resolved_admin_token(&self) -> Result<Option<String>, ConfigError> {
        let token = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(p)) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::Read(p.clone(), e))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if token.as_deref() == Some("") {
            return Err(ConfigError::Invalid("the admin token is empty".into()));
        }
        Ok(token)
    }

    pub fn all_backends(&self) -> Vec<BackendConfig> {
        self.upstreams
            .iter()
            .map(|u| BackendConfig {
                url: u.clone(),
                weight: 1,
                pool: default_pool(),
                models: Vec::new(),
                flavor: Flavor::default(),
            })
            .chain(self.backends.iter().cloned())
            .collect()
    }

    pub fn markers(&self) -> Result<Markers, ConfigError> {
        Markers::new(&self.think_open, &self.think_close)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// `upstream_idle_timeout_secs`, unless 0 (no limit).
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        let s = self.upstream_idle_timeout_secs;
        (s > 0).then(|| std::time::Duration::from_secs(s))
    }

    /// `queue_timeout_ms`.
    pub fn queue_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.queue_timeout_ms)
    }

    /// Usage injection in effect.
    pub fn injects_usage(&self) -> bool {
        self.inject_usage && !self.passthrough_strict
    }

    /// `x-thinkgate-*` response headers in effect.
    /// Whether the gateway's own request id goes to the engine.
    pub fn sends_request_id(&self) -> bool {
        self.upstream_request_id && !self.passthrough_strict
    }

    pub fn adds_response_headers(&self) -> bool {
        self.response_headers && !self.passthrough_strict
    }

    pub fn observer_config(&self) -> Result<ObserverConfig, ConfigError> {
        Ok(ObserverConfig {
            think_tags: self.think_tags,
            markers: self.markers()?,
            capture_text: self.records_include_text,
            strip_usage_only: false,
            loops: self.loops.detector(),
            ..ObserverConfig::default()
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}
