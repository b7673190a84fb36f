# The project's habits, one recipe each; `.ci/run` installs the tools and runs
# `just ci`. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

export CARGO_TERM_COLOR := "never"

# the tools `.ci/run` installs (cargo-deny, cargo-machete) live here
tools := env_var_or_default("THINKGATE_TOOLS_DIR", "/var/cache/thinkgate/tools") + "/bin"

default:
    @just --list

# formatting, checked
fmt:
    cargo fmt --all -- --check

# clippy on every target, warnings denied
lint:
    cargo clippy --workspace --all-targets --locked -- -D warnings

# the API docs build without a warning (broken links included)
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# licenses, bans and sources of every dependency (deny.toml)
deny:
    {{tools}}/cargo-deny --locked check licenses bans sources

# no dependency declared and unused
machete:
    {{tools}}/cargo-machete

# the workspace builds with the declared minimum Rust (rust-version in Cargo.toml)
msrv:
    #!/usr/bin/env bash
    set -euo pipefail
    v=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
    cargo +"$v" check --workspace --all-targets --locked --target-dir target/msrv

# the binary as the Dockerfile builds it: gateway only, and with the tools
gateway-only:
    cargo test --locked --test dockerfile -- --include-ignored

# the README's test command
test:
    cargo test --workspace --locked

# the tests that need tools outside Rust: the real `openai` Python client,
# a real Prometheus and promtool, an OTLP receiver with the official protobuf
# definitions (ignored in a plain `cargo test`)
external:
    cargo test --locked --test openai_client --test stragglers --test prometheus --test traces -- --ignored openai_python real_prometheus otlp_receiver

# the conformance suite against the real engines (scripts/engines/install.sh first)
conformance:
    cargo test --release --locked --test conformance -- --ignored --test-threads=1

# the soak test (docs/reliability.md); SECS long, a reload every RELOAD s
soak SECS="120" RELOAD="30":
    SOAK_SECS={{SECS}} SOAK_RELOAD_SECS={{RELOAD}} cargo test --locked --test soak -- --ignored --nocapture

# the demo, short (README: cargo run --release -- demo)
demo SECS="8":
    cargo build --release --locked
    timeout 300 ./target/release/thinkgate demo --duration {{SECS}} --rate 4

# the Helm chart: lint, render, schemas, the gateway reads its config, rules
helm:
    cargo build --release --locked
    python3 helm/ci/check.py ./target/release/thinkgate "$(mktemp -d)"

# each fuzz target for SECS seconds (corpus in fuzz/corpus, read-only here)
fuzz SECS="30":
    #!/usr/bin/env bash
    set -euo pipefail
    # cargo-fuzz passes sanitizer flags that need nightly features; the
    # stable toolchain accepts them with RUSTC_BOOTSTRAP for this build alone
    export RUSTC_BOOTSTRAP=1
    flog=$(mktemp)
    for t in observer chunk_scanner request_rewrite h1_body; do
      if ! cargo fuzz run -O "$t" "$(mktemp -d)" "fuzz/corpus/$t" -- \
        -max_total_time={{SECS}} -rss_limit_mb=2048 >"$flog" 2>&1; then
        tail -40 "$flog"
        echo "fuzz target $t failed"
        exit 1
      fi
      echo "$t: $(grep -E '^Done' "$flog")"
    done

# the benchmarks (docs/performance.md says which is which)
bench:
    cargo bench --locked

# everything CI runs, in order, with a count of the tests that ran
ci:
    #!/usr/bin/env bash
    set -euo pipefail
    count() { grep -Eo "^test result: .* ([0-9]+) $2" "$1" | grep -Eo "[0-9]+ $2" | awk '{s+=$1} END {print s+0}'; }
    echo "== fmt"; just fmt
    echo "== lint"; just lint
    echo "== doc"; just doc
    echo "== deny"; just deny
    echo "== machete"; just machete
    echo "== msrv"; just msrv
    echo "== the Dockerfile's builds (gateway only, and with the tools)"; just gateway-only
    echo "== tests (README: cargo test --workspace)"
    log=$(mktemp)
    just test 2>&1 | tee "$log"
    passed=$(count "$log" passed); failed=$(count "$log" failed)
    echo "== the real openai client, a real Prometheus"
    elog=$(mktemp)
    just external 2>&1 | tee "$elog"
    epassed=$(count "$elog" passed)
    test "$epassed" -ge 4 || { echo "the external-tool tests ran $epassed tests, expected 4"; exit 1; }
    passed=$((passed + epassed))
    echo "== conformance suite against the real engines (release build: it times the gateway)"
    clog=$(mktemp)
    just conformance 2>&1 | tee "$clog"
    cpassed=$(count "$clog" passed)
    want=$(grep -c '^#\[ignore = "needs real engines' tests/conformance/*.rs | awk -F: '{s+=$2} END {print s}')
    test "$cpassed" -ge "$want" || { echo "the conformance suite ran $cpassed tests, expected $want"; exit 1; }
    echo "== soak, 2 minutes (tests/soak.rs; docs/reliability.md documents a 20-minute run)"
    just soak
    echo "== demo, short"; just demo
    echo "== helm chart"; just helm
    echo "== fuzzing, 30 s per target"; just fuzz
    echo "== summary"
    echo "tests: $((passed + cpassed + 1 + 1)) passed, $failed failed"
