"""Where the client's TTFT goes beyond the engine's: timestamps along one request's way.

    .venv/bin/python scripts/profile_http_ttft.py --clients 16 --requests 8 --out P.json

Starts `sliceserve serve` instrumented (this file with `--as-server`: the real server, its
functions wrapped to stamp `time.perf_counter()`, which is one clock for every process on
the machine), drives it with scripts/bench_http.py's httpx client, and splits each request's
client TTFT into: client sent -> the server's app got it -> body read -> tokenized ->
the engine's arrival stamp -> the engine thread took it (the wait for the running iteration,
inside the engine's TTFT) -> first token (engine) -> handed to the event loop -> the handler
has it -> response headers -> first chunk written -> the client parsed it. Also the event
loop's lag (a 2 ms sleep's lateness). Medians and p90 per part go to stdout and `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextvars
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

pc = time.perf_counter
ID = re.compile(rb'"id":"((?:chat)?cmpl-[0-9a-f]+)"')


def instrument(out: str) -> None:
    """Wrap the server's functions to record stamps; dump them to `out` at exit."""
    import sliceserve.server.api as api
    import sliceserve.server.generation as gen
    import sliceserve.server.runtime as runtime
    from sliceserve.engine.async_engine import AsyncEngine

    rec_var: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("rec")
    http: list[dict[str, Any]] = []
    eng: dict[str, dict[str, float]] = {}
    lag: list[float] = []
    origin: list[float] = [0.0]

    def wrap_app(app: Any) -> Any:
        async def mw(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"] != "/v1/completions":
                return await app(scope, receive, send)
            rec: dict[str, Any] = {"asgi": pc()}
            http.append(rec)
            rec_var.set(rec)

            async def recv() -> Any:
                m = await receive()
                if m["type"] == "http.request" and not m.get("more_body"):
                    rec.setdefault("body_done", pc())
                return m

            async def snd(m: Any) -> None:
                if m["type"] == "http.response.start":
                    rec["resp_start"] = pc()
                elif m["type"] == "http.response.body" and m.get("body") and (
                        "first_body" not in rec):
                    rec["first_body_call"] = pc()
                    found = ID.search(m["body"])
                    if found:
                        rec["id"] = found.group(1).decode()
                    await send(m)
                    rec["first_body"] = pc()
                    return
                await send(m)
            await app(scope, recv, snd)
        return mw

    create_app = runtime.create_app
    runtime.create_app = lambda *a, **k: wrap_app(create_app(*a, **k))  # type: ignore
    generate = api.generate

    async def generate_(state: Any, request: Any, body: Any) -> Any:
        rec_var.get({})["gen_start"] = pc()
        return await generate(state, request, body)
    api.generate = generate_  # type: ignore[assignment]
    prompt_ids = gen._prompt_ids

    def prompt_ids_(state: Any, body: Any) -> Any:
        rec = rec_var.get({})
        rec["tok_start"] = pc()
        result = prompt_ids(state, body)
        rec["tok_end"] = pc()
        return result
    gen._prompt_ids = prompt_ids_  # type: ignore[assignment]
    or_disconnect = gen._or_disconnect

    async def or_disconnect_(work: Any, request: Any) -> Any:
        result = await or_disconnect(work, request)
        rec_var.get({}).setdefault("loop_first", pc())
        return result
    gen._or_disconnect = or_disconnect_  # type: ignore[assignment]
    apply, push, start = AsyncEngine._apply, AsyncEngine._push, AsyncEngine.start

    def apply_(self: AsyncEngine, command: Any) -> None:
        origin[0] = self.engine.clock._origin  # type: ignore[attr-defined]
        request = getattr(command, "request", None)
        if request is not None:
            eng[request.request_id] = {"taken": pc(), "arrival": request.arrival_s + origin[0]}
        apply(self, command)

    def push_(self: AsyncEngine, request_id: str, item: Any, final: bool) -> None:
        e = eng.get(request_id)
        if e is not None and "push" not in e:
            e["push"] = pc()
            request = self.engine.scheduler.get(request_id)
            if request is not None and request.first_token_s is not None:
                e["first_token"] = request.first_token_s + origin[0]
        push(self, request_id, item, final)

    async def start_(self: AsyncEngine) -> None:
        await start(self)

        async def sample_lag() -> None:
            while True:
                t = pc()
                await asyncio.sleep(0.002)
                lag.append(pc() - t - 0.002)
        asyncio.get_running_loop().create_task(sample_lag())
    AsyncEngine._apply, AsyncEngine._push = apply_, push_  # type: ignore[method-assign]
    AsyncEngine.start = start_  # type: ignore[method-assign]
    atexit.register(lambda: Path(out).write_text(json.dumps(
        {"http": http, "eng": eng, "lag": lag})))


PARTS = {  # name: (from, to), "c." client, "h." HTTP handler, "e." engine thread stamps
    "client sent -> app": ("c.sent", "h.asgi"), "app -> body read": ("h.asgi", "h.body_done"),
    "body -> tokenized": ("h.body_done", "h.tok_end"),
    "tokenized -> engine arrival": ("h.tok_end", "e.arrival"),
    "arrival -> engine took it": ("e.arrival", "e.taken"),
    "took it -> first token": ("e.taken", "e.first_token"),
    "first token -> to the loop": ("e.first_token", "e.push"),
    "to the loop -> handler has it": ("e.push", "h.loop_first"),
    "handler -> headers sent": ("h.loop_first", "h.resp_start"),
    "headers -> first chunk written": ("h.resp_start", "h.first_body"),
    "written -> client parsed it": ("h.first_body", "c.first"),
}


def run(a: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_http as b
    import httpx

    stamps = f"/tmp/profile-http-{time.time_ns()}.json"
    client: list[dict[str, Any]] = []

    async def one_request(c: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        sent, first, rid, report = pc(), None, None, None
        async with c.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = pc()
                chunk = json.loads(line[6:])
                rid = chunk.get("id", rid)
                if first is None and chunk.get("choices") and chunk["choices"][0]["text"]:
                    first = now
                report = chunk.get("slo_report", report)
        client.append({"id": rid, "sent": sent, "first": first,
                       "engine_ttft_ms": report["ttft_ms"] if report else None})
        return {"error": "profiled"}

    b.one_request = one_request  # type: ignore[assignment]
    log = Path(stamps + ".log")
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--as-server", stamps, "serve", "--port", "0",
             "--latency-model", str(b.PROFILE), "--policy", "slice",
             "--max-queued-requests", "-1"], stdout=f, stderr=subprocess.STDOUT, cwd=b.REPO)
    url = b.wait_ready(proc, log)
    asyncio.run(b.overhead(url, 4, 1, 8, seed=99))
    client.clear()
    asyncio.run(b.overhead(url, a.clients, a.requests, 64, seed=a.seed))
    b.stop_server(proc)
    server = json.loads(Path(stamps).read_text())
    http = {r.get("id"): r for r in server["http"]}
    rows = []
    for c in client:
        at = {**{f"c.{k}": v for k, v in c.items()},
              **{f"h.{k}": v for k, v in http.get(c["id"], {}).items()},
              **{f"e.{k}": v for k, v in server["eng"].get(c["id"], {}).items()}}
        if c["engine_ttft_ms"] is not None and all(
                isinstance(at.get(x), float) for pair in PARTS.values() for x in pair):
            row = {k: (at[t] - at[f]) * 1e3 for k, (f, t) in PARTS.items()}
            row["gap"] = (c["first"] - c["sent"]) * 1e3 - c["engine_ttft_ms"]
            rows.append(row)
    lag = sorted(server["lag"])

    def stat(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"median": statistics.median(xs), "p90": xs[int(0.9 * (len(xs) - 1))]}
    return {"kind": "http_ttft_profile", "cpu": b.cpu_name(), "clients": a.clients,
            "requests": len(client), "joined": len(rows),
            "parts_ms": {k: stat([r[k] for r in rows]) for k in [*PARTS, "gap"]},
            "loop_lag_ms": {**stat([x * 1e3 for x in lag]), "max": lag[-1] * 1e3},
            "per_request": rows}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--as-server":
        instrument(sys.argv[2])
        from sliceserve.cli import main as cli_main

        cli_main(sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=8, help="per client")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = run(args)
    for name, s in result["parts_ms"].items():
        print(f"{name:34s} median {s['median']:8.2f}  p90 {s['p90']:8.2f} ms")
    print(json.dumps({k: v for k, v in result.items() if k not in ("parts_ms", "per_request")}))
    if result["joined"] < result["requests"]:
        print(f"warning: {result['requests'] - result['joined']} requests not joined")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
