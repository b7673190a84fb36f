//! Bad and hostile clients, over raw TCP: smuggling, header floods,
//! slowloris heads and bodies, oversized bodies, hop-by-hop abuse, path
//! tricks, connections opened and dropped by the thousand, and the admin
//! token. The gateway answers each with a clear status, never forwards
//! anything the client did not frame, and keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_thinkgate");

/// Write `wire`, then read until the peer closes or is quiet for `quiet`.
/// Returns what was read and whether the peer closed.
async fn raw(addr: std::net::SocketAddr, wire: &[u8], quiet: Duration) -> (String, bool) {
    let mut io = TcpStream::connect(addr).await.unwrap();
    let _ = io.write_all(wire).await;
    read_all(&mut io, quiet).await
}

async fn read_all(io: &mut TcpStream, quiet: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match tokio::time::timeout(quiet, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

async fn echo_upstream() -> Upstream {
    upstream(|_, _| Script::json(r#"{"object":"chat.completion","choices":[]}"#)).await
}

/// The gateway still answers a plain request.
async fn assert_serves(gw: &thinkgate::server::Gateway) {
    let url = format!("http://{}/v1/chat/completions", gw.proxy_addr);
    assert_eq!(send(&client(), post(url, CHAT)).await.status, 200);
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn post_head(extra: &str) -> String {
    format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n{extra}\r\n")
}

#[tokio::test]
async fn smuggling_attempts_never_reach_the_upstream() {
    let up = echo_upstream().await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: gw\r\n\r\n";
    let attempts = [
        // CL.TE: the length covers only the chunked terminator
        format!(
            "{}0\r\n\r\n{smuggled}",
            post_head("content-length: 5\r\ntransfer-encoding: chunked\r\n")
        ),
        // TE.CL
        format!(
            "{}{:x}\r\n{CHAT}\r\n0\r\n\r\n{smuggled}",
            post_head("transfer-encoding: chunked\r\ncontent-length: 4\r\n"),
            CHAT.len()
        ),
        // two different lengths
        format!(
            "{}{CHAT}{smuggled}",
            post_head(&format!(
                "content-length: {}\r\ncontent-length: 4\r\n",
                CHAT.len()
            ))
        ),
        // an encoding the gateway does not know
        format!(
            "{}{CHAT}{smuggled}",
            post_head("transfer-encoding: xchunked\r\n")
        ),
        // obfuscated header names
        format!(
            "{}{CHAT}{smuggled}",
            post_head("transfer-encoding : chunked\r\n")
        ),
        format!(
            "{}{CHAT}{smuggled}",
            post_head(&format!(
                "content-length: {}\r\ntransfer-encoding: chunked, identity\r\n",
                CHAT.len()
            ))
        ),
        // a length with a sign
        format!(
            "{}{CHAT}{smuggled}",
            post_head(&format!("content-length: +{}\r\n", CHAT.len()))
        ),
    ];
    for (i, a) in attempts.iter().enumerate() {
        let before = up.seen.lock().unwrap().len();
        let (resp, _) = raw(gw.proxy_addr, a.as_bytes(), Duration::from_millis(500)).await;
        let codes = statuses(&resp);
        let seen: Vec<_> = up.seen.lock().unwrap()[before..].to_vec();
        assert!(
            seen.iter().all(|s| s.uri == "/v1/chat/completions"),
            "attempt {i}: the upstream saw {:?}",
            seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
        );
        assert!(
            seen.len() <= 1,
            "attempt {i}: {} upstream requests",
            seen.len()
        );
        for s in &seen {
            // re-framed by the gateway: one length, no transfer-encoding
            assert_eq!(s.headers.get_all("content-length").iter().count(), 1);
            assert!(!s.headers.contains_key("transfer-encoding"));
            let n: usize = s.headers["content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(n, s.body.len());
        }
        assert!(
            !codes.is_empty() && codes.iter().all(|c| *c == 200 || *c == 400 || *c == 501),
            "attempt {i}: {resp}"
        );
        assert!(
            codes.len() <= 1 || seen.is_empty(),
            "attempt {i}: the smuggled request was answered: {resp}"
        );
    }
    // still serving
    assert_serves(&gw).await;
}

/// A request head up to `CLIENT_BUFFER_BYTES` (16 KiB) is forwarded; a
/// longer one gets 431 and reaches no engine.
#[tokio::test]
async fn request_heads_up_to_16_kib_pass_and_longer_ones_get_431() {
    let up = echo_upstream().await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let request = |pad: usize| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             x-pad: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{CHAT}",
            "a".repeat(pad),
            CHAT.len()
        )
    };
    let limit = thinkgate::server::CLIENT_BUFFER_BYTES;
    let (resp, _) = raw(
        gw.proxy_addr,
        request(limit - 1024).as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&resp), vec![200], "{resp:.300}");
    let (resp, _) = raw(
        gw.proxy_addr,
        request(limit + 1024).as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&resp), vec![431], "{resp:.300}");
    assert_eq!(
        up.seen.lock().unwrap().len(),
        1,
        "only the first reached the engine"
    );
}

#[tokio::test]
async fn header_floods_are_refused_and_the_gateway_stays_up() {
    let up = echo_upstream().await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let many: String = (0..500).map(|i| format!("x-h{i}: v\r\n")).collect();
    let (resp, _) = raw(
        gw.proxy_addr,
        format!("{}{CHAT}", post_head(&many)).as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&resp), vec![431], "{resp}");
    let huge = format!("x-big: {}\r\n", "a".repeat(1 << 20));
    let (resp, closed) = raw(
        gw.proxy_addr,
        format!("{}{CHAT}", post_head(&huge)).as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        statuses(&resp) == vec![431] || (resp.is_empty() && closed),
        "{resp:.200}"
    );
    assert!(up.seen.lock().unwrap().is_empty(), "nothing was forwarded");
    assert_serves(&gw).await;
}

#[tokio::test]
async fn slow_heads_and_bodies_time_out() {
    let up = echo_upstream().await;
    let gw = gateway(vec![up.url()], |c| {
        c.client_header_timeout_secs = 1;
        c.client_body_timeout_secs = 1;
    })
    .await;
    // a head that never ends
    let t = Instant::now();
    let mut io = TcpStream::connect(gw.proxy_addr).await.unwrap();
    io.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    let (_, closed) = read_all(&mut io, Duration::from_secs(4)).await;
    assert!(closed, "a slow head holds the connection");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // a body that trickles
    let t = Instant::now();
    let mut io = TcpStream::connect(gw.proxy_addr).await.unwrap();
    io.write_all(post_head("content-length: 1000\r\n").as_bytes())
        .await
        .unwrap();
    io.write_all(b"{\"model\":").await.unwrap();
    let (resp, _) = read_all(&mut io, Duration::from_secs(4)).await;
    assert_eq!(statuses(&resp), vec![408], "{resp}");
    assert!(resp.contains("\"type\":\"request_timeout\""), "{resp}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // a connection that sends nothing at all
    let t = Instant::now();
    let mut io = TcpStream::connect(gw.proxy_addr).await.unwrap();
    let (_, closed) = read_all(&mut io, Duration::from_secs(4)).await;
    assert!(
        closed && t.elapsed() < Duration::from_secs(3),
        "an idle connection is closed"
    );
    assert!(up.seen.lock().unwrap().is_empty());
    // a keep-alive connection left idle after a request
    let mut io = TcpStream::connect(gw.proxy_addr).await.unwrap();
    io.write_all(b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let (resp, closed) = read_all(&mut io, Duration::from_secs(4)).await;
    assert_eq!(statuses(&resp), vec![200]);
    assert!(
        closed && t.elapsed() < Duration::from_secs(3),
        "an idle keep-alive connection is closed"
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_without_reading_them() {
    let up = echo_upstream().await;
    let gw = gateway(vec![up.url()], |c| c.max_request_body_bytes = 1 << 20).await;
    // announced: 100 MB, of which 64 KiB are sent
    let t = Instant::now();
    let mut io = TcpStream::connect(gw.proxy_addr).await.unwrap();
    io.write_all(post_head("content-length: 104857600\r\n").as_bytes())
        .await
        .unwrap();
    io.write_all(&vec![b' '; 64 << 10]).await.unwrap();
    let (resp, _) = read_all(&mut io, Duration::from_millis(300)).await;
    assert_eq!(statuses(&resp), vec![413], "{resp}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // chunked, without end: refused once past the limit
    let mut io = TcpStream::connect(gw.proxy_addr).await.unwrap();
    io.write_all(post_head("transfer-encoding: chunked\r\n").as_bytes())
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, " ".repeat(64 << 10));
    let mut sent = 0;
    let mut refused = String::new();
    while sent < 100 << 20 {
        if io.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 64 << 10;
        if sent % (1 << 20) == 0 {
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), io.peek(&mut [0u8; 64])).await
            {
                if n > 0 {
                    break;
                }
            }
        }
    }
    let (resp, _) = read_all(&mut io, Duration::from_secs(2)).await;
    refused.push_str(&resp);
    assert_eq!(statuses(&refused), vec![413], "{refused:.300}");
    assert!(
        sent < 8 << 20,
        "the gateway read {sent} bytes before refusing"
    );
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn hop_by_hop_headers_and_path_tricks_are_neutralised() {
    let up = echo_upstream().await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let hop = "connection: keep-alive, x-drop-me\r\nx-drop-me: 1\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nproxy-authorization: Basic Zm9vOmJhcg==\r\nte: trailers\r\nupgrade: h2c\r\nx-keep: yes\r\n";
    let wire = format!(
        "{}{CHAT}",
        post_head(&format!("{hop}content-length: {}\r\n", CHAT.len()))
    );
    let (resp, _) = raw(gw.proxy_addr, wire.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(statuses(&resp), vec![200], "{resp}");
    let s = up.last();
    for h in [
        "connection",
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(!s.headers.contains_key(h), "{h} reached the upstream");
    }
    assert_eq!(s.headers["x-keep"], "yes");
    assert_eq!(
        s.headers["host"],
        up.addr.to_string(),
        "the upstream sees its own authority"
    );

    // dot segments and empty ones are refused at the gateway (the route
    // policy: `docs/routes.md`), never forwarded
    for t in [
        "GET /v1/../metrics HTTP/1.1\r\nhost: gw\r\n\r\n",
        "GET /%2e%2e/stats HTTP/1.1\r\nhost: gw\r\n\r\n",
        "GET //v1/models HTTP/1.1\r\nhost: gw\r\n\r\n",
    ] {
        let before = up.seen.lock().unwrap().len();
        let (resp, _) = raw(gw.proxy_addr, t.as_bytes(), Duration::from_millis(500)).await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{t}: {resp}");
        assert_eq!(up.seen.lock().unwrap().len(), before, "{t}");
    }
    // the rest go to the upstream as sent; none reaches the admin routes or
    // another host
    let tricks = [
        "GET http://evil.example/v1/models HTTP/1.1\r\nhost: evil.example\r\n\r\n",
        "GET /v1/models?x=/../../admin HTTP/1.1\r\nhost: gw\r\n\r\n",
    ];
    for t in tricks {
        let before = up.seen.lock().unwrap().len();
        let (resp, _) = raw(gw.proxy_addr, t.as_bytes(), Duration::from_millis(500)).await;
        assert!(
            !resp.contains("thinkgate_requests_total") && !resp.contains("\"arms\""),
            "{t}: {resp}"
        );
        let seen = up.seen.lock().unwrap()[before..].to_vec();
        assert_eq!(seen.len(), 1, "{t}: {resp}");
        assert_eq!(seen[0].headers["host"], up.addr.to_string(), "{t}");
        assert!(!seen[0].uri.contains("evil"), "{t}: {}", seen[0].uri);
    }
    // no tunnels
    let (resp, _) = raw(
        gw.proxy_addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    let codes = statuses(&resp);
    assert!(codes.first().is_some_and(|c| *c >= 400), "CONNECT: {resp}");
}

#[tokio::test]
async fn bad_json_and_content_types_get_the_engines_answer_and_a_record() {
    let cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let (addr, _sim, _task) = thinkgate_sim::server::spawn(cfg).await.unwrap();
    let dir = tempdir("hostile");
    let rec_path = dir.join("records.jsonl");
    let rec = rec_path.clone();
    let gw = gateway(vec![format!("http://{addr}")], move |c| {
        c.records = Some(rec)
    })
    .await;
    let url = format!("http://{}/v1/chat/completions", gw.proxy_addr);
    let c = client();
    for (ct, body) in [
        ("application/json", "{not json"),
        ("application/json", "\u{0}\u{1}\u{2}"),
        ("application/json", ""),
        ("application/json", "[1,2,3]"),
        ("text/plain", CHAT),
    ] {
        let req = http::Request::post(&url)
            .header("content-type", ct)
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap();
        let got = send(&c, req).await;
        assert!(
            got.status.is_client_error(),
            "{ct} {body:?}: {}",
            got.status
        );
        let e: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert!(
            e["message"].is_string() || e["error"]["message"].is_string(),
            "{e}"
        );
    }
    gw.shutdown();
    gw.wait().await;
    let recs = records(&rec_path);
    assert_eq!(recs.len(), 5);
    assert!(recs.iter().all(|r| r["status"].as_u64().unwrap() >= 400));
}

/// The real binary: 3,000 connections opened and dropped in every state (before
/// a byte, mid-head, mid-body, waiting for the response) leave no descriptor
/// or memory behind, and the gateway serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_dropped_connections_leave_nothing_behind() {
    let up = upstream(|_, _| {
        let mut s = Script::sse(vec![(
            Duration::from_millis(200),
            Bytes::from_static(b"data: [DONE]\n\n"),
        )]);
        s.head_delay = Duration::from_millis(100);
        s
    })
    .await;
    let (mut child, proxy, _) = serve_binary(
        BIN,
        &[
            "--upstream".as_ref(),
            up.url().as_str().as_ref(),
            "--client-header-timeout-secs".as_ref(),
            "2".as_ref(),
        ],
    );
    let pid = child.id();
    let addr: std::net::SocketAddr = proxy.parse().unwrap();
    let c = client();
    let warm = send(
        &c,
        post(format!("http://{proxy}/v1/chat/completions"), CHAT),
    )
    .await;
    assert_eq!(warm.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds0 = open_fds(pid);
    let rss0 = proc_kib(pid, "VmRSS");
    let full = format!(
        "{}{CHAT}",
        post_head(&format!("content-length: {}\r\n", CHAT.len()))
    );
    let mut tasks = Vec::new();
    for i in 0..3000usize {
        let full = full.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut io) = TcpStream::connect(addr).await else {
                return;
            };
            let wire: &[u8] = match i % 4 {
                0 => b"",
                1 => &full.as_bytes()[..20],
                2 => &full.as_bytes()[..full.len() - 10],
                _ => full.as_bytes(),
            };
            let _ = io.write_all(wire).await;
            if i % 4 == 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(io);
        }));
        if i % 200 == 199 {
            for t in tasks.drain(..) {
                let _ = t.await;
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut fds = open_fds(pid);
    for _ in 0..50 {
        if fds <= fds0 + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds = open_fds(pid);
    }
    let rss = proc_kib(pid, "VmRSS");
    eprintln!("after 3000 dropped connections: fds {fds0} -> {fds}, rss {rss0} -> {rss} KiB");
    assert!(fds <= fds0 + 8, "descriptors leaked: {fds0} -> {fds}");
    assert!(rss < rss0 + 32 * 1024, "rss {rss0} -> {rss} KiB");
    let ok = send(
        &c,
        post(format!("http://{proxy}/v1/chat/completions"), CHAT),
    )
    .await;
    assert_eq!(ok.status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn the_admin_token_guards_every_route_but_the_probes() {
    let up = echo_upstream().await;
    let gw = gateway(vec![up.url()], |c| c.admin_token = Some("s3cret".into())).await;
    let c = client();
    let get = |path: &str, auth: Option<&str>| {
        let mut r = http::Request::get(format!("http://{}{path}", gw.admin_addr));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(http_body_util::Full::new(Bytes::new())).unwrap()
    };
    for path in ["/metrics", "/stats"] {
        for auth in [
            None,
            Some("Bearer wrong!"),
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            let got = send(&c, get(path, auth)).await;
            assert_eq!(got.status, 401, "{path} {auth:?}");
            assert_eq!(got.headers["www-authenticate"], "Bearer");
            let e: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
            assert_eq!(e["error"]["type"], "authentication_error");
        }
        assert_eq!(send(&c, get(path, Some("Bearer s3cret"))).await.status, 200);
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(send(&c, get(path, None)).await.status, 200);
    }
    let prestop = http::Request::post(format!("http://{}/prestop", gw.admin_addr))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&c, prestop).await.status,
        401,
        "pre-stop needs the token too"
    );
    assert_eq!(
        send(&c, get("/readyz", None)).await.status,
        200,
        "and did nothing"
    );
}
