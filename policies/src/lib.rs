//! Routing policies for thinkgate: the [`Policy`] trait, the views a policy
//! sees ([`Candidate`], [`RequestInfo`]), the health-safe [`select`], and the
//! built-in policies, chosen by name in config through [`registry`].
//!
//! A policy is a small struct: it picks one candidate for a request and may
//! learn from completions. It never sees an unhealthy backend (the caller's
//! [`select`] filters them) and never does I/O. See `README.md` for how to
//! add one.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod consistent_hash;
pub mod difficulty;
pub mod least;
pub mod p2c;
pub mod predict;
pub mod random;
pub mod registry;
pub mod round_robin;

pub use registry::{build, PolicyConfig};

/// Scraped engine state of a backend (any field may be unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineState {
    /// KV-cache use, 0..1 (vLLM `kv_cache_usage_perc`, SGLang `token_usage`).
    pub kv_usage: Option<f64>,
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    pub preemptions: Option<f64>,
}

/// What a policy sees of one backend at pick time: a snapshot of the
/// gateway's live counters and the last scrape.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// Index of the backend in the gateway's configuration.
    pub index: usize,
    pub name: String,
    pub pool: String,
    pub weight: u32,
    pub healthy: bool,
    /// Requests in flight through this gateway.
    pub inflight: u64,
    /// Prompt tokens plus tokens generated so far of every open stream: the
    /// gateway's own live estimate of the backend's KV occupancy.
    pub inflight_tokens: u64,
    /// Streams in their thinking phase.
    pub inflight_thinking: u64,
    /// EWMA of TTFT and of time per output token, seconds (0 when unknown).
    pub ewma_ttft_s: f64,
    pub ewma_tpot_s: f64,
    pub engine: EngineState,
}

/// A client's reasoning effort, as OpenAI names it (gpt-oss and vLLM's
/// chat templates read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReasoningEffort {
    None,
    Minimal,
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    /// The wire value; `None` for a value this list does not know.
    pub fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "none" => Self::None,
            "minimal" => Self::Minimal,
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Minimal => "minimal",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// What a policy knows about a request before it runs.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub model: Option<String>,
    pub prompt_bytes: usize,
    /// Prompt length estimate (bytes / 4).
    pub prompt_tokens: u64,
    pub max_tokens: Option<u64>,
    /// Whether thinking is enabled (`chat_template_kwargs.enable_thinking`,
    /// or a reasoning effort of `none`).
    pub thinking: bool,
    /// The reasoning effort the client asked for (chat `reasoning_effort`,
    /// Responses `reasoning.effort`): a request-side signal of how long
    /// the model will think.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// `include_reasoning: false`: the engine thinks but does not stream
    /// the thinking (the client waits without seeing progress).
    pub include_reasoning: Option<bool>,
    /// Session or user key (configured header, else the `user` field).
    pub session: Option<String>,
    /// Hash of the first N bytes of the prompt.
    pub prefix_hash: u64,
    /// Hash of the system prompt: the application (0: none).
    pub app: u64,
    /// Hash of the system prompt and first user message: one conversation's
    /// turns share it.
    pub conversation: u64,
    /// User turns in the request (1: a first turn).
    pub turns: u32,
    /// Length estimate of the last user message (bytes / 4).
    pub question_tokens: u64,
    /// The request offers tools.
    pub tools: bool,
    /// `x-thinkgate-difficulty`: easy | medium | hard, or a number of
    /// expected thinking tokens.
    pub difficulty_hint: Option<f64>,
    /// `x-thinkgate-priority`.
    pub priority: Option<i32>,
    /// Set by a policy's [`Policy::prepare`]: its prediction of the
    /// request's thinking tokens, kept so `pick` and `observe` agree and the
    /// gateway can record it.
    pub predicted_thinking: Option<f64>,
}

/// What the gateway reports when a request ends.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub ok: bool,
    pub thinking_tokens: u64,
    pub visible_tokens: u64,
    pub ttft_s: Option<f64>,
    pub e2e_s: f64,
}

/// A routing policy. `pick` runs once per request on the request path (no
/// locks, no I/O); `observe` runs once per finished request.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Used as the `policy` metric label.
    fn name(&self) -> &'static str;

    /// Runs once before `pick` with the request still mutable (e.g. to
    /// attach a prediction).
    fn prepare(&self, _req: &mut RequestInfo) {}

    /// Choose one of `candidates` (all healthy, never empty) for `req`;
    /// returns a position in `candidates`.
    fn pick(&self, req: &RequestInfo, candidates: &[Candidate]) -> usize;

    /// A backend for a retry or a hedge of a request this policy already
    /// placed (the backends it was tried on are not offered): the best other
    /// one, *without* counting as a pick, so that round robin's cursor,
    /// weights and placement counts stay what the ordinary picks made them.
    /// Default: the fewest requests in flight, then the fewest in-flight
    /// tokens.
    fn pick_other(&self, _req: &RequestInfo, candidates: &[Candidate]) -> usize {
        argmin_by(candidates, 0, |c| (c.inflight, c.inflight_tokens))
    }

    /// The request placed on `from` runs on `to` now (a retry went there, or
    /// a hedge there won the race): move what the policy counted for it, so
    /// that `observe` on `to` settles it.
    fn moved(&self, _req: &RequestInfo, _from: usize, _to: usize) {}

    /// A request that this policy routed has finished on `backend` (the
    /// configuration index).
    fn observe(&self, _req: &RequestInfo, _backend: usize, _done: &Completion) {}

    /// Policy-specific figures for `/stats` (e.g. predictor accuracy).
    fn stats(&self) -> Option<String> {
        None
    }
}

/// No backend could take the request (the gateway answers 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no healthy backend{}", .pool.as_ref().map(|p| format!(" in pool {p:?}")).unwrap_or_default())]
pub struct NoBackend {
    pub pool: Option<String>,
}

/// Pick a backend for `req`: only healthy backends (of `pool`, when given)
/// are offered to the policy. Returns the configuration index.
pub fn select(
    policy: &dyn Policy,
    req: &RequestInfo,
    all: &[Candidate],
    pool: Option<&str>,
) -> Result<usize, NoBackend> {
    select_by(req, all, pool, |req, offered| policy.pick(req, offered))
}

/// As [`select`], for a retry or a hedge: [`Policy::pick_other`], which
/// does not count as a pick.
pub fn select_other(
    policy: &dyn Policy,
    req: &RequestInfo,
    all: &[Candidate],
    pool: Option<&str>,
) -> Result<usize, NoBackend> {
    select_by(req, all, pool, |req, offered| {
        policy.pick_other(req, offered)
    })
}

fn select_by(
    req: &RequestInfo,
    all: &[Candidate],
    pool: Option<&str>,
    pick: impl Fn(&RequestInfo, &[Candidate]) -> usize,
) -> Result<usize, NoBackend> {
    let eligible = |c: &Candidate| c.healthy && pool.is_none_or(|p| c.pool == p);
    // The usual case (every backend eligible) offers the slice as it is;
    // only a fleet with unhealthy or out-of-pool backends pays for a copy.
    let owned: Vec<Candidate>;
    let offered: &[Candidate] = if all.iter().all(eligible) {
        all
    } else {
        owned = all.iter().filter(|c| eligible(c)).cloned().collect();
        &owned
    };
    if offered.is_empty() {
        return Err(NoBackend {
            pool: pool.map(String::from),
        });
    }
    let i = pick(req, offered).min(offered.len() - 1);
    Ok(offered[i].index)
}

/// Index of the minimum of `key` over `c`, ties broken by rotating from
/// `start` so equal backends share the load instead of the first taking all.
pub(crate) fn argmin_by<K: PartialOrd>(
    c: &[Candidate],
    start: usize,
    key: impl Fn(&Candidate) -> K,
) -> usize {
    let n = c.len();
    let mut best = start % n;
    for k in 1..n {
        let i = (start + k) % n;
        if key(&c[i]) < key(&c[best]) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub fn backends(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                index: i,
                name: format!("http://b{i}:8000"),
                pool: "default".into(),
                weight: 1,
                healthy: true,
                ..Candidate::default()
            })
            .collect()
    }
}
