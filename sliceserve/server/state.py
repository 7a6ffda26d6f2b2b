"""What the engine is doing, for operators: recent iterations and the `/v1/state` snapshot.

`IterationLog` wraps the engine's executor: every iteration's shape, its measured duration
and what the latency model the policy plans with predicted for it (kept for the last
`maxlen` iterations, summed over all). `engine_state` is built on the engine thread between
two iterations (`AsyncEngine.call`), so what it shows is one consistent moment.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.engine.engine import Engine, Executor
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.base import tokens_to_compute
from sliceserve.request import Request


@dataclass(frozen=True, slots=True)
class Iteration:
    at_s: float  # engine clock at its end
    kind: str  # "decode" (one token per row) or "prefill" (with prompt chunks)
    rows: int
    new_tokens: int
    context_tokens: int
    measured_ms: float
    predicted_ms: float


class IterationLog:
    """An Executor that runs `executor` and records each iteration (thread-safe reads)."""

    def __init__(self, executor: Executor, latency_model: LatencyModel,
                 clock: Callable[[], float], maxlen: int = 256,
                 on_iteration: Callable[[Iteration], None] | None = None) -> None:
        self.executor = executor
        self.latency_model = latency_model
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[Iteration] = deque(maxlen=maxlen)
        self.on_iteration = on_iteration

    def execute(self, plan: Plan) -> ExecuteResult:
        result = self.executor.execute(plan)
        if plan.chunks:
            rows, new, context, pairs = plan.shape()
            predicted = self.latency_model.iteration_ms(rows, new, context, pairs)
            it = Iteration(self._clock(), "decode" if new == rows
                           else "prefill", rows, new, context, result.duration_s * 1000.0,
                           predicted)
            with self._lock:
                self._recent.append(it)
            if self.on_iteration is not None:
                self.on_iteration(it)
        return result

    def recent(self, n: int | None = None) -> list[Iteration]:
        with self._lock:
            items = list(self._recent)
        return items if n is None else items[-n:]

    def ratios(self) -> dict[str, float | None]:
        """measured / predicted over the recent iterations, by kind."""
        out: dict[str, float | None] = {}
        items = self.recent()
        for kind in ("decode", "prefill"):
            its = [it for it in items if it.kind == kind]
            predicted = sum(it.predicted_ms for it in its)
            out[kind] = sum(it.measured_ms for it in its) / predicted if predicted > 0 else None
        return out


def _request_state(r: Request, now_s: float) -> dict[str, Any]:
    slo = r.slo
    first = r.first_token_s
    return {
        "request_id": r.request_id, "slo_class": slo.slo_class,
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "deadline_ms": slo.deadline_ms,
                "utility": slo.utility},
        "priority": r.priority, "age_ms": round((now_s - r.arrival_s) * 1000.0, 1),
        "prompt_tokens": r.num_prompt_tokens, "computed_tokens": r.num_computed_tokens,
        "output_tokens": r.num_output_tokens, "max_tokens": r.max_tokens,
        "tokens_to_compute": tokens_to_compute(r), "preemptions": r.num_preemptions,
        "ttft_ms": None if first is None else round((first - r.arrival_s) * 1000.0, 1),
        "ttft_deadline_in_ms": round((r.ttft_deadline_s - now_s) * 1000.0, 1),
    }


def engine_state(engine: Engine, log: IterationLog | None, iterations: int = 32,
                 ) -> dict[str, Any]:
    """The scheduler's queues, the policy's plan, KV use and recent iterations (on the engine
    thread: see module docstring)."""
    scheduler = engine.scheduler
    now = engine.clock.now()
    policy = scheduler.policy
    blocks = scheduler.blocks
    total = scheduler.config.num_kv_blocks
    recent = log.recent(iterations) if log is not None else []
    return {
        "object": "sliceserve.state", "time_s": round(now, 4), "unix_time": time.time(),
        "policy": {"name": policy.name, "options": policy.options.to_dict(),
                   "state": policy.state(),
                   # the online latency model's factors (None: it plans with the profile)
                   "latency_correction": policy.latency_correction()},
        "waiting": [_request_state(r, now) for r in scheduler.waiting],
        "running": [_request_state(r, now) for r in scheduler.running],
        "kv_cache": {"num_blocks": total, "num_free_blocks": blocks.num_free_blocks,
                     "usage": round(1.0 - blocks.num_free_blocks / total, 4),
                     "block_size": scheduler.config.block_size},
        "num_iterations": scheduler.num_iterations,
        "iterations": [{"at_s": round(it.at_s, 4), "kind": it.kind, "rows": it.rows,
                        "new_tokens": it.new_tokens, "context_tokens": it.context_tokens,
                        "measured_ms": round(it.measured_ms, 3),
                        "predicted_ms": round(it.predicted_ms, 3)} for it in recent],
        "measured_over_predicted": None if log is None else {
            k: None if v is None else round(v, 4) for k, v in log.ratios().items()},
    }
