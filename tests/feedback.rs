//! Feedback over loopback: `POST /feedback` on the admin listener and the
//! inline `x-thinkgate-feedback` header, written to the records file beside
//! the requests they grade, and refused clearly when they cannot be taken.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::{client, gateway, post, records, send, Script};

fn feedback(admin: std::net::SocketAddr, body: &str) -> http::Request<http_body_util::Full<Bytes>> {
    post(format!("http://{admin}/feedback"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grades_are_written_with_the_records_and_bad_ones_refused() {
    let up =
        common::upstream(|_, _| Script::json(r#"{"choices":[{"message":{"content":"4"}}]}"#)).await;
    let dir = common::tempdir("feedback");
    let rec = dir.join("records.jsonl");
    let r = rec.clone();
    let gw = gateway(vec![up.url()], |c| c.records = Some(r)).await;
    let c = client();
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"2+2?"}]}"#;
    // a request with the client's own id, another graded inline by a third
    let mut req = post(
        format!("http://{}/v1/chat/completions", gw.proxy_addr),
        chat,
    );
    req.headers_mut()
        .insert("x-request-id", "req-1".parse().unwrap());
    assert_eq!(send(&c, req).await.status, 200);
    let mut req = post(
        format!("http://{}/v1/chat/completions", gw.proxy_addr),
        chat,
    );
    req.headers_mut().insert(
        "x-thinkgate-feedback",
        "req-1=false, nonsense, req-0=0.5".parse().unwrap(),
    );
    let got = send(&c, req).await;
    assert_eq!(
        got.status, 200,
        "a request is never refused for its feedback"
    );
    assert_eq!(
        up.seen.lock().unwrap()[1]
            .headers
            .get("x-thinkgate-feedback")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("req-1=false, nonsense, req-0=0.5".into()),
        "forwarded unchanged"
    );

    // the admin endpoint: one grade, a batch with a score
    let got = send(
        &c,
        feedback(gw.admin_addr, r#"{"request_id":"req-1","value":true}"#),
    )
    .await;
    assert_eq!(got.status, 202, "{}", String::from_utf8_lossy(&got.body));
    let got = send(
        &c,
        feedback(
            gw.admin_addr,
            r#"[{"request_id":"req-1","metric":"helpful","value":0.75},{"request_id":"other","value":false}]"#,
        ),
    )
    .await;
    assert_eq!(got.status, 202);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&got.body).unwrap()["accepted"],
        2
    );
    // bad grades: 400 with an OpenAI-style error, nothing written
    for bad in [
        "not json",
        r#"{"request_id":"r"}"#,
        r#"{"request_id":"r","value":"great"}"#,
        r#"[{"request_id":"r","value":true},{"request_id":"","value":true}]"#,
        "[]",
    ] {
        let got = send(&c, feedback(gw.admin_addr, bad)).await;
        assert_eq!(got.status, 400, "{bad}");
        let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{bad}: {v}");
    }
    let get = http::Request::get(format!("http://{}/feedback", gw.admin_addr))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, get).await.status, 405);
    let metrics = common::scrape(&gw).await;
    let count = |result: &str| {
        common::metric(&metrics, "thinkgate_feedback_total", &[("result", result)]).unwrap_or(0.0)
    };
    assert_eq!(count("accepted"), 5.0, "{metrics}");
    assert_eq!(count("invalid"), 5.0, "{metrics}");
    gw.shutdown();
    gw.wait().await;

    // in the records file: two requests, then the grades as they came
    let lines = records(&rec);
    let requests: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("id").is_some()).collect();
    let grades: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("feedback")).collect();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["id"], "req-1");
    let seen: Vec<(String, String, String)> = grades
        .iter()
        .map(|g| {
            (
                g["request_id"].as_str().unwrap().to_string(),
                g["metric"].as_str().unwrap().to_string(),
                g["value"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("req-1".into(), "correct".into(), "false".into()),
            ("req-0".into(), "correct".into(), "0.5".into()),
            ("req-1".into(), "correct".into(), "true".into()),
            ("req-1".into(), "helpful".into(), "0.75".into()),
            ("other".into(), "correct".into(), "false".into()),
        ]
    );
    assert!(grades
        .iter()
        .all(|g| g["unix_ms"].as_u64().unwrap_or(0) > 1_700_000_000_000));

    // compare joins them: the last grade of req-1 counts
    let samples = thinkgate_loadgen::compare::load_run(&rec).unwrap();
    let one = samples
        .iter()
        .find(|s| s.id.as_deref() == Some("req-1"))
        .unwrap();
    assert_eq!(one.correct, Some(true));
    assert_eq!(one.feedback.get("helpful"), Some(&0.75));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_records_feedback_has_nowhere_to_go_and_says_so() {
    let up = common::upstream(|_, _| Script::json("{}")).await;
    let gw = gateway(vec![up.url()], |_| {}).await;
    let got = send(
        &client(),
        feedback(gw.admin_addr, r#"{"request_id":"r","value":true}"#),
    )
    .await;
    assert_eq!(got.status, 404);
    assert!(String::from_utf8_lossy(&got.body).contains("--records"));
}
