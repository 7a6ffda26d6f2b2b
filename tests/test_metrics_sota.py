"""The baselines' home metrics (metrics/sota.py): Andes' QoE, SCORPIO's goodput and its
violation split, worked out by hand; result files without them still load."""

from __future__ import annotations

import copy

import pytest

from sliceserve.metrics.results import build_run, validate_run
from sliceserve.metrics.slo import RequestRecord
from sliceserve.metrics.sota import (
    andes_qoe,
    qoe_mean,
    qoe_share,
    scorpio_goodput_rps,
    violation_kind,
    violations,
)
from sliceserve.metrics.table import home_metrics_table, sweep_table
from sliceserve.request import SLO

SLO_A = SLO(ttft_ms=100, tpot_ms=50, utility=1, slo_class="a")


def record(times_ms, status="completed", slo=SLO_A, deadline_ms=None):
    if deadline_ms is not None:
        slo = SLO(ttft_ms=slo.ttft_ms, tpot_ms=slo.tpot_ms, deadline_ms=deadline_ms)
    return RequestRecord("r", slo, 0.0, tuple(t / 1000.0 for t in times_ms), 4, status)


def test_qoe_is_one_when_every_token_is_digested_on_time():
    assert andes_qoe(record([100, 150, 200])) == 1.0
    assert andes_qoe(record([20, 30, 40])) == 1.0  # early: the reader paces itself


def test_qoe_of_a_late_start():
    # digested at 300, 350, 400; expected 100, 150, 200; delays 200 each = 600;
    # T_end = 450; whole = 350 + 300 + 250 = 900.
    assert andes_qoe(record([300, 310, 320])) == pytest.approx(1 - 600 / 900)


def test_qoe_of_a_stall():
    # on time, then the third token 200 ms late: delay 200 over the same whole 900.
    assert andes_qoe(record([100, 150, 400])) == pytest.approx(1 - 200 / 900)


def test_qoe_of_unserved_requests_is_zero_and_stats_count_them():
    rejected = record([], status="rejected")
    aborted = record([100, 150], status="aborted")
    good = record([100, 150, 200])
    assert andes_qoe(rejected) == 0.0 and andes_qoe(aborted) == 0.0
    assert qoe_mean([good, rejected]) == 0.5
    assert qoe_share([good, rejected, record([300, 310, 320])]) == pytest.approx(1 / 3)
    assert qoe_mean([]) is None


def test_violation_split_and_goodput():
    records = [record([100, 150, 200]),  # met
               record([300, 350, 400]),  # TTFT only
               record([100, 300, 500]),  # TPOT only (mean 200 > 50)
               record([300, 600]),  # both
               record([], status="rejected"),
               record([100, 150], status="aborted"),
               record([100, 150, 200], deadline_ms=150)]  # met for SCORPIO: no deadlines
    assert [violation_kind(r) for r in records] == [
        None, "ttft_only", "tpot_only", "both", "unserved", "unserved", None]
    assert violations(records) == {"ttft_only": 1, "tpot_only": 1, "both": 1, "unserved": 2}
    assert scorpio_goodput_rps(records, 4.0) == 0.5
    assert scorpio_goodput_rps(records, 0.0) is None


def test_runs_carry_the_metrics_and_files_without_them_still_validate():
    run = build_run([record([100, 150, 200]), record([], status="rejected")], duration_s=2.0,
                    backend="sim", system="sliceserve", policy="p", policy_options={},
                    workload="w", arrival="poisson", rate_rps=1.0, seed=0)
    summary = run["summary"]
    assert summary["qoe_mean"] == 0.5 and summary["scorpio_goodput_rps"] == 0.5
    assert summary["violations"]["unserved"] == 1
    validate_run(run)
    old = copy.deepcopy(run)
    for stats in (old["summary"], *old["classes"].values()):
        for key in ("qoe_mean", "qoe_share_099", "scorpio_goodput_rps", "violations"):
            del stats[key]
    validate_run(old)  # a v1 file from before these metrics
    assert "-" in str(sweep_table([old], "qoe_mean").columns[1]._cells)
    bad = copy.deepcopy(run)
    bad["summary"]["violations"] = {"ttft_only": -1}
    with pytest.raises(ValueError, match="violations"):
        validate_run(bad)
    with pytest.raises(ValueError, match="unknown sweep metric"):
        sweep_table([run], "nonsense")


def test_home_metrics_table_shows_qoe_goodput_and_the_violation_split():
    records = [record([100, 150, 200]), record([300, 350, 400]), record([100, 300, 500]),
               record([], status="rejected")]
    run = build_run(records, duration_s=2.0, backend="sim", system="sliceserve", policy="p",
                    policy_options={}, workload="w", arrival="poisson", rate_rps=1.0, seed=0)
    table = home_metrics_table(run)
    column = {c.header: list(c._cells) for c in table.columns}
    assert column["class"] == ["overall", "a"]
    assert column["SCORPIO goodput/s"][0] == "0.5"
    assert [column[k][0] for k in ("TTFT only", "TPOT only", "both", "unserved")] == [
        "1", "1", "0", "1"]
    assert column["QoE>=0.99"][0] == "25.0%"
    old = copy.deepcopy(run)
    for stats in (old["summary"], *old["classes"].values()):
        for key in ("qoe_mean", "qoe_share_099", "scorpio_goodput_rps", "violations"):
            del stats[key]
    assert set(list(home_metrics_table(old).columns[1]._cells)) == {"-"}
