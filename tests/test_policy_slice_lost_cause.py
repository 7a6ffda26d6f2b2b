"""lost_cause_min_qoe: triaged requests whose reachable QoE is too low are rejected."""

from __future__ import annotations

import pytest

from sliceserve.policies.slice import reachable_qoe
from sliceserve.policies.slice_options import SliceOptions
from sliceserve.sim.run import simulate_run


class _R:
    arrival_s = 0.0
    num_output_tokens = 0
    max_tokens = 39  # H = 40 * 50 / 2 = 1000 ms

    class slo:  # noqa: N801
        ttft_ms = 200.0
        tpot_ms = 50.0


def test_reachable_qoe_is_h_over_h_plus_lateness() -> None:
    assert reachable_qoe(_R(), 0.1) == 1.0  # not late yet
    assert reachable_qoe(_R(), 1.2) == pytest.approx(0.5)  # 1 s late = H
    assert reachable_qoe(_R(), 3.2) == pytest.approx(0.25)


def test_option_is_validated() -> None:
    with pytest.raises(ValueError):
        SliceOptions(lost_cause_min_qoe=1.5)


def test_overload_drops_lost_causes_and_shortens_the_run() -> None:
    kw = dict(rate=1.64, num_requests=120, seed=0, latency_model="paper")
    keep = simulate_run("paper", "slice", **kw)  # type: ignore[arg-type]
    drop = simulate_run("paper", "slice", policy_options={"lost_cause_min_qoe": 0.5},
                        **kw)  # type: ignore[arg-type]
    assert keep["summary"]["rejected"] == 0
    assert drop["summary"]["rejected"] > 0
    assert drop["duration_s"] < keep["duration_s"]
    assert drop["summary"]["slo_attainment"] >= keep["summary"]["slo_attainment"] - 0.02
