#!/usr/bin/env bash
# Hedging against a backend that sometimes hangs before its response head
# (docs/stragglers.md): two simulated engines, the second one stalling 5% of
# requests for 2 s before its head and then closing, round robin, retries 1.
# For each hedge delay (`off` = no hedging) and seed: p50 and p99 TTFVT at
# the client, and the extra load (hedges sent per request, from the
# gateway's counter).
#   scripts/bench-hedge.sh [requests=200] [rate=8] [seeds="1 2 3"] [delays="off 100 300 1000"]
# Loopback only; bounded by the request count and a 60 s per-request timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}; RATE=${2:-8}; SEEDS=${3:-"1 2 3"}; DELAYS=${4:-"off 100 300 1000"}
cargo build --release --quiet
bin=./target/release/thinkgate
out=$(mktemp -d)
pids=()
stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap stop_all EXIT

addr_of() { # file, field: wait for the line a server prints, then the address
  for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && break; sleep 0.1; done
  grep -o "$2[^ ]*" "$1" | head -1 | sed "s/^$2//"
}

echo "delay_ms seed requests ok ttfvt_p50_s ttfvt_p99_s hedges_per_request"
for delay in $DELAYS; do
  for seed in $SEEDS; do
    d="$out/$delay-$seed"; mkdir -p "$d"
    $bin sim --listen 127.0.0.1:0 --time-scale 20 --seed "$seed" > "$d/sim0.out" 2>&1 &
    pids+=($!)
    $bin sim --listen 127.0.0.1:0 --time-scale 20 --seed "$seed" \
      --faults stall_before_headers=0.05 --fault-stall-ms 2000 > "$d/sim1.out" 2>&1 &
    pids+=($!)
    e0="http://$(addr_of "$d/sim0.out" 'listening on ')"
    e1="http://$(addr_of "$d/sim1.out" 'listening on ')"
    {
      echo "upstreams = [\"$e0\", \"$e1\"]"
      echo; echo "[routing]"; echo 'type = "round_robin"'
      echo; echo "[straggler]"; echo "retries = 1"
      if [ "$delay" != off ]; then
        echo; echo "[straggler.hedge]"; echo "after_ms = $delay"; echo "max_ratio = 0.2"
      fi
    } > "$d/gateway.toml"
    $bin serve --config "$d/gateway.toml" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
      > "$d/gw.out" 2>/dev/null &
    pids+=($!)
    proxy="http://$(addr_of "$d/gw.out" 'proxy=')"
    admin="http://$(addr_of "$d/gw.out" 'admin=')"
    $bin load --url "$proxy" --num-requests "$N" --rate "$RATE" --seed "$seed" \
      --max-tokens 1500 --timeout 60 --quiet --out "$d/run" > /dev/null
    hedges=$(curl -s "$admin/metrics" | awk '/^thinkgate_hedges_total/ && /result="sent"/ {s+=$NF} END {print s+0}')
    python3 - "$d/run/summary.json" "$delay" "$seed" "$hedges" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
t = s["latency_s"]["ttfvt"]
print(sys.argv[2], sys.argv[3], s["sent"], s["ok"], f'{t["p50"]:.3f}', f'{t["p99"]:.3f}',
      f'{float(sys.argv[4]) / s["sent"]:.3f}')
PY
    stop_all
  done
done
echo "files in $out"
