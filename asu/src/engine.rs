//! Engine state from Prometheus text, in any engine's names (WIRE.md's
//! metric table). Unknown names are ignored; a missing signal is `None`.

/// One scrape of an engine's `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineSample {
    /// KV-cache use 0..1, mean over series (several models).
    pub kv_usage: Option<f64>,
    /// Running and waiting requests, summed over series.
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    /// Cumulative preemptions (retractions in SGLang).
    pub preemptions: Option<f64>,
}

const KV: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
];
const RUNNING: &[&str] = &[
    "vllm:num_requests_running",
    "sglang:num_running_reqs",
    "llamacpp:requests_processing",
];
const WAITING: &[&str] = &[
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "llamacpp:requests_deferred",
];
const PREEMPTIONS: &[&str] = &["vllm:num_preemptions_total", "sglang:num_retracted_reqs"];

/// Parse the signals the gateway routes on.
pub fn parse(text: &str) -> EngineSample {
    let mut kv = (0.0, 0u32);
    let (mut run, mut wait, mut pre) = (None, None, None);
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(name) = line.split(['{', ' ']).next() else {
            continue;
        };
        let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if !v.is_finite() {
            continue;
        }
        let add = |slot: &mut Option<f64>| *slot = Some(slot.unwrap_or(0.0) + v);
        if KV.contains(&name) {
            kv = (kv.0 + v, kv.1 + 1);
        } else if RUNNING.contains(&name) {
            add(&mut run);
        } else if WAITING.contains(&name) {
            add(&mut wait);
        } else if PREEMPTIONS.contains(&name) {
            add(&mut pre);
        }
    }
    EngineSample {
        kv_usage: (kv.1 > 0).then(|| kv.0 / f64::from(kv.1)),
        running: run,
        waiting: wait,
        preemptions: pre,
    }
}

/// KV-cache use of a llama.cpp server from its `GET /slots`, which has no
/// KV gauge since `llamacpp:kv_cache_usage_ratio` was removed: the tokens
/// held by slots at work (prompt plus decoded) over all slots' context.
/// Idle slots keep a cached prompt that the next request may reuse or
/// overwrite: that is free space, as vLLM counts a freed prefix block.
pub fn llamacpp_slots_kv(slots: &[u8]) -> Option<f64> {
    #[derive(serde::Deserialize)]
    struct Slot {
        n_ctx: u64,
        #[serde(default)]
        is_processing: bool,
        #[serde(default)]
        n_prompt_tokens: u64,
        #[serde(default)]
        next_token: Vec<Next>,
    }
    #[derive(serde::Deserialize)]
    struct Next {
        #[serde(default)]
        n_decoded: u64,
    }
    let slots: Vec<Slot> = serde_json::from_slice(slots).ok()?;
    let ctx: u64 = slots.iter().map(|s| s.n_ctx).sum();
    if ctx == 0 {
        return None;
    }
    let used: u64 = slots
        .iter()
        .filter(|s| s.is_processing)
        .map(|s| {
            let decoded = s.next_token.first().map_or(0, |n| n.n_decoded);
            (s.n_prompt_tokens + decoded).min(s.n_ctx)
        })
        .sum();
    Some(used as f64 / ctx as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llamacpp_kv_from_slots() {
        let slots = br#"[{"id":0,"n_ctx":4096,"is_processing":true,"n_prompt_tokens":96,"params":{},"next_token":[{"has_next_token":true,"n_decoded":928}]},
            {"id":1,"n_ctx":4096,"is_processing":false,"n_prompt_tokens":58,"next_token":[{"n_decoded":0}]}]"#;
        assert_eq!(llamacpp_slots_kv(slots), Some(1024.0 / 8192.0));
        assert_eq!(llamacpp_slots_kv(b"[]"), None);
        assert_eq!(llamacpp_slots_kv(b"{\"error\":1}"), None);
    }

    #[test]
    fn reads_each_engines_names() {
        let vllm = "# HELP x y\nvllm:kv_cache_usage_perc{model_name=\"a\"} 0.2\nvllm:kv_cache_usage_perc{model_name=\"b\"} 0.4\nvllm:num_requests_running{model_name=\"a\"} 3\nvllm:num_requests_waiting{model_name=\"a\"} 1\nvllm:num_preemptions_total{model_name=\"a\"} 7\n";
        let s = parse(vllm);
        assert!((s.kv_usage.unwrap_or(0.0) - 0.3).abs() < 1e-9);
        assert_eq!(
            (s.running, s.waiting, s.preemptions),
            (Some(3.0), Some(1.0), Some(7.0))
        );
        let old = parse("vllm:gpu_cache_usage_perc{model_name=\"a\"} 0.9\n");
        assert_eq!(old.kv_usage, Some(0.9));
        let sg = parse(
            "sglang:token_usage{model_name=\"m\"} 0.5\nsglang:num_queue_reqs{model_name=\"m\"} 4\n",
        );
        assert_eq!((sg.kv_usage, sg.waiting), (Some(0.5), Some(4.0)));
        let ll = parse("llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\n");
        assert_eq!(
            (ll.kv_usage, ll.running, ll.waiting),
            (None, Some(2.0), Some(1.0))
        );
        assert_eq!(
            parse("garbage {{{\nvllm:kv_cache_usage_perc NaN\n"),
            EngineSample::default()
        );
    }
}
