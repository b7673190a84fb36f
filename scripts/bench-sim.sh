#!/usr/bin/env bash
# Capacity of the simulated engine: N concurrent streams (closed loop) from
# `thinkgate load`, peak open requests sampled from the sim's /metrics every
# 200 ms, output tokens/s from the load report, the sim's CPU and RSS.
#   scripts/bench-sim.sh [streams=5000] [requests=10000] [max_tokens=2000]
# Loopback only; bounded by the request count and a 300 s per-request timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}; R=${2:-10000}; T=${3:-2000}
cargo build --release --quiet
bin=./target/release/thinkgate
out=$(mktemp -d)
$bin sim --listen 127.0.0.1:0 --time-scale 50 --max-num-seqs "$N" --num-blocks 2000000 \
  --max-num-batched-tokens 1000000 > "$out/sim.out" 2>&1 &
sim_pid=$!
trap 'kill $sim_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening "$out/sim.out" && break; sleep 0.1; done
addr=$(grep -o '127.0.0.1:[0-9]*' "$out/sim.out")
$bin load --url "http://$addr" --concurrency "$N" --num-requests "$R" --max-tokens "$T" \
  --quiet --timeout 300 > "$out/load.out" &
load_pid=$!
peak=0
while kill -0 $load_pid 2>/dev/null; do
  open=$(curl -s "http://$addr/metrics" | awk '/^vllm:num_requests_(running|waiting)/ {s+=$2} END {print s+0}')
  [ "${open%.*}" -gt "$peak" ] && peak=${open%.*}
  sleep 0.2
done
wait $load_pid
head -4 "$out/load.out"
echo "peak open streams at the sim: $peak"
ps -o rss=,time= -p $sim_pid | awk '{print "sim RSS " $1/1024 " MiB, CPU time " $2}'
