//! Command line: one binary, one subcommand per job.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use thinkgate::config::Config;
use thinkgate::error::ConfigError;
use thinkgate_asu::ThinkTags;

#[derive(Debug, Parser)]
#[command(
    name = "thinkgate",
    version,
    about = "A reasoning-aware gateway for LLM inference"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in front of one or more OpenAI-compatible engines.
    Serve(Box<ServeArgs>),
    /// Run a simulated reasoning engine (OpenAI-compatible, vLLM-like).
    #[cfg(feature = "tools")]
    Sim(Box<thinkgate_sim::cli::SimArgs>),
    /// Generate load and measure ASU from the client side.
    #[cfg(feature = "tools")]
    Load(Box<thinkgate_loadgen::cli::LoadArgs>),
    /// Two simulated engines, the gateway and a short Gamma load: prints an ASU report.
    #[cfg(feature = "tools")]
    Demo(Box<crate::demo::DemoArgs>),
    /// Kubernetes preStop hook: mark the gateway not ready, then wait while
    /// Services stop sending to it (SIGTERM follows and drains streams).
    PreStop(PreStopArgs),
}

#[derive(Debug, Args)]
pub struct PreStopArgs {
    /// The gateway's admin address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Seconds to wait after marking it not ready.
    #[arg(long, default_value_t = 10)]
    pub wait_secs: u64,
    /// The admin bearer token, when the gateway requires one.
    #[arg(long, env = "THINKGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `thinkgate pre-stop` (see [`thinkgate::server::pre_stop`]).
pub async fn pre_stop(args: PreStopArgs) -> anyhow::Result<()> {
    let wait = std::time::Duration::from_secs(args.wait_secs);
    thinkgate::server::pre_stop(args.admin, wait, args.token.as_deref()).await
}

/// `thinkgate serve`: every config key as a flag and a `THINKGATE_*`
/// variable; flags and variables override the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "THINKGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Proxy listener address.
    #[arg(long, env = "THINKGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listener address (/metrics, /healthz, /readyz, /stats).
    #[arg(long, env = "THINKGATE_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// Upstream engine base URL (http://vllm:8000, or as the openai client
    /// writes it, http://vllm:8000/v1); repeat (or comma-separate) for several.
    #[arg(long = "upstream", env = "THINKGATE_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    /// Routing policy by name (round_robin, random, weighted, least_request, least_tokens, least_kv,
    /// p2c, consistent_hash, difficulty_aware); parameters go in the [routing] table of the file.
    #[arg(long, env = "THINKGATE_POLICY")]
    pub policy: Option<String>,
    /// Route only to backends of this pool.
    #[arg(long, env = "THINKGATE_POOL")]
    pub pool: Option<String>,
    /// Active health check period, ms (0: off).
    #[arg(long, env = "THINKGATE_HEALTH_INTERVAL_MS")]
    pub health_interval_ms: Option<u64>,
    /// Engine /metrics scrape period, ms (0: off).
    #[arg(long, env = "THINKGATE_SCRAPE_INTERVAL_MS")]
    pub scrape_interval_ms: Option<u64>,
    /// Consecutive connect failures that eject a backend.
    #[arg(long, env = "THINKGATE_EJECT_AFTER_FAILURES")]
    pub eject_after_failures: Option<u32>,
    /// Rest of an ejected backend when active checks are off, s.
    #[arg(long, env = "THINKGATE_EJECT_SECS")]
    pub eject_secs: Option<u64>,
    /// Header with a session key for affinity (else the `user` field).
    #[arg(long, env = "THINKGATE_SESSION_HEADER")]
    pub session_header: Option<String>,
    /// Prompt bytes hashed into the prefix key.
    #[arg(long, env = "THINKGATE_PREFIX_BYTES")]
    pub prefix_bytes: Option<usize>,
    /// Add stream_options.include_usage to streamed requests that lack it (and hide the usage event).
    #[arg(long, env = "THINKGATE_INJECT_USAGE", num_args = 0..=1, default_missing_value = "true")]
    pub inject_usage: Option<bool>,
    /// Never modify requests or responses (no usage injection, no added headers).
    #[arg(long, env = "THINKGATE_PASSTHROUGH_STRICT", num_args = 0..=1, default_missing_value = "true")]
    pub passthrough_strict: Option<bool>,
    /// Add x-thinkgate-request-id and x-thinkgate-backend response headers.
    #[arg(long, env = "THINKGATE_RESPONSE_HEADERS", num_args = 0..=1, default_missing_value = "true")]
    pub response_headers: Option<bool>,
    /// Send the gateway's request id to engines as x-request-id when the client sent none (changes vLLM's response ids).
    #[arg(long, env = "THINKGATE_UPSTREAM_REQUEST_ID", num_args = 0..=1, default_missing_value = "true")]
    pub upstream_request_id: Option<bool>,
    /// Inline thinking markers: auto, starts-in-thinking (DeepSeek-R1 family) or off.
    #[arg(long, env = "THINKGATE_THINK_TAGS", value_parser = parse_think_tags)]
    pub think_tags: Option<ThinkTags>,
    /// Opening thinking marker.
    #[arg(long, env = "THINKGATE_THINK_OPEN")]
    pub think_open: Option<String>,
    /// Closing thinking marker.
    #[arg(long, env = "THINKGATE_THINK_CLOSE")]
    pub think_close: Option<String>,
    /// Write one JSON line per finished request to this file.
    #[arg(long, env = "THINKGATE_RECORDS")]
    pub records: Option<PathBuf>,
    /// Include output text (reasoning and content, never prompts) in records.
    #[arg(long, env = "THINKGATE_RECORDS_INCLUDE_TEXT", num_args = 0..=1, default_missing_value = "true")]
    pub records_include_text: Option<bool>,
    /// Records queued for the writer before new ones are dropped.
    #[arg(long, env = "THINKGATE_RECORDS_QUEUE")]
    pub records_queue: Option<usize>,
    /// Largest inference request body (413 beyond).
    #[arg(long, env = "THINKGATE_MAX_REQUEST_BODY_BYTES")]
    pub max_request_body_bytes: Option<usize>,
    /// Upstream TCP connect timeout, ms (502 beyond).
    #[arg(long, env = "THINKGATE_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Time allowed for the upstream's response head, s (504 beyond).
    #[arg(long, env = "THINKGATE_UPSTREAM_HEADER_TIMEOUT_SECS")]
    pub upstream_header_timeout_secs: Option<u64>,
    /// Time a client has to send a request head, s.
    #[arg(long, env = "THINKGATE_CLIENT_HEADER_TIMEOUT_SECS")]
    pub client_header_timeout_secs: Option<u64>,
    /// Time a client has to send an inference request body, s (408 beyond).
    #[arg(long, env = "THINKGATE_CLIENT_BODY_TIMEOUT_SECS")]
    pub client_body_timeout_secs: Option<u64>,
    /// Bearer token required on admin routes other than /healthz and /readyz.
    #[arg(long, env = "THINKGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, env = "THINKGATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// After the response head, how long the upstream may send nothing, s
    /// (0: no limit).
    #[arg(long, env = "THINKGATE_UPSTREAM_IDLE_TIMEOUT_SECS")]
    pub upstream_idle_timeout_secs: Option<u64>,
    /// Idle keep-alive connections kept per upstream.
    #[arg(long, env = "THINKGATE_POOL_MAX_IDLE_PER_HOST")]
    pub pool_max_idle_per_host: Option<usize>,
    /// On SIGTERM/SIGINT, how long in-flight streams may finish, s.
    #[arg(long, env = "THINKGATE_DRAIN_TIMEOUT_SECS", alias = "drain-timeout")]
    pub drain_timeout_secs: Option<u64>,
    /// Window of /stats, s.
    #[arg(long, env = "THINKGATE_STATS_WINDOW_SECS")]
    pub stats_window_secs: Option<u64>,
    /// Distinct model label values before new ones become "other".
    #[arg(long, env = "THINKGATE_MAX_MODEL_LABELS")]
    pub max_model_labels: Option<usize>,
    /// Requests in flight through the gateway at most (0: no limit).
    #[arg(long, env = "THINKGATE_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Requests in flight per backend at most (0: no limit).
    #[arg(long, env = "THINKGATE_MAX_INFLIGHT_PER_BACKEND")]
    pub max_inflight_per_backend: Option<u64>,
    /// Requests that may wait for a slot at a limit (0: none).
    #[arg(long, env = "THINKGATE_MAX_QUEUED")]
    pub max_queued: Option<usize>,
    /// How long a queued request waits, ms.
    #[arg(long, env = "THINKGATE_QUEUE_TIMEOUT_MS")]
    pub queue_timeout_ms: Option<u64>,
    /// Serve the proxy listener over TLS with this certificate chain (PEM).
    #[arg(long, env = "THINKGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The listener certificate's private key (PEM).
    #[arg(long, env = "THINKGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve the admin listener over TLS too, with the same certificate.
    #[arg(long, env = "THINKGATE_ADMIN_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub admin_tls: Option<bool>,
    /// CA certificates (PEM) trusted for https:// upstreams, besides the system's.
    #[arg(long, env = "THINKGATE_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Client certificate (PEM) shown to https:// upstreams that require mutual TLS.
    #[arg(long, env = "THINKGATE_UPSTREAM_CERT", requires = "upstream_key")]
    pub upstream_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "THINKGATE_UPSTREAM_KEY", requires = "upstream_cert")]
    pub upstream_key: Option<PathBuf>,
}

fn parse_think_tags(s: &str) -> Result<ThinkTags, String> {
    match s.replace('-', "_").as_str() {
        "auto" => Ok(ThinkTags::Auto),
        "starts_in_thinking" => Ok(ThinkTags::StartsInThinking),
        "off" => Ok(ThinkTags::Off),
        _ => Err(format!("{s:?}: expected auto, starts-in-thinking or off")),
    }
}

impl ServeArgs {
    /// The effective configuration: file, then variables and flags.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut c = Config::load(self.config.as_deref())?;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(
            listen,
            admin,
            health_interval_ms,
            scrape_interval_ms,
            eject_after_failures,
            eject_secs,
            session_header,
            prefix_bytes,
            inject_usage,
            passthrough_strict,
            response_headers,
            upstream_request_id,
            think_tags,
            think_open,
            think_close,
            records_include_text,
            records_queue,
            max_request_body_bytes,
            connect_timeout_ms,
            upstream_header_timeout_secs,
            client_header_timeout_secs,
            client_body_timeout_secs,
            upstream_idle_timeout_secs,
            pool_max_idle_per_host,
            drain_timeout_secs,
            stats_window_secs,
            max_model_labels,
            max_inflight,
            max_inflight_per_backend,
            max_queued,
            queue_timeout_ms
        );
        if self.records.is_some() {
            c.records = self.records.clone();
        }
        if self.admin_token.is_some() {
            c.admin_token = self.admin_token.clone();
        }
        if self.admin_token_file.is_some() {
            c.admin_token_file = self.admin_token_file.clone();
        }
        if !self.upstreams.is_empty() {
            c.upstreams = self.upstreams.clone();
        }
        if self.tls_cert.is_some() {
            c.tls.cert_file = self.tls_cert.clone();
            c.tls.key_file = self.tls_key.clone();
        }
        if let Some(on) = self.admin_tls {
            c.tls.admin = on;
        }
        if self.upstream_ca.is_some() {
            c.upstream_tls.ca_file = self.upstream_ca.clone();
        }
        if self.upstream_cert.is_some() {
            c.upstream_tls.cert_file = self.upstream_cert.clone();
            c.upstream_tls.key_file = self.upstream_key.clone();
        }
        if self.pool.is_some() {
            c.pool = self.pool.clone();
        }
        if let Some(p) = &self.policy {
            // Same parser as the file, so names and errors are the same.
            c.routing = toml::from_str(&format!("type = {:?}", p))
                .map_err(|e| ConfigError::Invalid(format!("--policy {p:?}: {e}")))?;
        }
        Ok(c)
    }
}
