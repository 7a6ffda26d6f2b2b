"""The server under load, on loopback: 100 concurrent streaming clients complete correctly;
50 clients cut off mid-stream leave no KV block held and nothing running; overload at 10x
the sustainable rate for a bounded time accounts for every request (sent = completed +
rejected + aborted) with resident memory bounded and /health answering throughout."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server_helpers import MODEL, ServerProcess, metric_values, wait_until_idle

PROMPTS = ["Hello", "The capital of France is", "Once upon a time", "1, 2, 3,", "Water boils",
           "My favourite colour is", "Robots can", "The sky"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # float32: a row's arithmetic does not depend on its batch, so outputs can be compared
    # exactly with each request served alone.
    srv = ServerProcess(["--max-queued-requests", "128", "--max-num-seqs", "64",
                         "--dtype", "float32"])
    try:
        srv.wait_ready()
        yield srv
    finally:
        assert srv.stop() == 0, srv.output()


async def stream_completion(client: httpx.AsyncClient, body: dict[str, Any],
                            stop_after: int | None = None) -> dict[str, Any]:
    """Text, final chunk and status of one streaming request; `stop_after` chunks then hang up."""
    text, last, n = "", None, 0
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "error": json.loads(await r.aread())["error"]}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return {"status": 200, "error": chunk["error"], "text": text}
            text += chunk["choices"][0]["text"]
            last = chunk
            n += 1
            if stop_after is not None and n >= stop_after:
                return {"status": 200, "cut": True}
    return {"status": 200, "text": text, "last": last}


def greedy(i: int, max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True}


def test_100_concurrent_streaming_clients(server: ServerProcess) -> None:
    reference = {}
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for p in range(len(PROMPTS)):
            out = http.post("/v1/completions", json=greedy(p, 6)).json()
            reference[p] = out["choices"][0]["text"]

    async def main() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as c:
            return await asyncio.gather(*(stream_completion(c, greedy(i, 6))
                                          for i in range(100)))

    results = asyncio.run(main())
    for i, result in enumerate(results):
        assert result["status"] == 200 and "error" not in result, result
        assert result["last"]["choices"][0]["finish_reason"] == "length"
        assert result["text"] == reference[i % len(PROMPTS)], (i, result["text"])
    wait_until_idle(server.url)


def test_clients_cut_off_mid_stream_free_everything(server: ServerProcess) -> None:
    async def main() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as c:
            return await asyncio.gather(*(stream_completion(c, greedy(i, 400), stop_after=2)
                                          for i in range(50)))

    results = asyncio.run(main())
    assert all(r.get("cut") for r in results), results
    snap = wait_until_idle(server.url, timeout_s=30)
    assert snap["running"] == [] and snap["waiting"] == []
    aborted = metric_values(server.url, "sliceserve:request_aborted_total")
    assert sum(v for k, v in aborted.items() if 'reason="aborted"' in k) >= 50


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measure_capacity_rps(url: str, max_tokens: int) -> float:
    """Requests per second the server completes with 8 clients back to back."""
    async def main() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            async def loop(k: int) -> None:
                for j in range(3):
                    r = await c.post("/v1/completions", json=greedy(k + j, max_tokens))
                    assert r.status_code == 200, r.text
            start = time.perf_counter()
            await asyncio.gather(*(loop(k) for k in range(8)))
            return 24 / (time.perf_counter() - start)
    return asyncio.run(main())


def test_overload_accounts_for_every_request(server: ServerProcess) -> None:
    """At least 10x the rate the server sustains (measured first, 32-token requests), for
    a bounded time (300 requests)."""
    url = server.url
    max_tokens = 32
    capacity = measure_capacity_rps(url, max_tokens)
    rate = min(max(10 * capacity, 100.0), 200.0)  # at least 10x; arrivals far outpace service
    count = max(300, int(rate * 2.0))  # more than the 128-request queue holds
    before = {name: sum(metric_values(url, f"sliceserve:{name}").values())
              for name in ("request_success_total", "request_rejected_total")}
    rss_start = rss_kib(server.proc.pid)
    health: list[int] = []
    rss: list[int] = []
    outcomes: dict[str, int] = {}

    async def one(c: httpx.AsyncClient, i: int) -> None:
        body = greedy(i, max_tokens)
        if i % 5 == 0:
            body["slo_class"] = "control"
        kind = "completed"
        try:
            if i % 2:
                result = await stream_completion(c, body)
                if result["status"] != 200 or "error" in result:
                    kind = result["error"]["code"]
            else:
                r = await c.post("/v1/completions", json=body)
                if r.status_code != 200:
                    kind = r.json()["error"]["code"]
                    if r.status_code == 429:
                        assert int(r.headers["retry-after"]) >= 0
        except httpx.HTTPError as e:
            kind = f"client error {type(e).__name__}"
        outcomes[kind] = outcomes.get(kind, 0) + 1

    async def probe(c: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = time.monotonic()
            r = await c.get("/health")
            health.append(r.status_code)
            rss.append(rss_kib(server.proc.pid))
            assert time.monotonic() - t < 10.0, "health took more than 10 s"
            await asyncio.sleep(0.2)

    async def main() -> int:
        limits = httpx.Limits(max_connections=500)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
            stop = asyncio.Event()
            prober = asyncio.create_task(probe(c, stop))
            tasks = []
            for i in range(count):
                tasks.append(asyncio.create_task(one(c, i)))
                await asyncio.sleep(1.0 / rate)
            await asyncio.gather(*tasks)
            stop.set()
            await prober
            return len(tasks)

    sent = asyncio.run(main())
    assert sum(outcomes.values()) == sent
    assert not [k for k in outcomes if k.startswith("client error")], outcomes
    assert outcomes.get("completed", 0) > 0 and outcomes.get("queue_full", 0) > 0, (
        outcomes, capacity)
    assert set(outcomes) <= {"completed", "queue_full", "slo_infeasible"}, outcomes
    wait_until_idle(url)
    after = {name: sum(metric_values(url, f"sliceserve:{name}").values())
             for name in ("request_success_total", "request_rejected_total")}
    served = after["request_success_total"] - before["request_success_total"]
    rejected = after["request_rejected_total"] - before["request_rejected_total"]
    assert served + rejected == sent  # every request counted once by the server, too
    assert rejected == sent - outcomes["completed"]
    assert health and all(code == 200 for code in health)
    growth_mib = (max(rss) - rss_start) / 1024
    assert growth_mib < 200, f"resident memory grew {growth_mib:.0f} MiB under overload"
