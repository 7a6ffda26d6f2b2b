"""Result files (docs/RESULTS.md): one run object per run, a JSON list for a sweep.

Writing is deterministic: keys in a fixed order, floats rounded to `SIGNIFICANT_DIGITS`
significant digits, non-finite numbers as null, so the same inputs and seed give byte-identical
files. Besides the documented keys a run carries `arrival_cv` (the gamma CV, else null) after
`rate_rps`, `latency_correction` (the online latency model's factors at the end of the run,
null when the policy planned with the profile frozen) after `latency_model`, `failures`
(requests not completed, by cause) and the baselines' home metrics (`qoe_mean`,
`qoe_share_099`, `scorpio_goodput_rps`, `violations`: metrics/sota.py) in every STATS after
the documented keys, a run on the real engine a `machine` object after `device` (what its
timings depend on: the CPU model, architecture and the flags that matter, the dtype and
weight quantization with the reason for them, the compiled kernels' vector path, the threads;
see sliceserve.model.precision.machine_block) and, when asked for, `requests` (one row per
request: `request_rows`) after `classes`; a live benchmark adds more
(sliceserve/bench/http_bench.py). Readers must ignore keys they do not know, and validation
accepts files without the added keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sliceserve.metrics.slo import (
    LATENCY_METRICS,
    PERCENTILES,
    RequestRecord,
    compute_class_stats,
    compute_stats,
    e2e_ms,
    is_met,
    is_met_strict,
    max_gap_ms,
    tpot_ms,
    ttft_ms,
)
from sliceserve.metrics.sota import VIOLATION_KINDS

SCHEMA = "sliceserve.run/v1"
BACKENDS = ("sim", "engine", "http")
SIGNIFICANT_DIGITS = 6
RUN_KEYS = ("schema", "backend", "system", "policy", "policy_options", "workload", "arrival",
            "rate_rps", "arrival_cv", "seed", "model", "device", "latency_model",
            "latency_correction", "duration_s", "summary", "classes")
OPTIONAL_RUN_KEYS = ("arrival_cv", "latency_correction")  # added after v1's first files
REQUIRED_RUN_KEYS = tuple(k for k in RUN_KEYS if k not in OPTIONAL_RUN_KEYS)
COUNT_KEYS = ("n", "completed", "rejected", "aborted")
RATIO_KEYS = ("slo_attainment", "slo_attainment_strict", "utility_attainment")
OPTIONAL_RATIO_KEYS = ("qoe_mean", "qoe_share_099")
RATE_KEYS = ("goodput_rps", "output_tok_s")
STAT_KEYS = ("mean", *(f"p{p}" for p in PERCENTILES))


def build_run(records: Sequence[RequestRecord], *, duration_s: float, backend: str,
              system: str, policy: str, policy_options: dict[str, Any] | None, workload: str,
              arrival: str, rate_rps: float | None, seed: int | None, model: str = "",
              device: str = "", latency_model: str = "", arrival_cv: float | None = None,
              class_order: Sequence[str] = (),
              machine: dict[str, Any] | None = None,
              per_request: bool = False,
              latency_correction: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run object of docs/RESULTS.md from the records of every arrived request
    (with `per_request`, also their rows: `request_rows`). `latency_correction`: the online
    latency model's snapshot at the end of the run (latency_online.py), None when the policy
    planned with the profile frozen."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    run = {
        "schema": SCHEMA,
        "backend": backend,
        "system": system,
        "policy": policy,
        "policy_options": dict(sorted((policy_options or {}).items())),
        "workload": workload,
        "arrival": arrival,
        "rate_rps": rate_rps,
        "arrival_cv": arrival_cv,
        "seed": seed,
        "model": model,
        "device": device,
        "latency_model": latency_model,
        "latency_correction": latency_correction,
        "duration_s": duration_s,
        "summary": compute_stats(records, duration_s),
        "classes": compute_class_stats(records, duration_s, class_order),
    }
    if machine is not None:  # an optional key, after "device"
        keys = list(run)
        keys.insert(keys.index("device") + 1, "machine")
        run = {k: machine if k == "machine" else run[k] for k in keys}
    if per_request:
        run["requests"] = request_rows(records)
    return run


def request_rows(records: Sequence[RequestRecord]) -> list[dict[str, Any]]:
    """One row per request: what plots of distributions against each target need."""
    rows = []
    for r in records:
        rows.append({
            "id": r.request_id, "class": r.slo.slo_class, "status": r.status,
            "code": r.finish_code, "arrival_s": r.arrival_s,
            "prompt_tokens": r.num_prompt_tokens, "output_tokens": r.num_output_tokens,
            "ttft_ms": ttft_ms(r), "tpot_ms": tpot_ms(r), "e2e_ms": e2e_ms(r),
            "max_gap_ms": max_gap_ms(r),
            "target": {"ttft_ms": r.slo.ttft_ms, "tpot_ms": r.slo.tpot_ms,
                       "deadline_ms": r.slo.deadline_ms, "utility": r.slo.utility},
            "met": is_met(r), "met_strict": is_met_strict(r),
        })
    return rows


# --- writing ---

def round_floats(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """A copy with every float rounded to `digits` significant digits, non-finite -> None."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {str(k): round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value


def dumps(obj: Any) -> str:
    """Deterministic JSON text of a run or a list of runs (ending in a newline)."""
    return json.dumps(round_floats(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_results(path: str | Path, obj: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
    data = obj if isinstance(obj, dict) else list(obj)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(data))


# --- reading ---

def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Runs from a result file (one run object or a list of them), validated."""
    source = f"results {path}"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"{source}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not valid JSON: {e}") from None
    runs = [data] if isinstance(data, dict) else data
    if not isinstance(runs, list):
        raise ValueError(f"{source}: must hold a run object or a list of them")
    for i, run in enumerate(runs):
        validate_run(run, f"{source} run {i}" if len(runs) > 1 else source)
    return runs


def validate_run(run: Any, source: str = "run") -> None:
    """Raise ValueError (one line, naming the field) if `run` breaks the v1 schema."""
    if not isinstance(run, dict):
        raise ValueError(f"{source}: a run must be a JSON object")
    for key in REQUIRED_RUN_KEYS:
        if key not in run:
            raise ValueError(f"{source}: field {key}: missing")
    if run["schema"] != SCHEMA:
        raise ValueError(f"{source}: field schema: expected {SCHEMA!r}, got {run['schema']!r}")
    if run["backend"] not in BACKENDS:
        raise ValueError(f"{source}: field backend: must be one of {', '.join(BACKENDS)}")
    for key in ("system", "policy", "workload", "arrival"):
        if not isinstance(run[key], str):
            raise ValueError(f"{source}: field {key}: must be a string")
    correction = run.get("latency_correction")
    if correction is not None and not isinstance(correction, dict):
        raise ValueError(f"{source}: field latency_correction: must be an object or null")
    if not isinstance(run["policy_options"], dict):
        raise ValueError(f"{source}: field policy_options: must be an object")
    if run.get("machine") is not None and not isinstance(run["machine"], dict):
        raise ValueError(f"{source}: field machine: must be an object or null")
    _check_number(run["rate_rps"], f"{source}: field rate_rps", nullable=True)
    _check_number(run["duration_s"], f"{source}: field duration_s")
    validate_stats(run["summary"], f"{source}: field summary")
    if not isinstance(run["classes"], dict):
        raise ValueError(f"{source}: field classes: must be an object of STATS by class")
    for name, stats in run["classes"].items():
        validate_stats(stats, f"{source}: field classes.{name}")


def validate_stats(stats: Any, where: str) -> None:
    if not isinstance(stats, dict):
        raise ValueError(f"{where}: must be a STATS object")
    for key in COUNT_KEYS:
        value = stats.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}.{key}: must be an integer >= 0, got {value!r}")
    for key in RATIO_KEYS:
        _check_number(stats.get(key, "missing"), f"{where}.{key}", nullable=True, maximum=1.0)
    for key in RATE_KEYS:
        _check_number(stats.get(key, "missing"), f"{where}.{key}", nullable=True)
    for key in OPTIONAL_RATIO_KEYS:  # added after v1's first files: absent in older ones
        if key in stats:
            _check_number(stats[key], f"{where}.{key}", nullable=True, maximum=1.0)
    if "scorpio_goodput_rps" in stats:
        _check_number(stats["scorpio_goodput_rps"], f"{where}.scorpio_goodput_rps",
                      nullable=True)
    if "violations" in stats:
        counts = stats["violations"]
        if not isinstance(counts, dict) or any(
                not isinstance(counts.get(k), int) or counts[k] < 0 for k in VIOLATION_KINDS):
            raise ValueError(f"{where}.violations: must map {', '.join(VIOLATION_KINDS)} to "
                             f"integers >= 0")
    for metric in LATENCY_METRICS:
        values = stats.get(metric)
        if not isinstance(values, dict):
            raise ValueError(f"{where}.{metric}: must be an object of {', '.join(STAT_KEYS)}")
        for key in STAT_KEYS:
            _check_number(values.get(key, "missing"), f"{where}.{metric}.{key}", nullable=True)


def _check_number(value: Any, where: str, *, nullable: bool = False,
                  maximum: float | None = None) -> None:
    if value is None and nullable:
        return
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value >= 0 and (maximum is None or value <= maximum))
    if not ok:
        bound = f" and <= {maximum:g}" if maximum is not None else ""
        raise ValueError(f"{where}: must be a number >= 0{bound}"
                         f"{' or null' if nullable else ''}, got {value!r}")


# --- across runs ---

def capacity_rps(runs: Sequence[dict[str, Any]], policy: str, threshold: float = 0.9,
                 metric: str = "slo_attainment") -> float | None:
    """The highest rate up to which `policy`'s attainment stays >= `threshold` (SLICE.md).

    `policy` is a run label (sliceserve.metrics.aggregate.run_label: the policy name for
    sliceserve's runs). Over the rates of `runs` in increasing order, each the median over
    its seeds: the last rate before the first one below the threshold; None when even the
    lowest rate misses it.
    """
    from sliceserve.metrics.aggregate import curve

    best = None
    for rate, (median, _, _) in curve(runs, policy, metric):
        if median < threshold:
            break
        best = rate
    return best
