//! `/metrics` in the flavour's names (see WIRE.md's metric table).

use crate::config::Flavor;
use crate::engine::{Histogram, Stats};
use std::fmt::Write;
use std::sync::atomic::Ordering;

fn line(out: &mut String, kind: &str, name: &str, help: &str, labels: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}"
    );
}

fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cum = 0;
    for (b, c) in h.bounds.iter().zip(&h.counts) {
        cum += c.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
    }
    let count = h.count.load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "{name}_sum{{{labels}}} {}",
        h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// Prometheus text for the engine's state.
pub fn render(flavor: Flavor, model: &str, s: &Stats) -> String {
    let mut o = String::with_capacity(4096);
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    let model = model.replace(['"', '\\', '\n'], "_");
    match flavor {
        Flavor::Vllm => {
            let l = format!("model_name=\"{model}\"");
            line(
                &mut o,
                "gauge",
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                &l,
                get(&s.running),
            );
            line(
                &mut o,
                "gauge",
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                &l,
                get(&s.waiting),
            );
            line(
                &mut o,
                "gauge",
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                &l,
                s.kv_usage(),
            );
            line(
                &mut o,
                "counter",
                "vllm:num_preemptions_total",
                "Cumulative number of preemption from the engine.",
                &l,
                get(&s.preemptions),
            );
            line(
                &mut o,
                "counter",
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
                &l,
                get(&s.prompt_tokens),
            );
            line(
                &mut o,
                "counter",
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
                &l,
                get(&s.generation_tokens),
            );
            line(
                &mut o,
                "counter",
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens.",
                &l,
                get(&s.prefix_queries),
            );
            line(
                &mut o,
                "counter",
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens.",
                &l,
                get(&s.prefix_hits),
            );
            histogram(
                &mut o,
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &l,
                &s.ttft,
            );
            histogram(
                &mut o,
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                &l,
                &s.e2e,
            );
        }
        Flavor::Sglang => {
            let l = format!("model_name=\"{model}\",engine_type=\"unified\"");
            line(
                &mut o,
                "gauge",
                "sglang:num_running_reqs",
                "The number of running requests.",
                &l,
                get(&s.running),
            );
            line(
                &mut o,
                "gauge",
                "sglang:num_queue_reqs",
                "The number of requests in the waiting queue.",
                &l,
                get(&s.waiting),
            );
            line(
                &mut o,
                "gauge",
                "sglang:token_usage",
                "The token usage.",
                &l,
                s.kv_usage(),
            );
            line(
                &mut o,
                "counter",
                "sglang:num_retracted_reqs",
                "The number of retracted requests.",
                &l,
                get(&s.preemptions),
            );
            line(
                &mut o,
                "counter",
                "sglang:prompt_tokens_total",
                "Number of prefill tokens processed.",
                &l,
                get(&s.prompt_tokens),
            );
            line(
                &mut o,
                "counter",
                "sglang:generation_tokens_total",
                "Number of generation tokens processed.",
                &l,
                get(&s.generation_tokens),
            );
            let q = get(&s.prefix_queries);
            line(
                &mut o,
                "gauge",
                "sglang:cache_hit_rate",
                "The prefix cache hit rate.",
                &l,
                if q > 0.0 {
                    get(&s.prefix_hits) / q
                } else {
                    0.0
                },
            );
            histogram(
                &mut o,
                "sglang:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &l,
                &s.ttft,
            );
            histogram(
                &mut o,
                "sglang:e2e_request_latency_seconds",
                "Histogram of End-to-end request latency in seconds",
                &l,
                &s.e2e,
            );
        }
        Flavor::Llamacpp => {
            // llama.cpp exports no KV gauge any more (WIRE.md, PR 13660).
            let l = String::new();
            line(
                &mut o,
                "gauge",
                "llamacpp:requests_processing",
                "Number of requests processing.",
                &l,
                get(&s.running),
            );
            line(
                &mut o,
                "gauge",
                "llamacpp:requests_deferred",
                "Number of requests deferred.",
                &l,
                get(&s.waiting),
            );
            line(
                &mut o,
                "counter",
                "llamacpp:prompt_tokens_total",
                "Number of prompt tokens processed.",
                &l,
                get(&s.prompt_tokens),
            );
            line(
                &mut o,
                "counter",
                "llamacpp:tokens_predicted_total",
                "Number of generation tokens processed.",
                &l,
                get(&s.generation_tokens),
            );
            let steps = get(&s.steps).max(1.0);
            line(
                &mut o,
                "gauge",
                "llamacpp:n_busy_slots_per_decode",
                "Average number of busy slots per llama_decode() call.",
                &l,
                get(&s.generation_tokens) / steps,
            );
        }
    }
    o
}
