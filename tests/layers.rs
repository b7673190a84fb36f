//! The gateway library's modules are one-way layers: each uses only the ones
//! below it. This test reads every `crate::` and `super::` path in `src/`
//! (the binary's `src/bin/` aside; unit tests and comments aside) and fails
//! on any that points up, or at a module the order below does not place.
//!
//! `cargo test --test layers -- --nocapture` prints the module graph.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first. A submodule listed on its own (`upstream::send`)
/// is a layer apart from its parent.
const LAYERS: &[&str] = &[
    "server",
    "proxy",
    "managed",
    "upstream::send",
    "body",
    "context",
    "state",
    "trace",
    "fleet",
    "record",
    "feedback",
    "config",
    "access",
    "straggler",
    "upstream",
    "trace::context",
    "trace::config",
    "tls",
    "metrics",
    "error",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "bin") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` -> `a::b`; `src/a/mod.rs` -> `a`; `src/lib.rs` -> ``.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut segs: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
        segs.pop();
    }
    segs
}

/// The layer a module path belongs to (the longest listed prefix).
fn layer_of(path: &[String]) -> Option<usize> {
    let joined = path.join("::");
    LAYERS
        .iter()
        .enumerate()
        .filter(|(_, l)| joined == **l || joined.starts_with(&format!("{l}::")))
        .max_by_key(|(_, l)| l.len())
        .map(|(i, _)| i)
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Module paths a line names after `crate::` or `super::` (`use crate::{a,
/// b::c}` names `a` and `b::c`), resolved against `here`.
fn paths_in(line: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `super` of `a::b` (file `a/b.rs`, or `a/b/mod.rs`) is `a`
    let parent = here[..here.len().saturating_sub(1)].to_vec();
    for (key, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = line;
        while let Some(i) = rest.find(key) {
            // not the end of a longer name (`some_crate::`)
            let before = rest[..i].chars().last();
            let tail = &rest[i + key.len()..];
            rest = tail;
            if before.is_some_and(|c| ident_char(c) || c == ':') {
                continue;
            }
            let groups: Vec<String> = if let Some(inner) = tail.strip_prefix('{') {
                let end = inner.find('}').unwrap_or(inner.len());
                inner[..end]
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect()
            } else {
                vec![tail.to_string()]
            };
            for g in groups {
                let mut p = base.clone();
                for seg in g.split("::") {
                    let name: String = seg.chars().take_while(|c| ident_char(*c)).collect();
                    // modules are lower case; a type or a function ends it
                    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                        break;
                    }
                    p.push(name.clone());
                    if seg.len() != name.len() {
                        break;
                    }
                }
                out.push(p);
            }
        }
    }
    out
}

/// `text` less every item marked `#[cfg(test)]` (through its matching
/// closing brace, or its `;`), its lines left blank.
fn without_test_items(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let item = &rest[i..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (j, c) in item.char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        // keep the line numbers of what follows
        out.push_str(&"\n".repeat(item[..end].matches('\n').count()));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut unplaced = BTreeSet::new();
    let mut upward = Vec::new();
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for f in &files {
        let here = module_of(&src, f);
        if here.is_empty() {
            continue; // lib.rs: the crate root declares every layer
        }
        let Some(from) = layer_of(&here) else {
            unplaced.insert(here.join("::"));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        // unit tests may reach anywhere
        let code = without_test_items(&text);
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for p in paths_in(line, &here) {
                // a path that names no module of its own stays in `here`'s
                let Some(to) = layer_of(&p) else {
                    if let Some(first) = p.first() {
                        unplaced.insert(format!("{first} (named in {})", f.display()));
                    }
                    continue;
                };
                if to == from {
                    continue;
                }
                graph.entry(LAYERS[from]).or_default().insert(LAYERS[to]);
                if to < from {
                    upward.push(format!(
                        "{}:{}: {} uses {} (above it): {}",
                        f.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        LAYERS[from],
                        LAYERS[to],
                        line.trim()
                    ));
                }
            }
        }
    }
    println!("module graph (a layer -> the layers it uses):");
    for l in LAYERS {
        let uses: Vec<&str> = graph
            .get(l)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        println!("  {l} -> {}", uses.join(", "));
    }
    assert!(
        unplaced.is_empty(),
        "modules with no layer (add them to LAYERS in tests/layers.rs): {unplaced:?}"
    );
    assert!(
        upward.is_empty(),
        "imports against the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_path_reader_resolves_crate_super_and_groups() {
    let here = vec!["managed".to_string(), "leg".to_string()];
    let got = paths_in(
        "use crate::{fleet::Backend, state::Shared}; use super::exact; x::crate::no",
        &here,
    );
    let want: Vec<Vec<String>> = vec![
        vec!["fleet".into()],
        vec!["state".into()],
        vec!["managed".into(), "exact".into()],
    ];
    assert_eq!(got, want);
    // `super` from `a/mod.rs` is the crate root
    let got = paths_in("use super::config::Config;", &["upstream".to_string()]);
    assert_eq!(got, vec![vec!["config".to_string()]]);
    assert_eq!(layer_of(&["upstream".into(), "send".into()]), Some(3));
    assert_eq!(
        layer_of(&["upstream".into(), "h1".into()]),
        layer_of(&["upstream".into()])
    );
}
