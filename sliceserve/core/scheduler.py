"""The scheduler: mechanism only. Queues, request states, KV blocks, budgets.

Every decision (who computes, how many tokens, whom to preempt or reject) comes from the
policy. The scheduler applies it, checks it against the hard limits, and turns it into a
`Plan`; after the executor ran the plan, `update` records tokens and finishes requests.

States: a request is in exactly one of `waiting` (no KV), `running` (holds KV), or finished.
Every request that arrives ends completed, rejected (with a reason) or aborted.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from sliceserve.config import SchedulerConfig
from sliceserve.core.kv_blocks import BlockManager
from sliceserve.core.plan import ExecuteResult, Plan, ScheduledChunk, StepOutput
from sliceserve.policies.base import Decision, Policy, PolicyError, RequestView
from sliceserve.request import (
    CODE_ABORTED,
    CODE_CONTEXT_LENGTH,
    CODE_KV_CAPACITY,
    CODE_QUEUE_FULL,
    FinishReason,
    Request,
    RequestStatus,
)

FinishListener = Callable[[Request], None]


class _View:
    """The read-only face of the scheduler that policies see."""

    __slots__ = ("_s", "now_s", "num_blocks_needed")

    def __init__(self, scheduler: Scheduler) -> None:
        self._s = scheduler
        self.now_s = 0.0
        # Bound directly: the hottest query of policies.
        self.num_blocks_needed = scheduler.blocks.num_needed

    @property
    def waiting(self) -> Sequence[RequestView]:
        return self._s._waiting

    @property
    def running(self) -> Sequence[RequestView]:
        return self._s._running

    @property
    def config(self) -> SchedulerConfig:
        return self._s.config

    @property
    def num_free_blocks(self) -> int:
        return self._s.blocks.num_free_blocks

    def num_blocks_held(self, request: RequestView) -> int:
        return self._s.blocks.num_held(request.request_id)


class Scheduler:
    def __init__(self, config: SchedulerConfig, policy: Policy, *,
                 reject_infeasible: bool = False, max_waiting: int | None = None) -> None:
        """Admission control (both off by default; see `set_admission`)."""
        self.config = config
        self.policy = policy
        self.reject_infeasible = reject_infeasible
        self.max_waiting = max_waiting
        self.blocks = BlockManager(config.num_kv_blocks, config.block_size)
        self._waiting: list[Request] = []  # sorted by (arrival_s, admission sequence)
        self._waiting_keys: list[tuple[float, int]] = []
        self._running: list[Request] = []  # admission order
        self._requests: dict[str, Request] = {}  # every unfinished request
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        self.view = _View(self)
        self.finished_listeners: list[FinishListener] = []
        self.num_iterations = 0

    # --- queries ---
    @property
    def waiting(self) -> Sequence[Request]:
        return self._waiting

    @property
    def running(self) -> Sequence[Request]:
        return self._running

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    def num_unfinished(self) -> int:
        return len(self._requests)

    def get(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def set_admission(self, reject_infeasible: bool, max_waiting: int | None) -> None:
        """`reject_infeasible`: a request the policy predicts cannot meet its SLO
        (`Policy.assess_arrival`) is rejected on arrival with the policy's code and reason;
        off, it is queued and served best effort. `max_waiting`: a request that arrives while
        this many wait (new or preempted) is rejected with code "queue_full"."""
        if max_waiting is not None and max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting!r}")
        self.reject_infeasible = reject_infeasible
        self.max_waiting = max_waiting

    # --- arrivals and ends ---
    def add_request(self, request: Request, now_s: float) -> None:
        """A request arrives. One that can never run is rejected at once, with a reason."""
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if request.status is not RequestStatus.WAITING or request.num_computed_tokens:
            raise ValueError(f"request {request.request_id!r} was already scheduled")
        self._requests[request.request_id] = request
        self._seq[request.request_id] = self._next_seq
        self._next_seq += 1
        self._insert_waiting(request)
        self.view.now_s = now_s
        never = self._never_fits(request)
        if never is None and self.max_waiting is not None and (
                len(self._waiting) > self.max_waiting):  # it is already in: count the others
            never = CODE_QUEUE_FULL, f"{self.max_waiting} requests are already waiting"
        if never is None and self.reject_infeasible:
            refused = self.policy.assess_arrival(request, self.view)
            if refused is not None:
                never = refused.code, refused.detail
        if never is not None:
            code, detail = never
            self._finish(request, RequestStatus.REJECTED, FinishReason.REJECTED, now_s,
                         code=code, detail=detail, tell_policy=False)
            return
        self.policy.on_arrival(request, self.view)

    def abort(self, request_id: str, now_s: float, detail: str = "aborted",
              code: str = CODE_ABORTED) -> bool:
        """End an unfinished request now (False if there is none by that id)."""
        request = self._requests.get(request_id)
        if request is None:
            return False
        self._finish(request, RequestStatus.ABORTED, FinishReason.ABORT, now_s, code=code,
                     detail=detail)
        return True

    def _never_fits(self, request: Request) -> tuple[str, str] | None:
        total = request.num_prompt_tokens + request.max_tokens
        cfg = self.config
        if total > cfg.max_model_len:
            return CODE_CONTEXT_LENGTH, (
                f"prompt ({request.num_prompt_tokens}) + max_tokens ({request.max_tokens}) "
                f"= {total} tokens exceeds max_model_len {cfg.max_model_len}")
        if total > cfg.kv_capacity_tokens:
            return CODE_KV_CAPACITY, (f"prompt + max_tokens = {total} tokens exceeds the KV "
                                      f"cache ({cfg.kv_capacity_tokens} tokens)")
        return None

    # --- one iteration ---
    def schedule(self, now_s: float) -> Plan:
        """Ask the policy for a decision and turn it into a plan (empty when idle)."""
        self.view.now_s = now_s
        if not self._requests:
            return Plan(now_s=now_s, chunks=())
        decision = self.policy.schedule(self.view)
        return self._apply(decision, now_s)

    def _check(self, decision: Decision) -> None:
        """Raise PolicyError if any part of `decision` breaks a limit; changes nothing.

        Checked as it will be applied: rejected and preempted requests hold no KV and no
        computed tokens afterwards, so a preempted request may be re-admitted in the batch."""
        requests = self._requests
        gone: set[str] = set()
        for rejection in decision.reject:
            rid = rejection.request.request_id
            if rid not in requests or rid in gone:
                raise PolicyError(f"cannot reject {rid!r}: unknown, finished or listed twice")
            gone.add(rid)
        reset: set[str] = set()
        freed = 0
        blocks = self.blocks
        for view in decision.preempt:
            rid = view.request_id
            request = requests.get(rid)
            if request is None or rid in gone or rid in reset:
                raise PolicyError(f"cannot preempt {rid!r}: unknown, finished, rejected or "
                                  f"listed twice")
            if request.status is not RequestStatus.RUNNING:
                raise PolicyError(f"cannot preempt {rid}: it is {request.status.value}")
            reset.add(rid)
        for rid in gone | reset:
            freed += blocks.num_held(rid)
        if len(decision.batch) > self.config.max_num_seqs:
            raise PolicyError(f"batch of {len(decision.batch)} rows exceeds max_num_seqs "
                              f"{self.config.max_num_seqs}")
        seen: set[str] = set()
        num_tokens = 0
        needed = 0
        block_size = self.config.block_size
        for view, num_new in decision.batch:
            rid = view.request_id
            request = requests.get(rid)
            if request is None or rid in gone:
                raise PolicyError(f"policy named unknown, finished or rejected request {rid!r}")
            computed = 0 if rid in reset else request.num_computed_tokens
            total = request.num_prompt_tokens + len(request.output_token_ids)
            if rid in seen or num_new < 1 or computed + num_new > total:
                raise PolicyError(f"bad batch entry for {rid}: {num_new} tokens at "
                                  f"{computed}/{total} (or listed twice)")
            seen.add(rid)
            num_tokens += num_new
            held = 0 if rid in reset else blocks.num_held(rid)
            needed += max(0, -(-(computed + num_new) // block_size) - held)
        if num_tokens > self.config.max_num_batched_tokens:
            raise PolicyError(f"batch of {num_tokens} tokens exceeds the budget "
                              f"{self.config.max_num_batched_tokens}")
        free = blocks.num_free_blocks + freed
        if needed > free:
            raise PolicyError(f"policy overcommitted the KV cache: the batch needs {needed} "
                              f"more blocks, {free} would be free")

    def _apply(self, decision: Decision, now_s: float) -> Plan:
        self._check(decision)
        for rejection in decision.reject:
            self._finish(self._requests[rejection.request.request_id], RequestStatus.REJECTED,
                         FinishReason.REJECTED, now_s, code=rejection.code,
                         detail=rejection.detail)
        preempted = []
        for view in decision.preempt:
            self._preempt(self._requests[view.request_id])
            preempted.append(view.request_id)
        chunks = []
        allocate = self.blocks.allocate
        requests = self._requests
        for view, num_new in decision.batch:
            request = requests[view.request_id]
            computed = request.num_computed_tokens
            table = allocate(request, num_new)  # cannot fail: checked above
            if request.status is RequestStatus.WAITING:
                self._admit(request)
            total = request.num_prompt_tokens + len(request.output_token_ids)
            chunks.append(ScheduledChunk(request, num_new, computed, computed + num_new == total,
                                         tuple(table)))
        return Plan(now_s=now_s, chunks=tuple(chunks), preempted_ids=tuple(preempted))

    def update(self, plan: Plan, result: ExecuteResult, now_s: float) -> StepOutput:
        """Record the executed plan: computed tokens, sampled tokens at `now_s`, finishes."""
        if plan.is_empty:
            return StepOutput(now_s=now_s, idle=True)
        self.num_iterations += 1
        self.view.now_s = now_s
        self.policy.observe_iteration(*plan.shape(), result.duration_s * 1000.0)
        new_tokens = []
        finished = []
        eos = self.config.eos_token_ids
        for chunk, token in zip(plan.chunks, result.token_ids, strict=True):
            request = chunk.request
            if request.is_finished:  # aborted while the iteration ran
                continue
            request.num_computed_tokens += chunk.num_new_tokens
            if not chunk.samples:
                continue
            if token is None:
                raise RuntimeError(f"executor gave no token for {request.request_id}")
            request.output_token_ids.append(token)
            request.token_times_s.append(now_s)
            new_tokens.append((request, token))
            sampling = request.sampling
            if len(request.output_token_ids) >= sampling.max_tokens:
                reason = FinishReason.LENGTH
            elif len(request.output_token_ids) > sampling.min_tokens and (
                    token in sampling.stop_token_ids or (not sampling.ignore_eos and token in eos)):
                reason = FinishReason.STOP
            else:
                continue
            self._finish(request, RequestStatus.COMPLETED, reason, now_s)
            finished.append(request)
        return StepOutput(now_s=now_s, new_tokens=tuple(new_tokens), finished=tuple(finished))

    def finish_request(self, request_id: str, reason: FinishReason | str, now_s: float,
                       detail: str | None = None) -> None:
        """Complete a request early (e.g. the engine matched a stop string: `detail`)."""
        request = self._requests.get(request_id)
        if request is not None:
            self._finish(request, RequestStatus.COMPLETED, FinishReason(reason), now_s,
                         detail=detail)

    # --- state changes ---
    def _insert_waiting(self, request: Request) -> None:
        key = (request.arrival_s, self._seq[request.request_id])
        i = bisect.bisect_right(self._waiting_keys, key)
        self._waiting_keys.insert(i, key)
        self._waiting.insert(i, request)

    def _remove_waiting(self, request: Request) -> None:
        key = (request.arrival_s, self._seq[request.request_id])
        i = bisect.bisect_left(self._waiting_keys, key)
        del self._waiting_keys[i]
        del self._waiting[i]

    def _admit(self, request: Request) -> None:
        self._remove_waiting(request)
        request.status = RequestStatus.RUNNING
        self._running.append(request)
        self.policy.on_admit(request, self.view)

    def _preempt(self, request: Request) -> None:
        """Recompute preemption: drop the KV, keep the output tokens, wait again."""
        self._running.remove(request)
        self.blocks.free(request.request_id)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self._insert_waiting(request)
        self.policy.on_preempt(request, self.view)

    def _finish(self, request: Request, status: RequestStatus, reason: FinishReason,
                now_s: float, *, code: str | None = None, detail: str | None = None,
                tell_policy: bool = True) -> None:
        if request.status is RequestStatus.RUNNING:
            self._running.remove(request)
        else:
            self._remove_waiting(request)
        self.blocks.free(request.request_id)
        del self._requests[request.request_id]
        del self._seq[request.request_id]
        request.status = status
        request.finish_reason = reason
        request.finish_code = code
        request.finish_detail = detail
        request.finish_s = now_s
        if tell_policy:
            self.policy.on_finish(request, self.view)
        for listener in self.finished_listeners:
            listener(request)
