//! `[straggler]`: thinking budgets, deadlines, hedging, retries and
//! long-thinker isolation. Everything is off by default except one retry of
//! a request that failed before any byte reached the client.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Straggler handling for every request (arms may override the budget and
/// the deadline; a request may lower them with headers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StragglerConfig {
    /// Thinking tokens a request may spend before the gateway forces its
    /// answer. Unset or 0: unlimited.
    pub thinking_budget: Option<u64>,
    /// Budgets by model name (override `thinking_budget`; 0: unlimited).
    pub model_budgets: BTreeMap<String, u64>,
    /// Text placed after the close marker in a forced answer's assistant
    /// message (the model continues from there).
    pub answer_cue: String,
    /// `max_tokens` of a forced answer when the request set none (unset:
    /// the engine's default).
    pub answer_max_tokens: Option<u64>,
    /// End-to-end deadline of every request, ms. Unset or 0: none.
    pub deadline_ms: Option<u64>,
    /// Time kept for the answer: thinking is forced to close this long
    /// before the deadline. Unset: a quarter of the deadline.
    pub answer_reserve_ms: Option<u64>,
    /// Also pass the budget to engines that enforce one themselves (vLLM
    /// `thinking_token_budget`, llama.cpp `thinking_budget_tokens`); the
    /// gateway still forces at budget + `native_slack` if the engine did not.
    pub native_budget: bool,
    pub native_slack: u64,
    /// End thinking inside the running stream where the engine can (llama.cpp
    /// `reasoning_control`: the first leg asks for it, a forced answer calls
    /// `/v1/chat/completions/control`), and use the continuation only when
    /// that call fails or thinking does not stop.
    pub native_end: bool,
    pub hedge: HedgeConfig,
    /// Retries on another backend of a request that failed before any byte
    /// reached the client (connect error, reset, or a `retry_statuses`
    /// status).
    pub retries: u32,
    pub retry_statuses: Vec<u16>,
    /// Retries and hedges together, per request over time (one budget:
    /// each request adds this much of an extra leg, each retry or hedge
    /// spends one; a retry after a connect error spends nothing).
    pub extra_legs_ratio: f64,
    /// Extra legs a second the budget gains whatever the traffic, so a
    /// quiet gateway can still retry.
    pub extra_legs_per_sec: f64,
    /// Requests in their thinking phase a backend may hold before new
    /// requests prefer other backends (with every routing policy). Unset:
    /// no cap.
    pub max_thinking_per_backend: Option<u64>,
    /// What to do when a request's thinking loops (`[loops]` finds it):
    /// `count` (the default: counted and recorded, the stream goes on),
    /// `force_answer` (close thinking as a budget does) or `end` (end the
    /// stream as a length cut).
    pub on_loop: LoopAction,
}

/// `straggler.on_loop`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoopAction {
    #[default]
    Count,
    ForceAnswer,
    End,
}

impl Default for StragglerConfig {
    fn default() -> Self {
        Self {
            thinking_budget: None,
            model_budgets: BTreeMap::new(),
            answer_cue: "\n\n".into(),
            answer_max_tokens: None,
            deadline_ms: None,
            answer_reserve_ms: None,
            native_budget: false,
            native_slack: 32,
            native_end: true,
            hedge: HedgeConfig::default(),
            retries: 1,
            retry_statuses: vec![500, 502, 503, 504],
            extra_legs_ratio: 0.2,
            extra_legs_per_sec: 1.0,
            max_thinking_per_backend: None,
            on_loop: LoopAction::Count,
        }
    }
}

/// Hedging before the first token (`[straggler.hedge]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HedgeConfig {
    /// Send a duplicate after this long without a first token, ms.
    pub after_ms: Option<u64>,
    /// Or after this percentile (0-1) of the backend's recent TTFTs (at
    /// least `min_after_ms`; `after_ms` until enough TTFTs are known).
    pub after_percentile: Option<f64>,
    pub min_after_ms: u64,
    /// Hedges per request at most, over time (a token bucket: each request
    /// adds this much credit, each hedge spends one), within the budget
    /// hedges share with retries (`straggler.extra_legs_ratio`).
    pub max_ratio: f64,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            after_ms: None,
            after_percentile: None,
            min_after_ms: 50,
            max_ratio: 0.1,
        }
    }
}

impl HedgeConfig {
    pub fn enabled(&self) -> bool {
        self.after_ms.is_some() || self.after_percentile.is_some()
    }
}

impl StragglerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = self.hedge.after_percentile {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "straggler.hedge.after_percentile must be in 0..=1, got {p}"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.hedge.max_ratio) {
            return Err(format!(
                "straggler.hedge.max_ratio must be in 0..=1, got {}",
                self.hedge.max_ratio
            ));
        }
        if !(0.0..=1.0).contains(&self.extra_legs_ratio) {
            return Err(format!(
                "straggler.extra_legs_ratio must be in 0..=1, got {}",
                self.extra_legs_ratio
            ));
        }
        if !(self.extra_legs_per_sec.is_finite() && self.extra_legs_per_sec >= 0.0) {
            return Err(format!(
                "straggler.extra_legs_per_sec must be 0 or more, got {}",
                self.extra_legs_per_sec
            ));
        }
        if let (Some(d), Some(r)) = (self.deadline_ms, self.answer_reserve_ms) {
            if d > 0 && r >= d {
                return Err(format!(
                    "straggler.answer_reserve_ms ({r}) must be below deadline_ms ({d})"
                ));
            }
        }
        if self.retry_statuses.iter().any(|s| !(100..600).contains(s)) {
            return Err("straggler.retry_statuses must be HTTP status codes".into());
        }
        Ok(())
    }

    /// Whether any request could need the managed path.
    pub fn manages(&self) -> bool {
        self.thinking_budget.is_some_and(|b| b > 0)
            || self.model_budgets.values().any(|b| *b > 0)
            || self.deadline_ms.is_some_and(|d| d > 0)
            || self.hedge.enabled()
    }
}
