#!/usr/bin/env bash
# Hedging against a backend that sometimes hangs before its response head
# (docs/stragglers.md): two simulated engines, the second one stalling 5% of
# requests for 2 s before its head and then closing, round robin, retries 1.
# For each hedge delay (`off` = no hedging) and seed: p50 and p99 TTFVT at
# the client, and the extra load (hedges sent per request, from the
# gateway's counter).
#   scripts/bench-hedge.sh [requests=200] [rate=8] [seeds="1 2 3"] [delays="off 100 300 1000"]
# With ENGINES=llama: two real llama.cpp servers (scripts/engines/install.sh)
# with one slot each, started once, instead of the simulators: a request
# routed to a busy server waits in its slot queue with no response head
# until the slot frees, as production llama.cpp does under load. Gamma
# arrivals (the load generator's default) make the queues: no fault is
# injected.
# Loopback only; bounded by the request count and a 60 s per-request timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}; RATE=${2:-8}; SEEDS=${3:-"1 2 3"}; DELAYS=${4:-"off 100 300 1000"}
ENGINES=${ENGINES:-sim}
cargo build --release --quiet
bin=./target/release/thinkgate
out=$(mktemp -d)
pids=()
engine_pids=()
engine_urls=()
stop_all() {
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=()
}
stop_engines() { stop_all; kill "${engine_pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop_engines EXIT

addr_of() { # file, field: wait for the line a server prints, then the address
  for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && break; sleep 0.1; done
  grep -o "$2[^ ]*" "$1" | head -1 | sed "s/^$2//"
}

model=sim-r1-distill-qwen-7b
max_tokens=1500
extra=()
if [ "$ENGINES" = llama ]; then
  . scripts/engines/llama-servers.sh
  start_llama_servers "$out" 2 1
  model=tiny
  # the tiny test model ends after a few dozen tokens: every request runs
  # to max_tokens instead, so a slot is busy long enough for a queue
  max_tokens=${MAX_TOKENS:-2000}
  extra=(--extra-body '{"ignore_eos": true}')
fi

echo "engines=$ENGINES"
echo "delay_ms seed requests ok ttfvt_p50_s ttfvt_p99_s hedges_per_request"
for delay in $DELAYS; do
  for seed in $SEEDS; do
    d="$out/$delay-$seed"; mkdir -p "$d"
    if [ "$ENGINES" = llama ]; then
      e0=${engine_urls[0]}; e1=${engine_urls[1]}
    else
      $bin sim --listen 127.0.0.1:0 --time-scale 20 --seed "$seed" > "$d/sim0.out" 2>&1 &
      pids+=($!)
      $bin sim --listen 127.0.0.1:0 --time-scale 20 --seed "$seed" \
        --faults stall_before_headers=0.05 --fault-stall-ms 2000 > "$d/sim1.out" 2>&1 &
      pids+=($!)
      e0="http://$(addr_of "$d/sim0.out" 'listening on ')"
      e1="http://$(addr_of "$d/sim1.out" 'listening on ')"
    fi
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
    $bin load --url "$proxy" --model "$model" --num-requests "$N" --rate "$RATE" --seed "$seed" \
      --max-tokens "$max_tokens" "${extra[@]}" --timeout 60 --quiet --out "$d/run" > /dev/null
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
