//! Test helpers: a scripted upstream on port 0, an in-process gateway on
//! port 0, and a plain hyper client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thinkgate::config::Config;
use thinkgate::server::Gateway;

pub mod otlp;
pub mod pki;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the upstream does with one request.
#[derive(Clone, Debug)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// (delay before this chunk, bytes)
    pub chunks: Vec<(Duration, Bytes)>,
    pub end: End,
    /// Delay before the response head.
    pub head_delay: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum End {
    Finish,
    /// Abort the body mid-stream (connection reset from the client's view).
    Reset,
    /// Keep the body open forever.
    Hang,
}

impl Script {
    pub fn sse(chunks: Vec<(Duration, Bytes)>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks,
            end: End::Finish,
            head_delay: Duration::ZERO,
        }
    }
    pub fn json(body: &str) -> Self {
        Self {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), body.len().to_string()),
            ],
            chunks: vec![(Duration::ZERO, Bytes::from(body.to_string()))],
            end: End::Finish,
            head_delay: Duration::ZERO,
        }
    }
}

/// A request as the upstream saw it, with the times it sent each chunk.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub received: Instant,
    pub sent_at: Arc<Mutex<Vec<Instant>>>,
    pub client_gone: Arc<Mutex<Option<Instant>>>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

type Handler = Arc<dyn Fn(&http::request::Parts, &Bytes) -> Script + Send + Sync>;

pub async fn upstream(
    handler: impl Fn(&http::request::Parts, &Bytes) -> Script + Send + Sync + 'static,
) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler: Handler = Arc::new(handler);
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (handler, seen) = (Arc::clone(&handler), Arc::clone(&seen2));
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (handler, seen) = (Arc::clone(&handler), Arc::clone(&seen));
                    async move { Ok::<_, Infallible>(serve_script(req, handler, seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, seen }
}

type ScriptBody = StreamBody<tokio_stream_shim::Rx>;

/// Marks the client gone when dropped armed (the request's future was
/// dropped before the response head: the client closed the connection).
struct GoneIfDropped(Option<Arc<Mutex<Option<Instant>>>>);

impl GoneIfDropped {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GoneIfDropped {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            if let Ok(mut g) = g.lock() {
                *g = Some(Instant::now());
            }
        }
    }
}

async fn serve_script(
    req: Request<Incoming>,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<ScriptBody> {
    let received = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let script = handler(&parts, &body);
    let sent_at = Arc::new(Mutex::new(Vec::new()));
    let client_gone = Arc::new(Mutex::new(None));
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
        received,
        sent_at: Arc::clone(&sent_at),
        client_gone: Arc::clone(&client_gone),
    });
    // A client that leaves before the head drops this future: seen too.
    let guard = GoneIfDropped(Some(Arc::clone(&client_gone)));
    tokio::time::sleep(script.head_delay).await;
    guard.disarm();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        for (delay, bytes) in script.chunks {
            // A client that leaves during a delay is seen at once.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = tx.closed() => {
                    *client_gone.lock().unwrap() = Some(Instant::now());
                    return;
                }
            }
            if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                *client_gone.lock().unwrap() = Some(Instant::now());
                return;
            }
            sent_at.lock().unwrap().push(Instant::now());
        }
        match script.end {
            End::Finish => {}
            End::Reset => {
                let _ = tx.send(Err(std::io::Error::other("scripted reset"))).await;
            }
            End::Hang => {
                tx.closed().await;
                *client_gone.lock().unwrap() = Some(Instant::now());
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(tokio_stream_shim::Rx(rx)));
    *resp.status_mut() = StatusCode::from_u16(script.status).unwrap();
    for (k, v) in script.headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(&v).unwrap(),
        );
    }
    resp
}

/// A minimal `Stream` over an mpsc receiver (no extra crate needed).
pub mod tokio_stream_shim {
    use bytes::Bytes;
    use hyper::body::Frame;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::sync::mpsc;

    pub struct Rx(pub mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

    impl futures_util::Stream for Rx {
        type Item = Result<Frame<Bytes>, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}

/// A gateway on port 0 in front of `upstreams`, with `tweak` applied.
pub async fn gateway(upstreams: Vec<String>, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        upstreams,
        drain_timeout_secs: 5,
        // Probes would add /health and /metrics requests to the scripted
        // upstreams' logs; tests of probing turn them back on.
        health_interval_ms: 0,
        scrape_interval_ms: 0,
        ..Config::default()
    };
    tweak(&mut cfg);
    Gateway::start(cfg).await.unwrap()
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A plain client. Idle connections are dropped after 2 s, before a real
/// engine drops them (uvicorn, under vLLM, after 5 s): a request sent on a
/// connection the engine is closing at that moment fails with
/// `IncompleteMessage`, a race of the test's client, not of what it tests.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build_http()
}

pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

pub async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Got {
    let resp = c.request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

pub fn post(url: String, body: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub async fn scrape(gw: &Gateway) -> String {
    let c = client();
    let req = Request::get(format!("http://{}/metrics", gw.admin_addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    String::from_utf8(send(&c, req).await.body.to_vec()).unwrap()
}

/// Poll the gateway's metrics until `name{labels}` reads `want`, for at most
/// 5 s (a request settles when its body ends, a moment after the client read
/// the last byte); returns that scrape, for more checks on the same moment.
pub async fn metric_reaches(
    gw: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> String {
    let t = Instant::now();
    loop {
        let m = scrape(gw).await;
        let got = metric(&m, name, labels);
        if got == Some(want) {
            return m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}{labels:?} is {got:?} after 5 s, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the metric line starting with `prefix` (name and labels in
/// exporter order, up to the point that identifies it).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .reduce(|a, b| a + b)
}

/// Split `body` into chunks at `cuts`, each after `gap`.
pub fn chunked(body: &[u8], cuts: &[usize], gap: Duration) -> Vec<(Duration, Bytes)> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&body.len())) {
        if c > prev {
            out.push((gap, Bytes::copy_from_slice(&body[prev..c])));
        }
        prev = c;
    }
    out
}

/// Read the gateway's records file after shutdown.
pub fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A whole number from the environment variable `name`, else `default`
/// (a run's length, for the tests that take one).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A load run (`requests.jsonl` of `thinkgate load`) against the gateway's
/// records of it, joined by request id.
pub struct Agreement {
    /// The records counted by `status outcome`.
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Requests without a record, or whose status or success the two sides
    /// disagree on (a stream that ended without an answer ended normally).
    pub disagree: Vec<String>,
    pub sent: usize,
    pub records: usize,
}

impl Agreement {
    pub fn of(sent: &[serde_json::Value], recs: &[serde_json::Value]) -> Self {
        let by_id: std::collections::HashMap<&str, &serde_json::Value> = recs
            .iter()
            .map(|r| (r["id"].as_str().unwrap(), r))
            .collect();
        let ok =
            |status: &serde_json::Value| status.as_u64().is_some_and(|c| (200..300).contains(&c));
        let mut outcomes = std::collections::BTreeMap::new();
        let mut disagree = Vec::new();
        for s in sent {
            let id = s["request_id"]
                .as_str()
                .expect("every request carries its id");
            let Some(r) = by_id.get(id) else {
                disagree.push(format!("{id}: no gateway record"));
                continue;
            };
            let outcome = r["outcome"].as_str().unwrap();
            *outcomes
                .entry(format!("{} {outcome}", r["status"]))
                .or_default() += 1;
            let client_ok = s["error"].is_null() && ok(&s["status"]);
            let gateway_ok =
                (outcome == "completed" || outcome == "answerless") && ok(&r["status"]);
            if s["status"] != r["status"] || client_ok != gateway_ok {
                disagree.push(format!(
                    "{id}: client {} {:?}, gateway {} {outcome}",
                    s["status"], s["error"], r["status"]
                ));
            }
        }
        Self {
            outcomes,
            disagree,
            sent: sent.len(),
            records: recs.len(),
        }
    }

    /// Nothing lost, no disagreement, and at least `min_sent` requests.
    pub fn assert_whole(&self, min_sent: f64) {
        assert!(
            self.disagree.is_empty(),
            "{} disagreements: {:?}",
            self.disagree.len(),
            &self.disagree[..self.disagree.len().min(10)]
        );
        assert_eq!(self.records, self.sent, "one record per request: none lost");
        assert!(
            self.sent as f64 >= min_sent,
            "the load ran: {} requests",
            self.sent
        );
    }
}

/// A process's RSS sampled once a second, `(since start, KiB)`.
pub struct RssSeries(pub Vec<(Duration, u64)>);

impl RssSeries {
    /// At the end of warm-up (the first fifth of the run).
    pub fn warm(&self) -> u64 {
        self.0[self.0.len() / 5].1
    }

    /// The peak after warm-up.
    pub fn peak_after_warm(&self) -> u64 {
        self.0[self.0.len() / 5..]
            .iter()
            .map(|r| r.1)
            .max()
            .unwrap_or(0)
    }

    /// The peak of each quarter of the run.
    pub fn quarters(&self) -> [u64; 4] {
        let n = self.0.len();
        std::array::from_fn(|q| {
            self.0[n * q / 4..(n * (q + 1) / 4).max(n * q / 4 + 1).min(n)]
                .iter()
                .map(|r| r.1)
                .max()
                .unwrap_or(0)
        })
    }

    /// `seconds,rss_kib` lines, kept beside a run's logs.
    pub fn write_csv(&self, path: &std::path::Path) {
        let series: String = self
            .0
            .iter()
            .map(|(t, kib)| format!("{:.0},{kib}\n", t.as_secs_f64()))
            .collect();
        std::fs::write(path, format!("seconds,rss_kib\n{series}")).unwrap();
    }
}

/// The test needs python3 with the `openai` package (such tests are
/// ignored by default and run by `just external`, which CI runs): its
/// absence is a failure, never a pass.
pub fn require_python_with_openai() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with the openai package is not installed (pip install openai)"
    );
}

/// Start the `thinkgate serve` binary at `bin` on port 0 with `args`;
/// returns the child and the proxy and admin addresses it printed.
pub fn serve_binary(bin: &str, args: &[&std::ffi::OsStr]) -> (Proc, String, String) {
    let mut cmd = serve_command(bin);
    cmd.args(args).stderr(std::process::Stdio::null());
    serve_with(cmd)
}

/// `thinkgate serve` on port 0 (proxy and admin), for more arguments,
/// variables and where stderr goes.
pub fn serve_command(bin: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    cmd
}

/// Spawn `cmd` (a `thinkgate serve`) and read the addresses it prints.
pub fn serve_with(mut cmd: std::process::Command) -> (Proc, String, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let field = |name: &str| {
        line.split(name)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    (Proc(child), field("proxy="), field("admin="))
}

/// A soak's gateway: `thinkgate serve` (the binary at `bin`) on port 0
/// from a config file it writes in `dir`, records in `dir/records.jsonl`,
/// its stderr in `dir/gateway.log`.
pub struct SoakGateway {
    pub gw: Proc,
    pub pid: u32,
    pub proxy: String,
    pub admin: String,
    /// The config file: rewrite it to reload.
    pub cfg: std::path::PathBuf,
    pub records: std::path::PathBuf,
    /// Where the load generator writes its report.
    pub out: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl SoakGateway {
    /// Start from the config `config(records_path)` gives.
    pub fn start(
        bin: &str,
        dir: &std::path::Path,
        config: impl FnOnce(&std::path::Path) -> String,
    ) -> Self {
        let records = dir.join("records.jsonl");
        let cfg = dir.join("thinkgate.toml");
        std::fs::write(&cfg, config(&records)).unwrap();
        let mut cmd = serve_command(bin);
        cmd.arg("--config")
            .arg(&cfg)
            .stderr(std::fs::File::create(dir.join("gateway.log")).unwrap());
        let (gw, proxy, admin) = serve_with(cmd);
        Self {
            pid: gw.id(),
            gw,
            proxy,
            admin,
            cfg,
            records,
            out: dir.join("load"),
            dir: dir.to_path_buf(),
        }
    }

    /// `thinkgate load` through this gateway for `secs`, with `args`
    /// (rate, tokens, ...): the report in `out`, its output in
    /// `load.log` and `load.err`.
    pub fn load_for(&self, bin: &str, model: &str, secs: u64, args: &[&str]) -> Proc {
        let log = |name: &str| std::fs::File::create(self.dir.join(name)).unwrap();
        Proc(
            std::process::Command::new(bin)
                .args([
                    "load",
                    "--url",
                    &format!("http://{}", self.proxy),
                    "--model",
                    model,
                ])
                .args(["--num-requests", "1000000", "--timeout", "60", "--quiet"])
                .args(args)
                .args(["--duration", &secs.to_string(), "--out"])
                .arg(&self.out)
                .stdout(log("load.log"))
                .stderr(log("load.err"))
                .spawn()
                .unwrap(),
        )
    }
}

/// A child process killed (and reaped) when dropped, so a failing test
/// leaves no server behind.
pub struct Proc(pub std::process::Child);

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Open descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A fresh directory under the system temp dir.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tg-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `thinkgate_*` metric names in `text` (a scrape, a dashboard, rules),
/// histogram suffixes folded onto the exported name.
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(k) = text[i..].find("thinkgate_") {
        let start = i + k;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let mut n = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(s) = n.strip_suffix(suffix) {
                if thinkgate::metrics::ALL.contains(&s) {
                    n = s;
                }
            }
        }
        out.insert(n.to_string());
        i = end;
    }
    out
}
