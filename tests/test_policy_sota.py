"""The SLO-aware baselines: scorpio, andes, sglang-priority (BASELINES.md), decision by decision.

Like tests/test_policy_baselines.py: a real Scheduler stepped by hand (`Harness`) with the
`SIMPLE` latency model (decode 5, 9, 12 ms for 1-3 rows, +3 per row; 1 ms per extra prompt
token), so each expected decision can be worked out on paper.
"""

from __future__ import annotations

import pytest
from test_policy_baselines import PAPER, ROOMY, SIMPLE, Harness, ids, make_request, mixed_workload

from sliceserve.config import SchedulerConfig
from sliceserve.policies.andes import qoe_gain
from sliceserve.policies.registry import make_policy
from sliceserve.policies.scorpio import ScorpioPolicy, virtual_batch_size
from sliceserve.request import RequestStatus
from sliceserve.sim.simulator import simulate

SOTA = ["scorpio", "andes", "sglang-priority"]


@pytest.mark.parametrize("name", SOTA)
@pytest.mark.parametrize("config", [
    ROOMY, SchedulerConfig(max_num_batched_tokens=32, max_num_seqs=4, block_size=4,
                           num_kv_blocks=48, max_model_len=192)], ids=["roomy", "tight"])
def test_every_request_ends_and_only_scorpio_rejects(name: str, config: SchedulerConfig) -> None:
    result = simulate(mixed_workload(60, seed=7), make_policy(name, PAPER, config), PAPER, config)
    for r in result.requests:
        assert r.status is RequestStatus.COMPLETED or (
            name == "scorpio" and r.status is RequestStatus.REJECTED
            and r.finish_code == "slo_infeasible" and "TTFT guard" in (r.finish_detail or ""))


@pytest.mark.parametrize("name", SOTA)
def test_max_batch_size_bounds_the_running_requests(name: str) -> None:
    h = Harness(name, max_batch_size=3)
    h.add(*(make_request(f"r{i}", prompt=2, max_tokens=4, ttft_ms=5000, tpot_ms=500)
            for i in range(7)))
    while h.scheduler.has_unfinished():
        h.step()
        assert len(h.scheduler.running) <= 3


@pytest.mark.parametrize("name,bad", [
    ("scorpio", {"alpha": 0.1}), ("scorpio", {"output_length": "guess"}),
    ("scorpio", {"max_tokens_cap": 0}), ("andes", {"lookahead_s": 0}),
    ("andes", {"kv_threshold": 1.5}), ("sglang-priority", {"preemption_threshold": -1}),
    ("sglang-priority", {"reserve_ratio": 2.0})])
def test_bad_options_are_rejected(name: str, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_policy(name, PAPER, ROOMY, bad)


# --- scorpio ---

def test_scorpio_ttft_guard_rejects_what_the_queue_ahead_makes_late() -> None:
    h = Harness("scorpio")
    a = make_request("a", prompt=100, ttft_ms=200)  # T_pf(100) = 104, + 50 <= 200
    b = make_request("b", prompt=100, ttft_ms=200)  # T_pf(2 rows, 200) = 207: rejected
    c = make_request("c", prompt=10, ttft_ms=400)  # T_pf(2 rows, 110) = 117: b left S
    h.add(a, b, c)
    h.step()
    assert b.status is RequestStatus.REJECTED and b.finish_code == "slo_infeasible"
    assert "TTFT guard" in (b.finish_detail or "")
    assert a.status is RequestStatus.RUNNING and c.status is RequestStatus.RUNNING


def test_scorpio_admits_least_deadline_first_and_prefills_before_decoding() -> None:
    h = Harness("scorpio", max_batch_size=8)
    h.add(make_request("late", 0.0, ttft_ms=1000, tpot_ms=200),
          make_request("early", 0.0, ttft_ms=300, tpot_ms=200))
    assert ids(h.step()) == ["early", "late"]
    h.add(make_request("new", h.now_s, ttft_ms=500, tpot_ms=200))
    assert ids(h.step()) == ["new"]  # a prefill iteration: the decodes wait
    assert sorted(ids(h.step())) == ["early", "late", "new"]


def test_scorpio_tpot_guard_admits_while_the_virtual_batch_keeps_the_tightest_tpot() -> None:
    # tpot 20: VBS k costs 1.3 x T_dec(k): 6.5, 11.7, 15.6, 19.5 < 19.8; k = 5: 23.4 > 19.8.
    h = Harness("scorpio")
    h.add(*(make_request(f"r{i}", prompt=1, max_tokens=30, ttft_ms=5000, tpot_ms=20)
            for i in range(6)))
    assert ids(h.step()) == ["r0", "r1", "r2", "r3"]
    policy = h.policy
    assert isinstance(policy, ScorpioPolicy)
    assert policy.state()["virtual_batch_size"] == 4.0
    assert virtual_batch_size({20.0: 2, 40.0: 2}) == 3.0  # type: ignore[arg-type]


def test_scorpio_credits_decode_a_looser_request_less_often() -> None:
    h = Harness("scorpio")
    h.add(make_request("tight", prompt=1, max_tokens=40, ttft_ms=5000, tpot_ms=50),
          make_request("loose", prompt=1, max_tokens=40, ttft_ms=5000, tpot_ms=100))
    h.step()  # both prefill
    decoded = [ids(h.step()) for _ in range(6)]
    assert [("loose" in d, "tight" in d) for d in decoded] == [(False, True), (True, True)] * 3


def test_scorpio_output_length_variants() -> None:
    r100, r10 = make_request("a", max_tokens=100), make_request("b", max_tokens=10)
    oracle = make_policy("scorpio", SIMPLE, ROOMY)
    bucketed = make_policy("scorpio", SIMPLE, ROOMY, {"output_length": "bucketed"})
    capped = make_policy("scorpio", SIMPLE, ROOMY,
                         {"output_length": "max_tokens", "max_tokens_cap": 512})
    plain_cap = make_policy("scorpio", SIMPLE, ROOMY, {"output_length": "max_tokens"})
    for policy in (oracle, bucketed, capped, plain_cap):
        assert isinstance(policy, ScorpioPolicy)
    assert [oracle.predicted_output_tokens(r) for r in (r100, r10)] == [100, 10]
    assert [bucketed.predicted_output_tokens(r) for r in (r100, r10)] == [123, 41]
    assert capped.predicted_output_tokens(r100) == 512
    assert plain_cap.predicted_output_tokens(r100) == 100  # max_tokens is the exact length


def _preempt_streamed(**options: object) -> Harness:
    """a and b prefill (one block each, one free); in the 2nd step both need a block: a takes
    the last one and b, the tail of the running queue, preempts itself, 1 token streamed."""
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, block_size=4,
                             num_kv_blocks=3, max_model_len=16)
    h = Harness("scorpio", config, **options)
    h.add(make_request("a", prompt=4, max_tokens=8, ttft_ms=70, tpot_ms=100),
          make_request("b", prompt=4, max_tokens=8, ttft_ms=70, tpot_ms=100))
    h.step()
    assert h.step().preempted_ids == ("b",)
    return h


def test_scorpio_keeps_a_streamed_victim_unless_the_defect_is_restored() -> None:
    h = _preempt_streamed()
    assert h.policy.state()["tpots_admitted"] == {"100": 1}  # b left M
    h.step()  # 24 ms in: 46 ms of b's TTFT left, less than its T_pf + 50: not judged again
    b = h.scheduler.get("b")
    assert b is not None and b.status is RequestStatus.WAITING and b.num_output_tokens == 1
    h = _preempt_streamed(reject_streamed_victims=True)
    h.step()
    assert h.scheduler.get("b") is None  # the defect: rejected by the TTFT guard
    h = _preempt_streamed(keep_preempted_in_m=True)
    assert h.policy.state()["tpots_admitted"] == {"100": 2}  # the defect: b stays in M


# --- andes ---

def test_andes_qoe_gain_by_hand() -> None:
    fresh = make_request("w", 0.0, ttft_ms=200, tpot_ms=50)
    assert qoe_gain(fresh, 0.0, 10_000, 20.0, running=False) == 1.0  # waiting loses it all
    patient = make_request("p", 0.0, ttft_ms=20_000, tpot_ms=50)
    assert qoe_gain(patient, 0.0, 10_000, 20.0, running=False) == 0.0  # may wait dt
    # served at 100 ms per token against a 50 ms pace: (dt / 100 / (dt / 50))^2 = 0.25
    assert qoe_gain(fresh, 0.0, 10_000, 100.0, running=False) == pytest.approx(0.25)


def test_andes_admits_by_gain_per_kv_block() -> None:
    h = Harness("andes", max_batch_size=1)
    h.add(make_request("long", 0.0, prompt=60, ttft_ms=200),
          make_request("short", 0.01, prompt=4, ttft_ms=200))
    assert ids(h.step()) == ["short"]  # the same gain over fewer blocks


def test_andes_knapsack_evicts_a_request_ahead_of_schedule_for_an_urgent_one() -> None:
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, block_size=4,
                             num_kv_blocks=4, max_model_len=16)
    h = Harness("andes", config, solver_interval=1, kv_threshold=0.5)
    h.add(make_request("ahead", 0.0, prompt=8, max_tokens=8, ttft_ms=20_000, tpot_ms=1000))
    h.step()
    h.step()  # 'ahead' holds 3 blocks, 1 free; it is far ahead of its 1 s pace
    h.add(make_request("urgent", h.now_s, prompt=8, max_tokens=4, ttft_ms=200, tpot_ms=50))
    plan = h.step()
    assert plan.preempted_ids == ("ahead",) and ids(plan) == ["urgent"]


# --- sglang-priority ---

def test_sglang_admits_by_priority_then_arrival() -> None:
    h = Harness("sglang-priority", max_batch_size=2)
    h.add(make_request("low", 0.0, priority=2), make_request("mid", 0.1, priority=1),
          make_request("top", 0.2, priority=0), make_request("top2", 0.3, priority=0))
    assert ids(h.step()) == ["top", "top2"]


@pytest.mark.parametrize("options,preempts", [
    ({}, True), ({"preemption_threshold": 200}, False), ({"priority_preemption": False}, False)])
def test_sglang_preempts_for_a_much_better_priority_when_the_rows_are_full(
        options: dict[str, object], preempts: bool) -> None:
    h = Harness("sglang-priority", max_batch_size=1, **options)
    h.add(make_request("low", 0.0, max_tokens=20, priority=2))
    h.step()
    h.add(make_request("equal", h.now_s, priority=2), make_request("high", h.now_s, priority=0))
    plan = h.step()
    if preempts:  # 200 > 10: the victim goes, all or nothing; `equal` never preempts
        assert plan.preempted_ids == ("low",) and ids(plan) == ["high"]
    else:
        assert not plan.preempted_ids and ids(plan) == ["low"]


def _sglang_tight(*arrivals: tuple[str, int, int]) -> Harness:
    """4 KV blocks of 4 tokens; requests (id, prompt, steps after the previous one)."""
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, block_size=4,
                             num_kv_blocks=4, max_model_len=16)
    h = Harness("sglang-priority", config, reserve_ratio=0.0)
    for rid, prompt, steps in arrivals:
        for _ in range(steps):
            h.step()
        h.add(make_request(rid, h.now_s, prompt=prompt, max_tokens=8))
    return h


def test_sglang_retracts_the_longest_prompt_among_equal_outputs() -> None:
    h = _sglang_tight(("x", 8, 0), ("y", 4, 0))
    h.step()  # prefill both: x 2 blocks, y 1, 1 free
    plan = h.step()  # x needs its 3rd block, y its 2nd: one too many
    assert plan.preempted_ids == ("x",) and ids(plan) == ["y"]


def test_sglang_retracts_the_fewest_outputs_first() -> None:
    h = _sglang_tight(("y", 6, 0), ("x", 3, 2))
    h.step()  # prefill x (1 block, 1 free); y has 2 outputs, x 1
    h.step()  # no new blocks: y 3 outputs, x 2
    plan = h.step()  # y needs its 3rd block, x its 2nd: x has fewer outputs
    assert plan.preempted_ids == ("x",) and ids(plan) == ["y"]
