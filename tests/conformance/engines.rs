//! Real engines for the conformance suite: each started once per test run
//! (by `tests/engines/serve.py`, which kills it when this process ends) and
//! shared by every test that needs it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
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
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut line)
            .expect("the launcher prints one line");
        let mut it = line.split_whitespace();
        assert_eq!(
            it.next(),
            Some("READY"),
            "engine {kind:?} did not start (is scripts/engines/install.sh done? \
             THINKGATE_ENGINES_DIR={:?}); the launcher said: {line:?}",
            std::env::var("THINKGATE_ENGINES_DIR").ok()
        );
        let url = it.next().expect("url").to_string();
        let pid = it.next().and_then(|p| p.parse().ok()).expect("pid");
        Engine {
            kind,
            url,
            pid,
            child,
        }
    }

    /// SIGKILL the engine's whole process group (a crash, as the OS sees it).
    pub fn kill9(&self) {
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.pid)])
            .status();
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
