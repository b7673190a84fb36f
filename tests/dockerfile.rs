//! The `Dockerfile` against the workspace, as far as it can be checked
//! without a Docker daemon: what it copies exists, the binary it builds is a
//! target, the features it names are declared, and the build command it
//! runs compiles here with each feature set it offers (`cargo check`, the
//! same flags).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Dockerfile's instructions, continuation lines joined.
fn instructions() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                if !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
        }
    }
    out
}

fn metadata() -> serde_json::Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_dockerfile_builds_what_the_workspace_has() {
    let ins = instructions();
    // what it copies from the build context exists
    for i in ins
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from="))
    {
        let words: Vec<&str> = i.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            assert!(root().join(src).exists(), "{i}: {src} does not exist");
        }
    }
    // the build command
    let build = ins
        .iter()
        .find(|i| i.contains("cargo build"))
        .expect("a cargo build step");
    let words: Vec<&str> = build.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|p| words.get(p + 1))
            .map(|w| w.trim_matches('"').to_string())
    };
    let bin = after("--bin").expect("--bin NAME");
    let meta = metadata();
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "thinkgate")
        .unwrap()
        .clone();
    let bins: Vec<&str> = pkg["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        bins.contains(&bin.as_str()),
        "--bin {bin}: the targets are {bins:?}"
    );
    assert!(
        build.contains("--locked"),
        "the image builds from Cargo.lock"
    );
    // the features it offers are declared
    let arg = ins
        .iter()
        .find_map(|i| i.strip_prefix("ARG FEATURES="))
        .map(str::trim)
        .expect("ARG FEATURES=...");
    assert_eq!(after("--features").as_deref(), Some("$FEATURES"));
    let declared = pkg["features"].as_object().unwrap();
    for f in arg.split([',', ' ']).filter(|f| !f.is_empty()) {
        assert!(
            declared.contains_key(f),
            "ARG FEATURES names {f}, undeclared"
        );
    }
    assert!(
        build.contains("--no-default-features"),
        "FEATURES says all of them"
    );
}

/// The image's build command compiles with its default features and with
/// none (the gateway-only image).
#[test]
#[ignore = "compiles the binary twice; .ci/run runs it"]
fn the_dockerfile_build_command_compiles_with_each_feature_set() {
    for features in ["tools", ""] {
        let out = Command::new(env!("CARGO"))
            .args([
                "check",
                "--locked",
                "--bin",
                "thinkgate",
                "--no-default-features",
            ])
            .args(["--features", features])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "features {features:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
