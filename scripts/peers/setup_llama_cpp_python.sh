#!/usr/bin/env bash
# Install llama-cpp-python's own OpenAI-compatible server into a venv of its own, outside the
# repository, for side-by-side benchmarks (scripts/compare.py). Nothing of it is committed.
#
#   scripts/peers/setup_llama_cpp_python.sh     # -> $SLICESERVE_PEERS_DIR/llama-cpp-python (prints its python)
#
# pip compiles llama.cpp from the sdist for this CPU (GGML_NATIVE): about 5-11 minutes on 2
# cores the first time. Idempotent.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PEERS_DIR="${SLICESERVE_PEERS_DIR:-$HOME/.cache/sliceserve/peers}"
VENV="$PEERS_DIR/llama-cpp-python"
PY="$VENV/bin/python"

if [[ -x "$PY" ]] && "$PY" -c "import llama_cpp, llama_cpp.server, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    echo "llama-cpp-python $VERSION already installed in $VENV" >&2
    echo "$PY"
    exit 0
fi
mkdir -p "$PEERS_DIR"
[[ -x "$PY" ]] || "${PYTHON:-python3}" -m venv "$VENV"
"$PY" -m pip install --quiet --upgrade pip >&2
echo "building llama-cpp-python $VERSION with its server (several minutes)" >&2
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF}" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$PY" -m pip install --quiet "llama-cpp-python[server]==$VERSION" >&2
"$PY" -c "import llama_cpp.server" >&2
echo "llama-cpp-python $VERSION installed in $VENV" >&2
echo "$PY"
