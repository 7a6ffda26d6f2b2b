"""HTTP overhead and soak of `sliceserve serve` on loopback (docs/BENCHMARKS.md, "Server").

    overhead: C concurrent streaming clients (closed loop) on SmolLM2; per request, the
              client's TTFT (request sent -> first text chunk) and TPOT ((last chunk - first
              chunk) / (tokens - 1)) against the engine's own figures for the same request
              (its slo_report: engine clock, arrival = when the engine got it). With
              `--client httpx,aiohttp` each client library runs in turn on the same server:
              httpx (what the openai client is built on) on asyncio's loop, and aiohttp (a C
              HTTP parser) on uvloop, a leaner client for the cores it shares with the server.
    soak:     Poisson arrivals at a fixed rate for a fixed time; resident memory of the
              server sampled every 10 s; every request must complete (zero errors).

    .venv/bin/python scripts/bench_http.py overhead --clients 16 --requests 8 --out X.json \
        --client httpx,aiohttp
    .venv/bin/python scripts/bench_http.py soak --rate 2 --minutes 20 --out Y.json

The server is started by the script (a subprocess, port 0) with the profile in docs/bench as
latency model, and stopped with SIGTERM at the end (its exit status is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "docs" / "bench" / "profile_smollm2.json"
MODEL = "smollm2-135m"
WORDS = ("robot arm moves left then right sensor reads distance camera sees a red box "
         "battery level is fine path ahead is clear").split()


def cpu_name() -> str:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = re.search(r"flags\s*:\s*(.*)", text)
    have = set(flags.group(1).split()) if flags else set()
    marks = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have]
    return f"{model.group(1).strip() if model else platform.processor()} ({' '.join(marks)})"


def cpu_set(text: str | None) -> set[int] | None:
    """"0" or "0,1" or "0-3" -> CPU numbers; None or "" -> no pinning."""
    if not text:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def start_server(args: list[str], cpus: set[int] | None = None
                 ) -> tuple[subprocess.Popen, str, Path]:
    """The server, pinned to `cpus` (its compute threads one per CPU) when given."""
    log = Path(f"/tmp/bench-http-{time.time_ns()}.log")
    f = open(log, "w")  # noqa: SIM115 - lives as long as the server
    pin = ["--threads", str(len(cpus))] if cpus else []
    proc = subprocess.Popen([sys.executable, "-m", "sliceserve.cli", "serve", "--port", "0",
                             "--latency-model", str(PROFILE), *pin, *args], stdout=f,
                            stderr=subprocess.STDOUT, cwd=REPO,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    return proc, wait_ready(proc, log), log


def wait_ready(proc: subprocess.Popen, log: Path) -> str:
    """The server's URL once /health answers 200 (it prints the URL on its log)."""
    deadline = time.monotonic() + 900
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        text = log.read_text()
        if url is None and (m := re.search(r"listening on (http://\S+)", text)):
            url = m.group(1)
        if url is not None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise SystemExit("server not ready")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


class _Stream:
    """Client-side times of one streamed completion, fed the stream's lines."""

    def __init__(self) -> None:
        self.sent = time.perf_counter()
        self.chunk_times: list[float] = []
        self.report: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.error: Any = None

    def line(self, line: str) -> bool:
        """Take one line of the event stream; False once the stream reported an error."""
        if not line.startswith("data: ") or line == "data: [DONE]":
            return True
        chunk = json.loads(line[6:])
        now = time.perf_counter()
        if "error" in chunk:
            self.error = chunk["error"]
            return False
        if chunk.get("choices") and chunk["choices"][0]["text"]:
            self.chunk_times.append(now)
        self.report = chunk.get("slo_report", self.report)
        self.usage = chunk.get("usage") or self.usage
        return True

    def result(self) -> dict[str, Any]:
        times, report, usage = self.chunk_times, self.report, self.usage
        if self.error or report is None or usage is None or not times:
            return {"error": self.error or "incomplete stream"}
        n = usage["completion_tokens"]
        ttft = (times[0] - self.sent) * 1000.0
        tpot = (times[-1] - times[0]) * 1000.0 / (n - 1) if n > 1 else 0.0
        return {"client_ttft_ms": ttft, "client_tpot_ms": tpot,
                "engine_ttft_ms": report["ttft_ms"], "engine_tpot_ms": report["tpot_ms"],
                "tokens": n, "chunks": len(times)}


async def one_request(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Stream one completion with httpx (what the openai client is built on)."""
    stream = _Stream()
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not stream.line(line):
                break
    return stream.result()


async def one_request_aiohttp(session: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The same with aiohttp (a C HTTP parser): a leaner client on the shared cores."""
    stream = _Stream()
    async with session.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            return {"error": f"HTTP {r.status}: {(await r.read())[:200]!r}"}
        async for raw in r.content:  # one line at a time
            if not stream.line(raw.decode("utf-8").rstrip("\r\n")):
                break
    return stream.result()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "p90": ordered[int(0.9 * (len(ordered) - 1))]}


async def overhead(url: str, clients: int, per_client: int, max_tokens: int,
                   seed: int, lib: str = "httpx") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []

    def body() -> dict[str, Any]:
        return {"model": MODEL, "prompt": prompt(rng, 48), "max_tokens": max_tokens,
                "temperature": 0.0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}

    if lib == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=clients * 2)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async def aio_loop() -> None:
                for _ in range(per_client):
                    results.append(await one_request_aiohttp(session, url, body()))
            await asyncio.gather(*(aio_loop() for _ in range(clients)))
        return results

    async def client_loop(c: httpx.AsyncClient) -> None:
        for _ in range(per_client):
            results.append(await one_request(c, body()))

    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        await asyncio.gather(*(client_loop(c) for _ in range(clients)))
    return results


def run_client(lib: str, coro: Any) -> Any:
    """httpx on asyncio's own loop (as the openai client runs by default); aiohttp on uvloop
    (the lean client: C HTTP parser, C event loop)."""
    if lib == "aiohttp":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def overhead_stats(results: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if "error" not in r]
    d_ttft = [r["client_ttft_ms"] - r["engine_ttft_ms"] for r in ok]
    d_tpot = [r["client_tpot_ms"] - r["engine_tpot_ms"] for r in ok]
    rel_ttft = [d / r["engine_ttft_ms"] for d, r in zip(d_ttft, ok)]
    rel_tpot = [d / r["engine_tpot_ms"] for d, r in zip(d_tpot, ok)]
    return {"requests": len(results), "errors": len(results) - len(ok), "wall_s": wall_s,
            "client_ttft_ms": summary([r["client_ttft_ms"] for r in ok]),
            "engine_ttft_ms": summary([r["engine_ttft_ms"] for r in ok]),
            "client_tpot_ms": summary([r["client_tpot_ms"] for r in ok]),
            "engine_tpot_ms": summary([r["engine_tpot_ms"] for r in ok]),
            "ttft_diff_ms": summary(d_ttft), "tpot_diff_ms": summary(d_tpot),
            "ttft_diff_rel": summary(rel_ttft), "tpot_diff_rel": summary(rel_tpot),
            "per_request": ok}


def run_overhead(a: argparse.Namespace) -> dict[str, Any]:
    """Each client library in turn on the same server (side by side in one run)."""
    libs = a.client.split(",")
    proc, url, _ = start_server(["--policy", a.policy, "--max-queued-requests", "-1"],
                                cpu_set(a.server_cpus))
    by_client: dict[str, Any] = {}
    try:
        for lib in libs:
            run_client(lib, overhead(url, 4, 1, 8, seed=99, lib=lib))  # warm-up, not counted
            started = time.perf_counter()
            results = run_client(lib, overhead(url, a.clients, a.requests, a.max_tokens,
                                               a.seed, lib))
            by_client[lib] = overhead_stats(results, time.perf_counter() - started)
    finally:
        code = stop_server(proc)
    out: dict[str, Any] = {"kind": "http_overhead", "cpu": cpu_name(), "policy": a.policy,
                           "clients": a.clients, "max_tokens": a.max_tokens,
                           "server_exit": code, "client_libs": libs,
                           "server_cpus": a.server_cpus, "client_cpus": a.client_cpus}
    if len(libs) == 1:  # the result files' shape before there was a choice of client
        return {**out, **by_client[libs[0]]}
    return {**out, "by_client": by_client}


def run_soak(a: argparse.Namespace) -> dict[str, Any]:
    proc, url, _ = start_server(["--policy", a.policy, "--max-queued-requests", "-1",
                                 *a.server_arg], cpu_set(a.server_cpus))
    rng = random.Random(a.seed)
    samples: list[tuple[float, float]] = []
    results: list[dict[str, Any]] = []
    duration_s = a.minutes * 60.0

    async def main() -> None:
        limits = httpx.Limits(max_connections=256)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
            start = time.monotonic()
            tasks: list[asyncio.Task[None]] = []
            next_sample = start

            async def send() -> None:
                body = {"model": MODEL, "prompt": prompt(rng, rng.randint(16, 96)),
                        "max_tokens": rng.randint(16, a.max_tokens), "temperature": 0.7,
                        "stream": True, "stream_options": {"include_usage": True}}
                results.append(await one_request(c, body))

            t = start
            while t - start < duration_s:
                t += rng.expovariate(a.rate)
                while time.monotonic() < t:
                    now = time.monotonic()
                    if now >= next_sample:
                        samples.append((now - start, rss_mib(proc.pid)))
                        next_sample += 10.0
                    await asyncio.sleep(min(0.5, max(0.0, t - now)))
                tasks.append(asyncio.create_task(send()))
            await asyncio.gather(*tasks)
            samples.append((time.monotonic() - start, rss_mib(proc.pid)))

    try:
        asyncio.run(main())
    finally:
        code = stop_server(proc)
    warm = [m for t, m in samples if t >= a.warmup_s]
    errors = [r["error"] for r in results if "error" in r]
    return {"kind": "soak", "cpu": cpu_name(), "policy": a.policy, "rate_rps": a.rate,
            "server_args": a.server_arg, "server_cpus": a.server_cpus,
            "client_cpus": a.client_cpus,
            "minutes": a.minutes, "requests": len(results), "errors": len(errors),
            "error_examples": errors[:5], "server_exit": code, "warmup_s": a.warmup_s,
            "rss_mib_after_warmup": warm[0] if warm else None,
            "rss_mib_end": samples[-1][1] if samples else None,
            "rss_mib_max_after_warmup": max(warm) if warm else None,
            "rss_growth_after_warmup": (max(warm) - warm[0]) / warm[0] if warm else None,
            "rss_samples": samples,
            "client_ttft_ms": summary([r["client_ttft_ms"] for r in results if "error" not in r]),
            "client_tpot_ms": summary([r["client_tpot_ms"] for r in results if "error" not in r])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["overhead", "soak"])
    p.add_argument("--policy", default="slice")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=8, help="per client (overhead)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rate", type=float, default=2.0, help="requests/s (soak)")
    p.add_argument("--minutes", type=float, default=20.0, help="soak length")
    p.add_argument("--warmup-s", type=float, default=120.0, help="soak: memory counted after")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client", default="httpx", help="overhead: client libraries run in turn "
                   "on the same server, comma-separated: httpx, aiohttp")
    p.add_argument("--server-cpus", help="pin the server to these CPUs (e.g. 0 or 0-1), with one "
                   "compute thread per CPU; default: not pinned, its default threads")
    p.add_argument("--client-cpus", help="pin this process (the clients) to these CPUs")
    p.add_argument("--server-arg", action="append", default=[],
                   help="soak: one more argument for `sliceserve serve` (repeatable)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if cpus := cpu_set(a.client_cpus):
        os.sched_setaffinity(0, cpus)
    result = run_overhead(a) if a.mode == "overhead" else run_soak(a)
    text = json.dumps(result, indent=1)
    brief = {k: v for k, v in result.items() if k not in ("per_request", "rss_samples")}
    for stats in brief.get("by_client", {}).values():
        stats.pop("per_request", None)
    print(json.dumps(brief, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
        print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
