//! The README's metric table names every label value the gateway emits:
//! the values come from the enums the code emits them from, so a value
//! added in code and not in the README fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use thinkgate::metrics::{
    self, Api, ForcedTrigger, ForcedWayLabel, HedgeResult, LegKind, ReloadResult, RetryReason,
    TlsFailure, TlsSide, TokenKind, UpstreamError,
};
use thinkgate::record::Outcome;

/// The README's table row of `metric`.
fn row<'a>(readme: &'a str, metric: &str) -> &'a str {
    let head = format!("| `{metric}` |");
    readme
        .lines()
        .find(|l| l.starts_with(&head))
        .unwrap_or_else(|| panic!("README's metric table has no row for {metric}"))
}

#[test]
fn the_readme_lists_every_label_value() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let strs = |v: Vec<&'static str>| v;
    let expected: Vec<(&str, Vec<&str>)> = vec![
        (
            metrics::REQUESTS,
            strs(Outcome::ALL.iter().map(|o| o.as_str()).collect()),
        ),
        (
            metrics::UPSTREAM_ERRORS,
            UpstreamError::ALL.iter().map(|k| k.as_str()).collect(),
        ),
        (
            metrics::OUTPUT_TOKENS,
            TokenKind::ALL.iter().map(|k| k.as_str()).collect(),
        ),
        (
            metrics::HEDGES,
            HedgeResult::ALL.iter().map(|k| k.as_str()).collect(),
        ),
        (
            metrics::CONFIG_RELOADS,
            ReloadResult::ALL.iter().map(|k| k.as_str()).collect(),
        ),
        (
            metrics::FORCED_ANSWERS,
            ForcedTrigger::ALL
                .iter()
                .map(|t| t.as_str())
                .chain(ForcedWayLabel::ALL.iter().map(|w| w.as_str()))
                .collect(),
        ),
        (metrics::RETRIES, RetryReason::FIXED.to_vec()),
        (
            metrics::EXTRA_REFUSED,
            LegKind::ALL.iter().map(|k| k.as_str()).collect(),
        ),
        (metrics::ROUTES_REFUSED, vec!["suspicious", "other"]),
        (
            metrics::TLS_ERRORS,
            TlsSide::ALL
                .iter()
                .map(|s| s.as_str())
                .chain(TlsFailure::ALL.iter().map(|k| k.as_str()))
                .collect(),
        ),
        (
            metrics::TLS_RELOADS,
            ReloadResult::ALL.iter().map(|k| k.as_str()).collect(),
        ),
        (
            metrics::CLIENT_REFUSED,
            vec!["unknown", "unknown_key", "limited"],
        ),
    ];
    let mut missing = Vec::new();
    let common = readme
        .split("## Metric reference")
        .nth(1)
        .and_then(|t| t.split("| metric |").next())
        .unwrap_or_default();
    for a in Api::ALL {
        if !common.contains(&format!("`{}`", a.as_str())) {
            missing.push(format!("api: `{}`", a.as_str()));
        }
    }
    for (metric, values) in &expected {
        let r = row(&readme, metric);
        for v in values {
            if !r.contains(&format!("`{v}`")) {
                missing.push(format!("{metric}: `{v}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "label values the README does not list: {missing:?}"
    );
    // and every metric has a row
    for m in metrics::ALL {
        row(&readme, m);
    }
}
