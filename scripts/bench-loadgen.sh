#!/usr/bin/env bash
# Send-time precision of the load generator: RATE requests/s (Poisson) of
# short requests against the simulated engine on this machine, 3 runs.
# The engine and the generator get a core each (taskset), as an engine runs
# on its own hardware in real use; PIN=0 shares the cores instead.
#   scripts/bench-loadgen.sh [rate=2000] [requests=20000]
# Loopback only; bounded by the request count and a 60 s per-request timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-2000}; N=${2:-20000}
cargo build --release --quiet
bin=./target/release/thinkgate
out=$(mktemp -d)
on_core() { if [ "${PIN:-1}" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
on_core 1 $bin sim --listen 127.0.0.1:0 --time-scale 100 --max-num-seqs 4096 --num-blocks 2000000 \
  --max-num-batched-tokens 1000000 > "$out/sim.out" 2>&1 &
sim_pid=$!
trap 'kill $sim_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening "$out/sim.out" && break; sleep 0.1; done
addr=$(grep -o '127.0.0.1:[0-9]*' "$out/sim.out")
for seed in 1 2 3; do
  on_core 0 $bin load --url "http://$addr" --rate "$RATE" --burstiness 1 --num-requests "$N" --max-tokens 32 \
    --quiet --timeout 60 --seed "$seed" | grep -E "^(requests|send lateness)"
done
