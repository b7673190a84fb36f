//! Real engines for the conformance suite: each started once per test run
//! (by `tests/engines/serve.py`, which kills it when this process ends) and
//! shared by every test that needs it.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The engine configurations the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// vLLM with `--reasoning-parser qwen3`: `delta.reasoning`, usage with
    /// `reasoning_tokens`.
    VllmParser,
    /// vLLM without a reasoning parser: thinking inline in `content`.
    VllmInline,
    /// llama.cpp server, default reasoning format: `reasoning_content`.
    LlamaParser,
    /// llama.cpp server with `--reasoning-format none`: thinking inline.
    LlamaInline,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::VllmParser,
        Kind::VllmInline,
        Kind::LlamaParser,
        Kind::LlamaInline,
    ];

    pub fn is_vllm(self) -> bool {
        matches!(self, Kind::VllmParser | Kind::VllmInline)
    }

    pub fn parser(self) -> bool {
        matches!(self, Kind::VllmParser | Kind::LlamaParser)
    }

    pub fn flavor(self) -> thinkgate::config::Flavor {
        if self.is_vllm() {
            thinkgate::config::Flavor::Vllm
        } else {
            thinkgate::config::Flavor::Llamacpp
        }
    }

    fn args(self) -> Vec<&'static str> {
        match self {
            Kind::VllmParser => vec!["vllm", "--reasoning-parser", "qwen3"],
            Kind::VllmInline => vec!["vllm"],
            Kind::LlamaParser => vec!["llama"],
            Kind::LlamaInline => vec!["llama", "--reasoning-format", "none"],
        }
    }
}

/// One running engine.
pub struct Engine {
    pub kind: Kind,
    pub url: String,
    /// The engine process (leader of its process group).
    pub pid: u32,
    /// The launcher; its stdin is the engine's lifeline.
    child: Child,
}

impl Engine {
    /// Start a fresh engine owned by the caller (killed when dropped).
    pub fn start(kind: Kind, extra: &[&str]) -> Engine {
        let (engine, mut out) = launch(kind, extra);
        engine.expect_line(&mut out, "READY")
    }

    /// Start a fresh engine and return as soon as its process exists, before
    /// it answers (`Starting::ready` waits for that).
    pub fn start_announced(kind: Kind, extra: &[&str]) -> Starting {
        let mut args = vec!["--announce"];
        args.extend_from_slice(extra);
        let (engine, mut out) = launch(kind, &args);
        let engine = engine.expect_line(&mut out, "STARTED");
        Starting { engine, out }
    }

    /// Read the launcher's next line, `WORD url pid`, into this engine.
    fn expect_line(mut self, out: &mut BufReader<ChildStdout>, word: &str) -> Engine {
        let mut line = String::new();
        out.read_line(&mut line)
            .expect("the launcher prints a line");
        let mut it = line.split_whitespace();
        assert_eq!(
            it.next(),
            Some(word),
            "engine {:?} did not start (is scripts/engines/install.sh done? \
             THINKGATE_ENGINES_DIR={:?}); the launcher said: {line:?}",
            self.kind,
            std::env::var("THINKGATE_ENGINES_DIR").ok()
        );
        self.url = it.next().expect("url").to_string();
        self.pid = it.next().and_then(|p| p.parse().ok()).expect("pid");
        self
    }

    /// The port the engine listens on.
    pub fn port(&self) -> &str {
        self.url.rsplit(':').next().unwrap_or_default()
    }

    /// Whether a process of the engine's group is still alive (vLLM runs
    /// its engine core and workers as children of the API server).
    pub fn group_alive(&self) -> bool {
        Command::new("pgrep")
            .args(["-g", &self.pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGKILL the engine's whole process group (a crash, as the OS sees it).
    pub fn kill9(&self) {
        // pid 0 would name the caller's own group: an engine not started yet
        if self.pid == 0 {
            return;
        }
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.pid)])
            .status();
    }
}

/// Spawn the launcher for `kind`; its lines are read from the returned
/// reader.
fn launch(kind: Kind, extra: &[&str]) -> (Engine, BufReader<ChildStdout>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/engines/serve.py");
    let mut args = kind.args();
    args.extend_from_slice(extra);
    let mut child = Command::new("python3")
        .arg(script)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs tests/engines/serve.py");
    let out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let engine = Engine {
        kind,
        url: String::new(),
        pid: 0,
        child,
    };
    (engine, out)
}

/// An engine whose process runs but may not answer yet.
pub struct Starting {
    pub engine: Engine,
    out: BufReader<ChildStdout>,
}

impl Starting {
    /// Wait until the engine answers `/health` (the launcher's `READY`).
    pub fn ready(mut self) -> Engine {
        let engine = self.engine;
        engine.expect_line(&mut self.out, "READY")
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill9();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared engine of `kind`, started on first use. The engines start in
/// parallel: the first call for any kind starts all of them, since the suite
/// uses all of them and vLLM takes tens of seconds to be ready.
pub fn shared(kind: Kind) -> &'static Engine {
    static ALL: OnceLock<Vec<&'static Engine>> = OnceLock::new();
    static START: Mutex<()> = Mutex::new(());
    let all = ALL.get_or_init(|| {
        let _g = START.lock();
        let handles: Vec<_> = Kind::ALL
            .iter()
            .map(|&k| std::thread::spawn(move || Engine::start(k, &[])))
            .collect();
        handles
            .into_iter()
            .map(|h| &*Box::leak(Box::new(h.join().expect("engine start"))))
            .collect()
    });
    all.iter()
        .find(|e| e.kind == kind)
        .copied()
        .expect("every kind is started")
}

/// vLLM's engine core: the child of the API server named `VLLM::EngineCore`.
pub fn engine_core(api_server: u32) -> u32 {
    let out = Command::new("ps")
        .args(["-o", "pid=,comm=", "--ppid", &api_server.to_string()])
        .output()
        .expect("ps runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("VLLM::Engin"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("vLLM runs its engine core in a child process")
}

/// A process stopped with SIGSTOP until dropped (then SIGCONT), so a failing
/// test leaves the shared engine running.
pub struct Stopped(u32);

impl Stopped {
    pub fn new(pid: u32) -> Self {
        let ok = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "SIGSTOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// What the tiny model says (`chain.json`, written by `make_models.py`).
pub struct Chain {
    pub think_words: Vec<String>,
    pub answer_words: Vec<String>,
}

pub fn chain() -> Chain {
    let dir = std::env::var("THINKGATE_ENGINES_DIR")
        .unwrap_or_else(|_| "/var/cache/thinkgate/engines".into());
    let text = std::fs::read_to_string(format!("{dir}/models/chain.json"))
        .expect("chain.json: run scripts/engines/install.sh");
    let v: serde_json::Value = serde_json::from_str(&text).expect("chain.json is JSON");
    let words = |k: &str| -> Vec<String> {
        v[k].as_array()
            .expect("a list")
            .iter()
            .map(|w| w.as_str().expect("a word").to_string())
            .collect()
    };
    Chain {
        think_words: words("think_words"),
        answer_words: words("answer_words"),
    }
}
