"""SLICE's row cap: fixed (16 by default, the paper's) or device-relative (`max_rows` null): the
most rows whose predicted decode step stays within `row_tpot_share` (0.9) of the tightest TPOT
the policy has been given, at least 2, at most the scheduler's max_num_seqs. Hand-made latency
models, the simulator's virtual clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sliceserve.config import SchedulerConfig
from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.registry import make_policy
from sliceserve.policies.slice_options import SliceOptions
from sliceserve.policies.slice_select import Selector
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams
from sliceserve.sim import simulator as simulator_module
from sliceserve.sim.sim_executor import SimExecutor
from sliceserve.sim.simulator import simulate

CONFIG = SchedulerConfig.for_capacity(65536)
DERIVED = {"max_rows": None, "max_extra_rows": None}


def linear(l1_ms: float, per_row_ms: float) -> LatencyModel:
    """decode_ms(k) = l1 + per_row * (k - 1); prompts nearly free."""
    return LatencyModel("linear", (l1_ms,), per_row_ms, 0.01)


def selector(model: LatencyModel, config: SchedulerConfig = CONFIG, **options: object
             ) -> Selector:
    return Selector(SliceOptions(**{**DERIVED, **options}), model, config)  # type: ignore[arg-type]


def test_the_cap_is_where_the_step_reaches_the_share_of_the_tightest_tpot() -> None:
    # 10 ms + 1 ms a row; TPOT 20 ms: steps up to 18 ms, 9 rows (the 10th makes it 19 ms).
    s = selector(linear(10.0, 1.0))
    assert s.row_cap(20.0) == 9
    assert s.row_cap(40.0) == 27  # 36 ms
    assert selector(linear(10.0, 1.0), row_tpot_share=0.5).row_cap(40.0) == 11  # 20 ms
    # vLLM's CPU build as the plug-in fitted it (33.6 ms + 0.74 ms a row), edge's control
    # TPOT (2 x 31.5 ms, vLLM's measured batch-1 speed): the 32 rows the benchmark chose.
    assert selector(linear(33.6, 0.74)).row_cap(63.0) == 32


def test_a_table_model_is_read_row_by_row() -> None:
    model = LatencyModel("table", (10.0, 11.0, 12.0, 20.0, 20.5), 0.5, 0.1)
    assert selector(model).row_cap(15.0) == 3  # 13.5 ms: 4 rows take 20 ms
    assert selector(model).row_cap(25.0) == 9  # 22.5 ms: 20.5 + 0.5 x 4 = 22.5 at 9 rows


def test_the_cap_is_at_least_two_rows_and_at_most_max_num_seqs() -> None:
    steep = linear(40.0, 25.0)  # a second row costs 25 ms: no step of two within 0.9 x 50 ms
    assert selector(steep).row_cap(50.0) == 2
    flat = linear(10.0, 0.0)  # rows cost nothing: the scheduler's limit
    small = replace(CONFIG, max_num_seqs=40)
    assert selector(flat, small).row_cap(20.0) == 40
    assert selector(flat).row_cap(float("inf")) == CONFIG.max_num_seqs
    assert selector(flat, replace(CONFIG, max_num_seqs=1)).row_cap(20.0) == 1


def test_an_integer_is_a_fixed_cap() -> None:
    for tpot in (5.0, 20.0, float("inf")):
        assert selector(linear(10.0, 1.0), max_rows=16).row_cap(tpot) == 16
    assert SliceOptions().max_rows == SliceOptions().max_extra_rows == 16  # the defaults
    assert SliceOptions(max_extra_rows=None).extra_rows(30) == 30  # as many as the cap
    assert SliceOptions(max_extra_rows=4).extra_rows(30) == 4


@pytest.mark.parametrize("bad", [{"max_rows": 0}, {"max_rows": 2.5}, {"max_rows": "16"},
                                 {"max_extra_rows": 0}, {"row_tpot_share": 0.0},
                                 {"row_tpot_share": 1.5}])
def test_bad_options_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SliceOptions(**bad)  # type: ignore[arg-type]


def request(rid: str, arrival_s: float, out: int, tpot_ms: float) -> Request:
    return Request(rid, arrival_s, 16, SamplingParams(max_tokens=out, ignore_eos=True),
                   SLO(ttft_ms=60_000.0, tpot_ms=tpot_ms, utility=1.0))


def run(requests: list[Request], model: LatencyModel, **options: object
        ) -> tuple[list[int], list[int], list[int]]:
    """Per iteration: its rows, the policy's row cap and how many rows it has selected."""
    policy = make_policy("slice", model, CONFIG, {**DERIVED, **options})
    rows: list[int] = []
    caps: list[int] = []
    selected: list[int] = []

    class Recorder(SimExecutor):
        def execute(self, plan: Plan) -> ExecuteResult:
            state = policy.state()
            rows.append(len(plan.chunks))
            caps.append(state["row_cap"])
            selected.append(len(state["selected"]))
            return super().execute(plan)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulator_module, "SimExecutor", Recorder)
        simulate(requests, policy, model, CONFIG)
    assert all(r.status is RequestStatus.COMPLETED for r in requests)
    return rows, caps, selected


def test_the_derived_cap_bounds_the_batch_and_follows_the_tightest_tpot_served() -> None:
    model = linear(20.0, 0.5)  # TPOT 40 ms: 36 ms steps, 33 rows
    lax = [request(f"lax{i}", 0.0, 40, 400.0) for i in range(80)]
    _, caps, selected = run(lax, model)
    assert set(caps) == {model_cap(model, 400.0)} == {CONFIG.max_num_seqs}  # 360 ms: no limit
    assert max(selected) > 16  # more than the paper's cap
    tight = request("tight", 0.0, 20, 40.0)
    more = [request(f"lax{i}", 0.0, 40, 400.0) for i in range(80)]
    rows, caps, selected = run([tight, *more], model)
    assert set(caps) == {33}  # and it stays there after `tight` finished
    assert 16 < max(selected) <= 33
    assert max(rows) <= 33 + 33  # selected rows plus max_extra_rows (null: as many)


def test_a_fixed_cap_still_holds() -> None:
    model = linear(20.0, 0.5)
    lax = [request(f"lax{i}", 0.0, 40, 400.0) for i in range(80)]
    rows, caps, selected = run(lax, model, max_rows=16, max_extra_rows=16)
    assert set(caps) == {16} and max(selected) == 16 and max(rows) <= 32


def model_cap(model: LatencyModel, tpot_ms: float) -> int:
    return selector(model).row_cap(tpot_ms)
