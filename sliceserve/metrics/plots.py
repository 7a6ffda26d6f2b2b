"""Plots of result objects (matplotlib, Agg backend: no display needed).

`plot_runs` picks the figure for what the runs hold: with several rates `plot_sweep` (SLO
attainment vs arrival rate per policy or system, overall and one panel per class, and the
mean completion time per class at one rate), with one rate `plot_single_rate`
(sliceserve/metrics/plots_single.py: per-class bars and distributions against each target).
Several seeds of one point are drawn as their median with the range (min to max) shaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from sliceserve.metrics.aggregate import (  # noqa: E402
    curve,
    group,
    labels,
    rates,
    seeds,
)
from sliceserve.metrics.table import CAPACITY_THRESHOLD  # noqa: E402

NUM_COLUMNS = 3
PANEL_SIZE_IN = (5.0, 3.6)
Run = dict[str, Any]


def _classes(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(name for r in runs for name in r["classes"]))


def _colors(policies: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {p: cmap(i % 10) for i, p in enumerate(policies)}


METRIC_LABELS = {"slo_attainment": "SLO attainment",
                 "slo_attainment_strict": "SLO attainment (strict)",
                 "utility_attainment": "utility attainment", "qoe_mean": "mean QoE (Andes)",
                 "qoe_share_099": "share with QoE >= 0.99"}
# Hollow markers of distinct shapes, so that policies with equal results stay visible.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_attainment(ax: Axes, runs: Sequence[Run], class_name: str | None,
                    colors: dict[str, Any], metric: str = "slo_attainment") -> None:
    """`metric` vs arrival rate, one line per policy or system (the median over seeds, the
    range shaded); `class_name` None is overall."""
    for i, (label, color) in enumerate(colors.items()):
        points = curve(runs, label, metric, class_name)
        xs = [rate for rate, _ in points]
        ax.plot(xs, [v[0] for _, v in points], marker=MARKERS[i % len(MARKERS)], markersize=7,
                markerfacecolor="none", linewidth=1.5, color=color, label=label)
        if any(v[1] != v[2] for _, v in points):
            ax.fill_between(xs, [v[1] for _, v in points], [v[2] for _, v in points],
                            color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("arrival rate (requests/s)")
    if metric.endswith("_rps"):  # a rate, not a ratio
        ax.set_ylabel(metric.replace("_rps", " (requests/s)").replace("_", " "))
    else:
        ax.axhline(CAPACITY_THRESHOLD, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")))
    ax.set_title("overall" if class_name is None else f"class {class_name}")
    ax.grid(True, alpha=0.3)


def heaviest_rate(runs: Sequence[Run]) -> float | None:
    rates = [r["rate_rps"] for r in runs if r["rate_rps"] is not None]
    return max(rates) if rates else None


def plot_e2e_bars(ax: Axes, runs: Sequence[Run], rate: float | None,
                  colors: dict[str, Any]) -> None:
    """Mean E2E (completion time) per class, one bar per policy or system, at `rate`
    (completed only; the median over seeds)."""
    classes = _classes(runs)
    names = list(colors)
    by_key = group(runs)
    width = 0.8 / max(1, len(names))
    values = []
    for j, label in enumerate(names):
        members = by_key.get((label, rate), [])
        heights = []
        for name in classes:
            means = [(r["classes"].get(name) or {}).get("e2e_ms", {}).get("mean")
                     for r in members]
            data = sorted(m for m in means if m is not None)
            heights.append(data[len(data) // 2] / 1000.0 if data else math.nan)
        values += [h for h in heights if not math.isnan(h)]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(classes))]
        ax.bar(xs, heights, width=width, color=colors[label], label=label)
    ax.set_xticks(range(len(classes)), classes, rotation=15)
    ax.set_ylabel("mean E2E (s)")
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    where = "trace" if rate is None else f"{rate:g} rps"
    ax.set_title(f"mean completion time at {where}\n(completed requests only)")
    ax.grid(True, axis="y", alpha=0.3)


def plot_sweep(runs: Sequence[Run], path: str | Path, *, e2e_rate: float | None = None,
               metric: str = "slo_attainment") -> Path:
    """Attainment vs rate (overall + per class) and E2E bars in one PNG; returns its path."""
    if not runs:
        raise ValueError("plot: no runs to plot")
    policies = labels(runs)
    colors = _colors(policies)
    classes = _classes(runs)
    has_rates = heaviest_rate(runs) is not None
    rate = e2e_rate if e2e_rate is not None else heaviest_rate(runs)
    if e2e_rate is not None and not any(r["rate_rps"] == e2e_rate for r in runs):
        raise ValueError(f"plot: no run at rate {e2e_rate:g}")
    panels = (1 + len(classes) if has_rates else 0) + 1
    ncols = min(NUM_COLUMNS, panels)
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(PANEL_SIZE_IN[0] * ncols, PANEL_SIZE_IN[1] * nrows))
    flat = list(axes.flat)
    if has_rates:
        for ax, name in zip(flat, [None, *classes], strict=False):
            plot_attainment(ax, runs, name, colors, metric)
    plot_e2e_bars(flat[panels - 1], runs, rate, colors)
    for ax in flat[panels:]:
        ax.set_visible(False)
    fig.suptitle(f"{describe(runs)}; dotted line: {CAPACITY_THRESHOLD:.0%}")
    handles, names = flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(policies), 8),
               frameon=False)
    fig.tight_layout(rect=(0, 0.06 if nrows == 1 else 0.04, 1, 0.96))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def describe(runs: Sequence[Run], spread: str = "range shaded") -> str:
    """What the runs have in common, for a figure's title."""
    first = runs[0]
    backends = sorted({r["backend"] for r in runs})
    where = first["latency_model"] or first["system"] if backends == ["sim"] else \
        first.get("device") or first["system"]
    run_seeds = seeds(runs)
    seed_text = f"seed {run_seeds[0]}" if len(run_seeds) == 1 else \
        f"{len(run_seeds)} seeds (median, {spread})"
    return (f"workload {first['workload']}, {first['arrival']} arrivals, "
            f"{'/'.join(backends)} ({where}), {seed_text}")


def plot_runs(runs: Sequence[Run], path: str | Path, *, e2e_rate: float | None = None,
              metric: str = "slo_attainment") -> Path:
    """The figure for these runs: `plot_sweep` over several rates, else `plot_single_rate`."""
    if len(rates(runs)) > 1:
        return plot_sweep(runs, path, e2e_rate=e2e_rate, metric=metric)
    from sliceserve.metrics.plots_single import plot_single_rate

    return plot_single_rate(runs, path, metric=metric)

