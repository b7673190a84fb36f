//! The soak against real engines: a vLLM and a llama.cpp server of its own
//! behind the gateway binary, under load from the load generator, with
//! faults at random moments: an engine killed with its workers (SIGKILL to
//! its process group) and restarted at the same address, as systemd or a
//! kubelet does, or paused (SIGSTOP) for 2 to 8 s, which the gateway's idle
//! timeout (4 s) cuts or not.
//!
//! Afterwards: no panic; one record per request sent and nothing lost;
//! the load generator and the gateway agree on every request's outcome;
//! every stream an engine's death cut ended with the error event; both
//! engines are back in service; the gateway's RSS is flat after warm-up.
//!
//! CI runs it for `SOAK_REAL_SECS` (150 s); `docs/reliability.md` has a
//! 20-minute run: `SOAK_REAL_SECS=1200 cargo test --release --test
//! conformance -- --ignored --nocapture soak_against_real_engines`.

use super::*;
use common::{env_u64, proc_kib, Agreement, RssSeries, SoakGateway};
use engines::Stopped;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::process::Command;
use std::thread::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_thinkgate");

/// Growth of the gateway's RSS allowed from the end of warm-up to the end.
/// Streams here are short (256 tokens at most), so what grows past this
/// is a leak, not a buffer.
const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    Pause,
}

/// One engine the soak may break: running, paused, or restarting.
struct Target {
    kind: Kind,
    port: String,
    running: Option<Engine>,
    paused: Option<(Stopped, Instant)>,
    restarting: Option<JoinHandle<Engine>>,
}

impl Target {
    fn new(engine: Engine) -> Self {
        Self {
            kind: engine.kind,
            port: engine.port().to_string(),
            running: Some(engine),
            paused: None,
            restarting: None,
        }
    }

    fn name(&self) -> &'static str {
        if self.kind.is_vllm() {
            "vllm"
        } else {
            "llama.cpp"
        }
    }

    fn available(&self) -> bool {
        self.running.is_some() && self.paused.is_none()
    }

    /// SIGKILL the whole group, then start it again at the same address
    /// once the group is gone (the port is free).
    fn kill(&mut self) {
        let old = self.running.take().expect("a running engine");
        old.kill9();
        let (kind, port) = (self.kind, self.port.clone());
        self.restarting = Some(std::thread::spawn(move || {
            let t = Instant::now();
            while old.group_alive() {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "the killed engine's group outlived SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(old);
            Engine::start(kind, &["--port", &port])
        }));
    }

    fn pause(&mut self, for_: Duration) {
        let pid = self.running.as_ref().expect("a running engine").pid;
        self.paused = Some((Stopped::new(pid), Instant::now() + for_));
    }

    /// Resume a pause that is due, take back a restarted engine.
    fn tick(&mut self) {
        if self
            .paused
            .as_ref()
            .is_some_and(|(_, until)| Instant::now() >= *until)
        {
            self.paused = None;
        }
        if self
            .restarting
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
        {
            let h = self.restarting.take().unwrap();
            self.running = Some(h.join().expect("the engine restarted"));
        }
    }

    /// Wait out a restart in progress and end any pause.
    fn settle(&mut self) {
        self.paused = None;
        if let Some(h) = self.restarting.take() {
            self.running = Some(h.join().expect("the engine restarted"));
        }
    }
}

fn config(targets: &[Target], records: &std::path::Path) -> String {
    let mut c = format!(
        "records = {records:?}\nhealth_interval_ms = 500\nupstream_idle_timeout_secs = 4\n\
         upstream_header_timeout_secs = 20\nmax_inflight = 256\n\n\
         [routing]\ntype = \"least_request\"\n\n[straggler]\nretries = 1\n"
    );
    for t in targets {
        let flavor = if t.kind.is_vllm() { "vllm" } else { "llamacpp" };
        c.push_str(&format!(
            "\n[[backends]]\nurl = \"http://127.0.0.1:{}\"\nflavor = \"{flavor}\"\n",
            t.port
        ));
    }
    c
}

#[test]
#[ignore = "needs real engines: scripts/engines/install.sh"]
fn soak_against_real_engines_with_kills_and_pauses_loses_nothing() {
    let secs = env_u64("SOAK_REAL_SECS", 150);
    let fault_every = Duration::from_secs(env_u64("SOAK_REAL_FAULT_EVERY_SECS", 10));
    let warm_up = Duration::from_secs(secs / 5);
    let seed = env_u64("SOAK_REAL_SEED", 19);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempdir("soak-real");

    let starting = [Kind::VllmParser, Kind::LlamaParser]
        .map(|k| std::thread::spawn(move || Engine::start(k, &[])));
    let mut targets: Vec<Target> = starting
        .into_iter()
        .map(|h| Target::new(h.join().expect("engine start")))
        .collect();
    let mut g = SoakGateway::start(BIN, &dir, |rec| config(&targets, rec));
    let mut load = g.load_for(BIN, "tiny", secs, &["--rate", "2", "--max-tokens", "256"]);

    // every kind of fault on every engine, in a random order, again and again
    let mut plan: Vec<(usize, Fault)> = Vec::new();
    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    let t0 = Instant::now();
    let mut rss = Vec::new();
    let mut next_fault = warm_up;
    while load.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs + 180),
            "the load generator did not finish"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(g.gw.try_wait().unwrap().is_none(), "the gateway exited");
        rss.push((t0.elapsed(), proc_kib(g.pid, "VmRSS")));
        for t in targets.iter_mut() {
            t.tick();
        }
        if t0.elapsed() < next_fault || t0.elapsed() + fault_every > Duration::from_secs(secs) {
            continue;
        }
        next_fault = t0.elapsed() + fault_every / 2 + fault_every.mul_f64(rng.random::<f64>());
        if plan.is_empty() {
            plan = (0..targets.len())
                .flat_map(|i| [(i, Fault::Kill), (i, Fault::Pause)])
                .collect();
            plan.shuffle(&mut rng);
            if injected.is_empty() {
                // a vLLM restart takes most of a minute, and nothing else
                // breaks meanwhile: last in the first round, so a short run
                // sees every kind
                plan.sort_by_key(|&(i, f)| f == Fault::Kill && targets[i].kind.is_vllm());
            }
        }
        // the next fault whose engine is up now (never both down by plan)
        let others_up =
            |i: usize, ts: &[Target]| ts.iter().enumerate().all(|(j, t)| j == i || t.available());
        let Some(k) = plan
            .iter()
            .position(|&(i, _)| targets[i].available() && others_up(i, &targets))
        else {
            continue;
        };
        let (i, fault) = plan.remove(k);
        let t = &mut targets[i];
        match fault {
            Fault::Kill => t.kill(),
            Fault::Pause => t.pause(Duration::from_millis(rng.random_range(2_000..8_000))),
        }
        eprintln!(
            "{:>6.1} s: {fault:?} {}",
            t0.elapsed().as_secs_f64(),
            t.name()
        );
        *injected
            .entry(format!("{fault:?} {}", t.name()))
            .or_default() += 1;
    }
    assert!(
        load.wait().unwrap().success(),
        "the load generator failed: see {}",
        dir.display()
    );
    for t in targets.iter_mut() {
        t.settle();
    }

    rt().block_on(async {
        let c = client();
        // both engines back in service: healthy again, and an answer
        // through the gateway
        for t in &targets {
            let url = format!("http://127.0.0.1:{}", t.port);
            let since = Instant::now();
            while super::chaos::backend_stats(&c, &g.admin, &url).await["healthy"] != true {
                assert!(
                    since.elapsed() < Duration::from_secs(20),
                    "{} not back in service",
                    t.name()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let s = call(
            &c,
            &format!("http://{}", g.proxy),
            "/v1/chat/completions",
            &chat(false, false),
            &[],
        )
        .await;
        assert_eq!(s.status, 200);
        let req = Request::get(format!("http://{}/metrics", g.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let metrics = String::from_utf8_lossy(&common::send(&c, req).await.body).into_owned();
        std::fs::write(dir.join("metrics.txt"), metrics).unwrap();
    });
    // SIGTERM: drain and flush the records
    let _ = Command::new("kill").arg(g.pid.to_string()).status();
    assert!(
        g.gw.wait().unwrap().success(),
        "the gateway's exit after SIGTERM"
    );
    drop(targets);

    let text = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    assert!(!text.contains("panicked"), "gateway: {text:.2000}");
    let rss = RssSeries(rss);
    rss.write_csv(&dir.join("rss.csv"));
    let sent = records(&g.out.join("requests.jsonl"));
    // the final probes above were not the load generator's
    let recs: Vec<Value> = records(&g.records)
        .into_iter()
        .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with("lg-")))
        .collect();
    let agreed = Agreement::of(&sent, &recs);
    let outcomes = &agreed.outcomes;
    let retried = recs
        .iter()
        .filter(|r| {
            r["actions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["action"] == "retry"))
        })
        .count();
    let [q0, q1, q2, q3] = rss.quarters();
    eprintln!(
        "real-engine soak {secs} s: {} requests sent, {} records, outcomes {outcomes:?}; \
         faults {injected:?}; {retried} retried; rss after warm-up {} KiB, peak after {} KiB, \
         per quarter {q0} / {q1} / {q2} / {q3} KiB; logs in {}",
        sent.len(),
        recs.len(),
        rss.warm(),
        rss.peak_after_warm(),
        dir.display()
    );
    agreed.assert_whole(secs as f64 * 2.0 * 0.7);
    for fault in [
        "Kill vllm",
        "Kill llama.cpp",
        "Pause vllm",
        "Pause llama.cpp",
    ] {
        assert!(
            injected.contains_key(fault),
            "{fault} never ran: {injected:?}"
        );
    }
    // a stream an engine's death cut tells its client so: the load
    // generator saw an error on each (the agreement above), and the
    // gateway's records name it
    let completed: u64 = outcomes
        .iter()
        .filter(|(k, _)| k.starts_with("200 completed") || k.starts_with("200 answerless"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        completed as f64 >= 0.8 * sent.len() as f64,
        "only {completed} of {} requests answered while one engine at a time failed: {outcomes:?}",
        sent.len()
    );
    assert!(
        rss.peak_after_warm() <= rss.warm() + RSS_GROWTH_BOUND_KIB,
        "RSS grew from {} to {} KiB after warm-up",
        rss.warm(),
        rss.peak_after_warm()
    );
}
