"""The simulator: the real Engine and Scheduler on a virtual clock with a latency model."""

from __future__ import annotations

import pytest

from sliceserve.config import SchedulerConfig
from sliceserve.core.plan import Plan, ScheduledChunk
from sliceserve.engine.engine import Engine
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.base import Decision, Policy, PolicyOptions, SchedulerView
from sliceserve.policies.registry import make_policy
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams
from sliceserve.sim.sim_executor import PLACEHOLDER_TOKEN, SimExecutor
from sliceserve.sim.simulator import STALL_REASON, simulate

LATENCY = LatencyModel(name="t", decode_ms=(10.0, 16.0), decode_slope_ms=5.0,
                       prefill_ms_per_token=1.0)
CONFIG = SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=8, block_size=4,
                         num_kv_blocks=64, max_model_len=128)


def make_request(rid: str, arrival_s: float = 0.0, prompt: int = 8, max_tokens: int = 3) -> Request:
    return Request(rid, arrival_s, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                   SLO(ttft_ms=500.0, tpot_ms=100.0))


class IdlePolicy(Policy):
    """Never schedules anything: the simulator must end the run, not spin."""

    name = "idle-test"

    def schedule(self, view: SchedulerView) -> Decision:
        return Decision()


def orca() -> Policy:
    return make_policy("orca", LATENCY, CONFIG)


def test_sim_executor_predicts_duration_and_gives_placeholder_tokens() -> None:
    a, b = make_request("a", prompt=8), make_request("b", prompt=8)
    plan = Plan(now_s=0.0, chunks=(
        ScheduledChunk(a, 8, 0, True, (0, 1)),
        ScheduledChunk(b, 4, 0, False, (2,)),
    ))
    result = SimExecutor(LATENCY).execute(plan)
    assert list(result.token_ids) == [PLACEHOLDER_TOKEN, None]
    assert result.duration_s == pytest.approx((16.0 + 1.0 * (12 - 2)) / 1000)


def test_sim_executor_charges_context_of_computed_and_new_tokens() -> None:
    model = LatencyModel(name="c", decode_ms=(10.0,), decode_slope_ms=1.0,
                         prefill_ms_per_token=0.0, context_ms_per_token=0.5)
    a = make_request("a", prompt=8)
    plan = Plan(now_s=0.0, chunks=(ScheduledChunk(a, 1, 8, True, (0, 1, 2)),))
    assert SimExecutor(model).execute(plan).duration_s == pytest.approx((10.0 + 0.5 * 9) / 1000)


def test_sim_executor_charges_the_attention_pairs_of_prompt_chunks() -> None:
    model = LatencyModel(name="q", decode_ms=(10.0, 16.0), decode_slope_ms=5.0,
                         prefill_ms_per_token=1.0, context_ms_per_token=0.5,
                         prefill_attention_ms_per_pair=0.01)
    a, b = make_request("a", prompt=8), make_request("b", prompt=40)
    plan = Plan(now_s=0.0, chunks=(
        ScheduledChunk(a, 1, 8, True, (0, 1, 2)),  # a decode row: its context term only
        ScheduledChunk(b, 16, 24, True, tuple(range(3, 13))),  # the last chunk of a prompt
    ))
    pairs = 16 * (24 + 17 / 2)  # each new token sees the 24 cached ones and itself and before
    ms = 16.0 + 1.0 * (17 - 2) + 0.5 * (9 + 40) + 0.01 * pairs
    assert SimExecutor(model).execute(plan).duration_s == pytest.approx(ms / 1000)
    linear = SimExecutor(LatencyModel(name="q0", decode_ms=(10.0, 16.0), decode_slope_ms=5.0,
                                      prefill_ms_per_token=1.0, context_ms_per_token=0.5))
    assert linear.execute(plan).duration_s == (16.0 + 1.0 * 15 + 0.5 * 49) / 1000


def test_single_request_timeline_is_exact() -> None:
    r = make_request("a", arrival_s=2.0, prompt=8, max_tokens=3)
    result = simulate([r], orca(), LATENCY, CONFIG)
    prefill = (10.0 + 1.0 * 7) / 1000
    assert r.status is RequestStatus.COMPLETED and r.finish_reason == "length"
    assert r.token_times_s == pytest.approx([2.0 + prefill, 2.0 + prefill + 0.01,
                                             2.0 + prefill + 0.02])
    assert r.finish_s == pytest.approx(r.token_times_s[-1])
    assert result.duration_s == pytest.approx(r.finish_s)
    assert result.num_iterations == 3


def test_results_come_in_arrival_order_whatever_the_input_order() -> None:
    reqs = [make_request("c", 0.3), make_request("a", 0.1), make_request("b", 0.2)]
    result = simulate(reqs, orca(), LATENCY, CONFIG)
    assert [r.request_id for r in result.requests] == ["a", "b", "c"]
    assert all(r.status is RequestStatus.COMPLETED for r in result.requests)


def test_the_clock_jumps_over_idle_gaps_to_the_next_arrival() -> None:
    early, late = make_request("early", 0.0, max_tokens=1), make_request("late", 100.0,
                                                                         max_tokens=1)
    result = simulate([early, late], orca(), LATENCY, CONFIG)
    prefill = 0.017
    assert early.token_times_s == pytest.approx([prefill])
    assert late.token_times_s == pytest.approx([100.0 + prefill])
    assert result.num_iterations == 2
    assert result.duration_s == pytest.approx(100.0 + prefill)


def test_an_arrival_during_an_iteration_joins_the_next_one() -> None:
    a, b = make_request("a", 0.0, max_tokens=4), make_request("b", 0.005, max_tokens=1)
    simulate([a, b], orca(), LATENCY, CONFIG)
    # a's prefill runs 0 .. 17 ms; b arrives meanwhile and prefills with a's first decode.
    assert a.token_times_s[0] == pytest.approx(0.017)
    assert b.token_times_s[0] == pytest.approx(0.017 + (16.0 + 1.0 * 7) / 1000)
    assert a.token_times_s[1] == b.token_times_s[0]


def test_a_stalled_policy_ends_the_run_with_aborts() -> None:
    reqs = [make_request("a", 0.0), make_request("b", 1.0)]
    result = simulate(reqs, IdlePolicy(PolicyOptions(), LATENCY, CONFIG), LATENCY, CONFIG)
    assert [r.status for r in result.requests] == [RequestStatus.ABORTED] * 2
    assert all(r.finish_detail == STALL_REASON and r.finish_code == "stalled"
               for r in result.requests)
    assert result.requests[1].finish_s == pytest.approx(1.0)
    assert result.num_iterations == 0


def test_time_limit_aborts_what_is_unfinished_and_later_arrivals() -> None:
    reqs = [make_request("quick", 0.0, max_tokens=1), make_request("slow", 0.0, max_tokens=100),
            make_request("late", 50.0)]
    result = simulate(reqs, orca(), LATENCY, CONFIG, max_time_s=0.5)
    quick, slow, late = result.requests
    assert quick.status is RequestStatus.COMPLETED
    assert slow.status is RequestStatus.ABORTED and "time limit" in (slow.finish_detail or "")
    assert slow.finish_reason == "abort" and slow.finish_code == "time_limit"
    assert 0 < slow.num_output_tokens < 100
    assert late.status is RequestStatus.ABORTED and "time limit" in (late.finish_detail or "")
    assert late.finish_code == "time_limit"
    assert late.finish_s == 50.0  # aborted on arrival, never before it
    assert slow.finish_s is not None and 0.5 <= slow.finish_s < 0.6
    assert len(result.requests) == 3


def test_requests_that_never_fit_are_rejected_and_reported() -> None:
    reqs = [make_request("ok"), make_request("huge", prompt=120, max_tokens=20)]
    result = simulate(reqs, orca(), LATENCY, CONFIG)
    ok, huge = result.requests
    assert ok.status is RequestStatus.COMPLETED
    assert huge.status is RequestStatus.REJECTED and "max_model_len" in (huge.finish_detail or "")
    assert huge.finish_code == "context_length_exceeded"


def test_on_step_sees_the_engine_after_every_step() -> None:
    seen: list[tuple[float, int]] = []

    def on_step(engine: Engine) -> None:
        seen.append((engine.clock.now(), engine.scheduler.num_iterations))

    reqs = [make_request("a", 0.0), make_request("b", 1.0)]
    result = simulate(reqs, orca(), LATENCY, CONFIG, on_step=on_step)
    assert seen[-1][1] == result.num_iterations == 6
    times = [t for t, _ in seen]
    assert times == sorted(times)


def test_empty_workload() -> None:
    result = simulate([], orca(), LATENCY, CONFIG)
    assert result.requests == [] and result.duration_s == 0.0 and result.num_iterations == 0


class SleepingExecutor(SimExecutor):
    """Takes the predicted time for real: the live path (wall clock) on the same engine."""

    def execute(self, plan: Plan):  # type: ignore[no-untyped-def]
        import time

        result = super().execute(plan)
        time.sleep(result.duration_s)
        return result


def test_the_same_engine_runs_on_a_wall_clock() -> None:
    # One scheduler and policy for live and simulated runs: with a WallClock and an executor
    # whose work takes real time, the step loop gives the same tokens, and the token times
    # are the wall clock's (at least the predicted durations apart).
    from sliceserve.clock import WallClock
    from sliceserve.core.scheduler import Scheduler

    fast = LatencyModel(name="f", decode_ms=(2.0,), decode_slope_ms=0.5,
                        prefill_ms_per_token=0.01)
    requests = [make_request(f"w{i}", max_tokens=4) for i in range(3)]
    clock = WallClock()
    engine = Engine(Scheduler(CONFIG, make_policy("slice", fast, CONFIG)),
                    SleepingExecutor(fast), clock)
    for r in requests:
        engine.add_request(r)
    steps = 0
    while engine.has_unfinished() and steps < 100:
        engine.step()
        steps += 1
    for r in requests:
        assert r.status is RequestStatus.COMPLETED
        assert r.output_token_ids == [PLACEHOLDER_TOKEN] * 4
        gaps = [b - a for a, b in zip(r.token_times_s, r.token_times_s[1:])]
        assert all(g >= 0.002 - 1e-4 for g in gaps)
