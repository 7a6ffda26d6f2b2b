"""Build a real engine (ModelRunner + Scheduler + a policy) for tests, and drive it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sliceserve.clock import WallClock
from sliceserve.core.scheduler import Scheduler
from sliceserve.engine.engine import Engine
from sliceserve.latency_model import LatencyModel
from sliceserve.model.runner import ModelRunner, RunnerConfig
from sliceserve.policies.base import Decision, Policy
from sliceserve.policies.registry import make_policy
from sliceserve.request import SLO, Request, SamplingParams

LENIENT = SLO(ttft_ms=1e7, tpot_ms=1e7)
# The engine tests run on CPU; SLICESERVE_TEST_DEVICE=cuda runs the same tests on a GPU.
TEST_DEVICE = os.environ.get("SLICESERVE_TEST_DEVICE", "cpu")


def make_engine(folder: Path | ModelRunner, policy: str | Policy = "vllm",
                options: dict[str, Any] | None = None, *,
                wrap: Callable[[Policy], Policy] | None = None,
                max_num_batched_tokens: int = 2048, **runner_kwargs: Any) -> Engine:
    runner = folder if isinstance(folder, ModelRunner) else ModelRunner(
        folder, RunnerConfig(**{"dtype": "float32", "num_kv_blocks": 256, "device": TEST_DEVICE,
                                **runner_kwargs}))
    config = runner.scheduler_config(max_num_batched_tokens=max_num_batched_tokens)
    if isinstance(policy, str):
        policy = make_policy(policy, LatencyModel.load("paper"), config, options or {})
    if wrap is not None:
        policy = wrap(policy)
    return Engine(Scheduler(config, policy), runner, WallClock())


def request(rid: str, prompt: Sequence[int], max_tokens: int = 8, *, slo: SLO = LENIENT,
            **sampling: Any) -> Request:
    params = SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, "ignore_eos": True,
                                                      **sampling})
    return Request(rid, 0.0, len(prompt), params, slo, prompt_token_ids=list(prompt))


def run_to_completion(engine: Engine, requests: Sequence[Request],
                      max_steps: int = 100_000) -> dict[str, list[int]]:
    for r in requests:
        engine.add_request(r)
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        assert steps < max_steps, "engine did not finish"
    return {r.request_id: list(r.output_token_ids) for r in requests}


class Interfere(Policy):
    """Wraps a policy: masks `victim` out of some iterations, preempts it at one (tests of
    exact resumption, on every executor)."""

    name = "interfere"

    def __init__(self, inner: Policy, victim: str, mask_steps: set[int], preempt_step: int | None):
        super().__init__(inner.options, inner.latency_model, inner.config)
        self.inner, self.victim = inner, victim
        self.mask_steps, self.preempt_step = mask_steps, preempt_step
        self.step = 0
        self.masked = self.preempted = 0

    def on_arrival(self, request, view):
        self.inner.on_arrival(request, view)

    def on_finish(self, request, view):
        self.inner.on_finish(request, view)

    def schedule(self, view) -> Decision:
        decision = self.inner.schedule(view)
        self.step += 1
        batch = list(decision.batch)
        victim = [r for r, _ in batch if r.request_id == self.victim
                  and r.num_computed_tokens > 0]
        if not victim:
            return decision
        rest = [(r, n) for r, n in batch if r.request_id != self.victim]
        if self.step == self.preempt_step:
            self.preempted += 1
            return replace(decision, batch=rest, preempt=[*decision.preempt, victim[0]])
        if self.step in self.mask_steps:
            self.masked += 1
            return replace(decision, batch=rest)
        return decision
