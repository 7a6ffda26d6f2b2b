"""The benchmark client against real servers: llama.cpp's llama-server when it has been built
(scripts/peers/build_llama_server.sh; skipped otherwise), on the embedded SmolLM2 GGUF.

What a scripted stand-in cannot show: that a real server generates exactly max_tokens with
`ignore_eos`, that its usage counts agree with the chunks, and that the prompts of exact
lengths are counted as such by the server's own tokenizer (llama.cpp adds no BOS here).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sliceserve.bench.http_bench import Target, bench_traffic, served_model, server_info
from sliceserve.bench.prompts import PromptMaker, load_tokenizer_file
from sliceserve.bench.systems import client_options
from sliceserve.workloads import make_traffic, workload_from_dict

PEERS = Path(os.environ.get("SLICESERVE_PEERS_DIR", Path.home() / ".cache/sliceserve/peers"))
LLAMA_SERVER = PEERS / "llama-server-0.3.36" / "llama-server"

# The build script writes its flags beside the binary; an older build without them may carry
# AMX kernels that fault on this project's Xeon.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (LLAMA_SERVER.is_file() and LLAMA_SERVER.with_suffix(".flags").is_file()),
    reason="llama-server not built (scripts/peers/build_llama_server.sh)")]

WORKLOAD = {"name": "short", "classes": {
    "a": {"share": 1, "prompt_tokens": [8, 40], "output_tokens": [4, 12], "ttft_ms": 60000,
          "tpot_ms": 10000, "utility": 10},
    "b": {"share": 1, "prompt_tokens": [40, 90], "output_tokens": [8, 16], "ttft_ms": 60000,
          "tpot_ms": 10000, "utility": 1}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    from sliceserve.model.loader import default_gguf_path

    port = _free_port()
    process = subprocess.Popen(
        [str(LLAMA_SERVER), "-m", str(default_gguf_path()), "--host", "127.0.0.1", "--port",
         str(port), "-np", "4", "-c", "4096", "-t", "2", "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, "llama-server exited while starting"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_llama_server_generates_exact_lengths_counted_by_usage(llama_server: str) -> None:
    from sliceserve.model.loader import resolve_model

    maker = PromptMaker(load_tokenizer_file(resolve_model(None)), "smollm2")
    info = server_info(llama_server)
    target = Target(llama_server, served_model(info), client_options("llama.cpp"),
                    timeout_s=120)
    traffic = make_traffic(workload_from_dict(WORKLOAD), rate_rps=4.0, num_requests=8, seed=1)
    prompts = [maker.text(s.num_prompt_tokens, 1, 7, i) for i, s in enumerate(traffic.requests)]
    run = bench_traffic(traffic, target, prompts, slo_scale="absolute", latency_model_name="",
                        policy="fcfs")
    client = run["client"]
    assert run["summary"]["completed"] == 8, run["summary"]["failures"]
    assert client["output_length"] == {"checked": 8, "wrong": 0, "examples": [],
                                       "counted_from_usage": 8}
    # The server's tokenizer counts the prompts as the workload does (BOS at most).
    assert set(client["prompt_tokens_minus_workload"]) <= {"0", "1"}
    assert run["summary"]["slo_attainment"] == 1.0  # generous SLOs: all met
    assert all(r["tpot_ms"] > 0 and r["ttft_ms"] > 0 for r in run["requests"])
