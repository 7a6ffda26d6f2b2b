"""The server's life cycle, each test with its own process: SIGTERM during a run (in-flight
requests finish or end with a final error event, new ones get 503, exit 0, no stream left
without an end); faults (a failed iteration fails its own requests and the server recovers;
iterations that keep failing make /health answer 503 and the process exit non-zero)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import httpx

from tests.fault_server import POISON_SEED
from tests.server_helpers import MODEL, REPO, ServerProcess, wait_until_idle
from tests.test_server_load import stream_completion

FAULT_SERVER = [sys.executable, str(REPO / "tests" / "fault_server.py")]


def body(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Tell me a story", "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, **extra}


async def read_stream(c: httpx.AsyncClient, request: dict[str, Any],
                      started: asyncio.Event) -> dict[str, Any]:
    """A streaming request: its text, finish reason or final error, and whether [DONE] came."""
    out: dict[str, Any] = {"text": "", "finish_reason": None, "error": None, "done": False}
    async with c.stream("POST", "/v1/completions", json={**request, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out["error"] = chunk["error"]
                else:
                    out["text"] += chunk["choices"][0]["text"]
                    out["finish_reason"] = chunk["choices"][0]["finish_reason"]
                started.set()
    return out


def drain_run(drain_timeout_s: int, second_signal: bool) -> tuple[list[dict], list[int], str]:
    """Three short and three long streams in flight, then SIGTERM; with `second_signal`, the
    short ones are let finish first and a second SIGTERM cuts the drain short. The KV cache
    holds all six whole (3 x 1004 tokens even in float32, which `--dtype auto` may pick), so
    no long stream waits for another to end before it streams on."""
    srv = ServerProcess(["--drain-timeout", str(drain_timeout_s), "--kv-cache-memory-gb", "0.3"])
    try:
        srv.wait_ready()

        async def main() -> tuple[list[dict[str, Any]], list[int]]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=600) as c:
                flags = [asyncio.Event() for _ in range(6)]
                tasks = [asyncio.create_task(read_stream(c, body(4 if i < 3 else 1000), e))
                         for i, e in enumerate(flags)]
                async def started(flag: asyncio.Event, task: asyncio.Task) -> None:
                    waiter = asyncio.ensure_future(flag.wait())
                    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if task.done():
                        task.result()  # a stream that failed before streaming: its error

                # all six are streaming (bounded: a broken stream must not hang the suite)
                await asyncio.wait_for(asyncio.gather(*(started(e, t) for e, t in zip(
                    flags, tasks))), timeout=600)
                srv.signal(signal.SIGTERM)
                for _ in range(600):  # until the server says it drains (or is gone)
                    try:
                        if (await c.get("/health")).status_code == 503:
                            break
                    except httpx.TransportError:
                        break
                    await asyncio.sleep(0.05)
                late = []
                for _ in range(3):  # new requests while draining: 503 (or refused once gone)
                    try:
                        r = await c.post("/v1/completions", json=body(2))
                        late.append(r.status_code)
                        assert r.json()["error"]["code"] == "shutting_down"
                    except httpx.TransportError:
                        late.append(-1)
                if second_signal:
                    await asyncio.gather(*tasks[:3])
                    srv.signal(signal.SIGTERM)
                return list(await asyncio.gather(*tasks)), late

        results, late = asyncio.run(main())
        code = srv.proc.wait(timeout=120)
    finally:
        srv.stop()
    assert code == 0, srv.output()
    assert all(status in (503, -1) for status in late), late
    for result in results:  # every stream has its end, and [DONE]
        assert result["done"] and (result["finish_reason"] or result["error"]), result
    return results, late, srv.output()


def test_sigterm_lets_in_flight_requests_finish_then_a_second_signal_aborts_the_rest() -> None:
    results, _, output = drain_run(600, second_signal=True)
    for result in results[:3]:  # finished normally during the drain
        assert result["finish_reason"] == "length" and result["error"] is None, result
    for result in results[3:]:  # cut by the second signal, with a final event
        assert result["error"]["code"] == "shutting_down", result
    assert "draining" in output and "second signal" in output


def test_sigterm_with_no_drain_time_aborts_everything_with_a_final_event() -> None:
    results, _, output = drain_run(0, second_signal=False)
    assert all(r["error"] and r["error"]["code"] == "shutting_down" or r["finish_reason"]
               for r in results)
    assert any(r["error"] for r in results[3:]), results
    assert "aborted" in output


def test_a_failed_iteration_fails_its_requests_and_the_server_recovers() -> None:
    srv = ServerProcess(python_args=FAULT_SERVER)
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            bad = http.post("/v1/completions", json=body(4, seed=POISON_SEED))
            assert bad.status_code == 500 and bad.json()["error"]["code"] == "engine_error"
            stream = asyncio.run(_stream(srv.url, body(4, seed=POISON_SEED)))
            assert stream["error"]["code"] == "engine_error"
            ok = http.post("/v1/completions", json=body(4))
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
            assert http.get("/health").status_code == 200
            wait_until_idle(srv.url)
    finally:
        assert srv.stop() == 0, srv.output()


async def _stream(url: str, request: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        return await stream_completion(c, request)


def test_an_engine_that_keeps_failing_reports_503_and_exits_non_zero() -> None:
    srv = ServerProcess(python_args=FAULT_SERVER, env={"SLICESERVE_TEST_FAULT": "sticky"})
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            bad = http.post("/v1/completions", json=body(4, seed=POISON_SEED))
            assert bad.status_code == 500
            for _ in range(5):  # every iteration fails now: each request fails, until 503
                other = http.post("/v1/completions", json=body(4))
                assert other.status_code in (500, 503), other.text
                if other.status_code == 503:
                    break
            seen_503 = False
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and srv.alive():
                try:
                    r = http.get("/health")
                except httpx.TransportError:
                    break
                if r.status_code == 503:
                    assert r.json()["error"]["code"] == "engine_failed"
                    seen_503 = True
                time.sleep(0.05)
        code = srv.proc.wait(timeout=30)
    finally:
        srv.stop()
    assert seen_503 and code == 1, srv.output()
    assert "gives up" in srv.output()
