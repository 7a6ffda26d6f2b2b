"""The scheduler's mechanism, driven by a scripted policy with hand-made requests.

The policy here decides nothing: each test hands it the `Decision` to return, so these tests
pin down what the scheduler does with a decision (states, KV blocks, budgets, updates).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sliceserve.clock import VirtualClock
from sliceserve.config import SchedulerConfig
from sliceserve.core.kv_blocks import blocks_for_tokens
from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.core.scheduler import Scheduler
from sliceserve.engine.engine import Engine
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.base import (
    Decision,
    Policy,
    PolicyError,
    PolicyOptions,
    Rejection,
    SchedulerView,
)
from sliceserve.request import SLO, FinishReason, Request, RequestStatus, SamplingParams
from sliceserve.sim.sim_executor import SimExecutor

LATENCY = LatencyModel(name="test", decode_ms=(10.0, 12.0), decode_slope_ms=2.0,
                       prefill_ms_per_token=0.5)
CONFIG = SchedulerConfig(max_num_batched_tokens=32, max_num_seqs=3, block_size=4,
                         num_kv_blocks=16, max_model_len=48, eos_token_ids=(2,))


class ScriptedPolicy(Policy):
    """Returns whatever decision the test sets; records the callbacks it gets."""

    name = "scripted"

    def __init__(self, config: SchedulerConfig = CONFIG) -> None:
        super().__init__(PolicyOptions(), LATENCY, config)
        self.decide: Callable[[SchedulerView], Decision] = lambda view: Decision()
        self.arrived: list[str] = []
        self.finished: list[tuple[str, RequestStatus]] = []

    def on_arrival(self, request, view) -> None:  # type: ignore[no-untyped-def]
        self.arrived.append(request.request_id)

    def on_finish(self, request, view) -> None:  # type: ignore[no-untyped-def]
        self.finished.append((request.request_id, request.status))

    def schedule(self, view: SchedulerView) -> Decision:
        return self.decide(view)


def make_request(rid: str, arrival_s: float = 0.0, prompt: int = 6, max_tokens: int = 4,
                 **sampling: object) -> Request:
    return Request(rid, arrival_s, prompt, SamplingParams(max_tokens=max_tokens, **sampling),
                   SLO(ttft_ms=100.0, tpot_ms=50.0))


def make_scheduler(config: SchedulerConfig = CONFIG) -> tuple[Scheduler, ScriptedPolicy]:
    policy = ScriptedPolicy(config)
    return Scheduler(config, policy), policy


def run(s: Scheduler, policy: ScriptedPolicy, decision: Decision, now_s: float = 0.0,
        tokens: list[int | None] | None = None, duration_s: float = 0.01) -> Plan:
    """One iteration: the policy returns `decision`; every sampling chunk gets token 7."""
    policy.decide = lambda view: decision
    plan = s.schedule(now_s)
    if tokens is None:
        tokens = [7 if c.samples else None for c in plan.chunks]
    s.update(plan, ExecuteResult(token_ids=tokens, duration_s=duration_s), now_s + duration_s)
    return plan


def assert_states_consistent(s: Scheduler, requests: list[Request]) -> None:
    waiting_ids = [r.request_id for r in s.waiting]
    running_ids = [r.request_id for r in s.running]
    assert len(set(waiting_ids)) == len(waiting_ids)
    assert len(set(running_ids)) == len(running_ids)
    assert not set(waiting_ids) & set(running_ids)
    for r in requests:
        in_waiting = r.request_id in waiting_ids
        in_running = r.request_id in running_ids
        assert (in_waiting, in_running, r.is_finished).count(True) == 1, r.request_id
        assert in_waiting == (r.status is RequestStatus.WAITING)
        assert in_running == (r.status is RequestStatus.RUNNING)
        assert (s.get(r.request_id) is None) == r.is_finished
        if not in_running:
            assert s.blocks.num_held(r.request_id) == 0
        if in_waiting:
            assert r.num_computed_tokens == 0
        if in_running:
            assert s.blocks.num_held(r.request_id) * CONFIG.block_size >= r.num_computed_tokens
    s.blocks.check_conserved()
    assert sum(s.blocks.num_held(rid) for rid in running_ids) == s.blocks.num_used_blocks()


# --- arrivals ---

def test_add_request_enters_waiting_and_notifies_policy() -> None:
    s, policy = make_scheduler()
    a = make_request("a")
    s.add_request(a, 0.0)
    assert a.status is RequestStatus.WAITING
    assert list(s.waiting) == [a] and list(s.running) == []
    assert s.has_unfinished() and s.num_unfinished() == 1 and s.get("a") is a
    assert policy.arrived == ["a"]


def test_waiting_queue_is_ordered_by_arrival_whatever_the_add_order() -> None:
    s, _ = make_scheduler()
    late, early = make_request("late", 3.0), make_request("early", 1.0)
    mid, tie = make_request("mid", 2.0), make_request("tie", 2.0)
    for r in (late, early, mid, tie):
        s.add_request(r, 0.0)
    assert [r.request_id for r in s.waiting] == ["early", "mid", "tie", "late"]


def test_duplicate_request_id_is_an_error() -> None:
    s, _ = make_scheduler()
    s.add_request(make_request("a"), 0.0)
    with pytest.raises(ValueError, match="duplicate request id"):
        s.add_request(make_request("a"), 0.0)
    assert s.num_unfinished() == 1


def test_a_request_already_scheduled_cannot_be_added() -> None:
    s, _ = make_scheduler()
    a = make_request("a")
    a.num_computed_tokens = 3
    with pytest.raises(ValueError, match="already scheduled"):
        s.add_request(a, 0.0)


def test_request_longer_than_max_model_len_is_rejected_at_once_with_a_reason() -> None:
    s, policy = make_scheduler()
    r = make_request("long", prompt=40, max_tokens=9)  # 49 > 48
    s.add_request(r, 1.5)
    assert r.status is RequestStatus.REJECTED
    assert r.finish_reason is FinishReason.REJECTED and r.finish_code == "context_length_exceeded"
    assert r.finish_detail and "max_model_len" in r.finish_detail
    assert r.finish_s == 1.5
    assert not s.has_unfinished() and list(s.waiting) == []
    # The policy never saw it arrive, so it hears of no end either: its hooks pair up.
    assert policy.arrived == [] and policy.finished == []
    ok = make_request("ok", prompt=40, max_tokens=8)  # exactly 48 fits
    s.add_request(ok, 1.5)
    assert ok.status is RequestStatus.WAITING


def test_request_larger_than_the_kv_cache_is_rejected_at_once_with_a_reason() -> None:
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=4, block_size=4,
                             num_kv_blocks=5, max_model_len=100)  # 20 tokens of KV
    s, _ = make_scheduler(config)
    r = make_request("big", prompt=15, max_tokens=6)
    s.add_request(r, 0.0)
    assert r.status is RequestStatus.REJECTED
    assert r.finish_reason is FinishReason.REJECTED and r.finish_code == "kv_cache_too_small"
    assert r.finish_detail and "KV cache" in r.finish_detail
    fits = make_request("fits", prompt=15, max_tokens=5)
    s.add_request(fits, 0.0)
    assert fits.status is RequestStatus.WAITING


def test_schedule_with_no_requests_is_an_empty_plan_without_asking_the_policy() -> None:
    s, policy = make_scheduler()

    def fail(view: SchedulerView) -> Decision:
        raise AssertionError("policy asked with nothing to do")

    policy.decide = fail
    plan = s.schedule(0.0)
    assert plan.is_empty and plan.num_tokens == 0
    out = s.update(plan, ExecuteResult(token_ids=[], duration_s=0.0), 0.0)
    assert out.idle and s.num_iterations == 0


# --- admission, plans and KV ---

def test_admission_moves_waiting_to_running_and_allocates_blocks() -> None:
    s, policy = make_scheduler()
    a, b = make_request("a", prompt=6), make_request("b", 0.5, prompt=9)
    s.add_request(a, 0.0)
    s.add_request(b, 0.5)
    policy.decide = lambda view: Decision(batch=[(view.waiting[0], 6)])
    plan = s.schedule(1.0)
    assert plan.now_s == 1.0 and plan.num_tokens == 6
    (chunk,) = plan.chunks
    assert chunk.request is a and chunk.num_new_tokens == 6 and chunk.num_computed_tokens == 0
    assert chunk.samples
    assert len(chunk.block_ids) == blocks_for_tokens(6, CONFIG.block_size) == 2
    assert a.status is RequestStatus.RUNNING and list(s.running) == [a]
    assert list(s.waiting) == [b]
    assert s.blocks.num_held("a") == 2
    assert_states_consistent(s, [a, b])


def test_update_records_computed_tokens_sampled_token_and_its_time() -> None:
    s, policy = make_scheduler()
    a = make_request("a", prompt=6, max_tokens=3)
    s.add_request(a, 0.0)
    plan = run(s, policy, Decision(batch=[(a, 6)]), now_s=0.0, duration_s=0.02)
    assert a.num_computed_tokens == 6
    assert a.output_token_ids == [7] and a.token_times_s == [0.02]
    assert a.num_tokens == 7 and s.num_iterations == 1
    assert plan.chunks[0].samples
    run(s, policy, Decision(batch=[(a, 1)]), now_s=0.02, duration_s=0.01)
    assert a.num_computed_tokens == 7 and a.token_times_s == [0.02, 0.03]
    assert s.blocks.num_held("a") == 2  # 8 tokens of room for 7 computed


def test_chunked_prefill_samples_only_on_the_last_chunk() -> None:
    s, policy = make_scheduler()
    a = make_request("a", prompt=10, max_tokens=2)
    s.add_request(a, 0.0)
    samples = []
    for step, n in enumerate((4, 4, 2)):
        plan = run(s, policy, Decision(batch=[(a, n)]), now_s=float(step))
        samples.append(plan.chunks[0].samples)
        assert plan.chunks[0].num_computed_tokens == 4 * step
        assert len(plan.chunks[0].block_ids) * CONFIG.block_size >= a.num_computed_tokens
    assert samples == [False, False, True]
    assert a.num_computed_tokens == 10
    assert a.output_token_ids == [7] and a.token_times_s == [2.01]


def test_executor_must_give_a_token_for_a_sampling_chunk() -> None:
    s, policy = make_scheduler()
    a = make_request("a", prompt=4)
    s.add_request(a, 0.0)
    policy.decide = lambda view: Decision(batch=[(a, 4)])
    plan = s.schedule(0.0)
    with pytest.raises(RuntimeError, match="no token"):
        s.update(plan, ExecuteResult(token_ids=[None], duration_s=0.01), 0.01)


def test_mixed_batch_of_prefill_chunk_and_decodes() -> None:
    s, policy = make_scheduler()
    a, b = make_request("a", prompt=4, max_tokens=5), make_request("b", prompt=12, max_tokens=5)
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    run(s, policy, Decision(batch=[(a, 4)]))
    plan = run(s, policy, Decision(batch=[(a, 1), (b, 8)]), now_s=1.0)
    assert [c.samples for c in plan.chunks] == [True, False]
    assert plan.num_tokens == 9
    assert a.num_output_tokens == 2 and b.num_output_tokens == 0
    assert_states_consistent(s, [a, b])


# --- finishing ---

def test_finish_by_length_frees_blocks() -> None:
    s, policy = make_scheduler()
    a = make_request("a", prompt=5, max_tokens=2)
    s.add_request(a, 0.0)
    run(s, policy, Decision(batch=[(a, 5)]), now_s=0.0)
    assert a.status is RequestStatus.RUNNING
    run(s, policy, Decision(batch=[(a, 1)]), now_s=1.0)
    assert a.status is RequestStatus.COMPLETED and a.finish_reason == "length"
    assert a.num_output_tokens == 2 and a.finish_s == pytest.approx(1.01)
    assert s.blocks.num_free_blocks == CONFIG.num_kv_blocks
    assert not s.has_unfinished()
    assert policy.finished == [("a", RequestStatus.COMPLETED)]
    assert_states_consistent(s, [a])


def test_finish_by_stop_token_id() -> None:
    s, policy = make_scheduler()
    a = make_request("a", max_tokens=10, stop_token_ids=(5,))
    s.add_request(a, 0.0)
    run(s, policy, Decision(batch=[(a, 6)]), tokens=[4])
    assert a.status is RequestStatus.RUNNING
    run(s, policy, Decision(batch=[(a, 1)]), tokens=[5])
    assert a.status is RequestStatus.COMPLETED and a.finish_reason == "stop"
    assert a.output_token_ids == [4, 5]


def test_finish_by_eos_unless_ignore_eos() -> None:
    s, policy = make_scheduler()
    a = make_request("a", max_tokens=10)
    b = make_request("b", max_tokens=10, ignore_eos=True)
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    run(s, policy, Decision(batch=[(a, 6), (b, 6)]), tokens=[2, 2])  # 2 is the eos id
    assert a.status is RequestStatus.COMPLETED and a.finish_reason == "stop"
    assert a.output_token_ids == [2]
    assert b.status is RequestStatus.RUNNING and b.output_token_ids == [2]


def test_ignore_eos_still_honours_stop_token_ids() -> None:
    s, policy = make_scheduler()
    b = make_request("b", max_tokens=10, ignore_eos=True, stop_token_ids=(9,))
    s.add_request(b, 0.0)
    run(s, policy, Decision(batch=[(b, 6)]), tokens=[9])
    assert b.status is RequestStatus.COMPLETED and b.finish_reason == "stop"


def test_length_wins_when_the_last_token_is_also_a_stop_token() -> None:
    s, policy = make_scheduler()
    a = make_request("a", max_tokens=1)
    s.add_request(a, 0.0)
    run(s, policy, Decision(batch=[(a, 6)]), tokens=[2])
    assert a.status is RequestStatus.COMPLETED and a.finish_reason == "length"


def test_finish_request_completes_early_with_the_given_reason() -> None:
    s, policy = make_scheduler()
    a = make_request("a", max_tokens=10)
    s.add_request(a, 0.0)
    run(s, policy, Decision(batch=[(a, 6)]))
    s.finish_request("a", "stop", 3.0)
    assert a.status is RequestStatus.COMPLETED and a.finish_reason == "stop" and a.finish_s == 3.0
    assert s.blocks.num_free_blocks == CONFIG.num_kv_blocks
    s.finish_request("a", "stop", 4.0)  # already finished: nothing happens
    assert a.finish_s == 3.0


def test_finished_listeners_hear_every_end() -> None:
    s, policy = make_scheduler()
    heard: list[tuple[str, str | None]] = []
    s.finished_listeners.append(lambda r: heard.append((r.request_id, r.finish_detail
                                                        or r.finish_reason)))
    s.add_request(make_request("long", prompt=60), 0.0)
    s.add_request(make_request("a", max_tokens=1), 0.0)
    s.add_request(make_request("b"), 0.0)
    run(s, policy, Decision(batch=[(s.get("a"), 6)]))  # type: ignore[list-item]
    s.abort("b", 1.0, "client went away")
    assert heard == [("long", heard[0][1]), ("a", "length"), ("b", "client went away")]
    assert heard[0][1] and "max_model_len" in heard[0][1]


# --- preemption ---

def test_preemption_by_recompute() -> None:
    s, policy = make_scheduler()
    a = make_request("a", 0.0, prompt=6, max_tokens=5)
    b = make_request("b", 1.0, prompt=6, max_tokens=5)
    c = make_request("c", 2.0, prompt=6, max_tokens=5)
    for r in (a, b, c):
        s.add_request(r, r.arrival_s)
    run(s, policy, Decision(batch=[(a, 6), (b, 6)]), now_s=2.0)
    run(s, policy, Decision(batch=[(a, 1), (b, 1)]), now_s=3.0)
    assert a.output_token_ids == [7, 7] and a.num_computed_tokens == 7
    free_before = s.blocks.num_free_blocks

    policy.decide = lambda view: Decision(preempt=[a])
    plan = s.schedule(4.0)
    assert plan.preempted_ids == ("a",) and plan.is_empty
    assert a.status is RequestStatus.WAITING and a.num_computed_tokens == 0
    assert a.output_token_ids == [7, 7] and len(a.token_times_s) == 2  # kept
    assert a.num_preemptions == 1
    assert s.blocks.num_held("a") == 0
    assert s.blocks.num_free_blocks == free_before + 2
    # Back in waiting at its arrival position: ahead of the later c.
    assert [r.request_id for r in s.waiting] == ["a", "c"]
    assert list(s.running) == [b]
    assert_states_consistent(s, [a, b, c])

    # Recompute prompt + outputs in one go; that chunk samples the next token.
    plan = run(s, policy, Decision(batch=[(a, a.num_tokens)]), now_s=5.0)
    assert plan.chunks[0].num_new_tokens == 8 and plan.chunks[0].samples
    assert a.output_token_ids == [7, 7, 7] and a.num_computed_tokens == 8
    assert a.status is RequestStatus.RUNNING
    assert_states_consistent(s, [a, b, c])


def test_preempt_and_readmit_in_the_same_decision() -> None:
    s, policy = make_scheduler()
    a = make_request("a", prompt=6)
    s.add_request(a, 0.0)
    run(s, policy, Decision(batch=[(a, 6)]))
    plan = run(s, policy, Decision(preempt=[a], batch=[(a, 4)]))
    assert plan.preempted_ids == ("a",)
    assert plan.chunks[0].num_computed_tokens == 0 and not plan.chunks[0].samples
    assert a.status is RequestStatus.RUNNING and a.num_computed_tokens == 4
    assert_states_consistent(s, [a])


def test_preemption_frees_blocks_for_another_request_in_the_same_decision() -> None:
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=4, block_size=4,
                             num_kv_blocks=4, max_model_len=16)
    s, policy = make_scheduler(config)
    a, b = make_request("a", prompt=12, max_tokens=4), make_request("b", 1.0, prompt=12,
                                                                    max_tokens=4)
    s.add_request(a, 0.0)
    s.add_request(b, 1.0)
    run(s, policy, Decision(batch=[(a, 12)]))
    assert s.blocks.num_free_blocks == 1
    policy.decide = lambda view: Decision(batch=[(b, 12)])
    with pytest.raises(PolicyError, match="KV cache"):
        s.schedule(1.0)
    s2, policy2 = make_scheduler(config)
    a, b = make_request("a", prompt=12, max_tokens=4), make_request("b", 1.0, prompt=12,
                                                                    max_tokens=4)
    s2.add_request(a, 0.0)
    s2.add_request(b, 1.0)
    run(s2, policy2, Decision(batch=[(a, 12)]))
    run(s2, policy2, Decision(preempt=[a], batch=[(b, 12)]), now_s=1.0)
    assert a.status is RequestStatus.WAITING and b.status is RequestStatus.RUNNING
    assert s2.blocks.num_held("b") == 3


# --- aborts and rejections ---

def test_abort_from_waiting() -> None:
    s, policy = make_scheduler()
    a, b = make_request("a"), make_request("b")
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    assert s.abort("a", 2.0, "client disconnected")
    assert a.status is RequestStatus.ABORTED and a.finish_reason is FinishReason.ABORT
    assert a.finish_detail == "client disconnected" and a.finish_code == "aborted"
    assert a.finish_s == 2.0
    assert list(s.waiting) == [b] and s.get("a") is None
    assert policy.finished == [("a", RequestStatus.ABORTED)]
    assert not s.abort("a", 3.0)  # already gone
    assert not s.abort("nobody", 3.0)
    assert_states_consistent(s, [a, b])


def test_abort_from_running_frees_its_blocks() -> None:
    s, policy = make_scheduler()
    a, b = make_request("a", prompt=9), make_request("b", prompt=9)
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    run(s, policy, Decision(batch=[(a, 9), (b, 9)]))
    assert s.blocks.num_held("a") == 3
    assert s.abort("a", 1.0)
    assert a.status is RequestStatus.ABORTED and a.finish_reason == "abort"
    assert a.finish_code == "aborted"
    assert s.blocks.num_held("a") == 0
    assert s.blocks.num_free_blocks == CONFIG.num_kv_blocks - 3
    assert list(s.running) == [b]
    assert_states_consistent(s, [a, b])


def test_abort_while_the_iteration_runs_drops_its_token() -> None:
    s, policy = make_scheduler()
    a, b = make_request("a"), make_request("b")
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    policy.decide = lambda view: Decision(batch=[(a, 6), (b, 6)])
    plan = s.schedule(0.0)
    s.abort("a", 0.005)
    out = s.update(plan, ExecuteResult(token_ids=[7, 7], duration_s=0.01), 0.01)
    assert a.output_token_ids == [] and a.num_computed_tokens == 0
    assert [r.request_id for r, _ in out.new_tokens] == ["b"]
    assert_states_consistent(s, [a, b])


def test_policy_rejection_ends_the_request_with_its_reason() -> None:
    s, policy = make_scheduler()
    a, b = make_request("a"), make_request("b")
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    run(s, policy, Decision(batch=[(b, 6)]))
    run(s, policy, Decision(reject=[Rejection(a, "SLO infeasible"),
                                    Rejection(b, "triaged", code="triaged")]), now_s=1.0)
    assert a.status is RequestStatus.REJECTED and a.finish_reason is FinishReason.REJECTED
    assert a.finish_detail == "SLO infeasible" and a.finish_code == "slo_infeasible"
    assert b.status is RequestStatus.REJECTED and b.finish_reason == "rejected"
    assert b.finish_detail == "triaged" and b.finish_code == "triaged"
    assert b.num_output_tokens == 1  # a running request may be rejected too
    assert s.blocks.num_free_blocks == CONFIG.num_kv_blocks
    assert not s.has_unfinished()


# --- decisions that break the limits ---

BAD_CONFIG = SchedulerConfig(max_num_batched_tokens=16, max_num_seqs=2, block_size=4,
                             num_kv_blocks=6, max_model_len=24)


def _bad_decision(case: str, s: Scheduler, policy: ScriptedPolicy) -> Decision:
    a, b, c, d = (s.get(f"r{i}") for i in range(4))
    assert a and b and c and d
    if case == "token_budget":
        return Decision(batch=[(a, 9), (b, 8)])  # 17 > 16, 5 blocks of 6
    if case == "rows":
        return Decision(batch=[(a, 1), (b, 1), (c, 1)])  # 3 > max_num_seqs 2
    if case == "kv":
        run(s, policy, Decision(batch=[(a, 8), (b, 8)]))  # 4 of 6 blocks
        return Decision(batch=[(c, 9)])  # 3 more blocks, 2 free
    if case == "unknown":
        return Decision(batch=[(make_request("stranger"), 6)])
    if case == "finished":
        s.abort("r3", 0.0)
        return Decision(batch=[(d, 6)])
    if case == "zero_tokens":
        return Decision(batch=[(a, 0)])
    if case == "past_the_end":
        return Decision(batch=[(a, 10)])  # the prompt has 9 tokens
    if case == "twice":
        return Decision(batch=[(a, 3), (a, 3)])
    if case == "preempt_waiting":
        return Decision(preempt=[a])
    if case == "preempt_unknown":
        return Decision(preempt=[make_request("stranger")])
    if case == "reject_unknown":
        return Decision(reject=[Rejection(make_request("stranger"), "no")])
    if case == "reject_twice":
        return Decision(reject=[Rejection(a, "no"), Rejection(a, "no")])
    if case == "preempt_twice":
        run(s, policy, Decision(batch=[(a, 8)]))
        return Decision(preempt=[a, a])
    if case == "preempt_rejected":
        run(s, policy, Decision(batch=[(a, 8)]))
        return Decision(reject=[Rejection(a, "no")], preempt=[a])
    if case == "good_parts_then_bad_batch":  # valid rejection and preemption, then too many
        run(s, policy, Decision(batch=[(a, 8), (b, 8)]))  # 4 of 6 blocks
        return Decision(reject=[Rejection(c, "no")], preempt=[a],
                        batch=[(d, 9), (b, 1), (a, 9)])  # 3 rows > 2
    if case == "kv_after_preemption":  # the freed blocks counted, still too few
        run(s, policy, Decision(batch=[(a, 4), (b, 8)]))  # 3 of 6 blocks
        return Decision(preempt=[a], batch=[(c, 9), (d, 5)])  # 5 blocks needed, 4 free
    assert case == "reject_then_batch"
    return Decision(reject=[Rejection(a, "no")], batch=[(a, 6)])


def _state(s: Scheduler) -> tuple[object, ...]:
    requests = [s.get(f"r{i}") for i in range(4)]
    return (tuple(r.request_id for r in s.waiting), tuple(r.request_id for r in s.running),
            s.blocks.num_free_blocks,
            tuple((r.status, r.num_computed_tokens, r.num_preemptions,
                   tuple(s.blocks.block_table(r.request_id))) if r else None
                  for r in requests))


@pytest.mark.parametrize("case", [
    "token_budget", "rows", "kv", "unknown", "finished", "zero_tokens", "past_the_end",
    "twice", "preempt_waiting", "preempt_unknown", "reject_unknown", "reject_then_batch",
    "reject_twice", "preempt_twice", "preempt_rejected", "good_parts_then_bad_batch",
    "kv_after_preemption",
])
def test_bad_decisions_raise_policy_error_and_change_nothing(case: str) -> None:
    s, policy = make_scheduler(BAD_CONFIG)
    for i in range(4):
        s.add_request(make_request(f"r{i}", prompt=9, max_tokens=4), 0.0)
    decision = _bad_decision(case, s, policy)
    policy.decide = lambda view: decision
    before = _state(s)
    with pytest.raises(PolicyError):
        s.schedule(1.0)
    assert _state(s) == before  # checked whole before anything was applied
    s.blocks.check_conserved()


def test_a_preempted_request_may_be_readmitted_in_the_same_decision() -> None:
    s, policy = make_scheduler(BAD_CONFIG)
    a, b = make_request("a", prompt=9, max_tokens=4), make_request("b", prompt=9, max_tokens=4)
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    run(s, policy, Decision(batch=[(a, 8), (b, 8)]))  # 4 of 6 blocks
    plan = run(s, policy, Decision(preempt=[a], batch=[(a, 9)]), now_s=1.0)  # recompute
    assert plan.preempted_ids == ("a",) and plan.chunks[0].num_computed_tokens == 0
    assert a.status is RequestStatus.RUNNING and a.num_preemptions == 1
    assert s.blocks.num_held("a") == 3


def test_budget_exactly_at_the_limits_is_accepted() -> None:
    config = SchedulerConfig(max_num_batched_tokens=12, max_num_seqs=2, block_size=4,
                             num_kv_blocks=4, max_model_len=20)
    s, policy = make_scheduler(config)
    a, b = make_request("a", prompt=6), make_request("b", prompt=6)
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    plan = run(s, policy, Decision(batch=[(a, 6), (b, 6)]))
    assert plan.num_tokens == 12 and len(plan.chunks) == 2
    assert s.blocks.num_free_blocks == 0


# --- the view and the engine ---

def test_view_shows_queues_limits_and_blocks() -> None:
    s, policy = make_scheduler()
    a, b = make_request("a", prompt=6), make_request("b", prompt=6)
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    seen: dict[str, object] = {}

    def look(view: SchedulerView) -> Decision:
        seen.update(now=view.now_s, waiting=[r.request_id for r in view.waiting],
                    running=[r.request_id for r in view.running], free=view.num_free_blocks,
                    need=view.num_blocks_needed(b, 6), held=view.num_blocks_held(a),
                    config=view.config)
        return Decision(batch=[(b, 6)])

    run(s, policy, Decision(batch=[(a, 6)]))
    policy.decide = look
    s.schedule(4.0)
    assert seen == {"now": 4.0, "waiting": ["b"], "running": ["a"],
                    "free": CONFIG.num_kv_blocks - 2, "need": 2, "held": 2, "config": CONFIG}


def test_engine_step_runs_schedule_execute_update_on_the_clock() -> None:
    s, policy = make_scheduler()
    clock = VirtualClock(1.0)
    engine = Engine(s, SimExecutor(LATENCY), clock)
    a, b = make_request("a", prompt=8, max_tokens=2), make_request("b", prompt=4, max_tokens=2)
    engine.add_request(a)
    engine.add_request(b)

    def both(view: SchedulerView) -> Decision:
        return Decision(batch=[(r, r.num_tokens - r.num_computed_tokens)
                               for r in [*view.running, *view.waiting]])

    policy.decide = both
    out = engine.step()
    # 2 rows, 12 new tokens: decode_ms(2) + 0.5 * (12 - 2) = 17 ms
    assert clock.now() == pytest.approx(1.017)
    assert [r.request_id for r, _ in out.new_tokens] == ["a", "b"]
    assert a.token_times_s == [pytest.approx(1.017)]
    out = engine.step()
    assert clock.now() == pytest.approx(1.017 + 0.012)
    assert {r.request_id for r in out.finished} == {"a", "b"}
    assert not engine.has_unfinished()
    out = engine.step()
    assert out.idle and clock.now() == pytest.approx(1.029)


def test_engine_abort_uses_the_clock() -> None:
    s, _ = make_scheduler()
    engine = Engine(s, SimExecutor(LATENCY), VirtualClock(2.5))
    a = make_request("a")
    engine.add_request(a)
    assert engine.abort("a", "bye", code="client_gone")
    assert a.finish_s == 2.5 and a.finish_reason == "abort"
    assert (a.finish_detail, a.finish_code) == ("bye", "client_gone")
