//! Fault injection: a raw-TCP front for the simulated engine that breaks
//! responses the ways real upstreams do, at the byte level, so the gateway
//! can be tested against each (`docs/reliability.md`).
//!
//! The front parses each request, picks a fault, and otherwise relays the
//! request to an inner simulator and its response back (re-framed as
//! chunked). A fault comes from the request header `x-sim-fault: <name>`
//! (the gateway forwards headers, so a test picks faults end to end), else
//! from the random rates of the plan (inference routes only), else none.
//! A flapping backend resets every request in its down windows.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the front does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close with a TCP reset before any response byte.
    ResetBeforeHeaders,
    /// A few events, then a TCP reset.
    ResetMidStream,
    /// Nothing, for the stall time, then close.
    StallBeforeHeaders,
    /// A few events, then nothing for the stall time, then close.
    StallMidStream,
    Status500,
    Status503,
    /// 429 with `Retry-After: 2`.
    Status429,
    /// A few events, then non-UTF-8 bytes and broken JSON events, then the rest.
    Garbage,
    /// A few events, then one SSE line of `huge_line_bytes`, then the rest.
    HugeLine,
    /// `Content-Length` 100 bytes longer than the body, then close.
    LengthShort,
    /// `Content-Length` half the body, the whole body sent, connection kept:
    /// the surplus sits where the next response on the connection would.
    LengthLong,
    /// An HTTP/1.0 response: no length, body until close.
    Http10,
    /// Not a fault: content events as fast as the socket takes them (up to
    /// 1 GiB), counted in [`FaultStats::firehose_bytes`]; for backpressure tests.
    Firehose,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::ResetBeforeHeaders,
        Fault::ResetMidStream,
        Fault::StallBeforeHeaders,
        Fault::StallMidStream,
        Fault::Status500,
        Fault::Status503,
        Fault::Status429,
        Fault::Garbage,
        Fault::HugeLine,
        Fault::LengthShort,
        Fault::LengthLong,
        Fault::Http10,
        Fault::Firehose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::ResetBeforeHeaders => "reset_before_headers",
            Fault::ResetMidStream => "reset_mid_stream",
            Fault::StallBeforeHeaders => "stall_before_headers",
            Fault::StallMidStream => "stall_mid_stream",
            Fault::Status500 => "status_500",
            Fault::Status503 => "status_503",
            Fault::Status429 => "status_429",
            Fault::Garbage => "garbage",
            Fault::HugeLine => "huge_line",
            Fault::LengthShort => "length_short",
            Fault::LengthLong => "length_long",
            Fault::Http10 => "http10",
            Fault::Firehose => "firehose",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s.trim())
    }

    /// Its place in [`Fault::ALL`] (declaration order).
    fn index(self) -> usize {
        self as usize
    }
}

/// Which faults, how often, and their sizes.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// Per inference request, each fault's probability (summing to ≤ 1).
    pub rates: Vec<(Fault, f64)>,
    /// (up, down): a flapping backend, reset for `down` every `up + down`.
    pub flap: Option<(Duration, Duration)>,
    pub stall: Duration,
    pub huge_line_bytes: usize,
    pub seed: u64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            rates: Vec::new(),
            flap: None,
            stall: Duration::from_secs(30),
            huge_line_bytes: 50 << 20,
            seed: 0,
        }
    }
}

impl FaultPlan {
    /// `"reset_mid_stream=0.01,status_503=0.02"`; `"none"` or `""` gives
    /// header-chosen faults only.
    pub fn parse_rates(spec: &str) -> anyhow::Result<Vec<(Fault, f64)>> {
        let mut rates = Vec::new();
        for part in spec.split(',').map(str::trim) {
            if part.is_empty() || part == "none" {
                continue;
            }
            let (name, rate) = part
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("fault `{part}`: expected name=rate"))?;
            let fault = Fault::parse(name).ok_or_else(|| {
                let names: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
                anyhow::anyhow!("unknown fault `{name}`; known: {}", names.join(", "))
            })?;
            let rate: f64 = rate.trim().parse()?;
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "fault rate {rate} not in 0..=1"
            );
            rates.push((fault, rate));
        }
        let total: f64 = rates.iter().map(|r| r.1).sum();
        anyhow::ensure!(total <= 1.0, "fault rates sum to {total} > 1");
        Ok(rates)
    }

    /// `"2000:500"`: up 2 s, down 0.5 s.
    pub fn parse_flap(spec: &str) -> anyhow::Result<(Duration, Duration)> {
        let (up, down) = spec
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("flap `{spec}`: expected UP_MS:DOWN_MS"))?;
        let up: u64 = up.trim().parse()?;
        let down: u64 = down.trim().parse()?;
        anyhow::ensure!(up > 0 && down > 0, "flap windows must be positive");
        Ok((Duration::from_millis(up), Duration::from_millis(down)))
    }
}

/// What the front did, for tests and the soak.
#[derive(Debug, Default)]
pub struct FaultStats {
    pub requests: AtomicU64,
    injected: [AtomicU64; Fault::ALL.len()],
    pub flap_resets: AtomicU64,
    pub firehose_bytes: AtomicU64,
}

impl FaultStats {
    pub fn injected(&self, f: Fault) -> u64 {
        self.injected[f.index()].load(Ordering::Relaxed)
    }

    /// `{"requests", "flap_resets", "firehose_bytes", "injected": {name: n}}`,
    /// served by the front at [`STATS_PATH`].
    pub fn to_json(&self) -> serde_json::Value {
        let injected: serde_json::Map<String, serde_json::Value> = self
            .summary()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "flap_resets": self.flap_resets.load(Ordering::Relaxed),
            "firehose_bytes": self.firehose_bytes.load(Ordering::Relaxed),
            "injected": injected,
        })
    }

    /// Every fault with a non-zero count.
    pub fn summary(&self) -> Vec<(&'static str, u64)> {
        Fault::ALL
            .iter()
            .map(|f| (f.name(), self.injected(*f)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

struct Front {
    inner: SocketAddr,
    plan: FaultPlan,
    stats: Arc<FaultStats>,
    started: Instant,
    connections: AtomicU64,
}

/// Bind `listen` and serve the fault front in the background, relaying to
/// the simulator at `inner`.
pub async fn spawn(
    listen: SocketAddr,
    inner: SocketAddr,
    plan: FaultPlan,
) -> std::io::Result<(SocketAddr, Arc<FaultStats>, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(FaultStats::default());
    let front = Arc::new(Front {
        inner,
        plan,
        stats: Arc::clone(&stats),
        started: Instant::now(),
        connections: AtomicU64::new(0),
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = io.set_nodelay(true);
            let n = front.connections.fetch_add(1, Ordering::Relaxed);
            let rng =
                StdRng::seed_from_u64(front.plan.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            tokio::spawn(connection(io, Arc::clone(&front), rng));
        }
    });
    Ok((addr, stats, task))
}

struct Parsed {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// The front's own route: what it injected so far, as JSON.
pub const STATS_PATH: &str = "/_sim/faults";

const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: usize = 16 << 20;

/// One request off the connection; `None` at EOF or on anything malformed
/// (the gateway's requests are well-formed; this is a test server).
async fn read_request(io: &mut TcpStream, buf: &mut BytesMut) -> Option<Parsed> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Request::new(&mut hs);
        if let httparse::Status::Complete(n) = r.parse(buf).ok()? {
            let method = Method::from_bytes(r.method?.as_bytes()).ok()?;
            let path = r.path?.to_string();
            let mut headers = HeaderMap::new();
            for h in r.headers.iter() {
                headers.append(
                    http::HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                    http::HeaderValue::from_bytes(h.value).ok()?,
                );
            }
            let len: usize = match headers.get(http::header::CONTENT_LENGTH) {
                Some(v) => v.to_str().ok()?.trim().parse().ok()?,
                None => 0,
            };
            if len > MAX_BODY || headers.contains_key(http::header::TRANSFER_ENCODING) {
                return None;
            }
            buf.advance(n);
            while buf.len() < len {
                if io.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            let body = buf.split_to(len).freeze();
            return Some(Parsed {
                method,
                path,
                headers,
                body,
            });
        }
        if buf.len() > MAX_HEAD || io.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

impl Front {
    fn choose(&self, req: &Parsed, rng: &mut StdRng) -> Option<Fault> {
        if let Some((up, down)) = self.plan.flap {
            let period = (up + down).as_millis().max(1);
            if self.started.elapsed().as_millis() % period >= up.as_millis() {
                self.stats.flap_resets.fetch_add(1, Ordering::Relaxed);
                return Some(Fault::ResetBeforeHeaders);
            }
        }
        if let Some(f) = req
            .headers
            .get("x-sim-fault")
            .and_then(|v| v.to_str().ok())
            .and_then(Fault::parse)
        {
            return Some(f);
        }
        let inference = req.method == Method::POST && req.path.ends_with("completions");
        if !inference || self.plan.rates.is_empty() {
            return None;
        }
        let mut x: f64 = rng.random();
        for (f, p) in &self.plan.rates {
            if x < *p {
                return Some(*f);
            }
            x -= p;
        }
        None
    }
}

async fn connection(mut io: TcpStream, front: Arc<Front>, mut rng: StdRng) {
    let mut buf = BytesMut::with_capacity(8 << 10);
    while let Some(req) = read_request(&mut io, &mut buf).await {
        if req.path == STATS_PATH {
            let body = front.stats.to_json().to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            if io.write_all(head.as_bytes()).await.is_err()
                || io.write_all(body.as_bytes()).await.is_err()
            {
                return;
            }
            continue;
        }
        front.stats.requests.fetch_add(1, Ordering::Relaxed);
        let fault = front.choose(&req, &mut rng);
        if let Some(f) = fault {
            front.stats.injected[f.index()].fetch_add(1, Ordering::Relaxed);
        }
        match serve_one(&mut io, &front, req, fault).await {
            Ok(Next::Keep) => {}
            Ok(Next::Close) | Err(_) => return,
            Ok(Next::Reset) => {
                let _ = io.set_zero_linger();
                return;
            }
        }
    }
}

enum Next {
    Keep,
    Close,
    Reset,
}

fn error_json(status: u16, msg: &str) -> String {
    serde_json::json!({"object": "error", "message": msg, "type": "fault", "param": null, "code": status})
        .to_string()
}

async fn serve_one(
    io: &mut TcpStream,
    front: &Front,
    req: Parsed,
    fault: Option<Fault>,
) -> std::io::Result<Next> {
    let status = |code: u16, extra: &str| {
        let body = error_json(code, "injected fault");
        let reason = StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    match fault {
        Some(Fault::ResetBeforeHeaders) => return Ok(Next::Reset),
        Some(Fault::StallBeforeHeaders) => {
            stall(io, front.plan.stall).await;
            return Ok(Next::Close);
        }
        Some(Fault::Status500) => {
            io.write_all(status(500, "").as_bytes()).await?;
            return Ok(Next::Keep);
        }
        Some(Fault::Status503) => {
            io.write_all(status(503, "").as_bytes()).await?;
            return Ok(Next::Keep);
        }
        Some(Fault::Status429) => {
            io.write_all(status(429, "retry-after: 2\r\n").as_bytes())
                .await?;
            return Ok(Next::Keep);
        }
        Some(Fault::Firehose) => return firehose(io, front).await,
        _ => {}
    }
    let Ok(resp) = forward(front.inner, req).await else {
        io.write_all(status(502, "").as_bytes()).await?;
        return Ok(Next::Close);
    };
    let (parts, mut body) = resp.into_parts();
    let reason = parts.status.canonical_reason().unwrap_or("");
    let code = parts.status.as_u16();
    match fault {
        Some(Fault::LengthShort) | Some(Fault::LengthLong) => {
            let all = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let claimed = if fault == Some(Fault::LengthShort) {
                all.len() + 100
            } else {
                all.len() / 2
            };
            let mut out = head("HTTP/1.1", code, reason, &parts.headers);
            out.extend_from_slice(format!("content-length: {claimed}\r\n\r\n").as_bytes());
            out.extend_from_slice(&all);
            io.write_all(&out).await?;
            return Ok(if fault == Some(Fault::LengthShort) {
                Next::Close
            } else {
                Next::Keep
            });
        }
        Some(Fault::Http10) => {
            let mut out = head("HTTP/1.0", code, reason, &parts.headers);
            out.extend_from_slice(b"\r\n");
            io.write_all(&out).await?;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    io.write_all(&data).await?;
                }
            }
            return Ok(Next::Close);
        }
        _ => {}
    }
    let mut out = head("HTTP/1.1", code, reason, &parts.headers);
    out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    io.write_all(&out).await?;
    let mut frames = 0;
    let mut acted = false;
    loop {
        let next = body.frame().await;
        let data = match next {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => Some(d),
                Err(_) => continue,
            },
            Some(Err(_)) => return Ok(Next::Close),
            None => None,
        };
        if let Some(d) = &data {
            write_chunk(io, d).await?;
            frames += 1;
        }
        if !acted && (frames >= 3 || data.is_none()) {
            acted = true;
            match fault {
                Some(Fault::ResetMidStream) => return Ok(Next::Reset),
                Some(Fault::StallMidStream) => {
                    stall(io, front.plan.stall).await;
                    return Ok(Next::Close);
                }
                Some(Fault::Garbage) => write_chunk(io, GARBAGE).await?,
                Some(Fault::HugeLine) => huge_line(io, front.plan.huge_line_bytes).await?,
                _ => {}
            }
        }
        if data.is_none() {
            break;
        }
    }
    io.write_all(b"0\r\n\r\n").await?;
    Ok(Next::Keep)
}

/// Non-UTF-8 bytes, an event that is not JSON, and a JSON event whose
/// string holds invalid UTF-8.
const GARBAGE: &[u8] =
    b"data: \xff\xfe\x00garbage\xc3\x28\n\ndata: {not json\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xff\xfe\"}}]}\n\n";

/// The response head without the framing and connection headers (the
/// front frames the body itself). Ends after the headers' last CRLF; the
/// caller adds its framing and the blank line.
fn head(version: &str, code: u16, reason: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut out = format!("{version} {code} {reason}\r\n").into_bytes();
    for (k, v) in headers {
        if k == http::header::CONTENT_LENGTH
            || k == http::header::TRANSFER_ENCODING
            || k == http::header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn write_chunk(io: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    io.write_all(&out).await
}

async fn huge_line(io: &mut TcpStream, bytes: usize) -> std::io::Result<()> {
    let piece = vec![b'x'; 64 << 10];
    write_chunk(io, b"data: ").await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(piece.len());
        write_chunk(io, &piece[..n]).await?;
        left -= n;
    }
    write_chunk(io, b"\n\n").await
}

/// Hold the connection open, reading and discarding, until the stall time
/// passes or the peer leaves.
async fn stall(io: &mut TcpStream, d: Duration) {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(d, async {
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn firehose(io: &mut TcpStream, front: &Front) -> std::io::Result<Next> {
    io.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await?;
    let event = b"data: {\"id\":\"fh\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"firehose \"},\"finish_reason\":null}]}\n\n";
    let block: Vec<u8> = event
        .iter()
        .copied()
        .cycle()
        .take(event.len() * 64)
        .collect();
    let mut sent: u64 = 0;
    while sent < 1 << 30 {
        write_chunk(io, &block).await?;
        sent += block.len() as u64;
        front
            .stats
            .firehose_bytes
            .fetch_add(block.len() as u64, Ordering::Relaxed);
    }
    write_chunk(io, b"data: [DONE]\n\n").await?;
    io.write_all(b"0\r\n\r\n").await?;
    Ok(Next::Keep)
}

/// Relay one request to the inner simulator on a fresh connection.
async fn forward(
    inner: SocketAddr,
    req: Parsed,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let io = TcpStream::connect(inner).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut out = Request::builder()
        .method(req.method)
        .uri(req.path)
        .body(Full::new(req.body))?;
    for (k, v) in &req.headers {
        if k != http::header::CONNECTION && k != "x-sim-fault" && k != "keep-alive" {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    Ok(send.send_request(out).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_reject_nonsense() {
        let r = FaultPlan::parse_rates("reset_mid_stream=0.1, status_429=0.2").unwrap_or_default();
        assert_eq!(
            r,
            vec![(Fault::ResetMidStream, 0.1), (Fault::Status429, 0.2)]
        );
        assert!(FaultPlan::parse_rates("none").is_ok_and(|r| r.is_empty()));
        assert!(FaultPlan::parse_rates("nope=0.1").is_err());
        assert!(FaultPlan::parse_rates("garbage=0.7,http10=0.7").is_err());
        assert!(FaultPlan::parse_rates("garbage").is_err());
        assert!(FaultPlan::parse_flap("2000:500").is_ok());
        assert!(FaultPlan::parse_flap("2000").is_err());
        for f in Fault::ALL {
            assert_eq!(Fault::parse(f.name()), Some(f));
            assert_eq!(Fault::ALL[f.index()], f);
        }
    }
}
