"""The figure for runs at one rate: what each class got, side by side, against its target.

Four panels: SLO attainment per class (bars, one per policy or system; the median over seeds
with its range as an error bar), the distributions of TTFT and of TPOT per class as
multiples of each request's own target (box plots on a log axis; below the line at 1 the
target was met), and the mean completion time per class. The distributions need the runs'
per-request rows (`requests`, which live runs and benchmarks write); without them those
panels say so.
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

from sliceserve.metrics.aggregate import labels, metric_spread, run_label  # noqa: E402
from sliceserve.metrics.plots import _classes, _colors, describe, plot_e2e_bars  # noqa: E402

Run = dict[str, Any]
PANEL_SIZE_IN = (6.4, 3.8)


def plot_class_bars(ax: Axes, runs: Sequence[Run], colors: dict[str, Any],
                    metric: str = "slo_attainment") -> None:
    """`metric` overall and per class, one bar per label (median, min-max error bars)."""
    groups = [None, *_classes(runs)]
    by_label = {label: [r for r in runs if run_label(r) == label] for label in colors}
    width = 0.8 / max(1, len(colors))
    for j, (label, color) in enumerate(colors.items()):
        heights, low, high = [], [], []
        for name in groups:
            value = metric_spread(by_label[label], metric, name)
            median, lo, hi = value if value is not None else (math.nan,) * 3
            heights.append(median)
            low.append(median - lo)
            high.append(hi - median)
        xs = [i + (j - (len(colors) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, heights, width=width, color=color, label=label,
               yerr=[low, high] if any(v > 0 for v in low + high) else None, capsize=3)
    ax.set_xticks(range(len(groups)), ["overall" if g is None else g for g in groups],
                  rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("SLO attainment" + (" (strict)" if metric.endswith("strict") else ""))
    ax.set_title("SLO attainment by class")
    ax.grid(True, axis="y", alpha=0.3)


def _ratios(runs: Sequence[Run], class_name: str, metric: str) -> list[float]:
    values = []
    for run in runs:
        for row in run.get("requests") or ():
            if row["class"] != class_name or row["status"] != "completed":
                continue
            value, target = row.get(metric), (row.get("target") or {}).get(metric)
            if value is not None and target:
                values.append(max(value / target, 1e-3))
    return values


def plot_distributions(ax: Axes, runs: Sequence[Run], colors: dict[str, Any],
                       metric: str) -> None:
    """`metric` / its target per class, a box per label (completed requests)."""
    classes = _classes(runs)
    width = 0.8 / max(1, len(colors))
    drawn = False
    for j, (label, color) in enumerate(colors.items()):
        own = [r for r in runs if run_label(r) == label]
        data = [_ratios(own, name, metric) for name in classes]
        xs = [i + (j - (len(colors) - 1) / 2) * width for i in range(len(classes))]
        keep = [(x, d) for x, d in zip(xs, data) if d]
        if not keep:
            continue
        drawn = True
        parts = ax.boxplot([d for _, d in keep], positions=[x for x, _ in keep],
                           widths=width * 0.85, patch_artist=True, showfliers=True,
                           flierprops={"markersize": 2, "markeredgecolor": color})
        for box in parts["boxes"]:
            box.set(facecolor=color, alpha=0.55, edgecolor=color)
        for median in parts["medians"]:
            median.set(color="black")
    name = metric.removesuffix("_ms").upper()
    ax.set_title(f"{name} / its target (completed requests)")
    if not drawn:
        ax.text(0.5, 0.5, "no per-request rows in these result files", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_xticks([])
        return
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(classes)), classes, rotation=15)
    ax.set_ylabel(f"{name} / target (met below 1)")
    ax.grid(True, axis="y", alpha=0.3)


def plot_single_rate(runs: Sequence[Run], path: str | Path, *,
                     metric: str = "slo_attainment") -> Path:
    """The four panels of the module docstring in one PNG; returns its path."""
    if not runs:
        raise ValueError("plot: no runs to plot")
    colors = _colors(labels(runs))
    fig, axes = plt.subplots(2, 2, figsize=(PANEL_SIZE_IN[0] * 2, PANEL_SIZE_IN[1] * 2))
    plot_class_bars(axes[0][0], runs, colors, metric)
    plot_distributions(axes[0][1], runs, colors, "ttft_ms")
    plot_distributions(axes[1][0], runs, colors, "tpot_ms")
    plot_e2e_bars(axes[1][1], runs, runs[0]["rate_rps"], colors)
    rate = runs[0]["rate_rps"]
    at = "trace arrivals" if rate is None else f"{rate:.3g} requests/s"
    fig.suptitle(f"{describe(runs, 'range as error bars')}, {at}")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 8), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
