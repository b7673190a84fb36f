//! What the gateway did to a request beyond forwarding it: noted in its
//! record (`actions`) and counted per arm.

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
}

impl Trigger {
    /// Its metric label (the same word as in the record).
    pub fn label(self) -> ForcedTrigger {
        match self {
            Trigger::Budget => ForcedTrigger::Budget,
            Trigger::Deadline => ForcedTrigger::Deadline,
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
    /// A duplicate went to `backend` after `after_ms` without a first token.
    HedgeSent { backend: String, after_ms: u64 },
    /// The hedge produced the first token first (the original was aborted).
    HedgeWon { backend: String },
    /// The original produced the first token first (the hedge was aborted).
    HedgeWasted { backend: String },
    /// The first leg was aborted at `thinking_tokens` and the answer forced.
    ForcedAnswer {
        trigger: Trigger,
        thinking_tokens: u64,
    },
    /// A forced answer could not be continued; the stream was ended with
    /// `finish_reason: "length"`.
    ForcedFallback { reason: String },
    /// The hard deadline passed; the stream was ended with
    /// `finish_reason: "length"`.
    DeadlineHit,
}

impl Action {
    /// Count it.
    pub fn count(&self, labels: &Labels) {
        match self {
            Action::Retry { reason, .. } => labels.straggler_retry(*reason),
            Action::HedgeSent { .. } => labels.straggler_hedge(HedgeResult::Sent),
            Action::HedgeWon { .. } => labels.straggler_hedge(HedgeResult::Won),
            Action::HedgeWasted { .. } => labels.straggler_hedge(HedgeResult::Wasted),
            Action::ForcedAnswer {
                trigger,
                thinking_tokens,
            } => labels.straggler_forced(trigger.label(), *thinking_tokens),
            Action::ForcedFallback { .. } => labels.straggler_fallback(),
            Action::DeadlineHit => labels.straggler_deadline(),
        }
    }
}
