"""An auditor around a policy: it never mutates requests, and its hooks pair up.

`PolicyAudit.attach(policy, scheduler)` wraps the policy's `schedule` and state-change hooks
on that instance. Around every call it fingerprints every request the scheduler knows (all
fields a policy could touch, the token lists included) and asserts that the call changed
none of them. It also replays the hooks as a state machine per request:

    arrival -> waiting --admit--> running --preempt--> waiting ... --finish--> ended

and asserts each hook comes in that order, once per change, with the request in the state
the hook names (admitted: RUNNING and in the running queue; preempted: WAITING and in the
waiting queue; finished: ended) and nothing after `on_finish`. `check(scheduler)` asserts the
replayed state equals every unfinished request's status (no change went untold), and
`check_end(requests)` that every request told of its arrival was told of its end, and that a
request rejected at arrival was told nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sliceserve.core.scheduler import Scheduler
from sliceserve.policies.base import Policy
from sliceserve.request import Request, RequestStatus

WAITING, RUNNING, ENDED = "waiting", "running", "ended"


def fingerprint(r: Request) -> tuple[Any, ...]:
    """Everything about a request a policy could change (frozen members by identity)."""
    return (r.status, r.num_computed_tokens, tuple(r.output_token_ids),
            tuple(r.token_times_s), r.num_preemptions, r.finish_s, r.finish_reason,
            r.finish_code, r.finish_detail, r.priority, r.arrival_s, r.num_prompt_tokens,
            id(r.slo), id(r.sampling), r.request_id,
            None if r.prompt_token_ids is None else id(r.prompt_token_ids))


@dataclass
class PolicyAudit:
    scheduler: Scheduler
    states: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    @classmethod
    def attach(cls, policy: Policy, scheduler: Scheduler) -> PolicyAudit:
        audit = cls(scheduler)
        for name in ("schedule", "on_arrival", "on_admit", "on_preempt", "on_finish"):
            setattr(policy, name, audit._wrap(name, getattr(policy, name)))
        return audit

    def _requests(self, extra: Iterable[Request]) -> list[Request]:
        s = self.scheduler
        return [*s.running, *s.waiting, *extra]

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def audited(*args: Any) -> Any:
            extra = [args[0]] if name != "schedule" else []
            before = [(r, fingerprint(r)) for r in self._requests(extra)]
            if name != "schedule":
                self._transition(name, args[0])
            result = method(*args)
            for r, fp in before:
                assert fingerprint(r) == fp, f"{name} mutated request {r.request_id}"
            self.calls[name] = self.calls.get(name, 0) + 1
            return result
        return audited

    def _transition(self, hook: str, r: Request) -> None:
        rid = r.request_id
        state = self.states.get(rid)
        s = self.scheduler
        if hook == "on_arrival":
            assert state is None, f"on_arrival for {rid} twice (state {state})"
            assert r.status is RequestStatus.WAITING and r in s.waiting
            self.states[rid] = WAITING
        elif hook == "on_admit":
            assert state == WAITING, f"on_admit for {rid} in state {state}"
            assert r.status is RequestStatus.RUNNING and r in s.running
            self.states[rid] = RUNNING
        elif hook == "on_preempt":
            assert state == RUNNING, f"on_preempt for {rid} in state {state}"
            assert r.status is RequestStatus.WAITING and r in s.waiting
            self.states[rid] = WAITING
        elif hook == "on_finish":
            assert state in (WAITING, RUNNING), f"on_finish for {rid} in state {state}"
            assert r.status.is_finished and s.get(rid) is None
            self.states[rid] = ENDED

    def check(self) -> None:
        """Every unfinished request is in the state its hooks say."""
        for r in self._requests(()):
            state = self.states.get(r.request_id)
            expected = RUNNING if r.status is RequestStatus.RUNNING else WAITING
            assert state == expected, (f"{r.request_id} is {r.status.value} but its hooks "
                                       f"say {state}")

    def check_end(self, requests: Iterable[Request]) -> None:
        for r in requests:
            state = self.states.get(r.request_id)
            if state is None:  # rejected at arrival, never told
                assert r.status is RequestStatus.REJECTED and r.num_computed_tokens == 0
            else:
                assert state == ENDED, f"{r.request_id} ended without on_finish"
