//! Straggler handling at the gateway, for any engine: thinking budgets with
//! forced answers, deadlines, hedging before the first token, retries before
//! the first byte, and long-thinker isolation.
//!
//! This module holds *what* to enforce on a request (its [`Plan`], from
//! headers, arm, model and global settings), the settings, the actions
//! recorded, and the gateway-wide budget of extra legs (retries and hedges). A request with nothing to
//! enforce takes the plain path (bytes pass through untouched); one with a
//! budget, a deadline or hedging is *managed* (see `crate::managed`).

pub mod action;
pub mod config;
pub mod extra_legs;

pub use config::{HedgeConfig, LoopAction, StragglerConfig};

use crate::error::GatewayError;
use http::HeaderMap;
use std::time::Duration;

/// Per-request thinking budget (tokens); lowers the operator's, never
/// raises it. `0` asks for no budget of its own.
pub const BUDGET_HEADER: &str = "x-thinkgate-thinking-budget";
/// Per-request end-to-end deadline (ms); lowers the operator's.
pub const DEADLINE_HEADER: &str = "x-thinkgate-deadline-ms";

/// What the gateway enforces on one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Plan {
    /// Force the answer once thinking reaches this many tokens.
    pub budget: Option<u64>,
    /// Tokens at which the gateway forces when the engine was handed the
    /// budget natively (budget + slack); equals `budget` otherwise.
    pub force_budget: Option<u64>,
    /// End the response by this time after `t_recv`.
    pub deadline: Option<Duration>,
    /// Force thinking to close by this time after `t_recv`.
    pub force_at: Option<Duration>,
    /// Hedge before the first token.
    pub hedge: bool,
    /// What a thinking loop makes the gateway do.
    pub on_loop: LoopAction,
}

/// The operator's settings for a request's arm.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArmLimits {
    pub thinking_budget: Option<u64>,
    pub deadline_ms: Option<u64>,
}

fn header_u64(h: &HeaderMap, name: &str) -> Result<Option<u64>, GatewayError> {
    let Some(v) = h.get(name) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            GatewayError::BadRequest(format!("header {name} must be a non-negative integer"))
        })
}

/// `a` lowered by `b` when `b` is set and positive.
fn lowered(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b.filter(|x| *x > 0)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Plan {
    /// Resolve a request's plan: header, then arm, then model, then global.
    pub fn resolve(
        cfg: &StragglerConfig,
        arm: ArmLimits,
        model: Option<&str>,
        headers: &HeaderMap,
        native: bool,
    ) -> Result<Plan, GatewayError> {
        let operator_budget = arm
            .thinking_budget
            .or_else(|| model.and_then(|m| cfg.model_budgets.get(m).copied()))
            .or(cfg.thinking_budget)
            .filter(|b| *b > 0);
        let budget = lowered(operator_budget, header_u64(headers, BUDGET_HEADER)?);
        let operator_deadline = arm.deadline_ms.or(cfg.deadline_ms).filter(|d| *d > 0);
        let deadline_ms = lowered(operator_deadline, header_u64(headers, DEADLINE_HEADER)?);
        let force_at = deadline_ms.map(|d| {
            let reserve = cfg.answer_reserve_ms.unwrap_or(d / 4).min(d);
            Duration::from_millis(d - reserve)
        });
        let native = native && cfg.native_budget;
        Ok(Plan {
            budget,
            force_budget: budget.map(|b| if native { b + cfg.native_slack } else { b }),
            deadline: deadline_ms.map(Duration::from_millis),
            force_at,
            hedge: cfg.hedge.enabled(),
            on_loop: cfg.on_loop,
        })
    }

    /// Whether the request needs the managed path.
    pub fn manages(&self) -> bool {
        self.budget.is_some()
            || self.deadline.is_some()
            || self.hedge
            || self.on_loop != LoopAction::Count
    }

    /// Whether the answer may be forced (a budget or a deadline).
    pub fn forces(&self) -> bool {
        self.budget.is_some() || self.force_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn precedence_header_lowers_arm_over_model_over_global() {
        let mut cfg = StragglerConfig {
            thinking_budget: Some(4000),
            ..Default::default()
        };
        cfg.model_budgets.insert("m".into(), 2000);
        let none = ArmLimits::default();
        let p = |arm, model, h: &HeaderMap| Plan::resolve(&cfg, arm, model, h, false).unwrap();
        assert_eq!(p(none, None, &hdr(&[])).budget, Some(4000));
        assert_eq!(p(none, Some("m"), &hdr(&[])).budget, Some(2000));
        let arm = ArmLimits {
            thinking_budget: Some(1000),
            deadline_ms: None,
        };
        assert_eq!(p(arm, Some("m"), &hdr(&[])).budget, Some(1000));
        // An arm may lift the budget (0 = unlimited) for an A/B test.
        let unlimited = ArmLimits {
            thinking_budget: Some(0),
            deadline_ms: None,
        };
        assert_eq!(p(unlimited, Some("m"), &hdr(&[])).budget, None);
        // A client lowers, never raises.
        assert_eq!(
            p(none, None, &hdr(&[(BUDGET_HEADER, "500")])).budget,
            Some(500)
        );
        assert_eq!(
            p(none, None, &hdr(&[(BUDGET_HEADER, "9000")])).budget,
            Some(4000)
        );
        assert_eq!(
            p(none, None, &hdr(&[(BUDGET_HEADER, "0")])).budget,
            Some(4000)
        );
        assert!(Plan::resolve(&cfg, none, None, &hdr(&[(BUDGET_HEADER, "x")]), false).is_err());
    }

    #[test]
    fn deadline_keeps_an_answer_reserve() {
        let cfg = StragglerConfig::default();
        let p = Plan::resolve(
            &cfg,
            ArmLimits::default(),
            None,
            &hdr(&[(DEADLINE_HEADER, "8000")]),
            false,
        )
        .unwrap();
        assert_eq!(p.deadline, Some(Duration::from_secs(8)));
        assert_eq!(p.force_at, Some(Duration::from_secs(6)));
        assert!(p.manages() && p.forces());
        assert!(!Plan::default().manages());
    }

    #[test]
    fn native_budget_forces_only_past_the_slack() {
        let cfg = StragglerConfig {
            thinking_budget: Some(100),
            native_budget: true,
            native_slack: 20,
            ..Default::default()
        };
        let p = Plan::resolve(&cfg, ArmLimits::default(), None, &HeaderMap::new(), true).unwrap();
        assert_eq!((p.budget, p.force_budget), (Some(100), Some(120)));
        let p = Plan::resolve(&cfg, ArmLimits::default(), None, &HeaderMap::new(), false).unwrap();
        assert_eq!(p.force_budget, Some(100));
    }
}
