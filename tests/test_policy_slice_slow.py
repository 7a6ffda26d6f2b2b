"""SLICE on a slow device with prompts as long as the period (the `paper` workload on the
`avx2-epyc-smollm2` preset: prefill about 15 ms per token, batch-1 decode 39 ms, TTFT 2 s):
`first_token_edf` (a prompt before its first token is checked against its deadline, earliest
deadline first, on what the decoding rows leave, not charged to the period) and
`overdue_prefill_ratio` (a prompt that would be late in short chunks gets longer ones), both
on by default for prompt-bound requests (`prompt_bound_share`: a prompt that alone takes at
least that share of its TTFT); and the fix of one-token chunks behind an overdue prompt."""

from __future__ import annotations

import pytest

from sliceserve.config import SchedulerConfig
from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.registry import make_policy
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams
from sliceserve.sim import simulator as simulator_module
from sliceserve.sim.sim_executor import SimExecutor
from sliceserve.sim.simulator import simulate

SLOW = LatencyModel.load("avx2-epyc-smollm2")
CONFIG = SchedulerConfig.for_capacity(32768)
SLOW_DEVICE = {"first_token_edf": True, "overdue_prefill_ratio": 2.0}
PREVIOUS = {"first_token_edf": False, "overdue_prefill_ratio": None}  # before 2026-12-06
NOT_BOUND = {"prompt_bound_share": 1.0}  # no prompt here takes its whole TTFT alone


def request(rid: str, arrival_s: float, prompt: int, out: int, tpot_ms: float) -> Request:
    """A request of the paper workload's lax classes: TTFT 2 s, utility 1."""
    return Request(rid, arrival_s, prompt, SamplingParams(max_tokens=out, ignore_eos=True),
                   SLO(ttft_ms=2000.0, tpot_ms=tpot_ms, utility=1.0, slo_class="nrt"))


def met(r: Request) -> bool:
    times = r.token_times_s
    tpot = (times[-1] - times[0]) * 1000 / max(len(times) - 1, 1)
    return (r.status is RequestStatus.COMPLETED and (times[0] - r.arrival_s) * 1000 <= 2000.0
            and tpot <= r.slo.tpot_ms)


def serve(requests: list[Request], **options: object) -> list[Request]:
    simulate(requests, make_policy("slice", SLOW, CONFIG, dict(options)), SLOW, CONFIG)
    return requests


def test_a_prompt_that_chunks_would_make_late_gets_longer_chunks() -> None:
    """125 prompt tokens (1.9 s alone) on an idle device: in chunks of 0.3 s each paying a
    39 ms decode slot, the first token comes after 2 s; in chunks of up to 2 s, in time."""
    assert SLOW.prefill_ms(125) < 2000 - SLOW.decode_latency_ms(1)
    assert SLOW.prefill_ms(125) >= 0.35 * 2000  # prompt-bound at the default share
    before = serve([request("a", 0.0, 125, 32, 100.0)], **PREVIOUS)[0]
    longer = serve([request("a", 0.0, 125, 32, 100.0)], overdue_prefill_ratio=2.0,
                   first_token_edf=False)[0]
    assert not met(before)
    assert met(longer)
    assert met(serve([request("a", 0.0, 125, 32, 100.0)])[0])  # the default
    # Out of the scope, the longer chunks are not given.
    assert not met(serve([request("a", 0.0, 125, 32, 100.0)], first_token_edf=False,
                         **NOT_BOUND)[0])


def test_two_prompts_that_fit_one_after_the_other_are_both_served() -> None:
    """Two short replies 0.1 s apart (0.6 s and 0.9 s of prompt, TTFT 2 s): both prompts fit
    before their deadlines, one after the other, and then both decode at their TPOTs. The
    period test charges both prompts and both decode rows to the same period, so without
    first_token_edf the later one, due first, displaces the earlier one, whose deadline then
    passes."""
    def two() -> list[Request]:
        return [request("a", 0.0, 40, 18, 120.0), request("b", 0.1, 58, 31, 100.0)]

    assert sum(map(met, serve(two(), **PREVIOUS))) == 1
    assert all(map(met, serve(two(), overdue_prefill_ratio=None, prompt_bound_share=0.0)))
    # The scope: the prompts take 31% and 44% of their TTFT alone. Both in it, both are met;
    # neither (or, at the default 35%, only the later one), the old rule's outcome.
    assert all(map(met, serve(two(), prompt_bound_share=0.25)))
    assert sum(map(met, serve(two(), **NOT_BOUND))) == 1
    assert sum(map(met, serve(two()))) == 1


def test_a_row_far_ahead_of_its_tpot_does_not_keep_a_prompt_out() -> None:
    """A long reply decodes alone at 39 ms a token against a 250 ms TPOT (seconds ahead of
    its schedule); a 124-token prompt (1.85 s) arrives. Under the old rule its prompt's
    share of the period and the row's decode rate do not fit one period, so it waits for the
    row to finish and misses its TTFT; credited with the row's lead, it is served in time."""
    def pair() -> list[Request]:
        return [request("row", 0.0, 55, 174, 250.0), request("late", 1.9, 124, 60, 250.0)]

    before = serve(pair(), **PREVIOUS)
    assert met(before[0]) and not met(before[1])
    assert all(map(met, serve(pair(), **SLOW_DEVICE)))
    assert all(map(met, serve(pair())))  # the default


def test_no_one_token_chunks_behind_an_overdue_prompt() -> None:
    """Several prompts wait while a row decodes; one is overdue. It runs, but the prompts
    behind it are not each given a one-token chunk (a whole decode slot for one token)."""
    tiny: list[str] = []

    class Recorder(SimExecutor):
        def execute(self, plan: Plan) -> ExecuteResult:
            for c in plan.chunks:
                r = c.request
                if c.num_new_tokens == 1 and r.num_computed_tokens + 1 < r.num_prompt_tokens:
                    tiny.append(r.request_id)
            return super().execute(plan)

    requests = [request("row", 0.0, 40, 300, 100.0)]
    requests += [request(f"p{i}", 2.0 + 0.05 * i, 100, 40, 250.0) for i in range(4)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulator_module, "SimExecutor", Recorder)
        serve(requests)
    assert not tiny


@pytest.mark.parametrize("bad", [0, -1, 11])
def test_overdue_prefill_ratio_is_validated(bad: float) -> None:
    with pytest.raises(ValueError, match="overdue_prefill_ratio"):
        make_policy("slice", SLOW, CONFIG, {"overdue_prefill_ratio": bad})


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_prompt_bound_share_is_validated(bad: float) -> None:
    with pytest.raises(ValueError, match="prompt_bound_share"):
        make_policy("slice", SLOW, CONFIG, {"prompt_bound_share": bad})


def test_first_token_edf_periods_is_validated() -> None:
    with pytest.raises(ValueError, match="first_token_edf_periods"):
        make_policy("slice", SLOW, CONFIG, {"first_token_edf_periods": 0})
