//! What the gateway did to a request beyond forwarding it: noted in its
//! record (`actions`) and counted per arm.

use super::extra_legs::LegKind;
use crate::metrics::{ForcedTrigger, HedgeResult, Labels, RetryReason};
use serde::Serialize;

/// Why an answer was forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Thinking reached the budget.
    Budget,
    /// The deadline minus the answer reserve passed while still thinking.
    Deadline,
    /// Thinking looped (`straggler.on_loop = "force_answer"`).
    Loop,
}

impl Trigger {
    /// Its metric label (the same word as in the record).
    pub fn label(self) -> ForcedTrigger {
        match self {
            Trigger::Budget => ForcedTrigger::Budget,
            Trigger::Deadline => ForcedTrigger::Deadline,
            Trigger::Loop => ForcedTrigger::Loop,
        }
    }
}

/// How a forced answer was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForcedWay {
    /// The first leg was dropped and a continuation request answered
    /// (the engine prefilled the thinking again).
    Continuation,
    /// The engine ended the thinking inside the running stream (llama.cpp
    /// `reasoning_control`): no second request, no prefill.
    Native,
}

impl ForcedWay {
    pub fn label(self) -> crate::metrics::ForcedWayLabel {
        match self {
            ForcedWay::Continuation => crate::metrics::ForcedWayLabel::Continuation,
            ForcedWay::Native => crate::metrics::ForcedWayLabel::Native,
        }
    }
}

/// One action, in the order taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Failed before any byte reached the client on `backend`; sent again
    /// elsewhere.
    Retry {
        backend: String,
        reason: RetryReason,
    },
    /// A retry or a hedge was due, and the budget they share
    /// (`straggler.extra_legs_ratio`) had no credit: the request went on
    /// without it.
    ExtraRefused { kind: LegKind },
    /// A duplicate went to `backend` after `after_ms` without a first token.
    HedgeSent { backend: String, after_ms: u64 },
    /// The hedge produced the first token first (the original was aborted).
    HedgeWon { backend: String },
    /// The original produced the first token first (the hedge was aborted).
    HedgeWasted { backend: String },
    /// Thinking was closed at `thinking_tokens` and the answer forced,
    /// `way` says how.
    ForcedAnswer {
        trigger: Trigger,
        thinking_tokens: u64,
        way: ForcedWay,
    },
    /// A forced answer could not be continued; the stream was ended with
    /// `finish_reason: "length"`.
    ForcedFallback { reason: String },
    /// The hard deadline passed; the stream was ended with
    /// `finish_reason: "length"`.
    DeadlineHit,
    /// Thinking looped (`straggler.on_loop = "end"`): the stream was ended
    /// with `finish_reason: "length"` at `thinking_tokens`.
    LoopEnded { thinking_tokens: u64 },
    /// A budget or deadline applied to a request of an API the gateway
    /// cannot rewrite (`responses`): forwarded as sent, nothing enforced.
    NotEnforced {
        api: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        thinking_budget: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
    },
}

impl Action {
    /// Count it.
    pub fn count(&self, labels: &Labels) {
        match self {
            Action::Retry { reason, .. } => labels.straggler_retry(*reason),
            Action::ExtraRefused { kind } => labels.straggler_extra_refused(*kind),
            Action::HedgeSent { .. } => labels.straggler_hedge(HedgeResult::Sent),
            Action::HedgeWon { .. } => labels.straggler_hedge(HedgeResult::Won),
            Action::HedgeWasted { .. } => labels.straggler_hedge(HedgeResult::Wasted),
            Action::ForcedAnswer {
                trigger,
                thinking_tokens,
                way,
            } => labels.straggler_forced(trigger.label(), way.label(), *thinking_tokens),
            Action::ForcedFallback { .. } => labels.straggler_fallback(),
            Action::DeadlineHit => labels.straggler_deadline(),
            Action::LoopEnded { .. } => labels.straggler_loop_end(),
            Action::NotEnforced { .. } => labels.straggler_not_enforced(),
        }
    }
}
