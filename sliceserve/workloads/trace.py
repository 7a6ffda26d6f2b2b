"""Trace replay: a JSON Lines file, one request a line.

    {"arrival_s": 0.5, "prompt_tokens": 120, "output_tokens": 40, "slo_class": "control"}
    {"arrival_s": 0.9, "prompt": "Turn left at ...", "output_tokens": 16, "slo_class": "nav",
     "ttft_ms": 300, "tpot_ms": 60, "deadline_ms": 2000, "utility": 30}

Fields: `arrival_s` (seconds from the start, used as they are), `prompt` (text) and/or
`prompt_tokens` (a count; with only a text, the count is estimated as ceil(chars / 4), the
usual ~4 characters per token of English BPE tokenizers; the simulator needs only the count, a
live client sends the text), `output_tokens` (generated exactly: max_tokens, EOS ignored),
`slo_class`, and optionally `ttft_ms`, `tpot_ms`, `deadline_ms`, `utility`, `priority`,
`request_id`. Absent SLO fields take the defaults of the class in the given workload (device-
relative ones resolved with the latency model and the line's own lengths); a line whose class
has no defaults must carry `ttft_ms`, `tpot_ms` and `utility`. Blank lines are skipped.
`priority` defaults to the class's priority, else the utility rank (highest utility -> 0) over
the workload's classes and the trace's lines.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sliceserve.latency_model import LatencyModel
from sliceserve.request import SLO
from sliceserve.workloads.generate import (
    RequestSpec,
    Traffic,
    class_order,
    resolve_class_slo,
    slo_picker,
)
from sliceserve.workloads.spec import Workload, utility_rank

CHARS_PER_TOKEN = 4
TRACE_FIELDS = ("arrival_s", "prompt", "prompt_tokens", "output_tokens", "slo_class", "ttft_ms",
                "tpot_ms", "deadline_ms", "utility", "priority", "request_id")


@dataclass(frozen=True, slots=True)
class _Line:
    spec: RequestSpec
    explicit_priority: int | None


def estimate_prompt_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def load_trace(path: str | Path, *, workload: Workload | None = None,
               latency_model: LatencyModel | None = None, seed: int = 0) -> Traffic:
    """Read a JSON Lines trace; `seed` picks among a class's SLO choices, if it has any."""
    source = f"trace {path}"
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"{source}: cannot read it ({e.strerror})") from None
    return parse_trace(text, source=source, name=Path(path).name, workload=workload,
                       latency_model=latency_model, seed=seed)


def parse_trace(text: str, *, source: str = "trace", name: str = "trace",
                workload: Workload | None = None, latency_model: LatencyModel | None = None,
                seed: int = 0) -> Traffic:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
    lines: list[_Line] = []
    ids: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{source} line {number}"
        line = _parse_line(raw, number, where, workload, latency_model, rng)
        if line.spec.request_id in ids:
            raise ValueError(f"{where}: duplicate request_id {line.spec.request_id!r}")
        ids.add(line.spec.request_id)
        lines.append(line)
    if not lines:
        raise ValueError(f"{source}: holds no requests")
    utilities = [line.spec.slo.utility for line in lines]
    if workload is not None:
        utilities += [c.utility for c in workload.classes]
    specs = []
    for line in lines:
        priority = line.explicit_priority
        if priority is None:
            priority = utility_rank(line.spec.slo.utility, utilities)
        specs.append(replace(line.spec, priority=priority))
    primary = workload.class_names if workload is not None else ()
    order = class_order(primary, [s.slo.slo_class for s in specs])
    return Traffic(name, "trace", None, None, seed, tuple(specs), order)


def _parse_line(raw: str, number: int, where: str, workload: Workload | None,
                latency_model: LatencyModel | None, rng: np.random.Generator) -> _Line:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a JSON object")
    unknown = sorted(set(data) - set(TRACE_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; valid: {', '.join(TRACE_FIELDS)}")
    arrival_s = _number(data, "arrival_s", where, minimum=0.0, required=True)
    prompt = data.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise ValueError(f"{where}: field prompt: must be a non-empty string")
    if prompt is None and data.get("prompt_tokens") is None:
        raise ValueError(f"{where}: needs prompt (text) or prompt_tokens (a count)")
    num_prompt = _count(data, "prompt_tokens", where, required=False)
    if num_prompt is None:
        num_prompt = estimate_prompt_tokens(prompt)  # type: ignore[arg-type]
    num_output = _count(data, "output_tokens", where, required=True)
    slo_class = data.get("slo_class")
    if not isinstance(slo_class, str) or not slo_class:
        raise ValueError(f"{where}: field slo_class: must be a non-empty string")
    given = {k: _number(data, k, where, minimum=0.0, positive=True)
             for k in ("ttft_ms", "tpot_ms", "deadline_ms", "utility")}
    priority = data.get("priority")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)
                                 or priority < 0):
        raise ValueError(f"{where}: field priority: must be an integer >= 0, got {priority!r}")
    cls = workload.get_class(slo_class) if workload is not None else None
    if cls is None:
        missing = [k for k in ("ttft_ms", "tpot_ms", "utility") if given[k] is None]
        if missing:
            context = ("no workload was given for class defaults" if workload is None
                       else f"class {slo_class!r} is not in workload {workload.name!r}")
            raise ValueError(f"{where}: missing {', '.join(missing)} ({context}; a line without "
                             "class defaults must carry ttft_ms, tpot_ms and utility)")
        ttft, tpot, deadline, utility = (given["ttft_ms"], given["tpot_ms"],
                                         given["deadline_ms"], given["utility"])
    else:
        if cls.is_device_relative and latency_model is None:
            raise ValueError(f"{where}: class {slo_class!r} has SLOs relative to the device "
                             "(l1, pf): give a latency model")
        ttft, tpot, deadline = resolve_class_slo(
            cls, num_prompt, num_output, latency_model, slo_picker(rng),
            given["ttft_ms"], given["tpot_ms"])
        if given["deadline_ms"] is not None:
            deadline = given["deadline_ms"]
        utility = given["utility"] if given["utility"] is not None else cls.utility
        if priority is None:
            priority = cls.priority
    request_id = data.get("request_id", f"line-{number}")
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"{where}: field request_id: must be a non-empty string")
    slo = SLO(ttft_ms=ttft, tpot_ms=tpot, deadline_ms=deadline,  # type: ignore[arg-type]
              utility=utility, slo_class=slo_class)  # type: ignore[arg-type]
    spec = RequestSpec(request_id, arrival_s, num_prompt, num_output, slo,  # type: ignore[arg-type]
                       0, prompt)
    return _Line(spec, priority)


def _number(data: dict[str, Any], key: str, where: str, *, minimum: float,
            positive: bool = False, required: bool = False) -> float | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}: field {key}: missing")
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value >= minimum and (value > 0 or not positive))
    if not ok:
        kind = "a positive number" if positive else f"a number >= {minimum:g}"
        raise ValueError(f"{where}: field {key}: must be {kind}, got {value!r}")
    return float(value)


def _count(data: dict[str, Any], key: str, where: str, *, required: bool) -> int | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}: field {key}: missing")
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: field {key}: must be an integer >= 1, got {value!r}")
    return value
