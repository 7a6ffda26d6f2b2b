"""SLO metrics on hand-made records, result files and simulated runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sliceserve.metrics.results import (
    RUN_KEYS,
    SCHEMA,
    build_run,
    capacity_rps,
    dumps,
    load_results,
    round_floats,
    validate_run,
    write_results,
)
from sliceserve.metrics.slo import (
    RequestRecord,
    compute_class_stats,
    compute_stats,
    e2e_ms,
    goodput_rps,
    is_met,
    is_met_strict,
    latency_stats,
    max_gap_ms,
    output_tok_s,
    slo_attainment,
    tpot_ms,
    ttft_ms,
    utility_attainment,
)
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams
from sliceserve.sim.run import simulate_run, sweep

SLO_RT = SLO(ttft_ms=200, tpot_ms=50, utility=100, slo_class="rt")
SLO_NRT = SLO(ttft_ms=2000, tpot_ms=250, utility=1, slo_class="nrt")


def record(times, slo=SLO_RT, status="completed", arrival_s=1.0, rid="r"):
    return RequestRecord(rid, slo, arrival_s, tuple(times), 10, status, None)


def steady(first_s: float, n: int, gap_s: float, arrival_s: float = 1.0, slo=SLO_RT):
    return record([first_s + i * gap_s for i in range(n)], slo, arrival_s=arrival_s)


# --- per request ---

def test_latencies_of_one_request():
    r = record([1.1, 1.14, 1.2, 1.26])
    assert math.isclose(ttft_ms(r), 100)
    assert math.isclose(tpot_ms(r), 160 / 3)
    assert math.isclose(e2e_ms(r), 260)
    assert math.isclose(max_gap_ms(r), 60)


def test_one_token_has_tpot_zero_and_no_tokens_has_none():
    one = record([1.05])
    assert tpot_ms(one) == 0.0 and max_gap_ms(one) == 0.0 and is_met(one)
    empty = record([], status="rejected")
    assert ttft_ms(empty) is None and tpot_ms(empty) is None and e2e_ms(empty) is None
    assert not is_met(empty) and not is_met_strict(empty)


def test_met_and_strict_differ_on_a_bursty_request():
    # TTFT 100 ms, then a 400 ms stall, then a burst: mean TPOT 48 ms <= 50 (met), but
    # token 2 arrives 350 ms after the time a reader at 50 ms/token needs it (not strict).
    bursty = record([1.1, 1.5, 1.51, 1.52, 1.53, 1.54, 1.55, 1.56, 1.57, 1.58, 1.58])
    assert tpot_ms(bursty) <= 50
    assert is_met(bursty) and not is_met_strict(bursty)
    smooth = steady(1.1, 11, 0.048)
    assert is_met(smooth) and is_met_strict(smooth)


def test_strict_allows_one_tpot_of_slack_per_token_exactly():
    # token k (1-based) by first + k * tpot: a token exactly on its bound is on time
    on_bound = record([1.1, 1.2, 1.25])  # 2nd at first + 2 * 50 ms, mean TPOT 75 > 50
    assert is_met_strict(on_bound) and not is_met(on_bound)
    late = record([1.1, 1.2001, 1.25])
    assert not is_met_strict(late)


def test_ttft_and_deadline_misses():
    assert not is_met(steady(1.25, 5, 0.01))  # TTFT 250 > 200
    slo = SLO(ttft_ms=200, tpot_ms=50, deadline_ms=300, utility=1, slo_class="d")
    assert is_met(steady(1.1, 5, 0.04, slo=slo))  # E2E 260 <= 300
    late = steady(1.1, 7, 0.04, slo=slo)  # E2E 340 > 300
    assert not is_met(late) and not is_met_strict(late)


def test_rejected_and_aborted_count_as_not_met():
    good = steady(1.1, 5, 0.04)
    aborted = record([1.1, 1.14], status="aborted")  # on time so far, yet not met
    rejected = record([], status="rejected")
    records = [good, aborted, rejected, steady(1.1, 5, 0.04, slo=SLO_NRT)]
    assert slo_attainment(records) == 0.5
    assert slo_attainment(records, strict=True) == 0.5
    assert math.isclose(utility_attainment(records), 101 / 301)
    assert goodput_rps(records, 4.0) == 0.5
    assert output_tok_s(records, 4.0) == 12 / 4.0


def test_percentiles_interpolate_linearly_and_empty_sets_are_null():
    stats = latency_stats([4.0, 1.0, 3.0, 2.0, None])
    assert stats == {"mean": 2.5, "p50": 2.5, "p90": pytest.approx(3.7),
                     "p99": pytest.approx(3.97)}
    values = np.random.default_rng(0).random(101)
    assert latency_stats(values)["p90"] == pytest.approx(np.percentile(values, 90))
    assert latency_stats([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


def test_stats_shape_counts_and_latencies_over_completed_only():
    records = [steady(1.1, 3, 0.05), record([1.1, 9.0], status="aborted"),
               record([], status="rejected", slo=SLO_NRT)]
    stats = compute_stats(records, duration_s=10.0)
    assert list(stats) == ["n", "completed", "rejected", "aborted", "slo_attainment",
                           "slo_attainment_strict", "utility_attainment", "goodput_rps",
                           "output_tok_s", "ttft_ms", "tpot_ms", "e2e_ms", "max_gap_ms",
                           "failures",
                           # added after the v1 keys: the baselines' home metrics
                           "qoe_mean", "qoe_share_099", "scorpio_goodput_rps", "violations"]
    assert (stats["n"], stats["completed"], stats["rejected"], stats["aborted"]) == (3, 1, 1, 1)
    assert stats["failures"] == {"aborted": 1, "rejected": 1}  # by code, else by status
    assert stats["e2e_ms"]["mean"] == pytest.approx(200)  # the aborted one is excluded
    classes = compute_class_stats(records, 10.0, class_order=("nrt", "rt", "empty"))
    assert list(classes) == ["nrt", "rt", "empty"]
    assert classes["empty"]["n"] == 0 and classes["empty"]["slo_attainment"] is None
    assert classes["empty"]["ttft_ms"]["p50"] is None
    empty = compute_stats([], 0.0)
    assert empty["slo_attainment"] is None and empty["goodput_rps"] is None


def test_record_from_request():
    request = Request("a", 2.0, 7, SamplingParams(max_tokens=2), SLO_RT)
    with pytest.raises(ValueError, match="not finished"):
        RequestRecord.from_request(request)
    request.token_times_s += [2.1, 2.2]
    request.status = RequestStatus.COMPLETED
    request.finish_reason = "length"
    rec = RequestRecord.from_request(request)
    assert rec == RequestRecord("a", SLO_RT, 2.0, (2.1, 2.2), 7, "completed", "length")
    with pytest.raises(ValueError, match="status"):
        RequestRecord("a", SLO_RT, 0.0, (), 1, "done")  # type: ignore[arg-type]


# --- result files ---

def _run(**overrides) -> dict:
    records = [steady(1.1, 3, 0.05), record([], status="rejected", slo=SLO_NRT)]
    kwargs = dict(duration_s=3.0, backend="sim", system="sliceserve", policy="orca",
                  policy_options={"b": 1, "a": 2}, workload="w", arrival="poisson",
                  rate_rps=1.0, seed=0, class_order=("rt", "nrt"))
    kwargs.update(overrides)
    return build_run(records, **kwargs)


def test_run_object_has_the_documented_keys_in_order():
    run = _run()
    assert tuple(run) == RUN_KEYS and run["schema"] == SCHEMA
    assert list(run["policy_options"]) == ["a", "b"]
    assert list(run["classes"]) == ["rt", "nrt"]
    validate_run(json.loads(dumps(run)))
    with pytest.raises(ValueError, match="backend"):
        _run(backend="cloud")


def test_an_engine_run_carries_its_machine_block_after_device():
    """An optional key (older readers ignore it): without it the documented keys alone."""
    machine = {"device": "cpu", "cpu": "AMD EPYC 7B12", "cpu_flags": ["avx2", "fma", "f16c"],
               "dtype": "float32", "dtype_requested": "auto", "kernels": "avx2"}
    run = _run(backend="engine", machine=machine)
    keys = list(run)
    assert keys[keys.index("device") + 1] == "machine" and run["machine"] == machine
    assert [k for k in keys if k != "machine"] == list(RUN_KEYS)
    validate_run(json.loads(dumps(run)))
    with pytest.raises(ValueError, match="machine"):
        validate_run({**run, "machine": "cpu"})


def test_rounding_is_to_six_significant_digits_and_non_finite_is_null():
    assert round_floats({"a": [1 / 3, 123456.789, 2, True, math.inf]}) == \
        {"a": [0.333333, 123457.0, 2, True, None]}
    assert dumps(_run()) == dumps(_run()) and dumps(_run()).endswith("}\n")


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("summary"), "field summary: missing"),
    (lambda r: r.update(schema="x/v0"), "field schema"),
    (lambda r: r["summary"].update(slo_attainment=1.5), "summary.slo_attainment"),
    (lambda r: r["classes"]["rt"].update(n=-1), "classes.rt.n"),
    (lambda r: r["summary"]["ttft_ms"].pop("p99"), "summary.ttft_ms.p99"),
    (lambda r: r.update(rate_rps="fast"), "rate_rps"),
])
def test_validation_names_the_field(tmp_path: Path, mutate, field):
    run = json.loads(dumps(_run()))
    mutate(run)
    path = tmp_path / "r.json"
    path.write_text(json.dumps([json.loads(dumps(_run())), run]))
    with pytest.raises(ValueError, match=field) as info:
        load_results(path)
    assert "run 1" in str(info.value)


def test_write_and_load_one_run_or_a_list(tmp_path: Path):
    write_results(tmp_path / "one.json", _run())
    write_results(tmp_path / "many.json", [_run(), _run(rate_rps=2.0)])
    assert len(load_results(tmp_path / "one.json")) == 1
    assert [r["rate_rps"] for r in load_results(tmp_path / "many.json")] == [1.0, 2.0]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(tmp_path / "bad.json")


def test_capacity_is_the_highest_rate_before_the_first_miss():
    def run(rate, attainment):
        r = _run(rate_rps=rate)
        r["summary"]["slo_attainment"] = attainment
        return r
    runs = [run(0.4, 0.95), run(0.1, 1.0), run(0.8, 0.5), run(0.6, 0.92), run(1.0, 0.91)]
    assert capacity_rps(runs, "orca") == 0.6
    assert capacity_rps([run(0.1, 0.5)], "orca") is None


# --- simulated runs ---

def test_simulated_run_is_deterministic_byte_for_byte():
    a = dumps(simulate_run("edge", "orca", rate=0.5, num_requests=30, seed=3))
    b = dumps(simulate_run("edge", "orca", rate=0.5, num_requests=30, seed=3))
    assert a == b
    assert a != dumps(simulate_run("edge", "orca", rate=0.5, num_requests=30, seed=4))
    run = json.loads(a)
    validate_run(run)
    assert run["summary"]["n"] == 30 and run["rate_rps"] == 0.5
    assert list(run["classes"]) == ["control", "navigation", "chat", "background"]
    assert run["policy_options"] == {"max_batch_size": 8}


def test_sweep_order_and_parallel_jobs_match_serial():
    calls = []
    serial = sweep("paper", ["orca"], [0.2, 0.1], num_requests=15, seed=1,
                   policy_options={"orca": {"max_batch_size": 4}},
                   progress=lambda done, total, run: calls.append((done, total)))
    assert [r["rate_rps"] for r in serial] == [0.2, 0.1]
    assert serial[0]["policy_options"] == {"max_batch_size": 4}
    assert calls == [(1, 2), (2, 2)]
    parallel = sweep("paper", ["orca"], [0.2, 0.1], num_requests=15, seed=1,
                     policy_options={"orca": {"max_batch_size": 4}}, jobs=2)
    assert dumps(parallel) == dumps(serial)
    with pytest.raises(ValueError, match="unknown policy"):
        sweep("paper", ["orca", "nope"], [0.1])
