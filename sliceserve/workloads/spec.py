"""Workloads as data: request classes with lengths, SLOs, utility and share.

A workload file is JSON (presets live in `sliceserve/data/workloads/`):

    {
      "schema": "sliceserve.workload/v1",          # optional
      "name": "edge",
      "description": "...",                        # optional
      "lengths": "log_uniform",                    # or "uniform" (the default)
      "classes": {
        "control": {
          "share": 0.2,                            # relative weight (normalized over classes)
          "prompt_tokens": [64, 256],              # inclusive range, or one integer
          "output_tokens": [8, 32],
          "ttft_ms": {"pf": 3, "l1": 3},           # 3 (pf + l1)
          "tpot_ms": {"l1": 2},                    # 2 l1
          "deadline_ms": null,                     # optional
          "utility": 100,
          "priority": 0,                           # optional; default: utility rank
          "lengths": "uniform"                     # optional per-class override
        }
      }
    }

An SLO value is
  - a number: milliseconds, e.g. `200`;
  - an object: a sum of coefficient x term, e.g. `{"pf": 3, "l1": 3}` = 3 pf + 3 l1, with terms
      `ms`  1 millisecond (a constant),
      `l1`  the device's decode latency at batch 1 (`latency_model.decode_latency_ms(1)`),
      `pf`  the prefill latency of the request's own prompt (`latency_model.prefill_ms(n)`),
    and, in `deadline_ms` only, `ttft` (the request's TTFT SLO) and `n_out_tpot` (its output
    length times its TPOT SLO): `{"ttft": 0.8, "n_out_tpot": 0.8}` = 0.8 (ttft + n_out tpot);
  - a list of the above: one is chosen uniformly at random per request, e.g. `[100, 120]`.
Coefficients must be positive. `l1` and `pf` make the SLOs relative to the device, so that one
workload fits a slow CPU and a GPU alike; resolving them needs a latency model.

Lengths are drawn uniformly (`uniform`) or log-uniformly (`log_uniform`: uniform in log space,
so short and long requests are equally likely per octave) over integers in the inclusive range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from sliceserve.latency_model import LatencyModel

SCHEMA = "sliceserve.workload/v1"
PRESETS_PACKAGE = "sliceserve.data.workloads"
LengthDist = Literal["uniform", "log_uniform"]
LENGTH_DISTS: tuple[str, ...] = ("uniform", "log_uniform")
DEVICE_TERMS = ("ms", "l1", "pf")
DEADLINE_TERMS = (*DEVICE_TERMS, "ttft", "n_out_tpot")
_TOP_FIELDS = {"schema", "name", "description", "lengths", "classes"}
_CLASS_FIELDS = {"share", "prompt_tokens", "output_tokens", "ttft_ms", "tpot_ms", "deadline_ms",
                 "utility", "priority", "lengths", "description"}


@dataclass(frozen=True, slots=True)
class SloContext:
    """What an SLO expression may refer to, for one request."""

    l1_ms: float | None  # None when no latency model was given
    pf_ms: float | None
    num_output_tokens: int
    ttft_ms: float | None = None  # filled when resolving a deadline
    tpot_ms: float | None = None


@dataclass(frozen=True, slots=True)
class SloExpr:
    """A sum of coefficient x term (see the module docstring); a plain number is `ms` only."""

    terms: tuple[tuple[str, float], ...]

    @property
    def is_device_relative(self) -> bool:
        return any(term in ("l1", "pf") for term, _ in self.terms)

    def resolve(self, ctx: SloContext) -> float:
        values = {"ms": 1.0, "l1": ctx.l1_ms, "pf": ctx.pf_ms, "ttft": ctx.ttft_ms,
                  "n_out_tpot": None if ctx.tpot_ms is None
                  else ctx.num_output_tokens * ctx.tpot_ms}
        total = 0.0
        for term, coefficient in self.terms:
            value = values[term]
            if value is None:
                raise ValueError(f"SLO term {term!r} needs a latency model")
            total += coefficient * value
        return total

    def to_json(self) -> float | dict[str, float]:
        if len(self.terms) == 1 and self.terms[0][0] == "ms":
            return self.terms[0][1]
        return dict(self.terms)


SloChoice = tuple[SloExpr, ...]  # one alternative is picked per request (uniformly)


@dataclass(frozen=True, slots=True)
class ClassSpec:
    name: str
    share: float  # normalized: the shares of a workload sum to 1
    prompt_tokens: tuple[int, int]  # inclusive bounds
    output_tokens: tuple[int, int]
    ttft_ms: SloChoice
    tpot_ms: SloChoice
    deadline_ms: SloChoice | None
    utility: float
    priority: int | None  # None: from the utility rank (see Workload.priority_of)
    lengths: LengthDist

    @property
    def is_device_relative(self) -> bool:
        choices = [*self.ttft_ms, *self.tpot_ms, *(self.deadline_ms or ())]
        return any(e.is_device_relative for e in choices)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    classes: tuple[ClassSpec, ...]
    description: str = ""

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def is_device_relative(self) -> bool:
        return any(c.is_device_relative for c in self.classes)

    def get_class(self, name: str) -> ClassSpec | None:
        return next((c for c in self.classes if c.name == name), None)

    def priority_of(self, spec: ClassSpec) -> int:
        """vLLM-style priority (lower is served first): the class's own, or its utility rank."""
        if spec.priority is not None:
            return spec.priority
        return utility_rank(spec.utility, [c.utility for c in self.classes])


def utility_rank(utility: float, utilities: list[float]) -> int:
    """Dense rank of `utility` among `utilities`, the highest ranked 0."""
    return sorted(set(utilities), reverse=True).index(utility)


# --- loading and validation ---

def list_presets() -> list[str]:
    files = resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".json"))


def load_workload(name_or_path: str | Path) -> Workload:
    """A preset by name (`paper`, `edge`) or a workload JSON file."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_text()
        except OSError as e:
            raise ValueError(f"workload file {text_name}: cannot read it ({e.strerror})") from None
        return parse_workload(text, source=f"workload file {text_name}")
    presets = list_presets()
    if text_name not in presets:
        raise ValueError(f"unknown workload {text_name!r}: give a JSON file or one of "
                         f"{', '.join(presets)}")
    text = resources.files(PRESETS_PACKAGE).joinpath(f"{text_name}.json").read_text()
    return parse_workload(text, source=f"workload preset {text_name}")


def parse_workload(text: str, source: str = "workload") -> Workload:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not valid JSON: {e}") from None
    except _DuplicateKey as e:
        raise ValueError(f"{source}: duplicate key {e.args[0]!r}") from None
    return workload_from_dict(data, source)


def workload_from_dict(data: Any, source: str = "workload") -> Workload:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: must hold a JSON object")
    _check_fields(data, _TOP_FIELDS, source, "")
    if "schema" in data and data["schema"] != SCHEMA:
        raise ValueError(f"{source}: field schema: expected {SCHEMA!r}, got {data['schema']!r}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: field name: must be a non-empty string")
    default_lengths = _lengths(data.get("lengths", "uniform"), source, "lengths")
    classes = data.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"{source}: field classes: must be a non-empty object of classes by name")
    raw = [_class_from_dict(k, v, default_lengths, source) for k, v in classes.items()]
    total = sum(c.share for c in raw)
    normalized = tuple(replace(c, share=c.share / total) for c in raw)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{source}: field description: must be a string")
    return Workload(name=name, classes=normalized, description=description)


def _class_from_dict(name: str, data: Any, default_lengths: LengthDist, source: str) -> ClassSpec:
    where = f"classes.{name}"
    if not name:
        raise ValueError(f"{source}: field classes: a class name must be non-empty")
    if not isinstance(data, dict):
        raise ValueError(f"{source}: field {where}: must be an object")
    _check_fields(data, _CLASS_FIELDS, source, where + ".")
    for required in ("share", "prompt_tokens", "output_tokens", "ttft_ms", "tpot_ms", "utility"):
        if required not in data:
            raise ValueError(f"{source}: field {where}.{required}: missing")
    priority = data.get("priority")
    if priority is not None and (not _is_int(priority) or priority < 0):
        raise ValueError(f"{source}: field {where}.priority: must be an integer >= 0, "
                         f"got {priority!r}")
    deadline = data.get("deadline_ms")
    return ClassSpec(
        name=name,
        share=_positive(data["share"], source, f"{where}.share"),
        prompt_tokens=_token_range(data["prompt_tokens"], source, f"{where}.prompt_tokens"),
        output_tokens=_token_range(data["output_tokens"], source, f"{where}.output_tokens"),
        ttft_ms=_slo_choice(data["ttft_ms"], DEVICE_TERMS, source, f"{where}.ttft_ms"),
        tpot_ms=_slo_choice(data["tpot_ms"], DEVICE_TERMS, source, f"{where}.tpot_ms"),
        deadline_ms=None if deadline is None
        else _slo_choice(deadline, DEADLINE_TERMS, source, f"{where}.deadline_ms"),
        utility=_positive(data["utility"], source, f"{where}.utility"),
        priority=priority,
        lengths=_lengths(data.get("lengths", default_lengths), source, f"{where}.lengths"),
    )


def _check_fields(data: Mapping[str, Any], known: set[str], source: str, prefix: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: field {prefix}{unknown[0]}: unknown; valid: "
                         f"{', '.join(sorted(known))}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _positive(value: Any, source: str, where: str) -> float:
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{source}: field {where}: must be a positive number, got {value!r}")
    return float(value)


def _lengths(value: Any, source: str, where: str) -> LengthDist:
    if value not in LENGTH_DISTS:
        raise ValueError(f"{source}: field {where}: must be one of {', '.join(LENGTH_DISTS)}, "
                         f"got {value!r}")
    return value  # type: ignore[no-any-return]


def _token_range(value: Any, source: str, where: str) -> tuple[int, int]:
    if _is_int(value):
        value = [value, value]
    ok = (isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)
          and 1 <= value[0] <= value[1])
    if not ok:
        raise ValueError(f"{source}: field {where}: must be an integer >= 1 or a range "
                         f"[min, max] of integers with 1 <= min <= max, got {value!r}")
    return (value[0], value[1])


def _slo_choice(value: Any, terms: tuple[str, ...], source: str, where: str) -> SloChoice:
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{source}: field {where}: a choice list must not be empty")
        return tuple(_slo_expr(v, terms, source, where) for v in value)
    return (_slo_expr(value, terms, source, where),)


def _slo_expr(value: Any, terms: tuple[str, ...], source: str, where: str) -> SloExpr:
    if _is_number(value):
        return SloExpr((("ms", _positive(value, source, where)),))
    if isinstance(value, dict) and value:
        parsed = []
        for term, coefficient in value.items():
            if term not in terms:
                raise ValueError(f"{source}: field {where}: unknown term {term!r}; valid: "
                                 f"{', '.join(terms)}")
            parsed.append((term, _positive(coefficient, source, f"{where}.{term}")))
        return SloExpr(tuple(parsed))
    raise ValueError(f"{source}: field {where}: must be a positive number of ms, an object of "
                     f"terms such as {{\"l1\": 2}}, or a list of these; got {value!r}")


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def slo_context(latency_model: LatencyModel | None, num_prompt_tokens: int,
                num_output_tokens: int) -> SloContext:
    if latency_model is None:
        return SloContext(None, None, num_output_tokens)
    return SloContext(latency_model.decode_latency_ms(1),
                      latency_model.prefill_ms(num_prompt_tokens), num_output_tokens)
