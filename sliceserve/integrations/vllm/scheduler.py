"""vLLM scheduler classes that run a sliceserve policy (`--scheduler-cls`).

    vllm serve MODEL --scheduler-cls sliceserve.integrations.vllm.SliceScheduler
    vllm serve MODEL --scheduler-cls sliceserve.integrations.vllm.SliceAsyncScheduler

`SliceScheduler` extends vLLM's v1 `Scheduler` (engines without async scheduling, e.g. vLLM's
CPU build); `SliceAsyncScheduler` extends its `AsyncScheduler` (the default on GPUs). Both only
wrap the base class's own methods: the work is the `Adapter`'s (adapter.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sliceserve.integrations.vllm import compat

compat.check_vllm()  # before vLLM's scheduler is imported: refuse an unsupported vLLM loudly

from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402

from sliceserve.integrations.vllm.adapter import Adapter  # noqa: E402


class SliceSchedulerMixin:
    """Hooks the adapter into a vLLM scheduler class (list it before the vLLM base)."""

    sliceserve: Adapter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.sliceserve = Adapter(self)

    def add_request(self, request: Any) -> None:
        known = request.request_id in self.requests  # type: ignore[attr-defined]
        super().add_request(request)  # type: ignore[misc]
        if not known:  # a streaming session's next chunk is not a new arrival
            self.sliceserve.arrived(request)

    def finish_requests(self, request_ids: str | Iterable[str] | None,
                        finished_status: Any) -> list[Any]:
        done = super().finish_requests(request_ids, finished_status)  # type: ignore[misc]
        self.sliceserve.finished(done)
        return done

    def schedule(self, throttle_prefills: bool = False) -> Any:
        return self.sliceserve.schedule(throttle_prefills, super().schedule)  # type: ignore[misc]

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        return self.sliceserve.update(scheduler_output, model_runner_output,
                                      super().update_from_output)  # type: ignore[misc]


class SliceScheduler(SliceSchedulerMixin, Scheduler):
    """vLLM's v1 Scheduler, run by a sliceserve policy."""


class SliceAsyncScheduler(SliceSchedulerMixin, AsyncScheduler):
    """vLLM's AsyncScheduler, run by a sliceserve policy."""
