//! Routing through the gateway: policies over live state, passive ejection,
//! active health checks, engine scraping, model filters, 503 when no backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use std::time::Duration;
use thinkgate::config::BackendConfig;
use thinkgate_policies::PolicyConfig;

/// Streams hang (a long thinker); plain requests answer at once. `/metrics`
/// reports `kv`; `/health` answers `health`.
async fn engine(kv: f64, health: u16) -> Upstream {
    upstream(move |parts, _| match parts.uri.path() {
        "/metrics" => Script::json(&format!("vllm:kv_cache_usage_perc{{model_name=\"m\"}} {kv}\nvllm:num_requests_waiting{{model_name=\"m\"}} 0\n")),
        "/health" => {
            let mut s = Script::json("");
            s.status = health;
            s
        }
        _ if parts.headers.get("x-stream").is_some() => {
            let mut s = Script::sse(vec![(Duration::ZERO, Bytes::from_static(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"hm\"}}]}\n\n"))]);
            s.end = End::Hang;
            s
        }
        _ => Script::json(r#"{"choices":[]}"#),
    })
    .await
}

fn req(
    gw: &thinkgate::server::Gateway,
    stream: bool,
) -> http::Request<http_body_util::Full<Bytes>> {
    let mut r = post(
        format!("http://{}/v1/chat/completions", gw.proxy_addr),
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    );
    if stream {
        r.headers_mut()
            .insert("x-stream", http::HeaderValue::from_static("1"));
    }
    r
}

#[tokio::test]
async fn least_request_avoids_the_backend_holding_a_long_stream() {
    let (a, b) = (engine(0.0, 200).await, engine(0.0, 200).await);
    let gw = gateway(vec![a.url(), b.url()], |c| {
        c.routing = PolicyConfig::LeastRequest
    })
    .await;
    let c = client();
    let long = c.request(req(&gw, true)).await.unwrap();
    let busy = long.headers()["x-thinkgate-backend"]
        .to_str()
        .unwrap()
        .to_string();
    for _ in 0..4 {
        let got = send(&c, req(&gw, false)).await;
        assert_eq!(got.status, 200);
        assert_ne!(got.headers["x-thinkgate-backend"].to_str().unwrap(), busy);
    }
    drop(long);
}

#[tokio::test]
async fn failing_backend_is_ejected_and_a_pool_of_one_is_still_tried() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let live = engine(0.0, 200).await;
    let gw = gateway(vec![dead.clone(), live.url()], |c| {
        c.routing = PolicyConfig::RoundRobin;
        c.eject_after_failures = 2;
        c.eject_secs = 3600;
        c.straggler.retries = 0;
    })
    .await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(send(&c, req(&gw, false)).await.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{statuses:?}"
    );
    assert!(statuses[4..].iter().all(|s| *s == 200), "{statuses:?}");

    // With the default retry, the client never sees the dead backend.
    let gw = gateway(vec![dead.clone(), live.url()], |c| {
        c.routing = PolicyConfig::RoundRobin;
        c.eject_after_failures = 100;
    })
    .await;
    for _ in 0..6 {
        let got = send(&c, req(&gw, false)).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["x-thinkgate-backend"], live.url().as_str());
    }

    // a pool of one is never refused for its health (panic routing): the
    // dead backend is tried again, and its failure is what the client gets
    let gw = gateway(vec![dead], |c| c.eject_after_failures = 1).await;
    assert_eq!(send(&c, req(&gw, false)).await.status, 502);
    let got = send(&c, req(&gw, false)).await;
    assert_eq!(got.status, 502);
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["error"]["type"], "upstream_unreachable");
    // a model no backend serves is still refused at once
    let gw = gateway(vec![], |c| {
        c.backends = vec![BackendConfig {
            url: live.url(),
            weight: 1,
            pool: "default".into(),
            models: vec!["other".into()],
            flavor: Default::default(),
        }];
    })
    .await;
    let got = send(&c, req(&gw, false)).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.headers["retry-after"], "1");
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["error"]["type"], "no_healthy_backend");
}

#[tokio::test]
async fn active_health_checks_and_least_kv_follow_the_engines() {
    let sick = engine(0.0, 503).await;
    let full = engine(0.95, 200).await;
    let roomy = engine(0.10, 200).await;
    let gw = gateway(vec![sick.url(), full.url(), roomy.url()], |c| {
        c.routing = PolicyConfig::LeastKv;
        c.health_interval_ms = 50;
        c.scrape_interval_ms = 50;
    })
    .await;
    // the probes have seen every engine once
    metric_reaches(
        &gw,
        "thinkgate_backend_healthy",
        &[("backend", &sick.url())],
        0.0,
    )
    .await;
    metric_reaches(
        &gw,
        "thinkgate_backend_kv_usage",
        &[("backend", &full.url())],
        0.95,
    )
    .await;
    metric_reaches(
        &gw,
        "thinkgate_backend_kv_usage",
        &[("backend", &roomy.url())],
        0.10,
    )
    .await;
    let c = client();
    for _ in 0..5 {
        let got = send(&c, req(&gw, false)).await;
        assert_eq!(
            got.headers["x-thinkgate-backend"].to_str().unwrap(),
            roomy.url()
        );
    }
    let admin = format!("http://{}", gw.admin_addr);
    let stats: serde_json::Value = serde_json::from_slice(
        &send(
            &c,
            http::Request::get(format!("{admin}/stats"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(stats["arms"][0]["policy"], "least_kv");
    assert_eq!(stats["backends"][0]["healthy"], false);
    assert_eq!(stats["backends"][1]["kv_usage"], 0.95);
    let m = scrape(&gw).await;
    assert_eq!(
        metric(
            &m,
            "thinkgate_backend_healthy",
            &[("backend", sick.url().as_str())]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            "thinkgate_backend_kv_usage",
            &[("backend", roomy.url().as_str())]
        ),
        Some(0.1)
    );
}

#[tokio::test]
async fn backends_only_get_models_they_serve() {
    let (a, b) = (engine(0.0, 200).await, engine(0.0, 200).await);
    let gw = gateway(vec![], |c| {
        c.backends = vec![
            BackendConfig {
                url: a.url(),
                weight: 1,
                pool: "default".into(),
                models: vec!["small".into()],
                flavor: Default::default(),
            },
            BackendConfig {
                url: b.url(),
                weight: 1,
                pool: "default".into(),
                models: vec!["m".into()],
                flavor: Default::default(),
            },
        ];
    })
    .await;
    let c = client();
    for _ in 0..4 {
        assert_eq!(
            send(&c, req(&gw, false)).await.headers["x-thinkgate-backend"]
                .to_str()
                .unwrap(),
            b.url()
        );
    }
}

#[tokio::test]
async fn experiment_arms_are_sticky_by_session_and_labelled() {
    use thinkgate::config::{ArmConfig, AssignBy, ExperimentConfig};
    let (a, b) = (engine(0.0, 200).await, engine(0.0, 200).await);
    let arms = vec![
        ArmConfig {
            thinking_budget: None,
            deadline_ms: None,
            name: "rr".into(),
            weight: 1,
            routing: PolicyConfig::RoundRobin,
            pool: None,
        },
        ArmConfig {
            thinking_budget: None,
            deadline_ms: None,
            name: "lr".into(),
            weight: 1,
            routing: PolicyConfig::LeastRequest,
            pool: None,
        },
    ];
    let gw = gateway(vec![a.url(), b.url()], |c| {
        c.experiment = Some(ExperimentConfig {
            assign_by: AssignBy::Session,
            arms: arms.clone(),
            guardrail: None,
        });
    })
    .await;
    let c = client();
    let mut seen = std::collections::BTreeMap::new();
    for user in 0..40 {
        for _ in 0..3 {
            let mut r = req(&gw, false);
            r.headers_mut().insert(
                "x-thinkgate-session",
                http::HeaderValue::from_str(&format!("user-{user}")).unwrap(),
            );
            let got = send(&c, r).await;
            let arm = got.headers["x-thinkgate-arm"].to_str().unwrap().to_string();
            let prev = seen.entry(user).or_insert_with(|| arm.clone());
            assert_eq!(*prev, arm, "a session stays in its arm");
        }
    }
    let n_rr = seen.values().filter(|a| *a == "rr").count();
    assert!(
        (8..=32).contains(&n_rr),
        "both arms get sessions: {n_rr} of 40 in rr"
    );
    let m = scrape(&gw).await;
    let per_arm = |arm| {
        metric(
            &m,
            "thinkgate_requests_total",
            &[("model", "m"), ("arm", arm)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(per_arm("rr") + per_arm("lr"), 120.0);
    assert_eq!(per_arm("rr"), (n_rr * 3) as f64);

    // Bad experiments are startup errors.
    for bad in [
        vec![],
        vec![arms[0].clone(), arms[0].clone()],
        vec![ArmConfig {
            pool: Some("nowhere".into()),
            ..arms[0].clone()
        }],
    ] {
        let mut cfg = thinkgate::config::Config {
            upstreams: vec![a.url()],
            ..Default::default()
        };
        cfg.experiment = Some(ExperimentConfig {
            assign_by: AssignBy::Random,
            arms: bad,
            guardrail: None,
        });
        assert!(cfg.validate().is_err());
    }
}

#[tokio::test]
async fn hot_reload_routes_new_requests_and_leaves_streams_alone() {
    let chunk = Bytes::from_static(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
    );
    let slow = upstream(move |_, _| {
        let mut c = vec![(Duration::from_millis(60), chunk.clone()); 8];
        c.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
        Script::sse(c)
    })
    .await;
    let other = engine(0.0, 200).await;
    let gw = gateway(vec![slow.url()], |_| {}).await;
    let c = client();
    let stream = {
        let c = c.clone();
        let r = req(&gw, false);
        tokio::spawn(async move { send(&c, r).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut cfg = gw.shared.cfg.clone();
    cfg.upstreams = vec![other.url()];
    cfg.routing = PolicyConfig::LeastRequest;
    gw.shared.reload(&cfg).unwrap();
    let got = send(&c, req(&gw, false)).await;
    assert_eq!(
        got.headers["x-thinkgate-backend"].to_str().unwrap(),
        other.url()
    );
    let old = stream.await.unwrap();
    assert!(
        old.body.ends_with(b"data: [DONE]\n\n"),
        "the in-flight stream finished on its backend"
    );
    assert_eq!(
        old.headers["x-thinkgate-backend"].to_str().unwrap(),
        slow.url()
    );
    // A bad config is refused and the running one stays.
    let mut bad = cfg.clone();
    bad.upstreams = vec!["ftp://nope".into()];
    assert!(gw.shared.reload(&bad).is_err());
    assert_eq!(
        send(&c, req(&gw, false)).await.headers["x-thinkgate-backend"]
            .to_str()
            .unwrap(),
        other.url()
    );
    let m = scrape(&gw).await;
    assert_eq!(
        metric(
            &m,
            "thinkgate_inflight_requests",
            &[("backend", slow.url().as_str())]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn dns_discovery_turns_every_address_into_a_backend() {
    let live = engine(0.0, 200).await;
    let port = live
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let gw = gateway(Vec::new(), |c| {
        c.discovery = Some(thinkgate::config::DiscoveryConfig {
            dns: "localhost".into(),
            port,
            interval_ms: 100,
            flavor: Default::default(),
            pool: "default".into(),
        });
    })
    .await;
    let t = std::time::Instant::now();
    while gw.shared.fleet.load().backends.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "nothing discovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let urls: Vec<String> = gw
        .shared
        .fleet
        .load()
        .backends
        .iter()
        .map(|b| b.upstream.name.to_string())
        .collect();
    assert!(
        urls.contains(&format!("http://127.0.0.1:{port}")),
        "{urls:?}"
    );
    // (`localhost` may also give ::1, where nothing listens: the retry
    // covers it.)
    let c = client();
    for _ in 0..4 {
        assert_eq!(send(&c, req(&gw, false)).await.status, 200);
    }
}

#[tokio::test]
async fn prestop_marks_not_ready_but_keeps_serving() {
    let live = engine(0.0, 200).await;
    // with an admin token, which `pre-stop` sends
    let gw = gateway(vec![live.url()], |c| c.admin_token = Some("t0k".into())).await;
    let c = client();
    let ready = |gw: &thinkgate::server::Gateway| {
        Request::get(format!("http://{}/readyz", gw.admin_addr))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&c, ready(&gw)).await.status, 200);
    thinkgate::server::pre_stop(gw.admin_addr, std::time::Duration::ZERO, Some("t0k"))
        .await
        .unwrap();
    assert_eq!(send(&c, ready(&gw)).await.status, 503);
    assert_eq!(send(&c, req(&gw, false)).await.status, 200);
}

/// `[experiment.guardrail]`: an arm whose requests the live test shows
/// slower beyond the margin is stopped, and every new request goes to the
/// other arm; `/stats`, the gauge and the records say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardrail_stops_the_arm_that_is_worse() {
    use thinkgate::config::{ArmConfig, AssignBy, ExperimentConfig, GuardrailConfig};
    let fast = upstream(|_, _| Script::json(r#"{"choices":[]}"#)).await;
    let slow = upstream(|_, _| {
        let mut s = Script::json(r#"{"choices":[]}"#);
        s.head_delay = Duration::from_millis(30);
        s
    })
    .await;
    let backend = |url: String, pool: &str| BackendConfig {
        url,
        weight: 1,
        pool: pool.into(),
        models: vec![],
        flavor: Default::default(),
    };
    let arm = |name: &str, pool: &str| ArmConfig {
        thinking_budget: None,
        deadline_ms: None,
        name: name.into(),
        weight: 1,
        routing: PolicyConfig::RoundRobin,
        pool: Some(pool.into()),
    };
    let gw = gateway(vec![], |c| {
        c.backends = vec![backend(fast.url(), "fast"), backend(slow.url(), "slow")];
        c.experiment = Some(ExperimentConfig {
            assign_by: AssignBy::Random,
            arms: vec![arm("a", "fast"), arm("b", "slow")],
            guardrail: Some(GuardrailConfig::default()),
        });
    })
    .await;
    let c = client();
    let mut arms = Vec::new();
    for _ in 0..300 {
        let got = send(&c, req(&gw, false)).await;
        assert_eq!(got.status, 200);
        arms.push(got.headers["x-thinkgate-arm"].to_str().unwrap().to_string());
    }
    let to_b = arms.iter().filter(|a| *a == "b").count();
    // the test needs 30 of each before it may say anything; a 30x slower
    // arm is found soon after
    assert!((30..150).contains(&to_b), "{to_b} requests went to b");
    assert!(
        arms[200..].iter().all(|a| a == "a"),
        "requests still go to the stopped arm: {arms:?}"
    );
    let stats = send(
        &c,
        Request::get(format!("http://{}/stats", gw.admin_addr))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    let stopped = &stats["experiment"]["guardrail"]["stopped"];
    assert_eq!(stopped["arm"], "b", "{stats}");
    assert!(stopped["at_least"].as_f64().unwrap() > stopped["margin"].as_f64().unwrap());
    let m = scrape(&gw).await;
    let gauge = |arm| metric(&m, "thinkgate_experiment_arm_stopped", &[("arm", arm)]);
    assert_eq!(gauge("b"), Some(1.0), "{m}");
    assert_eq!(gauge("a"), Some(0.0), "{m}");
    gw.shutdown();
    gw.wait().await;

    // a guardrail that watches errors and accuracy only lets the slower arm
    // run (arms that trade latency for accuracy are compared on the rest)
    let gw = gateway(vec![], |c| {
        c.backends = vec![backend(fast.url(), "fast"), backend(slow.url(), "slow")];
        c.experiment = Some(ExperimentConfig {
            assign_by: AssignBy::Random,
            arms: vec![arm("a", "fast"), arm("b", "slow")],
            guardrail: Some(GuardrailConfig {
                tests: vec!["errors".into(), "accuracy".into()],
                ..GuardrailConfig::default()
            }),
        });
    })
    .await;
    let mut late_b = 0;
    for i in 0..200 {
        let got = send(&c, req(&gw, false)).await;
        late_b += usize::from(i >= 150 && got.headers["x-thinkgate-arm"] == "b");
    }
    assert!(late_b > 0, "the slower arm was stopped on latency");
    let m = scrape(&gw).await;
    let gauge = |arm| metric(&m, "thinkgate_experiment_arm_stopped", &[("arm", arm)]);
    assert_eq!(gauge("b"), Some(0.0), "{m}");
}

/// An engine under load merges several tokens into one event (vLLM's API
/// server does): the live in-flight token count follows the text, at the
/// bytes per token the engine's usage showed on a finished response, not
/// the events.
#[tokio::test]
async fn live_tokens_count_merged_events_by_their_text() {
    fn event(text: &str) -> (Duration, Bytes) {
        let e = format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"reasoning_content\":\"{text}\"}}}}]}}\n\n");
        (Duration::ZERO, Bytes::from(e))
    }
    let up = upstream(|parts, _| {
        if parts.headers.get("x-teach").is_some() {
            // 100 tokens of 4 bytes, one event each, and the usage that says so
            let mut chunks: Vec<_> = (0..100).map(|_| event("abcd")).collect();
            chunks.push((Duration::ZERO, Bytes::from_static(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"length\"}]}\n\n")));
            chunks.push((Duration::ZERO, Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":100,\"total_tokens\":105,\"completion_tokens_details\":{\"reasoning_tokens\":100}}}\n\ndata: [DONE]\n\n")));
            Script::sse(chunks)
        } else {
            // 5 events of 10 merged tokens each, then the engine goes quiet
            let mut s = Script::sse((0..5).map(|_| event(&"abcd".repeat(10))).collect());
            s.end = End::Hang;
            s
        }
    })
    .await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let c = client();
    let stream_req = |teach: bool| {
        let mut r = post(
            format!("http://{}/v1/chat/completions", gw.proxy_addr),
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        if teach {
            r.headers_mut()
                .insert("x-teach", http::HeaderValue::from_static("1"));
        }
        r
    };
    // the backend's live tokens, once they stop moving
    let live = || {
        let c = c.clone();
        let url = format!("http://{}/stats", gw.admin_addr);
        async move {
            let mut last = -1;
            for _ in 0..100 {
                let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                let v: serde_json::Value =
                    serde_json::from_slice(&send(&c, req).await.body).unwrap();
                let now = v["backends"][0]["inflight_tokens"].as_i64().unwrap();
                if now > 0 && now == last {
                    break;
                }
                last = now;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last
        }
    };
    // nothing learned: one token per event (prompt tokens p, plus 5)
    let first = c.request(stream_req(false)).await.unwrap();
    let one = live().await;
    // a finished response teaches 4 bytes per token
    let taught = send(&c, stream_req(true)).await;
    assert_eq!(taught.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // the same stream again: p plus 200 bytes at 4 bytes per token
    let second = c.request(stream_req(false)).await.unwrap();
    let two = live().await;
    // two - one = p + 50 and one = p + 5
    assert_eq!(two - 2 * one, 45, "one stream {one}, both {two}");
    drop((first, second));
}
