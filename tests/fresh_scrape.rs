//! A fresh gateway, before any request, already exports every series the
//! dashboard and the alert rules name (at 0), so Grafana shows 0 instead of
//! "No data" and an alert over a counter that has not moved matches a
//! series. Its own test binary: the metrics recorder is per process, and no
//! other test may have sent a request first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

/// A gauge of a measured value has no honest 0: it appears with the first
/// measurement (the first scrape of the engine's `/metrics`, the first
/// feedback grade).
const MEASURED: &[&str] = &[
    "thinkgate_backend_kv_usage",
    "thinkgate_experiment_accuracy",
];

#[tokio::test]
async fn a_fresh_gateway_exports_what_the_dashboard_and_the_rules_name() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!("{root}/dashboards/thinkgate.json")).unwrap();
    let rules = std::fs::read_to_string(format!(
        "{root}/helm/thinkgate/templates/prometheusrule.yaml"
    ))
    .unwrap();
    let wanted: BTreeSet<String> = common::metric_names(&dashboard)
        .into_iter()
        .chain(common::metric_names(&rules))
        .filter(|n| !MEASURED.contains(&n.as_str()))
        .collect();
    assert!(wanted.len() > 15, "{wanted:?}");

    // two backends and an experiment with two arms; nothing sent yet
    let up = common::upstream(|_, _| common::Script::json("{}")).await;
    let gw = common::gateway(vec![up.url(), format!("{}/other", up.url())], |c| {
        c.experiment = Some(
            serde_json::from_value(serde_json::json!({
                "assign_by": "random",
                "arms": [
                    {"name": "a", "weight": 1, "routing": {"type": "round_robin"}},
                    {"name": "b", "weight": 1, "routing": {"type": "least_request"}}
                ]
            }))
            .unwrap(),
        );
    })
    .await;
    let scrape = common::scrape(&gw).await;
    let exported = common::metric_names(&scrape);
    let missing: Vec<&String> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "not exported before a request: {missing:?}\n{scrape}"
    );
    // each with its help text (promtool refuses a family without one)
    for n in &exported {
        assert!(
            scrape.contains(&format!("# HELP {n} ")),
            "{n} has no help text"
        );
    }
    // per backend and arm, at 0
    for (backend, arm) in [(up.url(), "a"), (format!("{}/other", up.url()), "b")] {
        let v = common::metric(
            &scrape,
            "thinkgate_upstream_errors_total",
            &[("backend", &backend), ("arm", arm), ("kind", "reset")],
        );
        assert_eq!(v, Some(0.0), "{backend} {arm}");
        // healthy until a check says otherwise: no "all backends down" at start
        let healthy = common::metric(
            &scrape,
            "thinkgate_backend_healthy",
            &[("backend", &backend)],
        );
        assert_eq!(healthy, Some(1.0), "{backend}");
    }
    assert_eq!(
        common::metric(
            &scrape,
            "thinkgate_forced_answers_total",
            &[("arm", "b"), ("trigger", "deadline")]
        ),
        Some(0.0)
    );
    // and nothing counts a request that did not happen
    assert!(
        scrape
            .lines()
            .filter(|l| l.starts_with("thinkgate_") && l.contains("_total"))
            .all(|l| l.ends_with(" 0")),
        "{scrape}"
    );
}
