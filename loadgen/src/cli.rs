//! `thinkgate load`: command line and the whole run, from arguments to
//! `summary.json`.

use crate::arrivals::Arrivals;
use crate::client::{http_client, Target};
use crate::dataset::{self, Item};
use crate::report::{self, RunSummary, Slo};
use crate::run::{self, Mode, Plan};
use clap::{Args, ValueEnum};
use http_body_util::BodyExt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thinkgate_asu::{ObserverConfig, ThinkTags};

/// `--dataset-name` (vllm bench serve's option, with the study's datasets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetName {
    /// The built-in math set (no file).
    Builtin,
    /// The built-in mixed traffic of five applications (own system prompts,
    /// prompt lengths, reasoning settings and multi-turn sessions; no file).
    Mixed,
    /// thinkgate's JSONL (question, answer, difficulty, domain, choices).
    Jsonl,
    /// GSM8K's JSONL (question, answer ending "#### N").
    Gsm8k,
    /// MATH-500's JSONL (problem, answer, level, subject).
    #[value(name = "math-500", alias = "math500")]
    Math500,
    /// AIME JSONL (problem/Problem, answer/Answer).
    Aime,
    /// GPQA as JSONL (Question, Correct Answer, Incorrect Answer 1-3).
    Gpqa,
    /// A BurstGPT CSV trace: its arrival times, with the built-in prompts.
    Burstgpt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointArg {
    /// `/v1/chat/completions` (vLLM's name is accepted too).
    #[value(alias = "/v1/chat/completions")]
    Chat,
    /// `/v1/completions` (vLLM's name is accepted too).
    #[value(alias = "/v1/completions")]
    Completions,
}

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub command: Option<LoadCommand>,
    /// Server base URL (gateway or engine), e.g. http://127.0.0.1:8080; written
    /// as the openai client's base_url (http://127.0.0.1:8080/v1) it is the same.
    /// Several URLs, comma-separated, spread the requests at random over them
    /// (clients of several gateway replicas).
    #[arg(long, visible_alias = "base-url", required = true)]
    pub url: Option<String>,
    /// API to call.
    #[arg(long, value_enum, default_value = "chat")]
    pub endpoint: EndpointArg,
    /// Model name; default: the first model of GET /v1/models.
    #[arg(long)]
    pub model: Option<String>,
    /// Requests per second, or "inf" to send all at once.
    #[arg(long, visible_alias = "request-rate", default_value = "4")]
    pub rate: String,
    /// Gamma shape: 1 is Poisson, below 1 burstier (CV = 1/sqrt(B)).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Evenly spaced sends instead of Gamma arrivals.
    #[arg(long)]
    pub constant: bool,
    /// Replay the arrival times of a trace (CSV with a Timestamp column, e.g.
    /// BurstGPT, or JSONL with "timestamp"), in seconds.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Replay the trace this many times faster.
    #[arg(long, default_value_t = 1.0)]
    pub trace_speed: f64,
    /// Run once per value and print a table: rate=1,2,4 or max_tokens=1000,2000,4000.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Closed loop: keep this many requests in flight (overrides --rate).
    #[arg(long, conflicts_with = "max_concurrency")]
    pub concurrency: Option<usize>,
    /// At most this many requests in flight while arrivals follow --rate,
    /// as vllm bench serve's --max-concurrency: an arrival waits for a free
    /// slot (the wait is the request's lateness), so the achieved rate can
    /// fall below --rate.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Requests to send at most.
    #[arg(long, visible_alias = "num-prompts", default_value_t = 100)]
    pub num_requests: usize,
    /// Stop sending after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seed of the schedule and of the dataset order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// JSONL dataset (question, answer, difficulty, domain, choices); default: the built-in math set.
    #[arg(long, visible_alias = "dataset-path")]
    pub dataset: Option<PathBuf>,
    /// The dataset's shape (default: jsonl with --dataset, else builtin):
    /// the study's GSM8K, MATH-500, AIME and GPQA as the JSONL files you
    /// provide with --dataset, or a BurstGPT trace.
    #[arg(long, value_enum)]
    pub dataset_name: Option<DatasetName>,
    /// Send the dataset's items in file order, one per request (wrapping
    /// around), instead of drawing them at random: a file of multi-turn
    /// sessions then replays each turn after the turns before it
    /// (`--dataset-name mixed` always does).
    #[arg(long)]
    pub in_order: bool,
    /// Oracle mode, to show a ceiling: send each item's difficulty label as
    /// the client hint `x-thinkgate-difficulty`. Production traffic carries
    /// no such label; never use it for a claim about a policy.
    #[arg(long)]
    pub oracle: bool,
    /// Prompt template with {question}, {difficulty}, {choices}.
    #[arg(long, default_value = dataset::DEFAULT_TEMPLATE)]
    pub prompt_template: String,
    /// max_tokens of every request (the token budget).
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Extra JSON fields merged into every request body, e.g. '{"temperature":0.6}'.
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Send non-streamed requests.
    #[arg(long)]
    pub no_stream: bool,
    /// Do not ask for usage (token counts then come from counted chunks).
    #[arg(long)]
    pub no_usage: bool,
    /// SLOs for goodput, e.g. ttfvt=10s,e2e=60s.
    #[arg(long, default_value = "ttfvt=10s,e2e=60s")]
    pub slo: String,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub timeout: f64,
    /// Inline thinking markers in content: auto, starts-in-thinking, off.
    #[arg(long, default_value = "auto")]
    pub think_tags: String,
    /// Write summary.json, requests.jsonl, SVG plots and report.html here.
    #[arg(long, visible_alias = "result-dir")]
    pub out: Option<PathBuf>,
    /// Write the run's files (as --out) even without --out: to the current
    /// directory (vllm bench serve's --save-result).
    #[arg(long)]
    pub save_result: bool,
    /// Report these metrics at --metric-percentiles too (vllm bench serve's
    /// option): ttft, ttfvt, thinking, tpot, itl, e2el; comma-separated.
    #[arg(long)]
    pub percentile_metrics: Option<String>,
    /// Percentiles for --percentile-metrics, comma-separated (e.g. 25,50,99).
    #[arg(long, default_value = "99")]
    pub metric_percentiles: String,
    /// Engine metrics URL(s) to sample KV-cache use from during the run
    /// (e.g. http://vllm-0:8000/metrics); repeatable.
    #[arg(long)]
    pub scrape: Vec<String>,
    /// A name for this run in reports.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Extra request header, "Name: value"; repeatable (e.g.
    /// "x-thinkgate-thinking-budget: 2000").
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum LoadCommand {
    /// Compare two runs (B vs A) with bootstrap confidence intervals.
    Compare(CompareArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Runs A and B, each a load run (its --out directory, summary.json or
    /// requests.jsonl) or gateway records (a --records file, or a directory
    /// of them). With --by-arm: one or more, taken together (the records of
    /// several replicas, rotated files).
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Compare the gateway's experiment arms (x-thinkgate-arm, the records'
    /// `arm`) within the runs given, overall and per model.
    #[arg(long)]
    pub by_arm: bool,
    /// Exit non-zero when the whole 95% interval passes a threshold, e.g.
    /// 'ttfvt.p99>10%', 'e2e.p50>0.5s', 'accuracy<-2pp'. Repeatable.
    #[arg(long = "fail-if")]
    pub fail_if: Vec<String>,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 2000)]
    pub resamples: usize,
    /// Seed of the resampling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the comparison as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write an HTML page here: the comparison, then each report chart
    /// of A beside the same chart of B.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

fn run_compare(args: &CompareArgs) -> anyhow::Result<()> {
    use crate::compare;
    let gates = args
        .fail_if
        .iter()
        .map(|g| compare::FailIf::parse(g).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (a_name, a, b_name, b) = if args.by_arm {
        let arms = compare::by_arm(compare::load_runs(&args.runs)?);
        anyhow::ensure!(
            arms.len() == 2,
            "--by-arm needs exactly two arms, found {:?}",
            arms.keys().collect::<Vec<_>>()
        );
        let mut it = arms.into_iter();
        let (Some((an, a)), Some((bn, b))) = (it.next(), it.next()) else {
            anyhow::bail!("--by-arm needs exactly two arms");
        };
        (an, a, bn, b)
    } else {
        let [pa, pb] = args.runs.as_slice() else {
            anyhow::bail!("give two runs, or any number with --by-arm");
        };
        (
            pa.display().to_string(),
            compare::load_run(pa)?,
            pb.display().to_string(),
            compare::load_run(pb)?,
        )
    };
    let deltas = compare::compare(&a, &b, args.resamples.max(100), args.seed);
    let mut table = compare::table(&a_name, &b_name, &deltas);
    // per model, when the runs hold several (records name them)
    let (ma, mb) = (compare::by_model(&a), compare::by_model(&b));
    if ma.len() > 1 || mb.len() > 1 {
        for (model, sa) in &ma {
            let Some(sb) = mb.get(model) else { continue };
            let d = compare::compare(sa, sb, args.resamples.max(100), args.seed);
            table.push_str(&format!("\nmodel {model}:\n"));
            table.push_str(&compare::table(&a_name, &b_name, &d));
        }
    }
    table.push('\n');
    table.push_str(&crate::sequential::table(
        &crate::sequential::watch(&a, &b, 0.05),
        0.05,
    ));
    print!("{table}");
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&deltas)?)?;
    }
    if let Some(p) = &args.html {
        write_compare_html(args, p, &table, &a_name, &b_name)?;
    }
    let mut tripped = Vec::new();
    for g in &gates {
        match deltas.iter().find(|d| d.name == g.name) {
            Some(d) if g.tripped(d) => tripped.push(g.name.clone()),
            Some(_) => {}
            None => anyhow::bail!("--fail-if names {:?}, which was not compared", g.name),
        }
    }
    anyhow::ensure!(
        tripped.is_empty(),
        "regression: {} beyond threshold",
        tripped.join(", ")
    );
    Ok(())
}

/// `load compare --html`: each side's report, drawn again from its
/// requests (for `--by-arm`, the run's requests of that arm), side by side.
fn write_compare_html(
    args: &CompareArgs,
    out: &std::path::Path,
    table: &str,
    a_name: &str,
    b_name: &str,
) -> anyhow::Result<()> {
    use crate::{compare, plots};
    let side = |name: &str,
                results: Vec<crate::client::RequestResult>,
                run: &Option<RunSummary>|
     -> anyhow::Result<(String, Vec<plots::Chart>)> {
        let mut s = report::summarize(
            name,
            run.as_ref().map(|r| r.run.clone()).unwrap_or_default(),
            &results,
            run.as_ref().map(|r| r.slo).unwrap_or_default(),
        );
        s.engine_kv = run
            .as_ref()
            .map(|r| r.engine_kv.clone())
            .unwrap_or_default();
        Ok((report::table(&s), plots::charts(&s, &results)?))
    };
    let first = args
        .runs
        .first()
        .ok_or_else(|| anyhow::anyhow!("no run given"))?;
    let (a, b) = if args.by_arm {
        let (results, run) = compare::load_full(first)?;
        let arm = |n: &str| -> Vec<crate::client::RequestResult> {
            results
                .iter()
                .filter(|r| r.arm.as_deref().unwrap_or("none") == n)
                .cloned()
                .collect()
        };
        (
            side(a_name, arm(a_name), &run)?,
            side(b_name, arm(b_name), &run)?,
        )
    } else {
        let (ra, sa) = compare::load_full(first)?;
        let (rb, sb) = compare::load_full(args.runs.get(1).unwrap_or(first))?;
        (side(a_name, ra, &sa)?, side(b_name, rb, &sb)?)
    };
    let page = plots::html_compare(
        &format!("{b_name} against {a_name}"),
        table,
        &plots::Side {
            name: a_name,
            table: a.0,
            charts: a.1,
        },
        &plots::Side {
            name: b_name,
            table: b.0,
            charts: b.1,
        },
    );
    std::fs::write(out, page)?;
    Ok(())
}

impl LoadArgs {
    /// A run against `url` with the command line's defaults (for programs
    /// that drive the load generator as a library: the demo, benchmarks,
    /// tests).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            command: None,
            url: Some(url.into()),
            endpoint: EndpointArg::Chat,
            model: None,
            rate: "4".into(),
            burstiness: 1.0,
            constant: false,
            trace: None,
            trace_speed: 1.0,
            sweep: None,
            concurrency: None,
            max_concurrency: None,
            num_requests: 100,
            duration: None,
            seed: 1,
            dataset: None,
            dataset_name: None,
            in_order: false,
            oracle: false,
            prompt_template: dataset::DEFAULT_TEMPLATE.into(),
            max_tokens: None,
            extra_body: None,
            no_stream: false,
            no_usage: false,
            slo: "ttfvt=10s,e2e=60s".into(),
            timeout: 1800.0,
            think_tags: "auto".into(),
            out: None,
            save_result: false,
            percentile_metrics: None,
            metric_percentiles: "99".into(),
            scrape: Vec::new(),
            label: String::new(),
            headers: Vec::new(),
            quiet: false,
        }
    }
}

fn think_tags(s: &str) -> anyhow::Result<ThinkTags> {
    match s.replace('-', "_").as_str() {
        "auto" => Ok(ThinkTags::Auto),
        "starts_in_thinking" => Ok(ThinkTags::StartsInThinking),
        "off" => Ok(ThinkTags::Off),
        _ => anyhow::bail!("--think-tags: expected auto, starts-in-thinking or off"),
    }
}

/// The run's items, by `--dataset-name` and `--dataset`.
fn items_of(args: &LoadArgs) -> anyhow::Result<Vec<Item>> {
    use dataset::Named;
    let name = args.dataset_name.unwrap_or(match args.dataset {
        Some(_) => DatasetName::Jsonl,
        None => DatasetName::Builtin,
    });
    let named = match name {
        DatasetName::Burstgpt if args.dataset.is_none() && args.trace.is_none() => {
            anyhow::bail!(
                "--dataset-name burstgpt replays the trace given with --dataset-path FILE.csv"
            )
        }
        DatasetName::Builtin | DatasetName::Burstgpt => {
            return Ok(dataset::builtin_math(100, args.seed))
        }
        DatasetName::Mixed => return Ok(dataset::mixed(args.num_requests, args.seed)),
        DatasetName::Jsonl => Named::Jsonl,
        DatasetName::Gsm8k => Named::Gsm8k,
        DatasetName::Math500 => Named::Math500,
        DatasetName::Aime => Named::Aime,
        DatasetName::Gpqa => Named::Gpqa,
    };
    let Some(path) = &args.dataset else {
        anyhow::bail!(
            "--dataset-name {name:?} reads the file given with --dataset (or --dataset-path)"
        );
    };
    dataset::load_named(named, path, args.seed)
}

/// The arrival trace: `--trace`, or a BurstGPT `--dataset-path`.
fn trace_path(args: &LoadArgs) -> Option<&std::path::Path> {
    match (&args.trace, args.dataset_name) {
        (Some(t), _) => Some(t),
        (None, Some(DatasetName::Burstgpt)) => args.dataset.as_deref(),
        _ => None,
    }
}

/// Where a run's files go: `--out` (`--result-dir`), or with
/// `--save-result` alone the current directory.
fn out_dir(args: &LoadArgs) -> Option<PathBuf> {
    args.out
        .clone()
        .or_else(|| args.save_result.then(|| PathBuf::from(".")))
}

/// The server's base URL as the requests below it are built: a trailing `/`
/// and a trailing `/v1` (how the `openai` client's `base_url` is written)
/// are dropped, since every path sent starts with `/v1`.
pub fn base_url(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

/// Ask the server for its first model.
pub async fn discover_model(
    client: &crate::client::HttpClient,
    url: &str,
) -> anyhow::Result<String> {
    let req = http::Request::get(format!("{url}/v1/models"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await??;
    let body = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["data"][0]["id"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("{url}/v1/models lists no model; pass --model"))
}

/// Run a load from parsed arguments; returns the summary (also printed and
/// written under `--out`).
pub async fn execute(args: &LoadArgs) -> anyhow::Result<RunSummary> {
    let Some(url) = &args.url else {
        anyhow::bail!("--url is required");
    };
    let urls: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(base_url)
        .collect();
    anyhow::ensure!(!urls.is_empty(), "--url is empty");
    let url = urls[0].clone();
    let client = http_client();
    let model = match &args.model {
        Some(m) => m.clone(),
        None => discover_model(&client, &url).await?,
    };
    let items = items_of(args)?;
    let extra = match &args.extra_body {
        Some(s) => match serde_json::from_str::<serde_json::Value>(s)? {
            serde_json::Value::Object(m) => m,
            _ => anyhow::bail!("--extra-body must be a JSON object"),
        },
        None => serde_json::Map::new(),
    };
    let slo = Slo::parse(&args.slo).map_err(anyhow::Error::msg)?;
    if let Some(m) = &args.percentile_metrics {
        // refused before the run, not after it
        report::percentiles(&[], m, &args.metric_percentiles).map_err(anyhow::Error::msg)?;
    }
    let mode = match args.concurrency {
        Some(c) => Mode::Closed { concurrency: c },
        None if trace_path(args).is_some() => {
            let path = trace_path(args).unwrap_or(std::path::Path::new(""));
            Mode::Open(Arrivals::Trace(crate::trace::load(path, args.trace_speed)?))
        }
        None if args.rate == "inf" => Mode::Open(Arrivals::AllAtOnce),
        None => {
            let rate: f64 = args
                .rate
                .parse()
                .map_err(|_| anyhow::anyhow!("--rate: a number or inf"))?;
            Mode::Open(if args.constant {
                Arrivals::Constant { rate }
            } else {
                Arrivals::Gamma {
                    rate,
                    burstiness: args.burstiness,
                }
            })
        }
    };
    anyhow::ensure!(args.num_requests > 0, "--num-requests must be > 0");
    let target = Arc::new(Target {
        client,
        urls,
        chat: args.endpoint == EndpointArg::Chat,
        model: model.clone(),
        template: args.prompt_template.clone(),
        max_tokens: args.max_tokens,
        stream: !args.no_stream,
        include_usage: !args.no_usage,
        extra,
        headers: parse_headers(&args.headers)?,
        observer: Arc::new(ObserverConfig {
            think_tags: think_tags(&args.think_tags)?,
            capture_text: true,
            ..ObserverConfig::default()
        }),
        timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
        id_prefix: format!("lg-{:08x}", rand::random::<u32>()),
        oracle: args.oracle,
    });
    let plan = Plan {
        mode: mode.clone(),
        max_concurrency: args.max_concurrency,
        num_requests: args.num_requests,
        duration: args.duration.map(Duration::from_secs_f64),
        seed: args.seed,
        progress: !args.quiet,
        ordered: args.in_order || args.dataset_name == Some(DatasetName::Mixed),
    };
    let scrape_urls: Vec<String> = args
        .scrape
        .iter()
        .map(|u| {
            if u.ends_with("/metrics") {
                u.clone()
            } else {
                format!("{}/metrics", u.trim_end_matches('/'))
            }
        })
        .collect();
    let scraper = (!scrape_urls.is_empty()).then(|| {
        crate::scrape::spawn(
            http_client(),
            scrape_urls,
            std::time::Instant::now(),
            Duration::from_millis(500),
        )
    });
    let results = run::run(&plan, target, Arc::new(items)).await?;
    let kv: Vec<(f64, f64)> = match scraper {
        Some((task, samples)) => {
            task.abort();
            samples.lock().map(|s| s.clone()).unwrap_or_default()
        }
        None => Vec::new(),
    };
    let run_info = serde_json::json!({
        "url": url, "model": model,
        "endpoint": format!("{:?}", args.endpoint).to_lowercase(),
        "mode": format!("{mode:?}"), "num_requests": args.num_requests, "duration_s": args.duration,
        "seed": args.seed, "max_tokens": args.max_tokens, "stream": !args.no_stream,
        "dataset": args.dataset.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "builtin-math".into()),
    });
    let mut summary = report::summarize(&args.label, run_info, &results, slo);
    summary.engine_kv = kv;
    if let Some(m) = &args.percentile_metrics {
        summary.percentiles_ms = report::percentiles(&results, m, &args.metric_percentiles)
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(dir) = &out_dir(args) {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("requests.jsonl"))?);
        for r in &results {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
        write_plots(dir, &summary, &results)?;
    }
    Ok(summary)
}

/// SVG plots and the self-contained `report.html`.
pub fn write_plots(
    dir: &std::path::Path,
    s: &RunSummary,
    results: &[crate::client::RequestResult],
) -> anyhow::Result<()> {
    let charts = crate::plots::charts(s, results)?;
    for c in &charts {
        std::fs::write(dir.join(c.file), &c.svg)?;
    }
    std::fs::write(
        dir.join("report.html"),
        crate::plots::html(s, &report::table(s), &charts),
    )?;
    Ok(())
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if let Some(LoadCommand::Compare(c)) = &args.command {
        return run_compare(c);
    }
    if let Some(sweep) = &args.sweep {
        return run_sweep(&args, sweep).await;
    }
    let summary = execute(&args).await?;
    print!("{}", report::table(&summary));
    Ok(())
}

fn parse_headers(raw: &[String]) -> anyhow::Result<http::HeaderMap> {
    let mut h = http::HeaderMap::new();
    for r in raw {
        let (k, v) = r
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header {r:?}: expected \"Name: value\""))?;
        h.append(
            http::HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|e| anyhow::anyhow!("--header {r:?}: {e}"))?,
            http::HeaderValue::from_str(v.trim())
                .map_err(|e| anyhow::anyhow!("--header {r:?}: {e}"))?,
        );
    }
    Ok(h)
}

/// The header a `thinking_budget` sweep sets on every request.
pub const BUDGET_HEADER: &str = "x-thinkgate-thinking-budget";

/// `--sweep rate=1,2,4` or `--sweep max_tokens=1000,2000`: one run per
/// value, each in `OUT/<param>-<value>/`, then one table.
async fn run_sweep(args: &LoadArgs, spec: &str) -> anyhow::Result<()> {
    let (param, values) = spec
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--sweep: expected rate=1,2,4 or max_tokens=1000,2000"))?;
    let values: Vec<&str> = values
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    anyhow::ensure!(!values.is_empty(), "--sweep: no values");
    let mut rows = Vec::new();
    for v in &values {
        let mut a = args.clone();
        a.sweep = None;
        match param.trim() {
            "rate" => a.rate = v.to_string(),
            "max_tokens" => {
                a.max_tokens = match *v {
                    "none" | "unlimited" => None,
                    n => Some(n.parse().map_err(|_| {
                        anyhow::anyhow!("--sweep max_tokens: {n:?} is not a number")
                    })?),
                }
            }
            // Through thinkgate: the per-request thinking budget header
            // (0 asks for none of its own).
            "thinking_budget" => {
                let n = match *v {
                    "none" | "unlimited" => 0,
                    n => n.parse::<u64>().map_err(|_| {
                        anyhow::anyhow!("--sweep thinking_budget: {n:?} is not a number")
                    })?,
                };
                a.headers.retain(|h| {
                    !h.to_ascii_lowercase()
                        .starts_with(&format!("{BUDGET_HEADER}:"))
                });
                a.headers.push(format!("{BUDGET_HEADER}: {n}"));
            }
            other => {
                anyhow::bail!("--sweep: cannot sweep {other:?} (rate, max_tokens, thinking_budget)")
            }
        }
        a.label = format!(
            "{}{param}={v}",
            if args.label.is_empty() {
                String::new()
            } else {
                format!("{} ", args.label)
            }
        );
        a.out = out_dir(args).map(|d| d.join(format!("{}-{v}", param.trim())));
        eprintln!("sweep: {param}={v}");
        let s = execute(&a).await?;
        rows.push((v.to_string(), s));
    }
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        param, "tok/s", "goodput", "TTFVT p50", "TTFVT p99", "E2E p99", "strag.", "accuracy"
    );
    for (v, s) in &rows {
        println!(
            "{:<12} {:>10.0} {:>10.2} {:>10.3} {:>10.3} {:>10.3} {:>9.2} {:>8.1}%",
            v,
            s.throughput.output_tokens_per_s,
            s.throughput.goodput_requests_per_s,
            s.latency_s["ttfvt"].p50,
            s.latency_s["ttfvt"].p99,
            s.latency_s["e2e"].p99,
            s.straggler_ratio,
            s.accuracy.rate * 100.0
        );
    }
    if let Some(dir) = &out_dir(args) {
        std::fs::create_dir_all(dir)?;
        let all: Vec<serde_json::Value> = rows
            .iter()
            .map(|(v, s)| serde_json::json!({"param": param, "value": v, "summary": s}))
            .collect();
        std::fs::write(dir.join("sweep.json"), serde_json::to_string_pretty(&all)?)?;
        let svg = crate::plots::sweep(param.trim(), &rows)?;
        std::fs::write(dir.join("sweep.svg"), svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod base_url_tests {
    use super::base_url;

    #[test]
    fn base_urls_as_the_openai_client_takes_them() {
        for u in [
            "http://gw:8080",
            "http://gw:8080/",
            "http://gw:8080/v1",
            "http://gw:8080/v1/",
        ] {
            assert_eq!(base_url(u), "http://gw:8080", "{u}");
        }
        assert_eq!(base_url("http://gw:8080/engine"), "http://gw:8080/engine");
    }
}
