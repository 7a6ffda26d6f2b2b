"""The engine loop: schedule -> execute -> update, on an injected clock.

The same Engine serves live traffic (a model runner, a wall clock) and simulations
(a `SimExecutor`, a `VirtualClock`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from sliceserve.clock import Clock
from sliceserve.core.plan import ExecuteResult, Plan, StepOutput
from sliceserve.core.scheduler import Scheduler
from sliceserve.request import CODE_ABORTED, Request


class StepError(RuntimeError):
    """Executing a plan (or recording its result) failed. `request_ids` are the requests the
    plan computed: their KV may be half written; the others are untouched. The cause is
    chained."""

    def __init__(self, request_ids: tuple[str, ...], cause: BaseException) -> None:
        super().__init__(f"the iteration of {len(request_ids)} requests failed: {cause!r}")
        self.request_ids = request_ids


class Executor(Protocol):
    """Computes plans. An executor that keeps per-request state of its own beyond the
    scheduler's blocks (llama.cpp's sequence streams) also has `release(request)`, which the
    engine calls for every request that ends (finished, aborted or rejected)."""

    def execute(self, plan: Plan) -> ExecuteResult:
        """Compute the plan: a sampled token per sampling chunk, and the duration."""
        ...


class Engine:
    def __init__(self, scheduler: Scheduler, executor: Executor, clock: Clock) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.clock = clock
        release = getattr(executor, "release", None)
        if release is not None:  # for every engine over it: built, run live or served
            scheduler.finished_listeners.append(release)

    def add_request(self, request: Request) -> None:
        self.scheduler.add_request(request, self.clock.now())

    def abort(self, request_id: str, detail: str = "aborted", code: str = CODE_ABORTED) -> bool:
        return self.scheduler.abort(request_id, self.clock.now(), detail, code)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> StepOutput:
        plan = self.scheduler.schedule(self.clock.now())
        # A decision that only preempted (vLLM v1 makes one when the request that needs a
        # block is itself the victim) computed nothing but freed KV: decide again at once,
        # so that an empty step always means idle. Each such round shrinks `running`.
        preempted = plan.preempted_ids
        while plan.is_empty and plan.preempted_ids and self.scheduler.has_unfinished():
            plan = self.scheduler.schedule(self.clock.now())
            preempted += plan.preempted_ids
        if len(preempted) != len(plan.preempted_ids):  # the executor hears of every one
            plan = replace(plan, preempted_ids=preempted)
        if plan.is_empty:
            return StepOutput(now_s=plan.now_s, idle=True)
        try:
            result = self.executor.execute(plan)
            self.clock.elapse(result.duration_s)
            return self.scheduler.update(plan, result, self.clock.now())
        except Exception as error:
            ids = tuple(chunk.request.request_id for chunk in plan.chunks)
            raise StepError(ids, error) from error
