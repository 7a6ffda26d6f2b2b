"""Plots of result objects (matplotlib, Agg backend: no display needed).

`plot_sweep` draws one figure: SLO attainment vs arrival rate per policy (overall, then one
panel per class) and the mean completion time (E2E) per class and policy at one rate.
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

from sliceserve.metrics.table import CAPACITY_THRESHOLD  # noqa: E402

NUM_COLUMNS = 3
PANEL_SIZE_IN = (5.0, 3.6)
Run = dict[str, Any]


def _policies(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(r["policy"] for r in runs))


def _classes(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(name for r in runs for name in r["classes"]))


def _colors(policies: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {p: cmap(i % 10) for i, p in enumerate(policies)}


# Hollow markers of distinct shapes, so that policies with equal results stay visible.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_attainment(ax: Axes, runs: Sequence[Run], class_name: str | None,
                    colors: dict[str, Any], metric: str = "slo_attainment") -> None:
    """`metric` vs arrival rate, one line per policy; `class_name` None is overall."""
    for i, (policy, color) in enumerate(colors.items()):
        points = sorted((r["rate_rps"], _stats(r, class_name)) for r in runs
                        if r["policy"] == policy and r["rate_rps"] is not None
                        and _stats(r, class_name) is not None)
        xs = [rate for rate, stats in points if stats[metric] is not None]
        ys = [stats[metric] for _, stats in points if stats[metric] is not None]
        ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], markersize=7, markerfacecolor="none",
                linewidth=1.5, color=color, label=policy)
    ax.axhline(CAPACITY_THRESHOLD, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("SLO attainment" + (" (strict)" if metric.endswith("strict") else ""))
    ax.set_title("overall" if class_name is None else f"class {class_name}")
    ax.grid(True, alpha=0.3)


def _stats(run: Run, class_name: str | None) -> dict[str, Any] | None:
    return run["summary"] if class_name is None else run["classes"].get(class_name)


def heaviest_rate(runs: Sequence[Run]) -> float | None:
    rates = [r["rate_rps"] for r in runs if r["rate_rps"] is not None]
    return max(rates) if rates else None


def plot_e2e_bars(ax: Axes, runs: Sequence[Run], rate: float | None,
                  colors: dict[str, Any]) -> None:
    """Mean E2E (completion time) per class, one bar per policy, at `rate` (completed only)."""
    classes = _classes(runs)
    policies = list(colors)
    at_rate = {r["policy"]: r for r in runs if r["rate_rps"] == rate}
    width = 0.8 / max(1, len(policies))
    values = []
    for j, policy in enumerate(policies):
        run = at_rate.get(policy)
        heights = []
        for name in classes:
            stats = _stats(run, name) if run is not None else None
            mean = stats["e2e_ms"]["mean"] if stats is not None else None
            heights.append(math.nan if mean is None else mean / 1000.0)
        values += [h for h in heights if not math.isnan(h)]
        xs = [i + (j - (len(policies) - 1) / 2) * width for i in range(len(classes))]
        ax.bar(xs, heights, width=width, color=colors[policy], label=policy)
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
    policies = _policies(runs)
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
    first = runs[0]
    fig.suptitle(f"workload {first['workload']}, {first['arrival']} arrivals, "
                 f"{first['backend']} ({first['latency_model'] or first['system']}), "
                 f"seed {first['seed']}; dotted line: {CAPACITY_THRESHOLD:.0%}")
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(policies), 8),
               frameon=False)
    fig.tight_layout(rect=(0, 0.06 if nrows == 1 else 0.04, 1, 0.96))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
