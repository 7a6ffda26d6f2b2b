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
from sliceserve.engine.arrivals import STALL_REASON as STALL_REASON  # re-exported
from sliceserve.engine.arrivals import serve_arrivals
from sliceserve.engine.engine import Engine
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.base import Policy
from sliceserve.request import Request
from sliceserve.sim.sim_executor import SimExecutor, Slowdown


@dataclass
class SimulationResult:
    requests: list[Request]  # every arrived request, finished, in arrival order
    duration_s: float  # virtual time from 0 to the last finish
    num_iterations: int


def simulate(requests: Sequence[Request], policy: Policy, latency_model: LatencyModel,
             config: SchedulerConfig, *, max_time_s: float | None = None,
             on_step: Callable[[Engine], None] | None = None,
             slowdown: Slowdown | None = None) -> SimulationResult:
    """Run `requests` (fresh, any order) to completion under `policy`.

    `latency_model` is the ground truth the executor's durations come from (the policy plans
    with its own model, usually the same). `slowdown` stretches them for a while.
    `max_time_s` bounds virtual time: requests unfinished then are aborted with a reason.
    `on_step` is called after every step (for invariant checks in tests).
    """
    clock = VirtualClock()
    engine = Engine(Scheduler(config, policy), SimExecutor(latency_model, slowdown), clock)
    pending, iterations = serve_arrivals(
        engine, requests, clock.advance_to, max_time_s=max_time_s, on_step=on_step,
        limit_reason=f"simulation time limit {max_time_s} s reached")
    end = max((r.finish_s or 0.0 for r in pending), default=0.0)
    return SimulationResult(pending, end, iterations)

