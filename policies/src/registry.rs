//! Policies by name: the `[routing]` config table is one of these, tagged by
//! `type`. An unknown type or field is a startup error.

use crate::consistent_hash::{ConsistentHash, HashKey};
use crate::difficulty::{DifficultyAware, DifficultyConfig};
use crate::least::{LeastKv, LeastRequest, LeastTokens};
use crate::p2c::{P2c, Signal};
use crate::random::{Random, Weighted};
use crate::round_robin::RoundRobin;
use crate::Policy;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyConfig {
    #[default]
    RoundRobin,
    Random,
    Weighted,
    LeastRequest,
    LeastTokens,
    LeastKv,
    P2c {
        #[serde(default)]
        signal: Signal,
    },
    ConsistentHash {
        #[serde(default)]
        key: HashKey,
        #[serde(default = "default_load_factor")]
        load_factor: f64,
    },
    DifficultyAware(DifficultyConfig),
}

fn default_load_factor() -> f64 {
    1.25
}

/// Every built-in policy, for tests and docs.
pub const NAMES: &[&str] = &[
    "round_robin",
    "random",
    "weighted",
    "least_request",
    "least_tokens",
    "least_kv",
    "p2c",
    "consistent_hash",
    "difficulty_aware",
];

/// Build the policy for backends named `names` (configuration order).
pub fn build(cfg: &PolicyConfig, names: &[String]) -> Arc<dyn Policy> {
    match cfg {
        PolicyConfig::RoundRobin => Arc::new(RoundRobin::default()),
        PolicyConfig::Random => Arc::new(Random),
        PolicyConfig::Weighted => Arc::new(Weighted),
        PolicyConfig::LeastRequest => Arc::new(LeastRequest::default()),
        PolicyConfig::LeastTokens => Arc::new(LeastTokens::default()),
        PolicyConfig::LeastKv => Arc::new(LeastKv::default()),
        PolicyConfig::P2c { signal } => Arc::new(P2c { signal: *signal }),
        PolicyConfig::ConsistentHash { key, load_factor } => {
            Arc::new(ConsistentHash::new(names, *key, *load_factor))
        }
        PolicyConfig::DifficultyAware(c) => Arc::new(DifficultyAware::new(c.clone(), names.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::backends;
    use crate::{select, Candidate, EngineState, RequestInfo};
    use proptest::prelude::*;

    fn parse(toml_text: &str) -> Result<PolicyConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    fn all_configs() -> Vec<PolicyConfig> {
        NAMES
            .iter()
            .map(|n| parse(&format!("type = \"{n}\"")).unwrap_or_else(|e| panic!("{n}: {e}")))
            .collect()
    }

    #[test]
    fn every_name_builds_and_bad_config_is_an_error() {
        let names: Vec<String> = backends(3).iter().map(|b| b.name.clone()).collect();
        for c in all_configs() {
            let p = build(&c, &names);
            assert!(NAMES.contains(&p.name()));
        }
        assert!(parse("type = \"fastest\"").is_err(), "unknown policy");
        assert!(
            parse("type = \"p2c\"\nsignall = \"kv\"").is_err(),
            "unknown field"
        );
        assert!(parse(
            "type = \"difficulty_aware\"\nlong_pool = \"long\"\nlong_threshold_tokens = 3000"
        )
        .is_ok());
        assert!(parse("type = \"p2c\"\nsignal = \"tokens\"").is_ok());
    }

    prop_compose! {
        fn candidate(i: usize)(healthy in any::<bool>(), inflight in 0u64..50, tokens in 0u64..100_000,
                               thinking in 0u64..20, kv in proptest::option::of(0.0f64..1.0), w in 0u32..4,
                               pool in prop_oneof![Just("default"), Just("long")]) -> Candidate {
            Candidate {
                index: i, name: format!("b{i}"), pool: pool.into(), weight: w, healthy, inflight,
                inflight_tokens: tokens, inflight_thinking: thinking, ewma_ttft_s: 0.05,
                engine: EngineState { kv_usage: kv, ..EngineState::default() }, ..Candidate::default()
            }
        }
    }

    fn fleet() -> impl Strategy<Value = Vec<Candidate>> {
        (1usize..8).prop_flat_map(|n| (0..n).map(candidate).collect::<Vec<_>>())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// No policy ever picks an unhealthy backend when a healthy one
        /// exists, and every policy reports "no backend" when none is.
        #[test]
        fn never_unhealthy_and_clear_error(fleet in fleet(), session in proptest::option::of("[a-z]{1,8}"),
                                           prefix in any::<u64>(), hint in proptest::option::of(0.0f64..20_000.0)) {
            let names: Vec<String> = fleet.iter().map(|b| b.name.clone()).collect();
            let any_healthy = fleet.iter().any(|b| b.healthy);
            for cfg in all_configs() {
                let p = build(&cfg, &names);
                for _ in 0..3 {
                    let mut req = RequestInfo { session: session.clone(), prefix_hash: prefix, difficulty_hint: hint, thinking: true, ..RequestInfo::default() };
                    p.prepare(&mut req);
                    match select(p.as_ref(), &req, &fleet, None) {
                        Ok(i) => {
                            prop_assert!(any_healthy);
                            prop_assert!(fleet[i].healthy, "{} picked unhealthy {}", p.name(), i);
                        }
                        Err(e) => {
                            prop_assert!(!any_healthy, "{} found none among healthy", p.name());
                            prop_assert_eq!(e.to_string(), "no healthy backend");
                        }
                    }
                    let pooled = select(p.as_ref(), &req, &fleet, Some("long"));
                    let any_long = fleet.iter().any(|b| b.healthy && b.pool == "long");
                    prop_assert_eq!(pooled.is_ok(), any_long);
                    if let Ok(i) = pooled { prop_assert_eq!(fleet[i].pool.as_str(), "long"); }
                }
            }
        }
    }
}
