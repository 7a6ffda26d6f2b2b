"""SLICE's `decode_ahead` (off by default: live on the Zen 5 EPYC it cost TTFT; see
docs/BENCHMARKS.md): with nothing else waiting, selected rows that are not due in the mask's
column decode too, at most `decode_ahead_ratio` x a one-row step more per iteration, so that
at light load on a device where batching is cheap (a CPU) rows stream at the device's speed
rather than their SLO's pace; where a row costs about a step (the paper's model) nothing
changes."""

from __future__ import annotations

import pytest

from sliceserve.config import SchedulerConfig
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.registry import make_policy
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams
from sliceserve.sim.run import simulate_run
from sliceserve.sim.simulator import simulate

# Batching is cheap: 10 ms for one row, 0.5 ms for each more (a CPU-like table).
CHEAP = LatencyModel(name="cheap", decode_ms=[10.0 + 0.5 * k for k in range(32)],
                     decode_slope_ms=0.5, prefill_ms_per_token=0.3)
PAPER = LatencyModel.load("paper")
CONFIG = SchedulerConfig.for_capacity(32768)


def rows(n: int, tpot_ms: float) -> list[Request]:
    """One tight row (TPOT 25 ms, which sets the mask's width) and `n` lax ones."""
    tight = Request("tight", 0.0, 32, SamplingParams(max_tokens=200, ignore_eos=True),
                    SLO(ttft_ms=1000.0, tpot_ms=25.0, utility=10.0))
    return [tight, *(Request(f"r{i}", 0.01 * (i + 1), 32,
                             SamplingParams(max_tokens=64, ignore_eos=True),
                             SLO(ttft_ms=1000.0, tpot_ms=tpot_ms, utility=1.0))
                     for i in range(n))]


def mean_tpot_ms(requests: list[Request]) -> float:
    """Of the lax rows."""
    tpots = [(r.token_times_s[-1] - r.token_times_s[0]) * 1000 / (len(r.token_times_s) - 1)
             for r in requests if r.request_id != "tight"]
    return sum(tpots) / len(tpots)


def serve(model: LatencyModel, requests: list[Request], **options: object) -> list[Request]:
    simulate(requests, make_policy("slice", model, CONFIG, dict(options)), model, CONFIG)
    assert all(r.status is RequestStatus.COMPLETED for r in requests)
    return requests


def test_rows_stream_at_the_devices_speed_when_batching_is_cheap() -> None:
    # Three lax rows (TPOT 100 ms) beside a tight one: paced, they decode in about one
    # column of the mask in four (the tight row's rate sets its width); ahead, every
    # iteration carries all four rows (11.5 ms a step).
    paced = mean_tpot_ms(serve(CHEAP, rows(3, 100.0), decode_ahead=False))
    ahead = mean_tpot_ms(serve(CHEAP, rows(3, 100.0), decode_ahead=True))
    assert paced > 30.0
    assert ahead < 0.5 * paced
    assert ahead >= CHEAP.decode_latency_ms(4) - 1e-9


def test_nothing_runs_ahead_where_a_row_costs_about_a_step() -> None:
    paced = serve(PAPER, rows(3, 100.0), decode_ahead=False)
    ahead = serve(PAPER, rows(3, 100.0), decode_ahead=True)
    assert [r.token_times_s for r in ahead] == [r.token_times_s for r in paced]


def test_the_ratio_bounds_what_runs_ahead() -> None:
    # 0.5 x 10 ms allows 10 rows ahead at 0.5 ms each; 0.1, two.
    wide = mean_tpot_ms(serve(CHEAP, rows(11, 200.0), decode_ahead=True))
    narrow = mean_tpot_ms(serve(CHEAP, rows(11, 200.0), decode_ahead=True,
                                    decode_ahead_ratio=0.1))
    assert narrow > 1.5 * wide


@pytest.mark.parametrize("load_rps", [0.5, 4.0])
def test_edge_on_a_cheap_device_is_not_worse_ahead(load_rps: float) -> None:
    # As decode_ahead was measured: chunks capped at max_prefill_ratio x P alone. With the
    # TTFT-relative chunk cap (the default since) it costs about 3 points of utility
    # attainment at 4 requests/s here (slice_options.py says so).
    def summary(ahead: bool) -> dict[str, float]:
        runs = [simulate_run("edge", "slice", rate=load_rps, num_requests=80, seed=seed,
                             latency_model=CHEAP,
                             policy_options={"decode_ahead": ahead, "ttft_chunk_share": None})
                for seed in (0, 1)]
        return {k: sum(r["summary"][k] for r in runs) for k in
                ("slo_attainment", "utility_attainment")}

    on, off = summary(True), summary(False)
    assert on["slo_attainment"] >= off["slo_attainment"] - 0.05
    assert on["utility_attainment"] >= off["utility_attainment"] - 0.05


def test_options_are_validated() -> None:
    from sliceserve.policies.slice_options import SliceOptions

    with pytest.raises(ValueError, match="decode_ahead_ratio"):
        SliceOptions(decode_ahead_ratio=-1.0)
