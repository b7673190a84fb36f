//! Real engines failing the ways they fail in production, with the gateway
//! in front: vLLM starting while the gateway already runs (as a pod's
//! containers or two systemd units start), vLLM killed with its engine core
//! and workers and restarted at the same address, an engine that accepts
//! connections and never answers (its API server stopped), and the gateway
//! itself told to stop while real streams run.

use super::*;

/// GET `url` and return the status (0 when nothing answered).
async fn status_of(c: &HttpClient, url: &str) -> u16 {
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    match tokio::time::timeout(Duration::from_secs(3), c.request(req)).await {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    }
}

/// The `/stats` view of the backend at `url`, from the gateway whose
/// admin listener is `admin`.
pub(crate) async fn backend_stats(
    c: &HttpClient,
    admin: impl std::fmt::Display,
    url: &str,
) -> Value {
    let req = Request::get(format!("http://{admin}/stats"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let v: Value = serde_json::from_slice(&common::send(c, req).await.body).unwrap();
    v["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["url"] == url).cloned())
        .unwrap_or(Value::Null)
}

/// One streamed chat through `via`: (status, backend, body).
async fn one(c: &HttpClient, via: &str) -> (u16, String, Bytes) {
    let s = call(c, via, "/v1/chat/completions", &chat(true, false), &[]).await;
    let backend = s
        .headers
        .get("x-thinkgate-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (s.status, backend, s.body)
}

fn whole(body: &[u8]) -> bool {
    let canon = wire::canonical_stream(body);
    wire::texts(&canon).1.ends_with(" ansal")
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_vllm_started_with_the_gateway_is_served_at_once_then_killed_with_its_workers_and_taken_back() {
    let other = shared(Kind::LlamaParser);
    // vLLM's process exists; it loads for tens of seconds before it listens
    let starting = Engine::start_announced(Kind::VllmParser, &[]);
    let url = starting.engine.url.clone();
    let port = starting.engine.port().to_string();
    rt().block_on(async {
        let c = client();
        // 1. One gateway in front of one vLLM, started together, probing at
        //    its default period (2 s), as a new user runs it.
        let (gw, rec) = gateway_for(&[&starting.engine], |cfg| {
            // the tests' gateways probe nothing unless asked: the default
            cfg.health_interval_ms = thinkgate::config::Config::default().health_interval_ms;
        })
        .await;
        let via = format!("http://{}", gw.proxy_addr);
        let ready_url = format!("http://{}/readyz", gw.admin_addr);
        let t0 = Instant::now();
        let mut loading_answers = Vec::new();
        let mut not_ready_seen = false;
        loop {
            if status_of(&c, &format!("{url}/health")).await == 200 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "vLLM did not come up"
            );
            not_ready_seen |= status_of(&c, &ready_url).await == 503;
            if loading_answers.len() < 3 {
                // a request while it loads: a clear, quick error, not a hang
                let t = Instant::now();
                let s = call(&c, &via, "/v1/chat/completions", &chat(true, false), &[]).await;
                let v: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
                assert!(s.status >= 500, "{} {v}", s.status);
                assert!(v["error"]["message"].is_string(), "{v}");
                loading_answers.push((s.status, t.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let loaded = t0.elapsed();
        // the engine answers its own /health: the gateway serves it now,
        // whatever its probes said while it loaded
        let (status, _, body) = one(&c, &via).await;
        assert_eq!(status, 200, "refused right after the engine came up");
        assert!(whole(&body));
        assert_eq!(status_of(&c, &ready_url).await, 200);
        eprintln!(
            "vLLM loaded in {loaded:?}; while loading the gateway answered {loading_answers:?}"
        );
        assert!(not_ready_seen, "/readyz said 503 while the engine loaded");
        assert!(
            loading_answers
                .iter()
                .all(|(_, t)| *t < Duration::from_secs(6)),
            "{loading_answers:?}"
        );
        let recs = stop(gw, &rec).await;
        assert_eq!(
            recs.last().map(|r| r["outcome"].clone()),
            Some(json!("completed"))
        );
    });
    // (the launcher's READY line, printed when it saw /health pass too)
    let vllm = starting.ready();
    assert_eq!(vllm.url, url);
    rt().block_on(async {
        let c = client();

        // 2. Two engines behind a gateway with active checks; vLLM is killed
        //    with its engine core mid-stream.
        let (gw, rec) = gateway_for(&[&vllm, other], |cfg| {
            cfg.routing = serde_json::from_value(json!({"type": "round_robin"})).unwrap();
            cfg.health_interval_ms = 500;
        })
        .await;
        let via = format!("http://{}", gw.proxy_addr);
        let mut cut = None;
        for _ in 0..4 {
            // long enough (the model's context is 4,096) that the stream is
            // still running when the kill lands right after its head: the
            // tiny model streams 1,500 tokens faster than a busy host
            // delivers the first frame to this test (CI, stop 29)
            let resp = open_long(&c, &via, 3500).await;
            let backend = resp.headers()["x-thinkgate-backend"]
                .to_str()
                .unwrap()
                .to_string();
            if backend == url {
                vllm.kill9();
            }
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => got.extend_from_slice(&f.into_data().unwrap_or_default()),
                    Err(e) => panic!("the stream was cut instead of ended: {e}"),
                }
            }
            if backend == url {
                cut = Some(String::from_utf8_lossy(&got).into_owned());
                break;
            }
        }
        let cut = cut.expect("round robin sent a stream to vLLM");
        // the client can tell the stream was cut: the documented error
        // event, then a clean end without `[DONE]`
        let tail = &cut[cut.len().saturating_sub(400)..];
        assert!(
            cut.contains("\"type\":\"upstream_reset\"") && !cut.contains("data: [DONE]"),
            "a cut stream without the error event: {tail}"
        );
        assert!(cut.ends_with("\n\n"), "{tail}");
        let t = Instant::now();
        while vllm.group_alive() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "vLLM's engine core outlived its API server"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // every request is answered, by the other engine
        for i in 0..6 {
            let (status, backend, body) = one(&c, &via).await;
            assert_eq!(status, 200, "request {i} after the kill");
            assert_eq!(backend, other.url, "request {i}");
            assert!(whole(&body), "request {i}");
        }
        let t = Instant::now();
        while backend_stats(&c, gw.admin_addr, &url).await["healthy"] != false {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the killed vLLM still healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // 3. vLLM restarted at the same address (as systemd or a kubelet
        //    does): taken back after its passing probes.
        let restarted = tokio::task::spawn_blocking(move || {
            Engine::start(Kind::VllmParser, &["--port", &port])
        })
        .await
        .unwrap();
        assert_eq!(restarted.url, url);
        let t = Instant::now();
        let mut back = None;
        while t.elapsed() < Duration::from_secs(10) {
            let (status, backend, body) = one(&c, &via).await;
            assert_eq!(status, 200);
            assert!(whole(&body));
            if backend == url {
                back = Some(t.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let back = back.expect("the restarted vLLM got no request within 10 s");
        eprintln!("the restarted vLLM served again {back:?} after it answered /health");
        let recs = stop(gw, &rec).await;
        let outcomes: Vec<&str> = recs
            .iter()
            .map(|r| r["outcome"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == "upstream_reset").count(),
            1,
            "{outcomes:?}"
        );
        assert!(
            outcomes
                .iter()
                .all(|o| *o == "upstream_reset" || *o == "completed"),
            "{outcomes:?}"
        );
        drop(restarted);
    });
    drop(vllm);
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn a_vllm_that_accepts_and_never_answers_is_taken_out_by_its_probes_and_back_when_it_resumes() {
    let (a, b) = (shared(Kind::VllmParser), shared(Kind::LlamaParser));
    rt().block_on(async {
        let c = client();
        let (gw, rec) = gateway_for(&[a, b], |cfg| {
            cfg.routing = serde_json::from_value(json!({"type": "round_robin"})).unwrap();
            cfg.health_interval_ms = 300;
        })
        .await;
        let via = format!("http://{}", gw.proxy_addr);
        for _ in 0..2 {
            let (status, _, _) = one(&c, &via).await;
            assert_eq!(status, 200);
        }
        // The API server stopped: the kernel still accepts connections into
        // its backlog, nothing reads them. Each probe times out (2 s); three
        // in a row take it out.
        let stopped = Stopped::new(a.pid);
        let t = Instant::now();
        while backend_stats(&c, gw.admin_addr, &a.url).await["healthy"] != false {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "a stopped engine still counted healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let out_after = t.elapsed();
        // the other engine kept its own probes meanwhile
        assert_eq!(
            backend_stats(&c, gw.admin_addr, &b.url).await["healthy"],
            true
        );
        for i in 0..6 {
            let t = Instant::now();
            let (status, backend, body) = one(&c, &via).await;
            assert_eq!(status, 200, "request {i}");
            assert_eq!(backend, b.url, "request {i}");
            assert!(whole(&body), "request {i}");
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "request {i}: {:?}",
                t.elapsed()
            );
        }
        drop(stopped);
        // resumed: two passing probes bring it back
        let t = Instant::now();
        let mut back = false;
        while t.elapsed() < Duration::from_secs(15) && !back {
            let (status, backend, _) = one(&c, &via).await;
            assert_eq!(status, 200);
            back = backend == a.url;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "the stopped vLLM was taken out {out_after:?} after SIGSTOP, back {:?} after SIGCONT",
            t.elapsed()
        );
        assert!(back, "the resumed engine got no request within 15 s");
        let recs = stop(gw, &rec).await;
        for r in &recs {
            assert_eq!(r["outcome"], "completed", "{r}");
        }
    });
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn sigterm_lets_the_gateways_real_streams_finish_and_exits_zero() {
    let a = shared(Kind::VllmParser);
    rt().block_on(async {
        let (gw, proxy, admin) = common::serve_binary(
            env!("CARGO_BIN_EXE_thinkgate"),
            &["--upstream".as_ref(), a.url.as_ref()],
        );
        let c = client();
        let via = format!("http://{proxy}");
        let mut streams = Vec::new();
        for _ in 0..2 {
            let mut body = open_long(&c, &via, 1500).await.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            streams.push(tokio::spawn(async move {
                let mut got = first.to_vec();
                while let Some(f) = body.frame().await {
                    got.extend_from_slice(
                        &f.expect("the stream is not cut")
                            .into_data()
                            .unwrap_or_default(),
                    );
                }
                got
            }));
        }
        let t = Instant::now();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &gw.id().to_string()])
            .status()
            .unwrap()
            .success());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            std::net::TcpStream::connect(&proxy).is_err(),
            "the listener is closed while draining"
        );
        let ready = status_of(&c, &format!("http://{admin}/readyz")).await;
        assert!(ready == 503 || ready == 0, "readyz while draining: {ready}");
        for s in streams {
            let got = s.await.unwrap();
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.ends_with("data: [DONE]\n\n"),
                "{}",
                &text[text.len().saturating_sub(300)..]
            );
            assert!(
                !text.contains("\"error\""),
                "{}",
                &text[text.len().saturating_sub(300)..]
            );
            // it ran to its end: 1,500 tokens with `ignore_eos`
            assert!(
                text.contains(r#""finish_reason":"length""#),
                "{}",
                &text[text.len().saturating_sub(300)..]
            );
        }
        let status = tokio::task::spawn_blocking(move || {
            let mut gw = gw;
            gw.0.wait()
        })
        .await
        .unwrap()
        .unwrap();
        eprintln!(
            "the gateway drained its real streams and exited {:?} after SIGTERM",
            t.elapsed()
        );
        assert!(status.success());
    });
}
