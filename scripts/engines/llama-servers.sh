# Sourced by the benchmark scripts: start_llama_servers DIR N SLOTS starts N
# real llama.cpp servers (scripts/engines/install.sh; the tiny test model)
# with SLOTS slots each through tests/engines/serve.py, waits until each
# answers, and sets `engine_urls` and `engine_pids`. The launcher's stdin is
# the engine's lifeline: a long sleep feeds it, and killing the pipeline
# (the caller's `kill "${engine_pids[@]}"`) stops the engine.
start_llama_servers() {
  local dir=$1 n=$2 slots=$3 i
  export THINKGATE_ENGINES_DIR=${THINKGATE_ENGINES_DIR:-/var/cache/thinkgate/engines}
  engine_urls=(); engine_pids=()
  for i in $(seq 0 $((n - 1))); do
    sleep 100000 | python3 tests/engines/serve.py llama -np "$slots" > "$dir/llama$i.out" &
    engine_pids+=($!)
  done
  for i in $(seq 0 $((n - 1))); do
    for _ in $(seq 600); do grep -q '^READY' "$dir/llama$i.out" 2>/dev/null && break; sleep 0.5; done
    grep -q '^READY' "$dir/llama$i.out" || { echo "llama.cpp server $i did not start" >&2; return 1; }
    engine_urls+=("$(awk '/^READY/ {print $2}' "$dir/llama$i.out")")
  done
}
