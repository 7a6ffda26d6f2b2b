"""The `sliceserve` command line: runs, files, and one-line errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sliceserve.cli import main
from sliceserve.metrics.results import load_results
from sliceserve.policies.registry import policy_names
from sliceserve.sim.run import simulate_run

BIN = Path(sys.executable).with_name("sliceserve")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_simulate_prints_a_table_and_writes_identical_files(capsys, tmp_path: Path):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        code, out, err = run_cli(capsys, "simulate", "--workload", "paper", "--policy", "orca",
                                 "--rate", "0.3", "--num-requests", "25", "--seed", "5",
                                 "--out", path)
        assert code == 0, err
    assert "overall" in out and "nrt-short" in out and "attain" in out
    assert paths[0].read_bytes() == paths[1].read_bytes()
    (run,) = load_results(paths[0])
    assert (run["policy"], run["rate_rps"], run["seed"], run["summary"]["n"]) == \
        ("orca", 0.3, 5, 25)


def test_simulate_gamma_with_policy_option(capsys, tmp_path: Path):
    out_path = tmp_path / "g.json"
    code, _, err = run_cli(capsys, "simulate", "-w", "edge", "-p", "orca", "--arrival", "gamma",
                           "--cv", "2", "-n", "20", "--policy-option", "max_batch_size=2",
                           "--no-table", "--out", out_path)
    assert code == 0, err
    (run,) = load_results(out_path)
    assert run["arrival"] == "gamma" and run["arrival_cv"] == 2.0
    assert run["policy_options"] == {"max_batch_size": 2}


def test_sweep_writes_a_list_a_table_and_a_plot(capsys, tmp_path: Path):
    out_path, plot_path = tmp_path / "s.json", tmp_path / "s.png"
    code, out, err = run_cli(capsys, "sweep", "--workload", "paper", "--policies", "orca",
                             "--rates", "0.1,0.3", "-n", "20", "--out", out_path,
                             "--plot", plot_path)
    assert code == 0, err
    assert "capacity" in out and "orca" in out
    runs = json.loads(out_path.read_text())
    assert [r["rate_rps"] for r in runs] == [0.1, 0.3]
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run_cli(capsys, "show", out_path)
    assert code == 0 and "orca" in out


def test_trace_workload_uses_its_own_arrivals(capsys, tmp_path: Path):
    trace = tmp_path / "t.jsonl"
    lines = [{"arrival_s": 0.25 * i, "prompt_tokens": 40, "output_tokens": 8,
              "slo_class": "rt-short"} for i in range(4)]
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out_path = tmp_path / "t.json"
    code, out, err = run_cli(capsys, "simulate", "-w", trace, "-p", "orca", "--rate", "5",
                             "--class-defaults", "paper", "--out", out_path)
    assert code == 0, err
    assert "--rate is ignored" in err
    (run,) = load_results(out_path)
    assert (run["arrival"], run["rate_rps"], run["summary"]["n"]) == ("trace", None, 4)


def test_workload_and_policies_commands(capsys):
    code, out, _ = run_cli(capsys, "workload", "edge", "--latency-model", "paper")
    assert code == 0 and "navigation" in out and "3 pf + 3 l1" in out
    code, out, _ = run_cli(capsys, "policies")
    assert code == 0 and "orca" in out.split()


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    bad_workload = tmp_path / "bad.json"
    bad_workload.write_text(json.dumps({"name": "w", "classes": {"a": {
        "share": -1, "prompt_tokens": 8, "output_tokens": 8, "ttft_ms": 1, "tpot_ms": 1,
        "utility": 1}}}))
    bad_trace = tmp_path / "bad.jsonl"
    bad_trace.write_text('{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 2, '
                         '"slo_class": "x", "ttft_ms": 1, "tpot_ms": 1, "utility": 1}\n{oops\n')
    bad_latency = tmp_path / "lm.json"
    bad_latency.write_text('{"decode_ms": []}')
    return {"workload": bad_workload, "trace": bad_trace, "latency": bad_latency}


BAD_INPUTS = {
    "unknown policy": (["simulate", "-w", "paper", "-p", "nope"], "unknown policy 'nope'"),
    "unknown workload": (["simulate", "-w", "nope", "-p", "orca"], "unknown workload"),
    "missing workload file": (["simulate", "-w", "missing.json", "-p", "orca"], "missing.json"),
    "invalid workload file": (["simulate", "-w", "{workload}", "-p", "orca"],
                              "classes.a.share"),
    "malformed trace line": (["simulate", "-w", "{trace}", "-p", "orca"], "line 2"),
    "negative rate": (["simulate", "-w", "paper", "-p", "orca", "--rate", "-1"], "--rate"),
    "zero rate": (["simulate", "-w", "paper", "-p", "orca", "--rate", "0"], "--rate"),
    "rate not a number": (["simulate", "-w", "paper", "-p", "orca", "--rate", "x"], "--rate"),
    "unknown latency model": (["simulate", "-w", "paper", "-p", "orca", "-l", "nope"],
                              "unknown latency model"),
    "invalid latency file": (["simulate", "-w", "paper", "-p", "orca", "-l", "{latency}"],
                             "latency model"),
    "bad arrival": (["simulate", "-w", "paper", "-p", "orca", "--arrival", "uniform"],
                    "--arrival"),
    "bad policy option": (["simulate", "-w", "paper", "-p", "orca", "--policy-option", "nope=1"],
                          "no option"),
    "malformed policy option": (["simulate", "-w", "paper", "-p", "orca", "--policy-option", "x"],
                                "key=value"),
    "missing policy": (["simulate", "-w", "paper"], "--policy"),
    "negative num requests": (["simulate", "-w", "paper", "-p", "orca", "-n", "-3"],
                              "--num-requests"),
    "unwritable out": (["simulate", "-w", "paper", "-p", "orca", "-n", "2", "--out",
                        "/dev/null/dir/x.json"], "cannot write"),
    "sweep bad rates": (["sweep", "-w", "paper", "--policies", "orca", "--rates", "0.1,-2"],
                        "--rates"),
    "sweep rates not numbers": (["sweep", "-w", "paper", "--policies", "orca", "--rates", "a"],
                                "--rates"),
    "sweep unknown policy": (["sweep", "-w", "paper", "--policies", "orca,nope", "--rates",
                              "0.1"], "unknown policy"),
    "show missing file": (["show", "nope.json"], "nope.json"),
    "serve bad oneDNN cache": (["serve", "--onednn-cache-capacity", "-2"],
                               "--onednn-cache-capacity"),
    "serve bad trim interval": (["serve", "--malloc-trim-interval", "-1"],
                                "--malloc-trim-interval"),
    "serve bad arenas": (["serve", "--malloc-arena-max", "-1"], "--malloc-arena-max"),
    "unknown command": (["frobnicate"], "frobnicate"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_exit_2(capsys, tmp_path: Path, case: str):
    files = _bad_files(tmp_path)
    args, expected = BAD_INPUTS[case]
    args = [a.format(**files) for a in args]
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err + out


def test_installed_entry_point_reports_one_line(tmp_path: Path):
    if not BIN.exists():
        pytest.skip("the sliceserve script is not installed next to this python")
    result = subprocess.run([str(BIN), "simulate", "-w", "paper", "-p", "nope"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown policy") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_registered_policy_gives_a_valid_run():
    for name in policy_names():
        run = simulate_run("edge", name, rate=0.5, num_requests=12, seed=0)
        assert run["policy"] == name and run["summary"]["n"] == 12


def test_out_and_plot_create_missing_folders(capsys, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "run.json"
    plot = tmp_path / "other" / "sweep.png"
    code, _, err = run_cli(capsys, "sweep", "-w", "paper", "--policies", "orca", "--rates", "1",
                           "-n", "20", "--out", out, "--plot", plot)
    assert code == 0, err
    assert out.exists() and plot.exists()
