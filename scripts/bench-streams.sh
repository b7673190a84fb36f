#!/usr/bin/env bash
# Open streams through the gateway: N concurrent long reasoning streams
# (closed loop, N requests) from `thinkgate load`, through `thinkgate serve`,
# to the simulated engine at real time (time scale 1: with N sequences
# running, a decode step takes 6 + 0.08*N ms, so at N=9000 each stream gets
# a token every ~0.73 s and lives ~1.5 minutes for 120 tokens).
#   [BIN=path] scripts/bench-streams.sh [streams=9000] [max_tokens=120] [time_scale=1]
# A time scale above 1 runs the engine faster (for reasoning-length streams:
# `scripts/bench-streams.sh 1000 16000 40` keeps 1,000 streams of 16k tokens
# open for about a minute). THINK=16000 makes every request think that many
# tokens (the simulator's default mix thinks 400 to 5,000).
# Samples the gateway's RSS and in-flight gauge every second; prints the
# baseline and peak RSS, RSS per open stream, the gateway's CPU while the
# streams were open, and whether every stream completed.
# The open-file limit here is 20,000 and cannot be raised: the gateway holds
# two descriptors per stream, so 9,000 is the most this machine measures.
# HEAPTRACK=FILE runs the gateway under heaptrack (Debian `heaptrack`) and
# prints its peak memory consumers at the end: at the peak every stream is
# open, so a site's peak over N is what each stream holds there (RSS figures
# then include heaptrack's own overhead: take them from a run without it).
# PROXY=nginx puts nginx (Debian `nginx`: 2 workers, `proxy_buffering off`,
# upstream keep-alive, as in `cargo bench --bench overhead`) where the
# gateway was, PROXY=direct nothing: the same load, to read the gateway's
# figures against. RSS is then nginx's master and workers together; open
# streams are counted at the engine for every proxy.
# While at least 95% of the streams are open, PROBES (default 120) new
# requests at 4/s go to a second, idle engine through the proxy and, at the
# same time, straight to it: their TTFT is what the proxy adds to a new
# request with N streams open (the engine answers at once), next to direct.
# Loopback only; bounded by the request count and a 600 s per-request timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-9000}; T=${2:-120}; S=${3:-1}
PROBES=${PROBES:-120}
ulimit -n 20000
# BIN=path measures another build (an earlier commit's, say)
bin=${BIN:-./target/release/thinkgate}
[ -n "${BIN:-}" ] || cargo build --release --quiet
out=$(mktemp -d)
sim_cfg=()
if [ -n "${THINK:-}" ]; then
  printf '[workload]\nthink_median = [%s.0, %s.0, %s.0]\nthink_sigma = [0.01, 0.01, 0.01]\nthink_max = %s\n' \
    "$THINK" "$THINK" "$THINK" "$((THINK * 2))" > "$out/sim.toml"
  sim_cfg=(--config "$out/sim.toml")
fi
$bin sim "${sim_cfg[@]}" --model main --listen 127.0.0.1:0 --time-scale "$S" --max-num-seqs "$N" \
  --num-blocks 4000000 --max-num-batched-tokens 4000000 > "$out/sim.out" 2>&1 &
sim_pid=$!
# the probe engine: idle, answers at once; new requests go to it through
# the proxy (and directly) while the N streams are open, so their TTFT is
# the proxy's own delay with N streams open, not the busy engine's queue
$bin sim --model probe --listen 127.0.0.1:0 --time-scale 1 > "$out/probe-sim.out" 2>&1 &
probe_sim_pid=$!
trap 'kill $sim_pid $probe_sim_pid $gw_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening "$out/sim.out" && grep -q listening "$out/probe-sim.out" && break; sleep 0.1; done
sim=$(grep -o '127.0.0.1:[0-9]*' "$out/sim.out" | head -1)
probe_sim=$(grep -o '127.0.0.1:[0-9]*' "$out/probe-sim.out" | head -1)
PROXY=${PROXY:-thinkgate}
gw_pid=""
case "$PROXY" in
thinkgate)
  wrap=()
  [ -n "${HEAPTRACK:-}" ] && wrap=(heaptrack -o "$HEAPTRACK")
  printf '[[backends]]\nurl = "http://%s"\nmodels = ["main"]\n[[backends]]\nurl = "http://%s"\nmodels = ["probe"]\n' \
    "$sim" "$probe_sim" > "$out/gw.toml"
  THINKGATE_LOG=warn "${wrap[@]}" $bin serve --config "$out/gw.toml" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
    --health-interval-ms 0 --scrape-interval-ms 0 > "$out/gw.out" 2>&1 &
  gw_pid=$!
  wrap_pid=$gw_pid
  if [ -n "${HEAPTRACK:-}" ]; then
    # the gateway is heaptrack's child
    for _ in $(seq 50); do gw_pid=$(pgrep -P "$wrap_pid" -x "$(basename "$bin" | cut -c1-15)" || true); [ -n "$gw_pid" ] && break; sleep 0.1; done
  fi
  for _ in $(seq 50); do grep -q proxy= "$out/gw.out" && break; sleep 0.1; done
  proxy=$(grep -o 'proxy=[0-9.:]*' "$out/gw.out" | cut -d= -f2)
  probe_url=http://$proxy
  pids() { echo "$gw_pid"; }
  ;;
nginx)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$out/nginx"
  cat > "$out/nginx/nginx.conf" <<CONF
worker_processes 2;
worker_rlimit_nofile 20000;
daemon off;
pid $out/nginx/nginx.pid;
error_log $out/nginx/error.log warn;
events { worker_connections 19000; }
http {
 access_log off;
 client_body_temp_path $out/nginx/body; proxy_temp_path $out/nginx/proxy;
 fastcgi_temp_path $out/nginx/fcgi; uwsgi_temp_path $out/nginx/uwsgi; scgi_temp_path $out/nginx/scgi;
 upstream up { server $sim; keepalive 256; }
 upstream probe { server $probe_sim; keepalive 16; }
 server {
  listen 127.0.0.1:$port backlog=16384;
  location / {
   proxy_pass http://up;
   proxy_http_version 1.1;
   proxy_set_header Connection "";
   proxy_buffering off;
   proxy_request_buffering off;
   proxy_read_timeout 3600s;
  }
  location /probe/ {
   proxy_pass http://probe/;
   proxy_http_version 1.1;
   proxy_set_header Connection "";
   proxy_buffering off;
  }
 }
}
CONF
  /usr/sbin/nginx -p "$out/nginx" -c "$out/nginx/nginx.conf" > "$out/gw.out" 2>&1 &
  gw_pid=$!
  proxy=127.0.0.1:$port
  probe_url=http://$proxy/probe
  for _ in $(seq 50); do curl -s -o /dev/null "http://$proxy/" && break; sleep 0.1; done
  pids() { echo "$gw_pid"; pgrep -P "$gw_pid"; }
  ;;
direct)
  proxy=$sim
  probe_url=http://$probe_sim
  pids() { :; }
  ;;
*) echo "PROXY is thinkgate, nginx or direct" >&2; exit 2 ;;
esac
sleep 1
# RSS (KiB) and CPU (ticks) of the proxy's processes, summed
rss() { local t=0 p; for p in $(pids); do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
cpu() { local t=0 p; for p in $(pids); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
base=$(rss)
$bin load --url "http://$proxy" --model main --concurrency "$N" --num-requests "$N" --max-tokens "$T" \
  --quiet --timeout 600 --percentile-metrics ttft,itl --metric-percentiles 50,99 > "$out/load.out" 2>&1 &
load_pid=$!
probe_pids=()
peak=0; peak_open=0; open_at_peak=0; t0=""; c0=0; c1=0; samples=0; plateau=0
while kill -0 $load_pid 2>/dev/null; do
  r=$(rss)
  # open streams, counted at the engine (the same for every proxy)
  open=$(curl -s "http://$sim/metrics" | awk '/^vllm:num_requests_running/ {s+=$2} END {print s+0}')
  open=${open%.*}
  [ "$open" -gt "$peak_open" ] && peak_open=$open
  if [ "$r" -gt "$peak" ]; then peak=$r; open_at_peak=$open; fi
  # CPU over the plateau: while at least 95% of the streams are open.
  # RSS over the plateau too (the overall peak may come as the streams end)
  if [ "$open" -ge $((N * 95 / 100)) ]; then
    [ "$r" -gt "$plateau" ] && plateau=$r
    if [ -z "$t0" ]; then
      t0=$(date +%s.%N); c0=$(cpu)
      # new requests while the streams are open: PROBES at 4/s, through
      # the proxy and straight to the probe engine at the same time
      for via in proxy direct; do
        u=$probe_url; [ $via = direct ] && u=http://$probe_sim
        $bin load --url "$u" --model probe --rate 4 --num-requests "$PROBES" --max-tokens 4 --seed 7 \
          --quiet --timeout 60 --percentile-metrics ttft --metric-percentiles 50,99 > "$out/probe-$via.out" 2>&1 &
        probe_pids+=($!)
      done
    fi
    t1=$(date +%s.%N); c1=$(cpu); samples=$((samples + 1))
  fi
  sleep 1
done
wait $load_pid || true
head -6 "$out/load.out"
grep -E '^ +(ttft|itl_max) |^ +(ttft|itl) ms:' "$out/load.out" | uniq || true
echo "proxy: $PROXY; streams requested: $N (max_tokens $T, time scale $S, thinking ${THINK:-as the simulator draws it} tokens)"
echo "peak open streams (at the engine): $peak_open"
[ "$PROXY" = direct ] || echo "proxy RSS: baseline $((base / 1024)) MiB, peak $((peak / 1024)) MiB with $open_at_peak open"
if [ "$plateau" -gt 0 ]; then
  echo "RSS per open stream: $(( (plateau - base) * 1024 / N )) bytes (the highest RSS while at least 95% of the streams were open, over $N)"
fi
if [ -n "$t0" ] && [ "$PROXY" != direct ]; then
  awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v n="$samples" \
    'BEGIN { d = t1 - t0; if (d > 0) printf "proxy CPU on the plateau: %.3f cores (%d s sampled)\n", (c1 - c0) / 100 / d, n }'
fi
for p in "${probe_pids[@]}"; do wait "$p" || true; done
for via in proxy direct; do
  if [ -f "$out/probe-$via.out" ]; then
    echo "new requests while the streams were open, $via ($PROBES at 4/s, max_tokens 4):"
    grep -E '^ +ttft ms:|requests|failed' "$out/probe-$via.out" | head -4
  else
    echo "new requests while the streams were open, $via: none sent (no plateau)"
  fi
done
if [ -n "${HEAPTRACK:-}" ]; then
  kill "$gw_pid"; wait "$wrap_pid" || true
  heaptrack_print -f "$(ls "$HEAPTRACK"*.zst "$HEAPTRACK"*.gz 2>/dev/null | head -1)" \
    --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 --peak-limit 25 --sub-peak-limit 4
fi
