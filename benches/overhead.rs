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
//!
//! `OVERHEAD_TLS=1`: every hop over TLS (certificates made here with rcgen):
//! the upstream serves https, the client speaks https to each path, the
//! gateway terminates TLS and dials the upstream over TLS (`--tls-cert`,
//! `--upstream https://`, `--upstream-ca`), and so does nginx (`listen ...
//! ssl`, `proxy_pass https://`, upstream keep-alive with session reuse). A
//! third measurement, first chunk on a new connection each time, gives the
//! cost of a handshake through each path.
//!
//! `OVERHEAD_BASELINE_BIN=path`: another build of the gateway (say, the
//! commit before a change) as a path of its own, `baseline`, in the same
//! alternation: a change is judged against the build it replaces on the
//! same machine in the same minutes.
//!
//! `OVERHEAD_PROFILE=secs`: only the gateway path, one request at a time,
//! for that long, the gateway's pid on stderr first (attach `perf record`);
//! prints the gateway's CPU per request.
//!
//! `OVERHEAD_TRACING=1`: a second gateway process with OpenTelemetry traces
//! on (every request sampled, set by the standard `OTEL_*` variables),
//! exporting over OTLP/HTTP to a sink in this process that answers every
//! export (it counts them: a run that exported nothing says so), measured
//! as a fourth path, `thinkgate+traces`, in the same alternation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAT_REQUESTS: usize = 2000;
const CONC: usize = 64;
const CHUNKS: usize = 500;
const ROUNDS: usize = 3;
const FRESH_REQUESTS: usize = 300;

fn chunk(i: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"{}\":\" token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n",
        if i.is_multiple_of(2) { "reasoning" } else { "content" }
    ))
}

async fn upstream(tls: Option<tokio_rustls::TlsAcceptor>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let chunks: std::sync::Arc<Vec<Bytes>> = std::sync::Arc::new((0..CHUNKS).map(chunk).collect());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            let chunks = chunks.clone();
            let tls = tls.clone();
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
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(a) => {
                        if let Ok(s) = a.accept(s).await {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
            });
        }
    });
    addr
}

type C = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A client of every path: http, or https trusting `ca`; `idle` keep-alive
/// connections per host (0: a new connection, and handshake, per request).
fn client(ca: Option<&rustls::pki_types::CertificateDer<'static>>, idle: usize) -> C {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        roots.add(ca.clone()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build(conn)
}

/// A CA and a certificate for `localhost` it signed, as PEM files in `dir`:
/// (ca.pem, cert.pem, key.pem), and the CA's DER.
fn certificates(
    dir: &std::path::Path,
) -> (
    PathBuf,
    PathBuf,
    PathBuf,
    rustls::pki_types::CertificateDer<'static>,
) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let files = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&files.0, ca.pem()).unwrap();
    std::fs::write(&files.1, cert.pem()).unwrap();
    std::fs::write(&files.2, key.serialize_pem()).unwrap();
    (files.0, files.1, files.2, ca.der().clone())
}

/// The upstream's TLS: `cert`/`key` (PEM), HTTP/1.1.
fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let mut c = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(c))
}

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

async fn throughput(url: &str, ca: Option<&rustls::pki_types::CertificateDer<'static>>) -> f64 {
    let c = client(ca, CONC);
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

/// An OTLP/HTTP sink: answers every export with an empty (valid)
/// `ExportTraceServiceResponse` and counts them.
async fn collector(
    exports: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let exports = std::sync::Arc::clone(&exports);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let exports = std::sync::Arc::clone(&exports);
                        async move {
                            let _ = req.into_body().collect().await;
                            exports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
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

/// nginx (Debian) as a plain streaming reverse proxy: HTTP/1.1 keep-alive
/// upstream, `proxy_buffering off`, 2 workers (one per core, as the
/// gateway's runtime). `None` when nginx is not installed.
struct Nginx {
    master: std::process::Child,
    addr: String,
    _dir: PathBuf,
}

impl Nginx {
    /// `tls`: (cert, key, ca) to listen with ssl and reach the upstream
    /// over https, checking its certificate.
    fn start(
        up: std::net::SocketAddr,
        tls: Option<(&std::path::Path, &std::path::Path, &std::path::Path)>,
    ) -> Option<Self> {
        let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = std::env::temp_dir().join(format!("tg-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let d = dir.display();
        let (ssl, scheme, up_tls) = match tls {
            Some((cert, key, ca)) => (
                format!(" ssl;\n  ssl_certificate {};\n  ssl_certificate_key {}", cert.display(), key.display()),
                "https",
                format!(
                    "   proxy_ssl_trusted_certificate {};\n   proxy_ssl_verify on;\n   proxy_ssl_name localhost;\n   proxy_ssl_session_reuse on;\n",
                    ca.display()
                ),
            ),
            None => (String::new(), "http", String::new()),
        };
        let conf = format!(
            "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
              fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
              upstream up {{ server {up}; keepalive 256; }}\n\
              server {{\n  listen 127.0.0.1:{port}{ssl};\n  location / {{\n   proxy_pass {scheme}://up;\n{up_tls}\
                 proxy_http_version 1.1;\n   proxy_set_header Connection \"\";\n   proxy_buffering off;\n\
                 proxy_request_buffering off;\n   proxy_read_timeout 3600s;\n  }}\n }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).ok()?;
        let master = Command::new(bin)
            .args(["-p", &dir.display().to_string(), "-c"])
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Some(Self {
                    master,
                    addr,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// CPU seconds of the master and its workers.
    fn cpu(&self) -> f64 {
        let pid = self.master.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        cpu_seconds(pid)
            + children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .map(cpu_seconds)
                .sum::<f64>()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers (SIGKILL would orphan
        // them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.master.id().to_string()])
            .status();
        let _ = self.master.wait();
    }
}

struct Path3 {
    name: &'static str,
    base: String,
    lat: Vec<f64>,
    /// First chunk on a new connection each time (TCP, and TLS in TLS mode).
    fresh: Vec<f64>,
    tp: Vec<f64>,
    cpu: f64,
    /// Proxy CPU over the latency phase (keep-alive, one request at a time).
    cpu_lat: f64,
    chunks: f64,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls_mode = std::env::var("OVERHEAD_TLS").is_ok_and(|v| v == "1");
        let dir = std::env::temp_dir().join(format!("tg-overhead-{}", std::process::id()));
        let (ca_file, cert, key, ca) = certificates(&dir);
        let ca = tls_mode.then_some(ca);
        let up = upstream(tls_mode.then(|| acceptor(&cert, &key))).await;
        let scheme = if tls_mode { "https" } else { "http" };
        // the certificate names localhost: https URLs use that name
        let host = |a: &str| if tls_mode { a.replace("127.0.0.1", "localhost") } else { a.to_string() };
        // `OVERHEAD_WRAP="valgrind --tool=callgrind"` runs the gateway under
        // a profiler (docs/performance.md).
        let wrap: Vec<String> = std::env::var("OVERHEAD_WRAP")
            .map(|w| w.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let bin = env!("CARGO_BIN_EXE_thinkgate").to_string();
        let (prog, pre) = match wrap.split_first() {
            Some((p, rest)) => (p.clone(), [rest.to_vec(), vec![bin]].concat()),
            None => (bin, Vec::new()),
        };
        let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.push(format!("{scheme}://{}", host(&up.to_string())));
        if tls_mode {
            for (flag, file) in [("--tls-cert", &cert), ("--tls-key", &key), ("--upstream-ca", &ca_file)] {
                args.push(flag.into());
                args.push(file.display().to_string());
            }
        }
        let spawn_with = |prog: &str, pre: &[String], env: &[(&str, String)]| {
            let mut gw = Command::new(prog)
                .args(pre)
                .args(&args)
                .env("THINKGATE_LOG", "warn")
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(gw.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let proxy = line.split("proxy=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
            (gw, proxy)
        };
        let spawn = |env: &[(&str, String)]| spawn_with(&prog, &pre, env);
        let (mut gw, proxy) = spawn(&[]);
        // `OVERHEAD_BASELINE_BIN=path`: another build of the gateway (the one
        // before a change) measured as a path of its own in the same run
        let mut baseline = std::env::var("OVERHEAD_BASELINE_BIN").ok().map(|b| spawn_with(&b, &[], &[]));
        let tracing_mode = std::env::var("OVERHEAD_TRACING").is_ok_and(|v| v == "1");
        let exports = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut traced = if tracing_mode {
            let sink = collector(std::sync::Arc::clone(&exports)).await;
            Some(spawn(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{sink}")),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
                ("OTEL_TRACES_SAMPLER", "always_on".into()),
                ("OTEL_BSP_SCHEDULE_DELAY", "1000".into()),
            ]))
        } else {
            None
        };
        let nginx = Nginx::start(up, tls_mode.then_some((cert.as_path(), key.as_path(), ca_file.as_path())));
        if nginx.is_none() {
            eprintln!("nginx not found (apt-get install nginx): comparing with direct only");
        }
        let mut paths = vec![
            Path3 { name: "direct", base: format!("{scheme}://{}", host(&up.to_string())), lat: vec![], tp: vec![], fresh: vec![], cpu: 0.0, cpu_lat: 0.0, chunks: 0.0 },
            Path3 { name: "thinkgate", base: format!("{scheme}://{}", host(&proxy)), lat: vec![], tp: vec![], fresh: vec![], cpu: 0.0, cpu_lat: 0.0, chunks: 0.0 },
        ];
        if let Some((_, addr)) = &traced {
            paths.push(Path3 { name: "thinkgate+traces", base: format!("{scheme}://{}", host(addr)), lat: vec![], tp: vec![], fresh: vec![], cpu: 0.0, cpu_lat: 0.0, chunks: 0.0 });
        }
        if let Some((_, addr)) = &baseline {
            paths.push(Path3 { name: "baseline", base: format!("{scheme}://{}", host(addr)), lat: vec![], tp: vec![], fresh: vec![], cpu: 0.0, cpu_lat: 0.0, chunks: 0.0 });
        }
        if let Some(n) = &nginx {
            paths.push(Path3 { name: "nginx", base: format!("{scheme}://{}", host(&n.addr)), lat: vec![], tp: vec![], fresh: vec![], cpu: 0.0, cpu_lat: 0.0, chunks: 0.0 });
        }
        let c = client(ca.as_ref(), 1);
        let new_conn = client(ca.as_ref(), 0);
        // Warm up every path.
        for p in &paths {
            for _ in 0..200 {
                one(&c, &format!("{}/v1/chat/completions?n=1", p.base)).await;
            }
        }
        let gw_pid = gw.id();
        // `OVERHEAD_PROFILE=secs`: only requests one at a time through the
        // gateway for that long, its pid on stderr first, for a profiler
        // to attach to the per-request path alone (docs/performance.md)
        if let Some(secs) = std::env::var("OVERHEAD_PROFILE").ok().and_then(|s| s.parse::<u64>().ok()) {
            eprintln!("gateway pid {gw_pid}");
            let url = format!("{}/v1/chat/completions?n=1", paths[1].base);
            let t = Instant::now();
            let mut n = 0u64;
            let cpu0 = cpu_seconds(gw_pid);
            while t.elapsed() < Duration::from_secs(secs) {
                one(&c, &url).await;
                n += 1;
            }
            println!("{n} requests in {secs} s; gateway CPU {:.1} us per request", (cpu_seconds(gw_pid) - cpu0) / n as f64 * 1e6);
            drop(nginx);
            for (mut g, _) in [baseline.take(), traced.take()].into_iter().flatten() {
                let _ = g.kill();
                let _ = g.wait();
            }
            let _ = gw.kill();
            let _ = gw.wait();
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let traced_pid = traced.as_ref().map_or(0, |(g, _)| g.id());
        let baseline_pid = baseline.as_ref().map_or(0, |(g, _)| g.id());
        for _ in 0..ROUNDS {
            for p in paths.iter_mut() {
                let cpu = |name: &str| match name {
                    "thinkgate" => cpu_seconds(gw_pid),
                    "thinkgate+traces" => cpu_seconds(traced_pid),
                    "baseline" => cpu_seconds(baseline_pid),
                    "nginx" => nginx.as_ref().map_or(0.0, Nginx::cpu),
                    _ => 0.0,
                };
                let cpu0 = cpu(p.name);
                let lat = latency(&c, &format!("{}/v1/chat/completions?n=1", p.base)).await;
                p.cpu_lat += cpu(p.name) - cpu0;
                p.lat.extend(lat);
                for _ in 0..FRESH_REQUESTS {
                    let url = format!("{}/v1/chat/completions?n=1", p.base);
                    p.fresh.push(one(&new_conn, &url).await.0.as_secs_f64() * 1e6);
                }
                let cpu0 = cpu(p.name);
                p.tp.push(throughput(&format!("{}/v1/chat/completions", p.base), ca.as_ref()).await);
                p.cpu += cpu(p.name) - cpu0;
                p.chunks += (CONC * 4 * (CHUNKS + 1)) as f64;
            }
        }
        let direct_tp = pct(&mut paths[0].tp.clone(), 0.5);
        let (d50, d99) = (pct(&mut paths[0].lat.clone(), 0.5), pct(&mut paths[0].lat.clone(), 0.99));
        let f50 = pct(&mut paths[0].fresh.clone(), 0.5);
        println!("{}", if tls_mode { "TLS on every hop" } else { "plain HTTP" });
        println!("| path | first chunk p50 (us) | first chunk p99 (us) | added p50 / p99 (us) | new connection: first chunk p50 / p99 (us), added p50 | throughput, {CONC} streams x {CHUNKS} chunks (chunks/s, median of {ROUNDS}) | vs direct | proxy CPU s per million chunks | proxy CPU us per request (one at a time) |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for p in &paths {
            let (l50, l99) = (pct(&mut p.lat.clone(), 0.5), pct(&mut p.lat.clone(), 0.99));
            let (n50, n99) = (pct(&mut p.fresh.clone(), 0.5), pct(&mut p.fresh.clone(), 0.99));
            let tp = pct(&mut p.tp.clone(), 0.5);
            let cpu = if p.name == "direct" { "".to_string() } else { format!("{:.2}", p.cpu / p.chunks * 1e6) };
            let cpu_req = if p.name == "direct" { "".to_string() } else { format!("{:.0}", p.cpu_lat / p.lat.len() as f64 * 1e6) };
            println!(
                "| {} | {l50:.0} | {l99:.0} | +{:.0} / +{:.0} | {n50:.0} / {n99:.0}, +{:.0} | {tp:.0} | {:.3}x | {cpu} | {cpu_req} |",
                p.name, l50 - d50, l99 - d99, n50 - f50, tp / direct_tp
            );
        }
        println!("({} latency samples per path, {ROUNDS} rounds alternating paths; machine: {} cores)", paths[0].lat.len(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        if tracing_mode {
            println!("(the traced gateway sent {} OTLP exports to the sink)", exports.load(std::sync::atomic::Ordering::Relaxed));
        }
        if let Some((mut g, _)) = baseline.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
        if let Some((mut g, _)) = traced.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
        drop(nginx);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = gw.kill();
        let _ = gw.wait();
    });
}
