"""The ordering claims of sliceserve/bench/claims.py on hand-made result summaries (fast)."""

from __future__ import annotations

from sliceserve.bench.claims import ordering_failures, realtime_classes


def run(slo: float, utility: float, control: float, *, n: int = 60, seed: int = 0) -> dict:
    rows = [{"class": "control", "target": {"utility": 100.0}},
            {"class": "background", "target": {"utility": 1.0}}]
    return {"seed": seed, "summary": {"n": n, "slo_attainment": slo,
                                      "utility_attainment": utility},
            "classes": {"control": {"slo_attainment": control},
                        "background": {"slo_attainment": 0.5}},
            "requests": rows}


def test_the_realtime_classes_are_read_from_the_rows() -> None:
    assert realtime_classes(run(0.5, 0.5, 0.5)) == ["control"]


def test_a_win_on_utility_with_an_even_count_holds() -> None:
    assert ordering_failures(run(0.52, 0.54, 0.62), run(0.52, 0.06, 0.03)) == []


def test_each_claim_fails_on_its_own() -> None:
    baseline = run(0.58, 0.20, 0.30)
    assert ordering_failures(run(0.62, 0.29, 0.60), baseline) == [
        "utility_attainment: 0.29 is not >= 0.2 + 0.1"]
    assert ordering_failures(run(0.57, 0.60, 0.60), baseline) == [
        "slo_attainment: 0.57 is not >= 0.58 + 0.0"]
    assert ordering_failures(run(0.62, 0.60, 0.29), baseline) == [
        "class control: attainment 0.29 is below the baseline's 0.3"]
    assert len(ordering_failures(run(0.62, 0.60, 0.60), baseline, slo_margin=0.1)) == 1


def test_runs_of_other_arrivals_are_not_compared() -> None:
    assert ordering_failures(run(0.9, 0.9, 0.9, seed=1), run(0.1, 0.1, 0.1)) == [
        "the two runs did not serve the same arrivals (n or seed differ)"]
