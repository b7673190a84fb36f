#!/usr/bin/env bash
# A worked A/B experiment on production-like traffic (docs/experiments.md):
# two simulated engines, two gateway replicas with the same experiment
# (round robin against difficulty_aware) each writing its own records, the
# load generator's mixed traffic spread over both replicas, grades posted as
# feedback by request id (here from the load generator's own grading, as a
# grader or user thumbs would), then the arms compared from the replicas'
# records merged.
#   scripts/experiment.sh [requests=600] [rate=6]
# With BUDGET_B=N, arm B is round robin with a thinking budget of N tokens.
# With ENGINES=llama: two real llama.cpp servers (scripts/engines/install.sh,
# the tiny test model, 4 slots each) instead of the simulators. The tiny
# model's answers are noise, so its grades are too: the run shows the
# pipeline on real engines, not which policy answers better.
# Loopback only; bounded by the request count and a 300 s per-request timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-600}; RATE=${2:-6}
ENGINES=${ENGINES:-sim}
cargo build --release --quiet
bin=./target/release/thinkgate
out=$(mktemp -d)
pids=()
engine_pids=()
trap 'kill "${pids[@]}" "${engine_pids[@]}" 2>/dev/null || true' EXIT

addr_of() { # file, field: wait for the line a server prints, then the address
  for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && break; sleep 0.1; done
  grep -o "$2[^ ]*" "$1" | head -1 | sed "s/^$2//"
}

engines=()
model=()
if [ "$ENGINES" = llama ]; then
  . scripts/engines/llama-servers.sh
  start_llama_servers "$out" 2 4
  engines=("${engine_urls[@]}")
  model=(--model tiny)
else
  for i in 0 1; do
    $bin sim --listen 127.0.0.1:0 --time-scale 20 --seed "$i" --num-blocks 2048 > "$out/sim$i.out" 2>&1 &
    pids+=($!)
  done
  for i in 0 1; do engines+=("http://$(addr_of "$out/sim$i.out" 'listening on ')"); done
fi

# arm B: difficulty_aware routing, or with BUDGET_B=N round robin with a
# thinking budget of N tokens (an arm that really differs: shorter, and
# maybe less accurate)
if [ -n "${BUDGET_B:-}" ]; then
  arm_b=$(printf 'name = "budget_%s"\nweight = 50\nrouting = { type = "round_robin" }\nthinking_budget = %s' "$BUDGET_B" "$BUDGET_B")
else
  arm_b=$(printf 'name = "difficulty_aware"\nweight = 50\nrouting = { type = "difficulty_aware" }')
fi
cat > "$out/gateway.toml" <<EOF
upstreams = ["${engines[0]}", "${engines[1]}"]

[experiment]
assign_by = "random"

[[experiment.arms]]
name = "round_robin"
weight = 50
routing = { type = "round_robin" }

[[experiment.arms]]
$arm_b

[experiment.guardrail]
latency_margin = 0.1
rate_margin = 0.02
EOF

for i in 0 1; do
  $bin serve --config "$out/gateway.toml" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
    --records "$out/records-$i.jsonl" > "$out/gw$i.out" 2>/dev/null &
  pids+=($!)
done
proxies=(); admins=()
for i in 0 1; do
  proxies+=("http://$(addr_of "$out/gw$i.out" 'proxy=')")
  admins+=("http://$(addr_of "$out/gw$i.out" 'admin=')")
done
echo "engines ${engines[*]}; gateways ${proxies[*]}; files in $out"

$bin load --url "${proxies[0]},${proxies[1]}" "${model[@]}" --dataset-name mixed --num-requests "$N" \
  --rate "$RATE" --seed 1 --timeout 300 --quiet --out "$out/run" | head -3

# Feedback by request id, in batches, each to either replica's admin
# listener (a grade may reach another replica than its request did).
python3 - "$out/run/requests.jsonl" "${admins[@]}" <<'PY'
import json, random, sys, urllib.request
path, admins = sys.argv[1], sys.argv[2:]
grades = [{"request_id": r["request_id"], "value": r["correct"]}
          for r in map(json.loads, open(path)) if r.get("request_id")]
for i in range(0, len(grades), 100):
    req = urllib.request.Request(random.choice(admins) + "/feedback",
                                 data=json.dumps(grades[i:i + 100]).encode(),
                                 headers={"content-type": "application/json"})
    assert urllib.request.urlopen(req).status == 202
print(f"posted {len(grades)} grades")
PY

echo "live view of replica 0 (/stats experiment):"
curl -s "${admins[0]}/stats" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["experiment"], indent=1))'

# SIGTERM: the replicas drain and flush their records
gws=("${pids[@]: -2}")
kill -TERM "${gws[@]}"; wait "${gws[@]}" || true
$bin load compare --by-arm "$out/records-0.jsonl" "$out/records-1.jsonl"
