//! The real `thinkgate` binary: configuration precedence, port 0, and a
//! graceful drain on SIGTERM that lets a streaming response finish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::*;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_thinkgate");

fn serve(args: &[&std::ffi::OsStr]) -> (Proc, String, String) {
    serve_binary(BIN, args)
}

#[test]
fn print_config_applies_file_then_env_then_flags() {
    let dir = std::env::temp_dir().join(format!("tg-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tg.toml");
    std::fs::write(&file, "upstreams = [\"http://file:1\"]\ndrain_timeout_secs = 11\nstats_window_secs = 12\nthink_tags = \"off\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .args(["--drain-timeout-secs", "33"])
        .env("THINKGATE_DRAIN_TIMEOUT_SECS", "22")
        .env("THINKGATE_STATS_WINDOW_SECS", "44")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(cfg["upstreams"][0].as_str(), Some("http://file:1"));
    assert_eq!(
        cfg["drain_timeout_secs"].as_integer(),
        Some(33),
        "flag beats env"
    );
    assert_eq!(
        cfg["stats_window_secs"].as_integer(),
        Some(44),
        "env beats file"
    );
    assert_eq!(cfg["think_tags"].as_str(), Some("off"));
}

#[test]
fn bad_config_is_a_clear_startup_error() {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one upstream"));
    let out = Command::new(BIN)
        .args(["serve", "--upstream", "ftp://x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be http:// or https://"));
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let chunk = Bytes::from_static(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
    );
    let up = upstream(move |_, _| {
        let mut chunks = vec![(Duration::from_millis(100), chunk.clone()); 10];
        chunks.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
        Script::sse(chunks)
    })
    .await;
    let url = up.url();
    let (mut child, proxy, admin) = serve(&["--upstream".as_ref(), url.as_ref()]);

    let c = client();
    let resp = c.request(post(
        format!("http://{proxy}/v1/chat/completions"),
        r#"{"model":"m","stream":true}"#,
    ));
    let stream = tokio::spawn(async move {
        use http_body_util::BodyExt;
        resp.await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: not ready, and no new connections.
    let ready = client()
        .request(
            http::Request::get(format!("http://{admin}/readyz"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    if let Ok(r) = ready {
        assert_eq!(r.status(), 503);
    }
    assert!(
        std::net::TcpStream::connect(&proxy).is_err(),
        "listener closed while draining"
    );
    let body = stream.await.unwrap();
    assert!(
        body.ends_with(b"data: [DONE]\n\n"),
        "the in-flight stream finished"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn config_file_change_and_sighup_reload_routing() {
    let a = upstream(|_, _| Script::json(r#"{"from":"a"}"#)).await;
    let b = upstream(|_, _| Script::json(r#"{"from":"b"}"#)).await;
    let dir = std::env::temp_dir().join(format!("tg-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tg.toml");
    let write = |url: &str, extra: &str| {
        std::fs::write(
            &file,
            format!(
                "upstreams = [\"{url}\"]\nhealth_interval_ms = 0\nscrape_interval_ms = 0\n{extra}"
            ),
        )
        .unwrap()
    };
    write(&a.url(), "");
    let (mut child, proxy, _admin) = serve(&["--config".as_ref(), file.as_os_str()]);
    let c = client();
    let ask = || {
        post(
            format!("http://{proxy}/v1/chat/completions"),
            r#"{"model":"m"}"#,
        )
    };
    assert_eq!(send(&c, ask()).await.body, &br#"{"from":"a"}"#[..]);
    // A file change is picked up within the 1 s poll.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write(&b.url(), "");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while send(&c, ask()).await.body != br#"{"from":"b"}"#[..] {
        assert!(
            std::time::Instant::now() < deadline,
            "file change not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGHUP re-reads the file at once (the poll could also see this write;
    // the test shows the signal path works and does not disturb serving).
    write(&a.url(), "");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while send(&c, ask()).await.body != br#"{"from":"a"}"#[..] {
        assert!(std::time::Instant::now() < deadline, "SIGHUP not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// The listener's certificate renewed on disk with file polling off
/// (`tls.reload_interval_secs = 0`): the old one serves until SIGHUP, the
/// new one right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_listener_certificate() {
    let up = upstream(|_, _| Script::json(r#"{"ok":true}"#)).await;
    let pki = pki::Pki::new("sighup");
    let first = pki.leaf("first", &["localhost"], -1, 30);
    let file = pki.ca_file().with_file_name("tg.toml");
    std::fs::write(
        &file,
        format!(
            "upstreams = [\"{}\"]\nhealth_interval_ms = 0\nscrape_interval_ms = 0\n\
             [tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval_secs = 0\n",
            up.url(),
            first.cert.display().to_string(),
            first.key.display().to_string(),
        ),
    )
    .unwrap();
    let (mut child, proxy, _admin) = serve(&["--config".as_ref(), file.as_os_str()]);
    let addr: std::net::SocketAddr = proxy.parse().unwrap();
    let old = pki.peer_cert(addr).await;
    let renewed = pki.leaf("renewed", &["localhost"], -1, 60);
    std::fs::rename(&renewed.key, &first.key).unwrap();
    std::fs::rename(&renewed.cert, &first.cert).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pki.peer_cert(addr).await, old, "reloaded without SIGHUP");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pki.peer_cert(addr).await == old {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not renew");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// Prompts never reach the logs (at the most verbose level) nor the
/// records; output text reaches the records only when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_outputs_are_not_logged_unless_asked() {
    let cfg = thinkgate_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 50.0,
        ..Default::default()
    };
    let (sim, _s, _t) = thinkgate_sim::server::spawn(cfg).await.unwrap();
    let dir = tempdir("privacy");
    const CANARY: &str = "zebra-canary-9431";
    for include_text in [false, true] {
        let records = dir.join(format!("records-{include_text}.jsonl"));
        let log = dir.join(format!("log-{include_text}.txt"));
        let mut cmd = serve_command(BIN);
        cmd.args(["--upstream", &format!("http://{sim}"), "--records"])
            .arg(&records)
            .args(["--records-include-text", &include_text.to_string()])
            .env("THINKGATE_LOG", "trace")
            .stderr(std::fs::File::create(&log).unwrap());
        let (mut child, proxy, _) = serve_with(cmd);
        let c = client();
        for stream in [true, false] {
            let body = serde_json::json!({
                "model": "sim-r1-distill-qwen-7b", "stream": stream, "max_tokens": 200,
                "messages": [{"role": "user", "content": format!("What is 2+2? {CANARY}")}],
            });
            let got = send(
                &c,
                post(
                    format!("http://{proxy}/v1/chat/completions"),
                    &body.to_string(),
                ),
            )
            .await;
            assert_eq!(got.status, 200);
        }
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        assert!(child.wait().unwrap().success());
        let log_text = std::fs::read_to_string(&log).unwrap();
        let rec_text = std::fs::read_to_string(&records).unwrap();
        assert!(!log_text.contains(CANARY), "the prompt reached the log");
        assert!(!rec_text.contains(CANARY), "the prompt reached a record");
        assert_eq!(
            rec_text.contains("\"text\":"),
            include_text,
            "output text in records only when asked"
        );
        if include_text {
            let rec: serde_json::Value =
                serde_json::from_str(rec_text.lines().next().unwrap()).unwrap();
            let reasoning = rec["text"][0]["reasoning"].as_str().unwrap();
            assert!(reasoning.len() > 40);
            assert!(
                !log_text.contains(&reasoning[..40]),
                "output reached the log"
            );
        }
        assert_eq!(rec_text.lines().count(), 2);
    }
}

/// The README's first line says how long the demo's load runs: the demo's
/// own default, as `thinkgate demo --help` prints it.
#[test]
fn the_readme_quotes_the_demos_duration() {
    let help = Command::new(BIN).args(["demo", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let dur = help
        .split("--duration")
        .nth(1)
        .and_then(|s| s.split("[default: ").nth(1))
        .and_then(|s| s.split(']').next())
        .unwrap_or_else(|| panic!("demo --help names its default duration: {help}"))
        .to_string();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release -- demo"))
        .expect("the README's demo command");
    assert!(
        line.contains(&format!("+ {dur} s of Gamma load")),
        "README says {line:?}; the demo's default is {dur} s"
    );
}

/// The line the README quotes from the demo is a line the demo prints: the
/// same words, with the figures where the README has them, and TTFT below
/// TTFVT as the README shows (a short run).
#[test]
fn the_readme_quotes_a_line_the_demo_prints() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let quoted = readme
        .lines()
        .find(|l| l.starts_with("TTFT p50 "))
        .expect("the README quotes the demo's TTFT/TTFVT line");
    let out = Command::new(BIN)
        .args(["demo", "--duration", "3", "--rate", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let printed = stdout
        .lines()
        .find(|l| l.starts_with("TTFT p50 "))
        .unwrap_or_else(|| panic!("the demo prints no TTFT/TTFVT line: {stdout}"));
    // the words match, figures aside
    let words = |l: &str| -> Vec<String> {
        l.trim_end_matches("...")
            .split_whitespace()
            .filter(|w| w.parse::<f64>().is_err())
            .map(str::to_string)
            .collect()
    };
    let (q, p) = (words(quoted), words(printed));
    assert_eq!(
        q,
        p[..q.len().min(p.len())],
        "README: {quoted}\ndemo: {printed}"
    );
    let figures: Vec<f64> = printed
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(figures[0] < figures[1], "TTFT below TTFVT: {printed}");
}
