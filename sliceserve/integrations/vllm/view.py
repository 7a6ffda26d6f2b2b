"""The policy's read-only view of vLLM's scheduler: `RequestView`s over vLLM's requests.

A `ReqView` reads a vLLM `Request` live (tokens computed, outputs) and adds what vLLM does not
keep: the SLO from the request's extra args, and the times of its first and last token (taken
when the scheduler sees them). With async scheduling, tokens still in flight (vLLM's output
placeholders) count as generated, as vLLM's own scheduler counts them.

`Queues` keeps the two queues a policy sees, in the order the policy interface promises:
waiting by arrival, running by admission (the newest last). The scheduler moves requests
between them on the events it reports to the policy, once per event.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from sliceserve.config import SchedulerConfig
from sliceserve.request import SLO, RequestStatus


def status_map(vllm_status: Any) -> dict[Any, RequestStatus]:
    """vLLM's request statuses as the policy's (`vllm_status` is vLLM's RequestStatus)."""
    done = {"FINISHED_STOPPED", "FINISHED_LENGTH_CAPPED", "FINISHED_IGNORED",
            "FINISHED_REPETITION"}
    out = {}
    for member in vllm_status:
        if member.name == "RUNNING":
            out[member] = RequestStatus.RUNNING
        elif member.name in done:
            out[member] = RequestStatus.COMPLETED
        elif vllm_status.is_finished(member):
            out[member] = RequestStatus.ABORTED
        else:
            out[member] = RequestStatus.WAITING
    return out


class ReqView:
    """One vLLM request as the policy sees it (the RequestView protocol)."""

    __slots__ = ("req", "request_id", "arrival_s", "slo", "num_prompt_tokens", "max_tokens",
                 "ttft_deadline_s", "deadline_s", "first_token_s", "last_token_s",
                 "is_running", "rejected", "seq", "_statuses")

    def __init__(self, req: Any, slo: SLO, seq: int, statuses: dict[Any, RequestStatus]) -> None:
        self.req = req
        self.request_id: str = req.request_id
        self.arrival_s: float = float(req.arrival_time)
        self.slo = slo
        self.num_prompt_tokens: int = req.num_prompt_tokens
        self.max_tokens: int = req.max_tokens
        self.ttft_deadline_s = self.arrival_s + slo.ttft_ms / 1000.0
        self.deadline_s = (None if slo.deadline_ms is None
                           else self.arrival_s + slo.deadline_ms / 1000.0)
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.is_running = False  # in the policy's running queue
        self.rejected = False
        self.seq = seq  # arrival order among equal arrival times
        self._statuses = statuses

    @property
    def priority(self) -> int:
        return int(self.req.priority)

    @property
    def status(self) -> RequestStatus:
        if self.rejected:
            return RequestStatus.REJECTED
        return self._statuses.get(self.req.status, RequestStatus.WAITING)

    @property
    def num_output_tokens(self) -> int:
        req = self.req
        return req.num_output_tokens + req.num_output_placeholders

    @property
    def remaining_output_tokens(self) -> int:
        req = self.req
        return self.max_tokens - req.num_output_tokens - req.num_output_placeholders

    @property
    def num_tokens(self) -> int:
        req = self.req
        return req.num_tokens + req.num_output_placeholders

    @property
    def num_computed_tokens(self) -> int:
        return int(self.req.num_computed_tokens)

    @property
    def num_preemptions(self) -> int:
        return int(self.req.num_preemptions)

    def __repr__(self) -> str:
        return f"ReqView({self.request_id!r}, {self.status.value})"


class Queues:
    """The policy's waiting (by arrival) and running (by admission) queues."""

    def __init__(self) -> None:
        self.waiting: list[ReqView] = []
        self._keys: list[tuple[float, int]] = []
        self.running: list[ReqView] = []

    def add_waiting(self, view: ReqView) -> None:
        key = (view.arrival_s, view.seq)
        i = bisect.bisect_right(self._keys, key)
        self._keys.insert(i, key)
        self.waiting.insert(i, view)

    def remove_waiting(self, view: ReqView) -> None:
        i = bisect.bisect_left(self._keys, (view.arrival_s, view.seq))
        if i < len(self.waiting) and self.waiting[i] is view:
            del self._keys[i]
            del self.waiting[i]

    def admit(self, view: ReqView) -> None:
        self.remove_waiting(view)
        view.is_running = True
        self.running.append(view)

    def preempt(self, view: ReqView) -> None:
        self.running.remove(view)
        view.is_running = False
        self.add_waiting(view)

    def remove(self, view: ReqView) -> None:
        if view.is_running:
            self.running.remove(view)
            view.is_running = False
        else:
            self.remove_waiting(view)


class SchedView:
    """The scheduler at one decision point (the SchedulerView protocol)."""

    __slots__ = ("now_s", "_queues", "config", "_block_pool", "_bs")

    def __init__(self, queues: Queues, config: SchedulerConfig, block_pool: Any) -> None:
        self.now_s = 0.0
        self._queues = queues
        self.config = config
        self._block_pool = block_pool
        self._bs = config.block_size

    @property
    def waiting(self) -> Sequence[ReqView]:
        return self._queues.waiting

    @property
    def running(self) -> Sequence[ReqView]:
        return self._queues.running

    @property
    def num_free_blocks(self) -> int:
        return int(self._block_pool.get_num_free_blocks())

    def num_blocks_needed(self, request: Any, num_new_tokens: int) -> int:
        bs, computed = self._bs, request.num_computed_tokens
        return -(-(computed + num_new_tokens) // bs) - -(-computed // bs)

    def num_blocks_held(self, request: Any) -> int:
        return -(-request.num_computed_tokens // self._bs) if request.is_running else 0
