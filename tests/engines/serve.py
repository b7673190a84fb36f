#!/usr/bin/env python3
"""Start one real engine for the conformance suite and keep it for as long as
the caller lives.

    serve.py vllm  [--reasoning-parser qwen3] [--model qwen3] [extra args...]
    serve.py llama [--model qwen3] [extra args...]

Reads THINKGATE_ENGINES_DIR/engines.env (written by scripts/engines/install.sh),
starts the engine on a free loopback port, waits until it answers /health,
prints `READY http://127.0.0.1:PORT PID` and then waits for its standard input
to close: when the test process that started it ends, however it ends, the
pipe closes and the engine's whole process group is killed. The engine's log
goes to THINKGATE_ENGINES_DIR/logs/.

Two options of the launcher itself (not passed to the engine):
    --port PORT   listen there (a restart at the same address, as systemd or a
                  kubelet restarts an engine); no retry on another port
    --announce    also print `STARTED http://127.0.0.1:PORT PID` as soon as the
                  engine process exists, before it answers (a caller that starts
                  a gateway at the same moment, as a pod does)
    --client-cert FILE --client-key FILE
                  the certificate the readiness probe shows to an engine that
                  requires mutual TLS (vLLM's --ssl-cert-reqs 2)

An engine given `--ssl-certfile` (vLLM) serves https: the URL printed is
https://127.0.0.1:PORT and the probe speaks TLS (not checking the
certificate: the caller does that).
"""

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


def env_file():
    d = Path(os.environ.get("THINKGATE_ENGINES_DIR", "/var/cache/thinkgate/engines"))
    f = d / "engines.env"
    if not f.exists():
        sys.exit(f"{f} is missing: run scripts/engines/install.sh first")
    out = {}
    for line in f.read_text().splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return d, out


def free_port():
    # The engines take a port number, not a socket: the port is chosen here
    # and the start is retried if another process takes it meanwhile.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(kind, env, args, port):
    model = "qwen3"
    if "--model" in args:
        i = args.index("--model")
        model = args[i + 1]
        args = args[:i] + args[i + 2 :]
    models = Path(env["THINKGATE_MODELS"])
    if kind == "vllm":
        return [
            env["THINKGATE_VLLM_PYTHON"], "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(models / model), "--served-model-name", "tiny",
            "--host", "127.0.0.1", "--port", str(port),
            "--enforce-eager", "--max-model-len", "4096", "--max-num-seqs", "16",
            *args,
        ]
    if kind == "llama":
        return [
            env["THINKGATE_LLAMA_SERVER"], "-m", str(models / f"{model}.gguf"),
            "--alias", "tiny", "--host", "127.0.0.1", "--port", str(port),
            "--metrics", "-c", "16384", "-np", "4", "-t", "1", *args,
        ]
    sys.exit(f"unknown engine {kind}")


def healthy(url, ctx=None):
    try:
        with urllib.request.urlopen(url + "/health", timeout=2, context=ctx) as r:
            return r.status == 200
    except Exception:
        return False


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    kind, args = sys.argv[1], sys.argv[2:]
    fixed_port = None
    if "--port" in args:
        i = args.index("--port")
        fixed_port = int(args[i + 1])
        args = args[:i] + args[i + 2 :]
    announce = "--announce" in args
    args = [a for a in args if a != "--announce"]
    client = {}
    for opt in ("--client-cert", "--client-key"):
        if opt in args:
            i = args.index(opt)
            client[opt] = args[i + 1]
            args = args[:i] + args[i + 2 :]
    ctx = None
    if "--ssl-certfile" in args:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if client:
            ctx.load_cert_chain(client["--client-cert"], client["--client-key"])
    scheme = "https" if ctx else "http"
    d, env = env_file()
    logs = d / "logs"
    logs.mkdir(exist_ok=True)
    child_env = dict(os.environ)
    child_env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_CPU_KVCACHE_SPACE=child_env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        VLLM_CPU_OMP_THREADS_BIND=child_env.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
        OMP_NUM_THREADS="1",
        # vLLM's control routes (/reset_prefix_cache, /sleep, ...) on, as
        # operators turn them on: the gateway must keep them from clients
        VLLM_SERVER_DEV_MODE="1",
    )
    attempts = 1 if fixed_port or announce else 3
    for attempt in range(attempts):
        port = fixed_port or free_port()
        url = f"{scheme}://127.0.0.1:{port}"
        log = open(logs / f"{kind}-{port}.log", "wb")
        p = subprocess.Popen(
            command(kind, env, args, port), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=child_env, start_new_session=True,
        )

        def kill(*_):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        if announce:
            print(f"STARTED {url} {p.pid}", flush=True)
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and not healthy(url, ctx):
            time.sleep(0.5)
        if p.poll() is None and healthy(url, ctx):
            break
        kill()
        p.wait()
        tail = (logs / f"{kind}-{port}.log").read_text(errors="replace")[-3000:]
        print(f"engine {kind} did not start (attempt {attempt + 1}):\n{tail}", file=sys.stderr)
    else:
        sys.exit(1)
    signal.signal(signal.SIGTERM, lambda *_: (kill(), os._exit(0)))
    print(f"READY {url} {p.pid}", flush=True)
    # Wait for the caller to go away (stdin closes), or the engine to die.
    t = threading.Thread(target=lambda: (sys.stdin.read(), kill()), daemon=True)
    t.start()
    while t.is_alive() and p.poll() is None:
        time.sleep(0.2)
    kill()


if __name__ == "__main__":
    main()
