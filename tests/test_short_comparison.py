"""The comparison's short form in CI: sliceserve's own policies, live on the real SmolLM2,
a small trace at 1.5x the device's estimated capacity; the result files parse and the
ordering claims hold (sliceserve/bench/claims.py: utility attainment ten points ahead, the
real-time class at least as well served, SLO attainment at least as high). A few minutes on
2 cores.

The full comparison against vLLM and llama.cpp is scripts/compare.py (docs/BENCHMARKS.md).
The device profile is measured first (quick), so both policies see the very same arrivals.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sliceserve.bench.claims import ordering_failures, realtime_classes
from sliceserve.cli import main
from sliceserve.metrics.results import load_results

pytestmark = pytest.mark.slow
LOAD = 1.5
NUM_REQUESTS = 60


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_slice_beats_vllm_fcfs_at_overload_live(capsys, tmp_path: Path) -> None:
    profile = tmp_path / "device.json"
    code, _, err = run_cli(capsys, "profile", "--quick", "--no-cache", "--out", profile)
    assert code == 0, err
    runs = {}
    for policy in ("slice", "vllm"):
        out = tmp_path / f"{policy}.json"
        code, _, err = run_cli(capsys, "run", "-w", "edge", "-p", policy, "--load", LOAD,
                               "-n", NUM_REQUESTS, "-s", 0, "-l", profile, "--out", out,
                               "--no-table")
        assert code == 0, err
        (runs[policy],) = load_results(out)
    ours, baseline = runs["slice"], runs["vllm"]
    assert ours["load"] == LOAD and ours["rate_rps"] == baseline["rate_rps"]
    assert ours["summary"]["n"] == NUM_REQUESTS and len(ours["requests"]) == NUM_REQUESTS
    assert realtime_classes(ours) == ["control"]
    assert ordering_failures(ours, baseline, utility_margin=0.10, slo_margin=0.0) == []
