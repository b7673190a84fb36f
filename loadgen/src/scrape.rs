//! `--scrape URL`: sample an engine's KV-cache use from its Prometheus
//! `/metrics` while the load runs (vLLM `vllm:kv_cache_usage_perc`, older
//! `vllm:gpu_cache_usage_perc`, SGLang `sglang:token_usage`; see WIRE.md).

use crate::client::HttpClient;
use http_body_util::{BodyExt, Full};
use std::time::{Duration, Instant};

/// The KV use in a metrics text (mean over its series), or `None` when the
/// engine exports no known gauge.
pub fn kv_usage(text: &str) -> Option<f64> {
    thinkgate_asu::engine::parse(text).kv_usage
}

/// KV samples shared with the sampling task.
pub type Samples = std::sync::Arc<std::sync::Mutex<Vec<(f64, f64)>>>;

/// Sample every `urls` each `every` until the returned handle is aborted;
/// the samples are (seconds since `start`, mean KV use over the engines).
pub fn spawn(
    client: HttpClient,
    urls: Vec<String>,
    start: Instant,
    every: Duration,
) -> (tokio::task::JoinHandle<()>, Samples) {
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let samples = std::sync::Arc::clone(&out);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let mut vals = Vec::new();
            for u in &urls {
                let Ok(req) = http::Request::get(u.as_str()).body(Full::new(bytes::Bytes::new()))
                else {
                    continue;
                };
                let Ok(Ok(resp)) =
                    tokio::time::timeout(Duration::from_secs(2), client.request(req)).await
                else {
                    continue;
                };
                let Ok(body) = resp.into_body().collect().await else {
                    continue;
                };
                if let Some(v) = kv_usage(&String::from_utf8_lossy(&body.to_bytes())) {
                    vals.push(v);
                }
            }
            if !vals.is_empty() {
                if let Ok(mut s) = samples.lock() {
                    s.push((
                        start.elapsed().as_secs_f64(),
                        vals.iter().sum::<f64>() / vals.len() as f64,
                    ));
                }
            }
        }
    });
    (task, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_known_kv_gauges() {
        let t = "# HELP x\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\nvllm:num_requests_running{model_name=\"m\"} 3\n";
        assert_eq!(kv_usage(t), Some(0.25));
        assert_eq!(kv_usage("sglang:token_usage{a=\"b\"} 0.5\n"), Some(0.5));
        assert_eq!(kv_usage("llamacpp:requests_processing 2\n"), None);
    }
}
