"""Load relative to the device (--load), capacity at the SLO by bisection, runs over seeds in
tables and plots."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sliceserve.bench.capacity import bisect_capacity, bracket_from_points
from sliceserve.cli import main
from sliceserve.latency_model import LatencyModel
from sliceserve.metrics.aggregate import run_label
from sliceserve.metrics.plots import plot_runs
from sliceserve.metrics.results import capacity_rps, load_results
from sliceserve.metrics.table import sweep_table
from sliceserve.sim.run import simulate_run
from sliceserve.workloads import load_workload
from sliceserve.workloads.load import estimate_capacity, rate_for_load


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_capacity_estimate_scales_with_the_device_and_the_load() -> None:
    paper = LatencyModel.load("paper")
    edge = load_workload("edge")
    base = estimate_capacity(edge, paper)
    slow = estimate_capacity(edge, paper.scaled(2.0, 2.0, "slow", ""))
    assert slow.rate_rps == pytest.approx(base.rate_rps / 2, rel=1e-9)
    assert slow.batch_size == base.batch_size  # SLOs scale with the device too
    # the largest batch whose decode meets the tightest TPOT (2 l1 = 28 ms: decode(2) = 27)
    assert base.batch_size == 2 and base.tightest_tpot_ms == pytest.approx(28.0)
    rate, estimate = rate_for_load(1.5, edge, paper)
    assert rate == pytest.approx(1.5 * estimate.rate_rps)
    tiny_kv = replace(paper, kv_capacity_tokens=10)
    assert estimate_capacity(load_workload("paper"), tiny_kv).batch_size == 1
    with pytest.raises(ValueError, match="--load"):
        rate_for_load(0.0, edge, paper)


def test_bisection_finds_the_threshold_crossing() -> None:
    def measure(rate: float) -> list[float]:  # three "seeds" around a crossing at 2.0
        base = 1.0 if rate <= 2.0 else 0.5
        return [base - 0.01, base, base + 0.01]

    result = bisect_capacity(measure, 1.0, 4.0, steps=6)
    assert 2.0 - 3 / 64 <= result.capacity_rps <= 2.0 < result.bracket[1]
    assert len(result.probes) == 6
    assert bracket_from_points([(1, 0.99), (2, 0.95), (3, 0.5), (4, 0.92)]) == (2, 3)
    assert bracket_from_points([(1, 0.5)]) is None
    low = bisect_capacity(lambda r: [0.1], 1.0, 2.0, check_ends=True)
    assert low.capacity_rps is None
    with pytest.raises(ValueError, match="low < high"):
        bisect_capacity(measure, 2.0, 1.0)


def test_slice_keeps_more_capacity_than_fcfs_in_the_simulator() -> None:
    lm = LatencyModel.load("paper")

    def measure(policy: str):
        def at(rate: float) -> list[float]:
            return [simulate_run("edge", policy, rate, num_requests=80, seed=s,
                                 latency_model=lm)["summary"]["slo_attainment"]
                    for s in (0, 1)]
        return at

    cap = estimate_capacity(load_workload("edge"), lm).rate_rps
    slice_cap = bisect_capacity(measure("slice"), 0.05 * cap, 3 * cap, steps=4,
                                check_ends=True).capacity_rps
    vllm_cap = bisect_capacity(measure("vllm"), 0.05 * cap, 3 * cap, steps=4,
                               check_ends=True).capacity_rps
    assert slice_cap is not None and (vllm_cap is None or slice_cap > vllm_cap)


def test_load_in_simulate_and_sweep_and_its_errors(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "simulate", "-w", "paper", "-p", "vllm", "--load", "0.5",
                           "-n", 30, "--out", tmp_path / "one.json", "--no-table")
    assert code == 0, err
    (run,) = load_results(tmp_path / "one.json")
    expected = estimate_capacity(load_workload("paper"), LatencyModel.load("paper"))
    assert run["load"] == 0.5 and run["rate_rps"] == pytest.approx(0.5 * expected.rate_rps,
                                                                   rel=1e-5)
    assert len(run["requests"]) == 30 and run["requests"][0]["target"]["ttft_ms"] > 0
    code, out, err = run_cli(capsys, "sweep", "-w", "paper", "--policies", "vllm,slice",
                             "--loads", "0.5,2", "-n", 30, "--out", tmp_path / "sw.json",
                             "--plot", tmp_path / "sw.png")
    assert code == 0, err
    runs = load_results(tmp_path / "sw.json")
    assert sorted({r["load"] for r in runs}) == [0.5, 2.0] and (tmp_path / "sw.png").exists()
    for args, message in [(("--rate", 1, "--load", 1), "not both"),
                          (("--load", -1), "--load must be a positive number")]:
        code, _, err = run_cli(capsys, "simulate", "-w", "paper", "-p", "vllm", *args)
        assert code == 2 and message in err, err
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 2,
                                 "slo_class": "x", "ttft_ms": 9, "tpot_ms": 9,
                                 "utility": 1}) + "\n")
    code, _, err = run_cli(capsys, "simulate", "-w", trace, "-p", "vllm", "--load", 1)
    assert code == 2 and "not a trace" in err
    code, _, err = run_cli(capsys, "run", "-w", "edge", "-p", "vllm", "--load", 1, "-r", 2)
    assert code == 2 and "not both" in err


def test_seeds_are_summarized_by_median_and_range(tmp_path: Path) -> None:
    runs = [simulate_run("edge", p, 0.6, num_requests=40, seed=s, latency_model="paper",
                         per_request=True) for p in ("slice", "vllm") for s in (0, 1, 2)]
    http = dict(runs[-1], system="vllm", policy="fcfs", backend="http")
    assert run_label(runs[0]) == "slice" and run_label(http) == "vllm fcfs"
    table = sweep_table(runs)
    assert table.caption == "median (min-max) over 3 seeds" and table.row_count == 2
    one = sorted(r["summary"]["slo_attainment"] for r in runs[:3])[1]
    assert capacity_rps(runs, "slice", threshold=one) == 0.6
    assert capacity_rps(runs, "slice", threshold=min(one + 1e-9, 1.0) + 0.01) is None
    single = plot_runs(runs, tmp_path / "single.png")
    both = plot_runs([*runs, *(dict(r, rate_rps=1.2) for r in runs)], tmp_path / "rates.png")
    assert single.stat().st_size > 10_000 and both.stat().st_size > 10_000


def test_capacity_experiment_script_writes_every_probe_and_reports_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "capacity_experiment.py"
    spec = importlib.util.spec_from_file_location("capacity_experiment", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "cap"
    args = ["--scenario", "edge:paper", "--policies", "vllm,slice", "--metrics",
            "slo_attainment", "--steps", "2", "--seeds", "0", "--num-requests", "40",
            "--out", str(out)]
    assert script.main(args) == 0
    results = json.loads((out / "capacity.json").read_text())["results"]
    assert [r["policy"] for r in results] == ["vllm", "slice"]
    for r in results:  # both ends checked, then two halvings unless an end decided it
        assert len(r["probes"]) in (1, 2, 4)
        low, high = r["bracket_multiple"]
        if r["capacity_multiple"] is not None:
            assert low == r["capacity_multiple"] < high
            assert r["capacity_rps"] == pytest.approx(low * r["saturation_rps"])
    printed = capsys.readouterr().out
    assert script.main([*args, "--report"]) == 0
    assert capsys.readouterr().out.strip() == printed.strip()
    assert "SLICE over the best SOTA baseline" not in printed  # no SOTA baseline was run
