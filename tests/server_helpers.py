"""A real `sliceserve serve` process on loopback for the server tests, and small HTTP helpers.

The server binds port 0 (a free port, read back from its `listening on` line) and runs the
embedded SmolLM2 with a small context and KV cache so each start is quick; the latency model
is the profile in docs/bench (no calibration at start). One torch thread: the test client
shares the cores, and two compute threads on an oversubscribed machine wait for each other at
every parallel region. One process per test module.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "docs" / "bench" / "profile_smollm2.json"
MODEL = "smollm2-135m"
START_TIMEOUT_S = 600.0  # the first start on a fresh machine converts the model


class ServerProcess:
    def __init__(self, args: Sequence[str] = (), log_path: Path | None = None,
                 env: dict[str, str] | None = None, python_args: Sequence[str] | None = None):
        self.log_path = log_path or Path(f"/tmp/sliceserve-test-{os.getpid()}-{id(self)}.log")
        cmd = list(python_args) if python_args is not None else [
            sys.executable, "-m", "sliceserve.cli", "serve"]
        cmd += ["--port", "0", "--latency-model", str(PROFILE), "--max-model-len", "1024",
                "--kv-cache-memory-gb", "0.05", "--threads", "1", *args]
        self.log = open(self.log_path, "w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=REPO, env={**os.environ, **(env or {})},
                                     start_new_session=True)
        self.port = self._read_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text()

    def _read_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://[\d.]+:(\d+)", self.output())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            time.sleep(0.05)
        raise RuntimeError(f"server did not bind:\n{self.output()}")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout_s} s:\n{self.output()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        self.log.close()
        return code

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def state(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = httpx.get(url + "/v1/state", headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()


def metric_values(url: str, name: str) -> dict[str, float]:
    """{label text: value} of one metric family in /metrics ('' without labels)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name):].strip("{}")] = float(value)
    return out


def wait_until_idle(url: str, timeout_s: float = 60.0,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The state once nothing runs or waits and every KV block is free."""
    deadline = time.monotonic() + timeout_s
    snap: dict[str, Any] = {}
    while time.monotonic() < deadline:
        snap = state(url, headers)
        kv = snap["kv_cache"]
        if not snap["running"] and not snap["waiting"] and (
                kv["num_free_blocks"] == kv["num_blocks"]):
            return snap
        time.sleep(0.05)
    raise AssertionError(f"engine not idle after {timeout_s} s: {snap}")
