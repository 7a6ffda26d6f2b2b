"""Discrete-event simulation: the real Engine and Scheduler on a virtual clock.

Arrivals are fed to the engine when the virtual clock reaches them; each engine step is one
iteration whose duration the latency model predicts. When nothing can run, the clock jumps to
the next arrival.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sliceserve.clock import VirtualClock
from sliceserve.config import SchedulerConfig
from sliceserve.core.scheduler import Scheduler
from sliceserve.engine.engine import Engine
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.base import Policy
from sliceserve.request import Request
from sliceserve.sim.sim_executor import SimExecutor

STALL_REASON = "aborted: the policy scheduled nothing while requests were pending"


@dataclass
class SimulationResult:
    requests: list[Request]  # every arrived request, finished, in arrival order
    duration_s: float  # virtual time from 0 to the last finish
    num_iterations: int


def simulate(requests: Sequence[Request], policy: Policy, latency_model: LatencyModel,
             config: SchedulerConfig, *, max_time_s: float | None = None,
             on_step: Callable[[Engine], None] | None = None) -> SimulationResult:
    """Run `requests` (fresh, any order) to completion under `policy`.

    `max_time_s` bounds virtual time: requests unfinished then are aborted with a reason.
    `on_step` is called after every step (for invariant checks in tests).
    """
    pending = sorted(requests, key=lambda r: r.arrival_s)
    clock = VirtualClock()
    engine = Engine(Scheduler(config, policy), SimExecutor(latency_model), clock)
    i, n = 0, len(pending)
    while i < n or engine.has_unfinished():
        now = clock.now()
        while i < n and pending[i].arrival_s <= now:
            engine.add_request(pending[i])
            i += 1
        if max_time_s is not None and now >= max_time_s:
            _abort_all(engine, f"aborted: simulation time limit {max_time_s} s reached")
            break
        out = engine.step()
        if on_step is not None:
            on_step(engine)
        if out.idle:
            if i < n:
                clock.advance_to(pending[i].arrival_s)
            elif engine.has_unfinished():
                _abort_all(engine, STALL_REASON)
    scheduler = engine.scheduler
    for request in pending[i:]:  # arrivals after a time limit still count: aborted on arrival
        scheduler.add_request(request, request.arrival_s)  # so that finish_s >= arrival_s
        scheduler.abort(request.request_id, request.arrival_s,
                        f"aborted: simulation time limit {max_time_s} s reached")
    end = max((r.finish_s or 0.0 for r in pending), default=0.0)
    return SimulationResult(list(pending), end, engine.scheduler.num_iterations)


def _abort_all(engine: Engine, reason: str) -> None:
    scheduler = engine.scheduler
    for request in [*scheduler.running, *scheduler.waiting]:
        engine.abort(request.request_id, reason)
