"""A device profile shown and saved: console tables, a plot, the files `sliceserve profile` writes.

    FILE.json         the fitted LatencyModel (`sliceserve simulate --latency-model FILE.json`)
    FILE.points.json  the measured points, the fit error of each, and what they were measured on
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from sliceserve.latency_model import LatencyModel
from sliceserve.model.profile_fit import Profile, fit_errors

LATENCY_SCHEMA = "sliceserve.latency/v1"


def points_path(model_path: str | Path) -> Path:
    """Where the raw points of a latency model file go: beside it, FILE.points.json."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.points.json")


def latency_model_json(model: LatencyModel) -> str:
    return json.dumps({"schema": LATENCY_SCHEMA, **model.to_dict()}, indent=2) + "\n"


def points_json(profile: Profile, model: LatencyModel) -> str:
    errors = [{"point": e.point.label(), "measured_ms": round(e.point.ms, 3),
               "predicted_ms": round(e.predicted_ms, 3), "error": round(e.error, 4)}
              for e in fit_errors(profile, model)]
    data = {"profile": profile.to_dict(), "latency_model": model.to_dict(), "fit": errors}
    return json.dumps(data, indent=1) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _decode_samples(profile: Profile) -> int:
    """Timed steps per decode point (the profiler takes more than `repeats` of them)."""
    return max((len(p.samples_ms) for p in profile.of_kind("decode")), default=profile.repeats)


def decode_table(profile: Profile, model: LatencyModel) -> Table:
    """Measured decode ms: batch sizes down, contexts across, each with the fit's error."""
    points = {(p.batch_size, p.context_tokens): p for p in profile.of_kind("decode")}
    contexts = sorted({c for _, c in points})
    table = Table(title=f"decode iteration latency, ms ({profile.model}, {profile.device}, "
                  f"{profile.dtype}, {profile.num_threads} threads; median of "
                  f"{_decode_samples(profile)} steps)")
    table.add_column("batch", justify="right")
    for c in contexts:
        table.add_column(f"ctx {c}", justify="right")
        table.add_column("fit err", justify="right", style="dim")
    table.add_column("tok/s @ctx " + str(contexts[0]), justify="right")
    for b in sorted({b for b, _ in points}):
        row = [str(b)]
        for c in contexts:
            p = points.get((b, c))
            row += [_ms(p.ms if p else None), _err(p, model) if p else "-"]
        first = points.get((b, contexts[0]))
        row.append(f"{1000 * b / first.ms:.0f}" if first else "-")
        table.add_row(*row)
    return table


def prefill_table(profile: Profile, model: LatencyModel) -> Table:
    table = Table(title="prefill (one prompt alone) and mixed iterations, ms")
    for header in ("iteration", "measured", "fitted", "fit err"):
        table.add_column(header, justify="left" if header == "iteration" else "right")
    for p in [*profile.of_kind("prefill"), *profile.of_kind("mixed")]:
        table.add_row(p.label(), _ms(p.ms), _ms(p.predicted_ms(model)), _err(p, model))
    return table


def model_table(model: LatencyModel, profile: Profile) -> Table:
    table = Table(title=f"fitted latency model {model.name}", show_header=False)
    table.add_column("term")
    table.add_column("value", justify="right")
    decode = model.decode_ms
    shown = ", ".join(f"{k}: {decode[k - 1]:.1f}" for k in (1, 2, 4, 8, 16, 32)
                      if k <= len(decode))
    errors = sorted(abs(e.error) for e in fit_errors(profile, model))
    table.add_row("decode_ms (batch: ms)", shown)
    table.add_row("decode_slope_ms (per row beyond the table)", f"{model.decode_slope_ms:.2f}")
    table.add_row("prefill_ms_per_token", f"{model.prefill_ms_per_token:.3f}")
    table.add_row("context_ms_per_token", f"{model.context_ms_per_token:.5f}")
    table.add_row("prefill_attention_ms_per_pair", f"{model.prefill_attention_ms_per_pair:.3e}")
    table.add_row("kv_capacity_tokens", str(model.kv_capacity_tokens))
    table.add_row("|fit error| median / max",
                  f"{100 * errors[len(errors) // 2]:.1f}% / {100 * errors[-1]:.1f}%")
    table.add_row("measured in", f"{profile.seconds:.1f} s")
    if profile.load_average is not None:
        cores = os.cpu_count() or 1
        busy = " (busy machine: figures inflated)" if profile.load_average > cores else ""
        table.add_row("load average after measuring", f"{profile.load_average:.2f} on "
                      f"{cores} cores{busy}")
    if profile.skipped:
        table.add_row("skipped (do not fit the KV cache)", "; ".join(profile.skipped))
    return table


def _err(point: Any, model: LatencyModel) -> str:
    return f"{100 * (point.predicted_ms(model) - point.ms) / point.ms:+.0f}%"


def plot_profile(profile: Profile, model: LatencyModel, path: str | Path) -> Path:
    """Decode latency vs batch size, one line per context (measured: markers; fitted: dashed),
    beside prefill latency vs prompt tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    decode = profile.of_kind("decode")
    for i, c in enumerate(sorted({p.context_tokens for p in decode})):
        pts = sorted((p.batch_size, p.ms) for p in decode if p.context_tokens == c)
        color = f"C{i}"
        left.plot(*zip(*pts), "o-", color=color, label=f"context {c} (measured)")
        ks = range(1, pts[-1][0] + 1)
        left.plot(ks, [model.iteration_ms(k, k, k * (c + 1)) for k in ks], "--", color=color,
                  alpha=0.6, label=f"context {c} (fitted)")
    left.set(xlabel="batch size (decode rows)", ylabel="iteration latency (ms)",
             title="decode")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    prefill = sorted((p.prefill_tokens, p.ms) for p in profile.of_kind("prefill")
                     if not p.prefill_context_tokens)
    if prefill:
        right.plot(*zip(*prefill), "o-", label="measured")
        ns = range(1, prefill[-1][0] + 1)
        right.plot(ns, [model.prefill_ms(n) for n in ns], "--", alpha=0.6, label="fitted")
        right.legend(fontsize=8)
    right.set(xlabel="prompt tokens", ylabel="latency (ms)", title="prefill (alone)")
    right.grid(alpha=0.3)
    fig.suptitle(f"{profile.model}: {profile.device}, {profile.dtype}, "
                 f"{profile.num_threads} threads", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def profile_markdown(profile: Profile, model: LatencyModel) -> str:
    """The decode table (batch x context) and the prefill points as Markdown, fit errors
    beside the measurements, for docs/BENCHMARKS.md."""
    decode = {(p.batch_size, p.context_tokens): p for p in profile.of_kind("decode")}
    contexts = sorted({c for _, c in decode})
    head = " | ".join(f"ctx {c} ms (fit err)" for c in contexts)
    lines = [f"Decode iteration latency, {profile.model} on {profile.device}, {profile.dtype}, "
             f"{profile.num_threads} threads (median of {_decode_samples(profile)} steps in "
             f"{profile.repeats} rounds; load average "
             f"{profile.load_average}):", "", f"| batch | {head} | tok/s at ctx {contexts[0]} |",
             "|---:|" + "---:|" * (len(contexts) + 1)]
    for b in sorted({b for b, _ in decode}):
        cells = [f"{decode[(b, c)].ms:.1f} ({_err(decode[(b, c)], model)})"
                 if (b, c) in decode else "-" for c in contexts]
        first = decode.get((b, contexts[0]))
        rate = f"{1000 * b / first.ms:.0f}" if first else "-"
        lines.append(f"| {b} | {' | '.join(cells)} | {rate} |")
    lines += ["", "| iteration | measured ms | fitted ms | fit err |", "|---|---:|---:|---:|"]
    for p in [*profile.of_kind("prefill"), *profile.of_kind("mixed")]:
        lines.append(f"| {p.label()} | {p.ms:.1f} | {p.predicted_ms(model):.1f} | "
                     f"{_err(p, model)} |")
    top = len(model.decode_ms)
    lines += ["", f"Fitted: decode_ms(1) {model.decode_ms[0]:.1f}, decode_ms({top}) "
              f"{model.decode_ms[-1]:.1f}, slope {model.decode_slope_ms:.2f} ms/row, prefill "
              f"{model.prefill_ms_per_token:.3f} ms/token, context "
              f"{model.context_ms_per_token:.5f} ms/token, prefill attention "
              f"{model.prefill_attention_ms_per_pair:.3e} ms per query-key pair; {model.notes}"]
    return "\n".join(lines) + "\n"
