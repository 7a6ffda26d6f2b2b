"""Serve a list of requests as they arrive: the loop shared by the simulator (a virtual clock
that jumps to the next arrival) and live runs (a wall clock that sleeps until it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sliceserve.engine.engine import Engine
from sliceserve.request import Request

STALL_REASON = "the policy scheduled nothing while requests were pending"
CODE_STALLED = "stalled"
CODE_TIME_LIMIT = "time_limit"


def serve_arrivals(engine: Engine, requests: Sequence[Request],
                   wait_until: Callable[[float], None], *, max_time_s: float | None = None,
                   limit_reason: str = "time limit reached",
                   on_step: Callable[[Engine], None] | None = None,
                   ) -> tuple[list[Request], int]:
    """Feed `requests` (fresh; `arrival_s` on the engine's clock) when the clock reaches them
    and step until every one has ended. `wait_until(t)` is called when nothing can run before
    the next arrival at `t` (it may return early: the loop checks again). At `max_time_s`,
    what is unfinished, and what arrives later, is aborted with `limit_reason`.

    Returns the requests in arrival order and the number of non-idle iterations.
    """
    pending = sorted(requests, key=lambda r: r.arrival_s)
    clock = engine.clock
    i, n, iterations = 0, len(pending), 0
    while i < n or engine.has_unfinished():
        now = clock.now()
        while i < n and pending[i].arrival_s <= now:
            engine.add_request(pending[i])
            i += 1
        if max_time_s is not None and now >= max_time_s:
            _abort_all(engine, limit_reason, CODE_TIME_LIMIT)
            break
        out = engine.step()
        if on_step is not None:
            on_step(engine)
        if not out.idle:
            iterations += 1
        elif i < n:
            wait_until(pending[i].arrival_s)
        elif engine.has_unfinished():
            _abort_all(engine, STALL_REASON, CODE_STALLED)
    scheduler = engine.scheduler
    for request in pending[i:]:  # arrivals after the time limit still count: aborted at once
        scheduler.add_request(request, request.arrival_s)  # so that finish_s >= arrival_s
        scheduler.abort(request.request_id, request.arrival_s, limit_reason, CODE_TIME_LIMIT)
    return pending, iterations


def _abort_all(engine: Engine, detail: str, code: str) -> None:
    scheduler = engine.scheduler
    for request in [*scheduler.running, *scheduler.waiting]:
        engine.abort(request.request_id, detail, code)
