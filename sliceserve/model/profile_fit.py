"""Measured iteration latencies (a `Profile`) and the latency model fitted to them.

The latency model of the core (sliceserve/latency_model.py) predicts one iteration as

    decode_ms(rows) + prefill_ms_per_token * (new_tokens - rows) + context_ms_per_token * context
        + prefill_attention_ms_per_pair * pairs

where `context` counts, as the simulator's executor does, every chunk's computed + new tokens,
and `pairs` the causal query-key pairs of the prompt chunk (`chunk_pairs`).
The fit separates those terms from three kinds of measured points:

- decode: `batch_size` rows each decoding one token over `context_tokens` of KV;
- prefill: one prompt chunk of `prefill_tokens` tokens alone (after `prefill_context_tokens`
  already in the cache: a later chunk of a long prompt);
- mixed: both in one iteration (not fitted: they check that the terms add up).

Pure Python (no torch), so fits are testable on synthetic points.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from sliceserve.latency_model import LatencyModel, chunk_pairs

PointKind = Literal["decode", "prefill", "mixed"]
POINT_KINDS: tuple[str, ...] = ("decode", "prefill", "mixed")
PROFILE_SCHEMA = "sliceserve.profile/v1"
# A noise guard only: real context terms stay well below it (SmolLM2 on a 2-core CPU: about
# 60% of a 32-row decode at 256 tokens of context).
MAX_CONTEXT_SHARE = 0.9


class ProfileError(ValueError):
    """A profile that cannot be measured, read or fitted."""


@dataclass(frozen=True)
class ProfilePoint:
    """One measured iteration shape and its latency (the median of `samples_ms`)."""

    kind: PointKind
    batch_size: int  # decode rows
    context_tokens: int  # KV tokens each decode row attends to before its new token
    prefill_tokens: int  # tokens of the one prefill chunk (0: none)
    ms: float
    samples_ms: tuple[float, ...] = ()
    # Tokens of the prefilling request already in the KV cache: a later chunk of a prompt.
    prefill_context_tokens: int = 0

    def __post_init__(self) -> None:
        if self.kind not in POINT_KINDS:
            raise ProfileError(f"profile point kind must be one of {', '.join(POINT_KINDS)}, "
                               f"got {self.kind!r}")
        if min(self.batch_size, self.context_tokens, self.prefill_tokens,
               self.prefill_context_tokens) < 0:
            raise ProfileError("profile point sizes must be >= 0")
        if (self.batch_size > 0) != (self.kind != "prefill") or \
                (self.prefill_tokens > 0) != (self.kind != "decode"):
            raise ProfileError(f"a {self.kind} point has decode rows iff it is not 'prefill' and "
                               f"prefill tokens iff it is not 'decode', got {self}")
        if not (math.isfinite(self.ms) and self.ms > 0):
            raise ProfileError(f"profile point latency must be a positive number, got {self.ms!r}")

    # The iteration as the latency model sees it.
    @property
    def num_rows(self) -> int:
        return self.batch_size + (1 if self.prefill_tokens else 0)

    @property
    def num_new_tokens(self) -> int:
        return self.batch_size + self.prefill_tokens

    @property
    def num_context_tokens(self) -> int:
        return (self.batch_size * (self.context_tokens + 1) + self.prefill_context_tokens
                + self.prefill_tokens)

    @property
    def attention_pairs(self) -> float:
        return chunk_pairs(self.prefill_tokens, self.prefill_context_tokens)

    def predicted_ms(self, model: LatencyModel) -> float:
        return model.iteration_ms(self.num_rows, self.num_new_tokens, self.num_context_tokens,
                                  self.attention_pairs)

    def label(self) -> str:
        parts = []
        if self.batch_size:
            parts.append(f"decode {self.batch_size} x ctx {self.context_tokens}")
        if self.prefill_tokens:
            after = self.prefill_context_tokens
            parts.append(f"prefill {self.prefill_tokens}" + (f" after {after}" if after else ""))
        return " + ".join(parts)


@dataclass(frozen=True)
class Profile:
    """Latencies measured on one device for one model, dtype and thread count."""

    model: str
    device: str
    dtype: str
    num_threads: int
    kv_capacity_tokens: int
    points: tuple[ProfilePoint, ...]
    repeats: int = 1
    seconds: float = 0.0  # how long measuring took
    skipped: tuple[str, ...] = ()  # shapes left out (they do not fit the KV cache)
    # 1-minute load average of the machine after measuring (None: unknown). Above the number
    # of cores, other processes competed for the CPU and the figures are inflated.
    load_average: float | None = None
    # What the timings ran on and in (sliceserve.model.precision.machine_block): the CPU and
    # its flags, the dtype and why, the kernels' vector path. None: not recorded.
    machine: dict[str, Any] | None = None

    def of_kind(self, kind: PointKind) -> list[ProfilePoint]:
        return [p for p in self.points if p.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["points"] = [asdict(p) | {"samples_ms": list(p.samples_ms)} for p in self.points]
        data["skipped"] = list(self.skipped)
        return {"schema": PROFILE_SCHEMA, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        if not isinstance(data, dict) or data.get("schema") != PROFILE_SCHEMA:
            raise ProfileError(f"a profile must be a JSON object with schema {PROFILE_SCHEMA!r}")
        try:
            points = tuple(ProfilePoint(**{**p, "samples_ms": tuple(p.get("samples_ms", ()))})
                           for p in data["points"])
            fields = {k: v for k, v in data.items() if k not in ("schema", "points", "skipped")}
            return cls(points=points, skipped=tuple(data.get("skipped", ())), **fields)
        except (KeyError, TypeError) as e:
            raise ProfileError(f"profile: malformed ({e})") from None


@dataclass(frozen=True)
class FitError:
    point: ProfilePoint
    predicted_ms: float

    @property
    def error(self) -> float:
        """Relative error of the prediction: (predicted - measured) / measured."""
        return (self.predicted_ms - self.point.ms) / self.point.ms


def fit_latency_model(profile: Profile, name: str, device: str = "", model: str = "",
                      notes: str = "") -> LatencyModel:
    """The latency model that best explains the decode and prefill points of `profile`."""
    decode = {(p.batch_size, p.context_tokens): p.ms for p in profile.of_kind("decode")}
    if not any(b == 1 for b, _ in decode):
        raise ProfileError("profile: the fit needs decode points at batch size 1")
    context_ms, base = fit_decode(decode)
    table = decode_table(base)
    prefill_ms, pair_ms = fit_prefill(profile.of_kind("prefill"), table[0], context_ms)
    fitted = LatencyModel(name=name, decode_ms=tuple(table), decode_slope_ms=tail_slope(base),
                          prefill_ms_per_token=prefill_ms, context_ms_per_token=context_ms,
                          prefill_attention_ms_per_pair=pair_ms,
                          kv_capacity_tokens=profile.kv_capacity_tokens, device=device,
                          model=model)
    errors = [abs(e.error) for e in fit_errors(profile, fitted)]
    summary = (f"fitted to {len(profile.points)} points ({profile.dtype}, "
               f"{profile.num_threads} threads): |error| median "
               f"{100 * statistics.median(errors):.1f}%, max {100 * max(errors):.1f}%")
    return replace(fitted, notes=f"{notes} {summary}".strip())


def fit_decode(decode: dict[tuple[int, int], float]) -> tuple[float, dict[int, float]]:
    """(context_ms_per_token, decode ms by batch size at zero context) for decode points
    ms(b, c) = D(b) + ctx * b * (c + 1), by least squares of relative error: a small batch's
    point counts as much as a large one's (on CPUs the context costs more per token at small
    batches, and edge devices mostly run small ones).

    For a given ctx each D(b) is the weighted mean of ms - ctx * x over b's contexts, so
    ctx solves a one-variable problem over the deviations from those means. Capped so that
    it explains at most MAX_CONTEXT_SHARE of each batch size's point at its shortest context
    and of its weighted mean point (the one D(b) is taken from), which keeps the decode table
    left after it positive whatever the noise.
    """
    batches = sorted({b for b, _ in decode})
    groups = {b: [(b * (c + 1), ms, 1.0 / (ms * ms)) for (b2, c), ms in decode.items() if b2 == b]
              for b in batches}
    means = {}
    num = den = 0.0
    for b, points in groups.items():
        total = sum(w for _, _, w in points)
        mean_ms = sum(w * ms for _, ms, w in points) / total
        mean_x = sum(w * x for x, _, w in points) / total
        means[b] = (mean_ms, mean_x)
        num += sum(w * (ms - mean_ms) * (x - mean_x) for x, ms, w in points)
        den += sum(w * (x - mean_x) ** 2 for x, _, w in points)
    context_ms = max(0.0, num / den) if den > 0 else 0.0
    cap = min(MAX_CONTEXT_SHARE * min(ms for x, ms, _ in points if x == min(p[0] for p in points))
              / min(p[0] for p in points) for points in groups.values())
    cap = min(cap, *(MAX_CONTEXT_SHARE * mean_ms / mean_x
                     for mean_ms, mean_x in means.values() if mean_x > 0))
    context_ms = min(context_ms, cap)
    return context_ms, {b: mean_ms - context_ms * mean_x for b, (mean_ms, mean_x) in means.items()}


def decode_table(base: dict[int, float]) -> list[float]:
    """decode_ms for k = 1..max measured batch: measured points joined by straight lines,
    made non-decreasing (a larger batch never costs less; dips are measurement noise)."""
    batches = sorted(base)
    table = []
    for k in range(1, batches[-1] + 1):
        hi = next(b for b in batches if b >= k)
        lo = max((b for b in batches if b <= k), default=hi)
        if hi == lo:
            value = base[k]
        else:
            value = base[lo] + (base[hi] - base[lo]) * (k - lo) / (hi - lo)
        table.append(value)
    for i in range(1, len(table)):
        table[i] = max(table[i], table[i - 1])
    if table[0] <= 0:
        raise ProfileError(f"profile: decode at batch 1 fits to {table[0]:.3g} ms after the "
                           "context term; the measurements are inconsistent")
    return table


def tail_slope(base: dict[int, float]) -> float:
    """ms per extra row beyond the table: least-squares slope over the upper half of the
    measured batch sizes (at least the last two)."""
    batches = sorted(base)
    if len(batches) < 2:
        return 0.0
    tail = [b for b in batches if b >= batches[-1] / 2]
    tail = tail if len(tail) >= 2 else batches[-2:]
    mean_b = statistics.fmean(tail)
    mean_ms = statistics.fmean(base[b] for b in tail)
    den = sum((b - mean_b) ** 2 for b in tail)
    return max(0.0, sum((b - mean_b) * (base[b] - mean_ms) for b in tail) / den)


def fit_prefill(points: Sequence[ProfilePoint], decode_1_ms: float,
                context_ms: float) -> tuple[float, float]:
    """(prefill_ms_per_token, prefill_attention_ms_per_pair) for prefill chunks alone:
    ms(n after c) = decode_ms(1) + pf * (n - 1) + ctx * (c + n) + q * chunk_pairs(n, c), with
    the intercept and context term already fixed by the decode points. Least squares of
    relative error (a TTFT of a short prompt matters as much as a long one's). Causal
    attention makes long prompts and later chunks cost more per token than short ones; when
    the points show no such curve (q <= 0), need a negative pf for it, or cannot tell the two
    terms apart (a single prompt shape), the linear fit with q = 0."""
    xx = xz = zz = xy = zy = 0.0  # weighted sums of the normal equations, x: n - 1, z: pairs
    top_pairs = top_ms = 0.0
    for p in points:
        x, z = p.prefill_tokens - 1, p.attention_pairs
        top_pairs, top_ms = max(top_pairs, z), max(top_ms, p.ms)
        y = _prefill_residual_ms(p, decode_1_ms, context_ms)
        w = 1.0 / (p.ms * p.ms)
        xx, xz, zz = xx + w * x * x, xz + w * x * z, zz + w * z * z
        xy, zy = xy + w * x * y, zy + w * z * y
    det = xx * zz - xz * xz
    if det > 1e-9 * xx * zz:  # not (nearly) collinear: at least two distinct prompt shapes
        per_token, per_pair = (zz * xy - xz * zy) / det, (xx * zy - xz * xy) / det
        # (a q explaining under a billionth of the largest point is rounding noise)
        if per_pair * top_pairs > 1e-9 * top_ms and per_token >= 0:
            return per_token, per_pair
    return fit_prefill_ms_per_token(points, decode_1_ms, context_ms), 0.0


def fit_prefill_ms_per_token(points: Sequence[ProfilePoint], decode_1_ms: float,
                             context_ms: float) -> float:
    """The linear fit of `fit_prefill` (q = 0): ms(n after c) = decode_ms(1) + pf * (n - 1)
    + ctx * (c + n). Without the attention term later chunks of a prompt (c > 0), which attend
    to what came before, can only spread it over pf: they pull it up, as they do in a run with
    chunked prefill."""
    num = den = 0.0
    for p in points:
        x = p.prefill_tokens - 1
        y = _prefill_residual_ms(p, decode_1_ms, context_ms)
        w = 1.0 / (p.ms * p.ms)
        num += w * x * y
        den += w * x * x
    return max(0.0, num / den) if den > 0 else 0.0


def _prefill_residual_ms(p: ProfilePoint, decode_1_ms: float, context_ms: float) -> float:
    """What a prefill point leaves for the prefill and attention terms to explain."""
    return p.ms - decode_1_ms - context_ms * (p.prefill_context_tokens + p.prefill_tokens)


def fit_errors(profile: Profile | Iterable[ProfilePoint], model: LatencyModel) -> list[FitError]:
    points = profile.points if isinstance(profile, Profile) else tuple(profile)
    return [FitError(p, p.predicted_ms(model)) for p in points]
