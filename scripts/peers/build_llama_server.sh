#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the llama.cpp sources inside the llama-cpp-python sdist
# (PyPI), outside the repository, for side-by-side benchmarks (scripts/compare.py). Nothing of
# llama.cpp is vendored or committed.
#
#   scripts/peers/build_llama_server.sh      # -> $SLICESERVE_PEERS_DIR/llama-server-<ver>/llama-server
#
# Server target only, for this CPU (GGML_NATIVE), static, without the web UI (and its prebuilt
# download), OpenSSL or libcurl, and without ggml's AMX int8 kernels (-mno-amx-int8): on this
# project's Xeon (AMX advertised) the native build died with SIGILL on `tilezero` in its first
# matrix multiply, as the llama.cpp executor's build did (docs/ENGINE.md). About 5-6 minutes on
# 2 cores; idempotent (prints the binary's path and exits when it is already built).
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PEERS_DIR="${SLICESERVE_PEERS_DIR:-$HOME/.cache/sliceserve/peers}"
DEST="$PEERS_DIR/llama-server-$VERSION"
NO_AMX=""
[[ "$(uname -m)" == "x86_64" ]] && NO_AMX="-mno-amx-int8"
BIN="$DEST/llama-server"
PIP="${PIP:-python3 -m pip}"
JOBS="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"

if [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1 && [[ -f "$BIN.flags" ]] \
        && [[ "$(cat "$BIN.flags")" == "native $NO_AMX" ]]; then
    echo "llama-server from llama-cpp-python $VERSION already built in $DEST" >&2
    echo "$BIN"
    exit 0
fi
for tool in cmake g++; do
    command -v "$tool" >/dev/null || { echo "error: $tool is needed to build llama-server" >&2; exit 1; }
done

mkdir -p "$DEST"
WORK="$(mktemp -d "$PEERS_DIR/.llama-server-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
echo "downloading the llama-cpp-python $VERSION sdist" >&2
$PIP download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
[[ -f "$SRC/CMakeLists.txt" ]] || { echo "error: no llama.cpp sources in the sdist" >&2; exit 1; }

echo "building llama-server for this CPU ($JOBS jobs; about 5-6 minutes on 2 cores)" >&2
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
cmake -S "$SRC" -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" >&2
cmake --build "$WORK/build" --target llama-server -j "$JOBS" >&2
cp "$WORK/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "native $NO_AMX" > "$BIN.flags"
"$BIN" --version >&2 || true
echo "$BIN"
