"""Console tables (rich): one run in detail, a sweep as a matrix, a workload's classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from sliceserve.latency_model import LatencyModel
from sliceserve.metrics.aggregate import group, labels, metric_spread, rates, run_label
from sliceserve.metrics.results import capacity_rps
from sliceserve.metrics.sota import VIOLATION_KINDS
from sliceserve.workloads.generate import resolve_class_slo
from sliceserve.workloads.spec import ClassSpec, SloChoice, SloExpr, Workload

CAPACITY_THRESHOLD = 0.9


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f}s" if value >= 10_000 else f"{value:.0f}"


def run_title(run: dict[str, Any]) -> str:
    rate = run["rate_rps"]
    arrival = run["arrival"] if rate is None else f"{run['arrival']} {rate:g} rps"
    if run.get("arrival_cv") is not None:
        arrival += f" cv {run['arrival_cv']:g}"
    return (f"{run_label(run)} on {run['workload']} ({arrival}, seed {run['seed']}, "
            f"{run['backend']}: {run['latency_model'] or run['system']}), "
            f"{run['duration_s']:.1f} s")


def run_table(run: dict[str, Any]) -> Table:
    """Overall and per class: counts, attainment, goodput, latency p50/p90 (completed only)."""
    table = Table(title=run_title(run), caption="latencies in ms (s where marked) over "
                  "completed requests; attainment over all arrived")
    for header in ("class", "n", "done", "rej", "abort", "attain", "strict", "utility",
                   "QoE", "goodput/s", "TTFT p50", "TTFT p90", "TPOT p50", "TPOT p90", "E2E p50",
                   "E2E p90"):
        table.add_column(header, justify="left" if header == "class" else "right",
                         no_wrap=True)
    rows = [("overall", run["summary"]), *run["classes"].items()]
    for i, (name, stats) in enumerate(rows):
        table.add_row(
            name, str(stats["n"]), str(stats["completed"]), str(stats["rejected"]),
            str(stats["aborted"]), _pct(stats["slo_attainment"]),
            _pct(stats["slo_attainment_strict"]), _pct(stats["utility_attainment"]),
            _pct(stats.get("qoe_mean")), _num(stats["goodput_rps"]),
            _ms(stats["ttft_ms"]["p50"]), _ms(stats["ttft_ms"]["p90"]),
            _ms(stats["tpot_ms"]["p50"]), _ms(stats["tpot_ms"]["p90"]),
            _ms(stats["e2e_ms"]["p50"]), _ms(stats["e2e_ms"]["p90"]),
            end_section=i == 0,
        )
    return table


def home_metrics_table(run: dict[str, Any]) -> Table:
    """The SLO-aware baselines' own metrics, overall and per class (metrics/sota.py): Andes'
    QoE (mean, share >= 0.99) and SCORPIO's goodput with its violation split. Runs from files
    older than these metrics show "-"."""
    table = Table(title="home metrics of the baselines: Andes' QoE, SCORPIO's goodput",
                  caption="violations: requests that missed TTFT only, TPOT only, both, or "
                  "were not served (rejected, aborted)")
    for header in ("class", "QoE mean", "QoE>=0.99", "SCORPIO goodput/s", "TTFT only",
                   "TPOT only", "both", "unserved"):
        table.add_column(header, justify="left" if header == "class" else "right",
                         no_wrap=True)
    rows = [("overall", run["summary"]), *run["classes"].items()]
    for i, (name, stats) in enumerate(rows):
        counts = stats.get("violations") or {}
        table.add_row(name, _pct(stats.get("qoe_mean")), _pct(stats.get("qoe_share_099")),
                      _num(stats.get("scorpio_goodput_rps")),
                      *(str(counts[k]) if k in counts else "-" for k in VIOLATION_KINDS),
                      end_section=i == 0)
    return table


def _capacity_text(runs: Sequence[dict[str, Any]], label: str, metric: str) -> str:
    capacity = capacity_rps(runs, label, CAPACITY_THRESHOLD, metric)
    if capacity is not None:
        return f"{capacity:.3g}"
    own = [r["rate_rps"] for r in runs if run_label(r) == label and r["rate_rps"] is not None]
    return f"<{min(own):.3g}" if own else "-"


def _spread_text(members: Sequence[dict[str, Any]], metric: str, is_ratio: bool = True) -> str:
    value = metric_spread(members, metric)
    if value is None:
        return "-"
    median, low, high = value
    fmt = _pct if is_ratio else _num
    if len(members) == 1 or low == high:
        return fmt(median)
    if is_ratio:
        return f"{_pct(median)} ({100 * low:.0f}-{100 * high:.0f})"
    return f"{_num(median)} ({_num(low)}-{_num(high)})"


# What a sweep table can show: ratios (as percentages, with a capacity column) and rates.
RATIO_METRICS = ("slo_attainment", "slo_attainment_strict", "utility_attainment", "qoe_mean",
                 "qoe_share_099")
RATE_METRICS = ("goodput_rps", "scorpio_goodput_rps")
SWEEP_METRICS = RATIO_METRICS + RATE_METRICS


def sweep_table(runs: Sequence[dict[str, Any]], metric: str = "slo_attainment") -> Table:
    """`metric` (overall) per policy (or system) x rate, the median over seeds with their
    range, and for a ratio each one's capacity at 90% attainment. Runs from files older than
    a metric show "-" for it."""
    if metric not in SWEEP_METRICS:
        raise ValueError(f"unknown sweep metric {metric!r}; valid: {', '.join(SWEEP_METRICS)}")
    is_ratio = metric in RATIO_METRICS
    by_key = group(runs)
    name = metric.replace("slo_", "SLO ").replace("qoe", "QoE").replace("_", " ")
    num_seeds = max((len(m) for m in by_key.values()), default=1)
    caption = f"median (min-max) over {num_seeds} seeds" if num_seeds > 1 else None
    table = Table(title=f"{name}, workload {runs[0]['workload'] if runs else '-'}",
                  caption=caption)
    table.add_column("policy \\ rps", no_wrap=True)
    columns: list[float | None] = list(rates(runs)) or [None]
    for rate in columns:
        table.add_column("trace" if rate is None else f"{rate:.3g}", justify="right")
    if is_ratio:
        table.add_column(f"capacity@{CAPACITY_THRESHOLD:.0%}", justify="right")
    for label in labels(runs):
        cells = []
        for rate in columns:
            members = by_key.get((label, rate))
            cells.append("-" if not members else _spread_text(members, metric, is_ratio))
        if is_ratio:
            cells.append(_capacity_text(runs, label, metric))
        table.add_row(label, *cells)
    return table


def _expr_text(expr: SloExpr) -> str:
    return " + ".join(f"{c:g} {t}" if t != "ms" else f"{c:g} ms" for t, c in expr.terms)


def _choice_text(choice: SloChoice | None) -> str:
    if choice is None:
        return "-"
    return " | ".join(_expr_text(e) for e in choice)


def _mid(bounds: tuple[int, int], dist: str) -> int:
    lo, hi = bounds
    return round((lo * hi) ** 0.5) if dist == "log_uniform" else round((lo + hi) / 2)


def workload_table(spec: Workload, model: LatencyModel | None) -> Table:
    """A workload's classes; SLOs resolved at the mid lengths when a latency model is given."""
    table = Table(title=f"workload {spec.name}" + (f" on {model.name}" if model else ""),
                  caption=spec.description or None)
    for header in ("class", "share", "prompt", "output", "lengths", "ttft_ms", "tpot_ms",
                   "deadline_ms", "utility", "priority"):
        table.add_column(header, overflow="fold")
    for cls in spec.classes:
        slo = _choice_text(cls.ttft_ms), _choice_text(cls.tpot_ms), _choice_text(cls.deadline_ms)
        if model is not None or not cls.is_device_relative:
            slo = _resolved_at_mid(cls, model)
        table.add_row(cls.name, f"{cls.share:.0%}", "{}-{}".format(*cls.prompt_tokens),
                      "{}-{}".format(*cls.output_tokens), cls.lengths, *slo,
                      f"{cls.utility:g}", str(spec.priority_of(cls)))
    return table


def _resolved_at_mid(cls: ClassSpec, model: LatencyModel | None) -> tuple[str, str, str]:
    n_in, n_out = _mid(cls.prompt_tokens, cls.lengths), _mid(cls.output_tokens, cls.lengths)
    cells = []
    for i in range(max(len(cls.ttft_ms), len(cls.tpot_ms))):
        def pick(choice: SloChoice, i: int = i) -> SloExpr:
            return choice[min(i, len(choice) - 1)]
        cells.append(resolve_class_slo(cls, n_in, n_out, model, pick))

    def text(values: list[float | None], choice: SloChoice | None) -> str:
        shown = " | ".join("-" if v is None else f"{v:.0f}" for v in dict.fromkeys(values))
        if choice is not None and any(term != "ms" for e in choice for term, _ in e.terms):
            return f"{shown} ({_choice_text(choice)}; at {n_in} in, {n_out} out)"
        return shown

    return (text([c[0] for c in cells], cls.ttft_ms), text([c[1] for c in cells], cls.tpot_ms),
            text([c[2] for c in cells], cls.deadline_ms))
