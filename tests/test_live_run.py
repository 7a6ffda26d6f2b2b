"""Live runs: workloads on the real engine in wall time, the same result files and traces as
the simulator, and one-line errors from `sliceserve profile` / `sliceserve run`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sliceserve.bench.live import live_requests, serve_live, trace_lines
from sliceserve.bench.profile_report import points_path
from sliceserve.cli import main
from sliceserve.clock import WallClock
from sliceserve.metrics.results import load_results
from sliceserve.model import profiler
from sliceserve.model.cpu import cpu_info
from sliceserve.model.profiler import warm_up
from sliceserve.workloads import load_trace, load_workload, make_traffic
from tests.engine_helpers import make_engine, request
from tests.tiny_models import make_tiny_model

# Short requests with absolute SLOs: a live run of a handful takes well under a second.
TINY_WORKLOAD = {
    "name": "tiny",
    "classes": {
        "fast": {"share": 1, "prompt_tokens": [4, 24], "output_tokens": [2, 6],
                 "ttft_ms": 2000, "tpot_ms": 500, "utility": 10},
        "slow": {"share": 1, "prompt_tokens": [16, 40], "output_tokens": [4, 8],
                 "ttft_ms": 5000, "tpot_ms": 1000, "deadline_ms": 20000, "utility": 1},
    },
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture
def workload_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_WORKLOAD))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_the_live_loop_waits_for_arrivals_in_wall_time(tiny_folder: Path) -> None:
    engine = make_engine(tiny_folder, "vllm")
    warm_up(engine.executor)  # type: ignore[arg-type]
    engine.clock = WallClock()  # the run starts now
    first, late = request("a", [5, 6, 7], 3), request("b", [8, 9], 2)
    late.arrival_s = 0.5
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        time.sleep(seconds)

    result = serve_live(engine, [late, first], sleep=sleep)
    assert [r.request_id for r in result.requests] == ["a", "b"]
    assert all(r.status.value == "completed" for r in result.requests)
    assert late.token_times_s[0] >= 0.5 and all(0 <= nap <= 0.5 for nap in naps)
    if first.finish_s is not None and first.finish_s < 0.45:  # idle before b: slept
        assert naps and late.token_times_s[0] < 0.5 + 0.1 + 1.0
    assert len(first.output_token_ids) == 3 and len(late.output_token_ids) == 2
    assert result.duration_s == pytest.approx(late.finish_s) and result.num_iterations >= 4


def test_live_requests_get_regular_seeded_tokens_and_exact_lengths() -> None:
    traffic = make_traffic(load_workload("edge"), rate_rps=2.0, num_requests=12, seed=3,
                           latency_model=_paper())
    one = live_requests(traffic, 300, seed=3, special_ids=[20, 21])
    two = live_requests(traffic, 300, seed=3, special_ids=[20, 21])
    assert [r.prompt_token_ids for r in one] == [r.prompt_token_ids for r in two]
    for spec, req in zip(traffic.requests, one):
        ids = list(req.prompt_token_ids or [])
        assert len(ids) == spec.num_prompt_tokens and all(16 <= t < 300 for t in ids)
        assert not {20, 21} & set(ids)
        assert req.sampling.max_tokens == spec.num_output_tokens and req.sampling.ignore_eos
        assert (req.arrival_s, req.slo, req.priority) == (spec.arrival_s, spec.slo,
                                                           spec.priority)


def test_a_trace_replays_the_exact_requests(tmp_path: Path) -> None:
    traffic = make_traffic(load_workload("edge"), rate_rps=1.0, num_requests=20, seed=1,
                           latency_model=_paper())
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in trace_lines(traffic)))
    replayed = load_trace(path)
    assert replayed.requests == traffic.requests


def test_sliceserve_run_writes_a_result_and_a_trace_that_simulate_replays(
        tiny_folder: Path, workload_file: Path, tmp_path: Path, capsys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path / "cache"))
    profile, out, trace = tmp_path / "p.json", tmp_path / "live.json", tmp_path / "t.jsonl"
    code, _, err = run_cli(capsys, "profile", "--model", tiny_folder, "--quick", "--dtype",
                           "float32", "--kv-cache-gb", "0.05", "--out", profile)
    assert code == 0, err
    assert "number format: float32 (float32: asked for)" in err  # the choice, reported
    machine = json.loads(points_path(profile).read_text())["profile"]["machine"]
    assert machine["dtype"] == "float32" and machine["dtype_requested"] == "float32"
    code, table, err = run_cli(capsys, "run", "-w", workload_file, "-p", "slice", "--rate", "20",
                               "-n", "6", "--seed", "2", "--model", tiny_folder,
                               "--kv-cache-gb", "0.05", "--latency-model", profile,
                               "--out", out, "--trace-out", trace)
    assert code == 0, err
    (run,) = load_results(out)
    # dtype auto (the default): the machine block says what it became here, and why
    block = run["machine"]
    assert list(run)[list(run).index("device") + 1] == "machine"
    assert block["dtype_requested"] == "auto" and block["dtype"] in ("bfloat16", "float32")
    assert block["cpu"] == cpu_info().model and block["cpu_flags"] == list(cpu_info().flags)
    assert (block["dtype"] == "bfloat16") == cpu_info().native_bf16
    assert block["kernels"] in ("avx512", "avx2", "portable", "scalar", "eager")
    assert f"number format: {block['dtype']} (auto: " in err
    assert (run["backend"], run["system"], run["policy"], run["workload"]) == \
        ("engine", "sliceserve", "slice", "tiny")
    assert run["summary"]["n"] == 6 and run["summary"]["completed"] == 6
    assert run["summary"]["output_tok_s"] > 0 and run["latency_model"].startswith("profile:")
    assert (run["rate_rps"], run["seed"]) == (20.0, 2) and "overall" in table
    lines = trace.read_text().splitlines()
    assert len(lines) == 6 and all("ttft_ms" in json.loads(line) for line in lines)

    sim_out = tmp_path / "sim.json"
    code, _, err = run_cli(capsys, "simulate", "-w", trace, "-p", "slice", "--latency-model",
                           profile, "--no-table", "--out", sim_out)
    assert code == 0, err
    (sim,) = load_results(sim_out)
    assert sim["backend"] == "sim" and sim["summary"]["n"] == 6
    assert sim["summary"]["completed"] == 6


def test_profile_writes_a_plot_and_run_without_a_latency_model_calibrates(
        tiny_folder: Path, workload_file: Path, tmp_path: Path, capsys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLICESERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(profiler, "_load_average", lambda: 0.5)  # a quiet machine: cached
    plot = tmp_path / "p.png"
    code, out, err = run_cli(capsys, "profile", "--model", tiny_folder, "--quick", "--dtype",
                             "float32", "--kv-cache-gb", "0.05", "--plot", plot, "--no-cache")
    assert code == 0, err
    assert plot.stat().st_size > 1000 and "decode iteration latency" in out
    assert not (tmp_path / "cache" / "profiles").exists()
    out_path = tmp_path / "live.json"
    code, _, err = run_cli(capsys, "run", "-w", workload_file, "-p", "orca", "-n", "3",
                           "--rate", "50", "--model", tiny_folder, "--dtype", "float32",
                           "--kv-cache-gb", "0.05", "--no-table", "--out", out_path)
    assert code == 0, err
    (run,) = load_results(out_path)
    assert run["summary"]["completed"] == 3
    assert len(list((tmp_path / "cache" / "profiles").glob("*.json"))) == 1


def test_run_can_profile_in_its_own_process_first(
        tiny_folder: Path, workload_file: Path, tmp_path: Path, capsys) -> None:
    profile, out = tmp_path / "p.json", tmp_path / "live.json"
    code, _, err = run_cli(capsys, "run", "-w", workload_file, "-p", "vllm", "-n", "3",
                           "--rate", "50", "--model", tiny_folder, "--dtype", "float32",
                           "--kv-cache-gb", "0.05", "--no-table", "--profile-out", profile,
                           "--calibrated-out", tmp_path / "cal.json", "--out", out,
                           "--iterations-out", tmp_path / "its.jsonl")
    assert code == 0, err
    from sliceserve.latency_model import LatencyModel

    (run,) = load_results(out)
    model = LatencyModel.load(str(profile))
    assert run["latency_model"] == model.name and "--profile-out" in model.notes
    points = json.loads(points_path(profile).read_text())
    assert len(points["fit"]) == len(points["profile"]["points"]) > 20
    # The model rescaled to the run's own iterations, and how well it had predicted them.
    calibrated = LatencyModel.load(str(tmp_path / "cal.json"))
    assert calibrated.name == model.name + "+calibrated" and "live iterations" in calibrated.notes
    assert "measured / predicted" in err and '"decode_iterations"' in err
    # Every iteration it ran, with the runner's own split of forward pass and sampling.
    its = [json.loads(line) for line in (tmp_path / "its.jsonl").read_text().splitlines()]
    assert its and its[0]["start_s"] == 0.0 and its[-1]["start_s"] > 0
    assert all(0 < it["forward_ms"] + it["sample_ms"] <= it["measured_ms"] for it in its)
    assert sum(it["new_tokens"] for it in its) >= 3


def test_run_loads_the_model_once_and_warms_it_up_once(
        tiny_folder: Path, workload_file: Path, tmp_path: Path, capsys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No engine or policy beyond the one the run serves with, one warm-up right before it."""
    import sliceserve.bench.live as live_module
    import sliceserve.engine.build as build_module

    def no_engine(*args: object, **kwargs: object) -> None:
        raise AssertionError("sliceserve run built an engine it does not use")

    warm_ups: list[object] = []
    policies: list[object] = []
    real_warm_up, real_make_policy = profiler.warm_up, live_module.make_policy
    monkeypatch.setattr(build_module, "build_engine", no_engine)
    monkeypatch.setattr(profiler, "warm_up",
                        lambda runner, **kw: warm_ups.append(runner) or real_warm_up(runner, **kw))
    monkeypatch.setattr(live_module, "make_policy",
                        lambda *a, **kw: policies.append(a[0]) or real_make_policy(*a, **kw))
    out = tmp_path / "live.json"
    code, _, err = run_cli(capsys, "run", "-w", workload_file, "-p", "edf", "-n", "3",
                           "--rate", "50", "--model", tiny_folder, "--dtype", "float32",
                           "--kv-cache-gb", "0.05", "--latency-model", "paper", "--no-table",
                           "--out", out)
    assert code == 0, err
    assert len(warm_ups) == 1 and policies == ["edf"]
    (run,) = load_results(out)
    assert run["summary"]["completed"] == 3


@pytest.mark.parametrize("args", [
    ["profile", "--dtype", "int8"],
    ["profile", "--quantization", "int3"],
    ["profile", "--threads", "0"],
    ["profile", "--repeats", "0"],
    ["profile", "--model", "/no/such/model"],
    ["run", "-w", "edge", "-p", "no-such-policy"],
    ["run", "-w", "no-such-workload", "-p", "slice"],
    ["run", "-w", "edge", "-p", "slice", "--rate", "0"],
    ["run", "-w", "edge", "-p", "slice", "--trace-out", "t.txt"],
    ["run", "-w", "edge", "-p", "slice", "--latency-model", "/no/such.json"],
    ["run", "-w", "edge", "-p", "slice", "--model", "/no/such/model"],
    ["run", "-w", "edge", "-p", "slice", "--policy-option", "nope=1"],
    ["run", "-w", "edge", "-p", "slice", "--latency-model", "paper", "--profile-out", "p.json"],
])
def test_bad_input_is_one_error_line_and_exit_2(capsys, args: list[str]) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def _paper():  # type: ignore[no-untyped-def]
    from sliceserve.latency_model import LatencyModel

    return LatencyModel.load("paper")
