"""Runs grouped for comparison: by what served them (a label) and rate, over seeds.

A label names the system and its policy: the policy alone for sliceserve (simulated, on the
engine or behind its server), "<system> <policy>" for other systems (e.g. "vllm fcfs"),
unless the run carries its own `label`. Several runs with the same label and rate (seeds)
are summarized by their median and range (min, max).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

Run = dict[str, Any]


def run_label(run: Run) -> str:
    if run.get("label"):
        return str(run["label"])
    system, policy = run.get("system", ""), run.get("policy", "")
    if system == "sliceserve" or not system:
        return policy
    return system if policy in ("", system) else f"{system} {policy}"


def labels(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(run_label(r) for r in runs))


def rates(runs: Sequence[Run]) -> list[float]:
    return sorted({r["rate_rps"] for r in runs if r["rate_rps"] is not None})


def stats_of(run: Run, class_name: str | None) -> dict[str, Any] | None:
    return run["summary"] if class_name is None else run["classes"].get(class_name)


def group(runs: Sequence[Run]) -> dict[tuple[str, float | None], list[Run]]:
    """Runs by (label, rate), in first-seen order."""
    out: dict[tuple[str, float | None], list[Run]] = {}
    for run in runs:
        out.setdefault((run_label(run), run["rate_rps"]), []).append(run)
    return out


def spread(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """(median, min, max) of the values that are not None; None when there are none."""
    data = [v for v in values if v is not None]
    if not data:
        return None
    return statistics.median(data), min(data), max(data)


def metric_spread(runs: Sequence[Run], metric: str, class_name: str | None = None
                  ) -> tuple[float, float, float] | None:
    """`metric` (a STATS key such as slo_attainment) over runs (seeds): median, min, max."""
    values = []
    for run in runs:
        stats = stats_of(run, class_name)
        values.append(None if stats is None else stats.get(metric))
    return spread(values)


def curve(runs: Sequence[Run], label: str, metric: str, class_name: str | None = None
          ) -> list[tuple[float, tuple[float, float, float]]]:
    """(rate, (median, min, max)) of one label's `metric`, by increasing rate."""
    points = []
    for (name, rate), members in group(runs).items():
        if name != label or rate is None:
            continue
        value = metric_spread(members, metric, class_name)
        if value is not None:
            points.append((rate, value))
    return sorted(points)


def seeds(runs: Sequence[Run]) -> list[Any]:
    return sorted({r["seed"] for r in runs}, key=str)
