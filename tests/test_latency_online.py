"""The online latency model: robust, bounded running corrections of the profile per
iteration kind, used by the policies, never by the simulator's ground truth."""

from __future__ import annotations

import pytest

from sliceserve.latency_model import LatencyModel, chunk_pairs
from sliceserve.latency_online import OnlineLatencyModel, OnlineLatencyOptions
from sliceserve.policies.registry import make_policy
from sliceserve.sim.run import scheduler_config_for, simulate_run
from sliceserve.sim.sim_executor import Slowdown

BASE = LatencyModel(name="base", decode_ms=(10.0, 12.0, 14.0), decode_slope_ms=2.0,
                    prefill_ms_per_token=0.5, context_ms_per_token=0.01,
                    prefill_attention_ms_per_pair=0.0001)


def decode(model: OnlineLatencyModel, factor: float, n: int = 1, rows: int = 2) -> None:
    for _ in range(n):
        measured_ms = factor * BASE.iteration_ms(rows, rows, 100 * rows)
        model.observe(rows, rows, 100 * rows, 0.0, measured_ms)


def prompt(model: OnlineLatencyModel, decode_factor: float, prompt_factor: float,
           n: int = 1) -> None:
    rows, new, ctx, pairs = 2, 201, 300, chunk_pairs(200)
    for _ in range(n):
        d = BASE.decode_part_ms(rows, ctx)
        p = BASE.iteration_ms(rows, new, ctx, pairs) - d
        model.observe(rows, new, ctx, pairs, decode_factor * d + prompt_factor * p)


def test_an_exact_profile_is_never_corrected() -> None:
    m = OnlineLatencyModel(BASE)
    decode(m, 1.0, 50)
    prompt(m, 1.0, 1.0, 50)
    assert m.current is BASE and m.decode_factor == 1.0 and m.prompt_factor == 1.0
    snap = m.snapshot().to_dict()
    assert snap["decode_samples"] == 50 and snap["prompt_samples"] == 50


def test_decode_and_prompt_parts_are_corrected_separately() -> None:
    m = OnlineLatencyModel(BASE)
    decode(m, 2.0, 3)
    assert m.decode_factor == 1.0  # fewer than min_samples: not yet
    decode(m, 2.0, 10)
    prompt(m, 2.0, 1.5, 10)
    assert m.decode_factor == pytest.approx(2.0) and m.prompt_factor == pytest.approx(1.5)
    cur = m.current
    assert cur.decode_latency_ms(3) == pytest.approx(28.0)
    assert cur.prefill_ms_per_token == pytest.approx(0.75)
    assert BASE.decode_latency_ms(3) == 14.0  # the profile itself is untouched


def test_outliers_do_not_move_it_and_a_sustained_change_does() -> None:
    m = OnlineLatencyModel(BASE, OnlineLatencyOptions(window=16))
    decode(m, 1.0, 16)
    decode(m, 50.0, 3)  # three stalled iterations
    assert m.decode_factor == 1.0
    decode(m, 1.5, 16)
    assert m.decode_factor == pytest.approx(1.5)


def test_the_correction_is_bounded() -> None:
    m = OnlineLatencyModel(BASE, OnlineLatencyOptions(min_factor=0.5, max_factor=4.0))
    decode(m, 30.0, 40)
    assert m.decode_factor == 4.0
    decode(m, 0.01, 40)
    assert m.decode_factor == 0.5


def test_small_changes_do_not_rebuild_the_model() -> None:
    m = OnlineLatencyModel(BASE, OnlineLatencyOptions(rebuild_step=0.05))
    decode(m, 1.03, 40)
    assert m.current is BASE and m.decode_factor == pytest.approx(1.03)


@pytest.mark.parametrize("bad", [{"window": 0}, {"min_samples": 99}, {"min_factor": 1.5},
                                 {"max_factor": 0.9}, {"rebuild_step": 1.0}])
def test_bad_options_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="online latency"):
        OnlineLatencyOptions(**bad)  # type: ignore[arg-type]


def test_policies_predict_with_the_correction_and_report_it() -> None:
    policy = make_policy("slice", BASE, scheduler_config_for(BASE),
                         online_latency=OnlineLatencyOptions())
    policy.observe_iteration(1, 1, 0, 0.0, 1.0)  # 1 ms against 10 predicted: too few yet
    assert policy.latency_model is BASE
    for _ in range(8):
        policy.observe_iteration(1, 1, 0, 0.0, 30.0)
    assert policy.latency_model.decode_latency_ms(1) == pytest.approx(30.0)
    assert policy.latency_correction()["decode_factor"] == pytest.approx(3.0)  # type: ignore[index]
    frozen = make_policy("slice", BASE, scheduler_config_for(BASE))
    frozen.observe_iteration(1, 1, 0, 0.0, 30.0)
    assert frozen.latency_model is BASE and frozen.latency_correction() is None


def test_in_simulation_the_ground_truth_stays_the_true_model() -> None:
    kwargs = dict(num_requests=60, seed=1, latency_model="paper")
    online = simulate_run("paper", "slice", 0.5, **kwargs)  # type: ignore[arg-type]
    frozen = simulate_run("paper", "slice", 0.5, online_latency=False, **kwargs)  # type: ignore[arg-type]
    assert online["summary"] == frozen["summary"]  # an exact model: every sample is 1
    assert online["latency_correction"]["decode_factor"] == 1.0
    assert frozen["latency_correction"] is None
    slow = simulate_run("paper", "slice", 0.5, slowdown=Slowdown(0.0, 2.0), **kwargs)  # type: ignore[arg-type]
    assert slow["latency_correction"]["decode_factor"] == pytest.approx(2.0)
    assert slow["summary"]["tpot_ms"]["p50"] > online["summary"]["tpot_ms"]["p50"]
