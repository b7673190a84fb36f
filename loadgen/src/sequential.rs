//! The always-valid sequential test (`thinkgate_asu::sequential`, mSPRT)
//! over a comparison's requests in arrival order: what `load compare`
//! prints under its table.

use crate::compare::{Pick, Sample};
pub use thinkgate_asu::sequential::{run, Decision, Verdict};

/// The metrics watched live: means of TTFVT and E2E over the requests that
/// ended normally, and the shares of failed requests and (where graded)
/// right answers over all of them.
pub fn watch(a: &[Sample], b: &[Sample], alpha: f64) -> Vec<(&'static str, Verdict)> {
    let in_order = |f: &Pick<'_, f64>| {
        let mut v: Vec<(f64, bool, f64)> = a
            .iter()
            .filter_map(|s| Some((s.at, false, f(s)?)))
            .chain(b.iter().filter_map(|s| Some((s.at, true, f(s)?))))
            .collect();
        v.sort_by(|x, y| x.0.total_cmp(&y.0));
        v.into_iter().map(|(_, is_b, x)| (is_b, x))
    };
    let bit = |x: bool| if x { 1.0 } else { 0.0 };
    let metrics: [(&'static str, &Pick<'_, f64>); 4] = [
        ("ttfvt.mean", &|s| s.ok().then_some(s.ttfvt_s).flatten()),
        ("e2e.mean", &|s| s.ok().then_some(s.e2e_s)),
        ("errors", &|s| Some(bit(s.failed()))),
        ("accuracy", &|s| s.correct.map(bit)),
    ];
    metrics
        .into_iter()
        .filter_map(|(name, f)| {
            let v = run(in_order(f), alpha);
            (v.n_a > 0 && v.n_b > 0).then_some((name, v))
        })
        .collect()
}

/// The live test's lines under the comparison table.
pub fn table(verdicts: &[(&str, Verdict)], alpha: f64) -> String {
    use std::fmt::Write;
    let mut o = format!(
        "sequential test (mSPRT, always valid: may be read after every request; alpha {alpha})\n"
    );
    for (name, v) in verdicts {
        let what = match v.decision {
            Decision::BLower => format!("B lower, decided after {} + {} requests", v.n_a, v.n_b),
            Decision::BHigher => format!("B higher, decided after {} + {} requests", v.n_a, v.n_b),
            Decision::KeepRunning => {
                format!("keep running ({} + {} requests so far)", v.n_a, v.n_b)
            }
        };
        let interval = if v.lo.is_finite() && v.hi.is_finite() {
            format!("in [{:.4}, {:.4}]", v.lo, v.hi)
        } else {
            "(no variance yet)".into()
        };
        let _ = writeln!(o, "{name:<16} {what}; B-A {:.4} {interval}", v.estimate);
    }
    o
}
