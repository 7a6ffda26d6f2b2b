"""The server's life cycle, each test with its own process: SIGTERM during a run (in-flight
requests finish or end with a final error event, new ones get 503, exit 0, no stream left
without an end); faults (a failed iteration fails its own requests and the server recovers;
iterations that keep failing make /health answer 503 and the process exit non-zero)."""

from __future__ import annotations

import asyncio
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


def test_sigterm_drains_then_exits_zero() -> None:
    srv = ServerProcess(["--drain-timeout", "3"])
    try:
        srv.wait_ready()

        async def main() -> tuple[list[dict[str, Any]], list[int]]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as c:
                short = [asyncio.create_task(stream_completion(c, body(4))) for _ in range(3)]
                long = [asyncio.create_task(stream_completion(c, body(900))) for _ in range(3)]
                await asyncio.sleep(0.5)
                srv.signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                late = []
                for _ in range(3):  # new requests while draining: 503 (or refused once gone)
                    try:
                        r = await c.post("/v1/completions", json=body(2))
                        late.append(r.status_code)
                        assert r.json()["error"]["code"] == "shutting_down"
                    except httpx.TransportError:
                        late.append(-1)
                return list(await asyncio.gather(*short, *long)), late

        results, late = asyncio.run(main())
        code = srv.proc.wait(timeout=60)
    finally:
        srv.stop()
    assert code == 0, srv.output()
    assert all(status in (503, -1) for status in late), late
    for result in results[:3]:  # short ones finished normally
        assert result["last"]["choices"][0]["finish_reason"] == "length", result
    for result in results[3:]:  # long ones were cut at the drain timeout, with a final event
        assert result["status"] == 200 and result["error"]["code"] == "shutting_down", result
    assert "draining" in srv.output()


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
