//! Gateway overhead against a direct connection, measured in the same run.
//!
//! A local streaming upstream (SSE chat chunks, no think time) runs in this
//! process; the real `thinkgate` binary runs as its own process in front of
//! it; the client is this process. Runs alternate direct / via gateway so
//! drift affects both alike.
//!
//! - latency: one request at a time; time from sending the request to the
//!   first body chunk (TTFT as a client sees it) and to the end;
//! - throughput: `CONC` concurrent streams of `CHUNKS` chunks each; chunks/s.
//!
//! `cargo bench --bench overhead` (release build). Figures are printed as a
//! Markdown table; `docs/performance.md` keeps the latest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAT_REQUESTS: usize = 2000;
const CONC: usize = 64;
const CHUNKS: usize = 500;
const ROUNDS: usize = 3;

fn chunk(i: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"{}\":\" token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n",
        if i % 2 == 0 { "reasoning" } else { "content" }
    ))
}

async fn upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let chunks: std::sync::Arc<Vec<Bytes>> = std::sync::Arc::new((0..CHUNKS).map(chunk).collect());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            let chunks = chunks.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let chunks = chunks.clone();
                        async move {
                            let n: usize = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("n="))
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(CHUNKS);
                            let _ = req.into_body().collect().await;
                            let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                                chunks
                                    .iter()
                                    .take(n)
                                    .cloned()
                                    .map(|b| Ok(Frame::data(b)))
                                    .collect();
                            frames.push(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))));
                            let body = StreamBody::new(futures_util::stream::iter(frames));
                            let mut r = hyper::Response::new(body);
                            r.headers_mut()
                                .insert("content-type", "text/event-stream".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

type C = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn one(c: &C, url: &str) -> (Duration, Duration, usize) {
    let body = Bytes::from_static(br#"{"model":"bench","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#);
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let t = Instant::now();
    let resp = c.request(req).await.unwrap();
    let mut b = resp.into_body();
    let mut first = None;
    let mut bytes = 0;
    while let Some(f) = b.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            first.get_or_insert_with(|| t.elapsed());
            bytes += d.len();
        }
    }
    (first.unwrap_or_default(), t.elapsed(), bytes)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

async fn latency(c: &C, url: &str) -> Vec<f64> {
    let mut v = Vec::with_capacity(LAT_REQUESTS);
    for _ in 0..LAT_REQUESTS {
        v.push(one(c, url).await.0.as_secs_f64() * 1e6);
    }
    v
}

async fn throughput(url: &str) -> f64 {
    let c: C = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONC)
        .build_http();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONC {
        let (c, url) = (c.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                one(&c, &url).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (CONC * 4 * (CHUNKS + 1)) as f64 / t.elapsed().as_secs_f64()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = upstream().await;
        let mut gw = Command::new(env!("CARGO_BIN_EXE_thinkgate"))
            .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", &format!("http://{up}")])
            .env("THINKGATE_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(gw.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let proxy = line.split("proxy=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        let direct_url = format!("http://{up}/v1/chat/completions?n=1");
        let via_url = format!("http://{proxy}/v1/chat/completions?n=1");
        let c: C = Client::builder(TokioExecutor::new()).build_http();
        // Warm up both paths.
        for _ in 0..200 {
            one(&c, &direct_url).await;
            one(&c, &via_url).await;
        }
        let (mut d_all, mut g_all) = (Vec::new(), Vec::new());
        let (mut d_tp, mut g_tp) = (Vec::new(), Vec::new());
        let mut gw_cpu = 0.0;
        let mut gw_chunks = 0.0;
        for _ in 0..ROUNDS {
            d_all.extend(latency(&c, &direct_url).await);
            g_all.extend(latency(&c, &via_url).await);
            d_tp.push(throughput(&format!("http://{up}/v1/chat/completions")).await);
            let cpu0 = cpu_seconds(gw.id());
            g_tp.push(throughput(&format!("http://{proxy}/v1/chat/completions")).await);
            gw_cpu += cpu_seconds(gw.id()) - cpu0;
            gw_chunks += (CONC * 4 * (CHUNKS + 1)) as f64;
        }
        let (d50, d99) = (pct(&mut d_all.clone(), 0.5), pct(&mut d_all.clone(), 0.99));
        let (g50, g99) = (pct(&mut g_all.clone(), 0.5), pct(&mut g_all.clone(), 0.99));
        let med = |v: &mut Vec<f64>| pct(v, 0.5);
        let (dt, gt) = (med(&mut d_tp), med(&mut g_tp));
        println!("| measure | direct | via thinkgate | added / ratio |");
        println!("| --- | --- | --- | --- |");
        println!("| time to first chunk p50 (us) | {d50:.0} | {g50:.0} | +{:.0} us |", g50 - d50);
        println!("| time to first chunk p99 (us) | {d99:.0} | {g99:.0} | +{:.0} us |", g99 - d99);
        println!("| throughput, {CONC} streams x {CHUNKS} chunks (chunks/s, median of {ROUNDS}) | {dt:.0} | {gt:.0} | {:.3}x |", gt / dt);
        println!("| gateway CPU per million chunks (s) | | {:.2} | |", gw_cpu / gw_chunks * 1e6);
        println!("({} latency samples per path; machine: {} cores)", d_all.len(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        let _ = gw.kill();
        let _ = gw.wait();
    });
}
