"""Traffic: seeded request streams from a workload and an arrival process.

The same `Traffic` feeds the simulator, the engine and a live benchmark client, so every
policy and system sees identical requests. A `RequestSpec` is an immutable description;
`to_request()` makes a fresh, unscheduled `Request` from it (one per run: runs mutate them).

Randomness: one `numpy.random.SeedSequence(seed)` is split into two PCG64 streams, one for
arrival gaps and one for request contents (class, lengths, SLO choices). So the same seed gives
the same requests at every rate: only the arrival times scale with 1 / rate.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from sliceserve.latency_model import LatencyModel
from sliceserve.request import SLO, Request, SamplingParams
from sliceserve.workloads.spec import ClassSpec, SloChoice, SloExpr, Workload, slo_context

ArrivalKind = Literal["poisson", "gamma", "trace"]
ARRIVALS: tuple[str, ...] = ("poisson", "gamma")  # generated; "trace" is replayed from a file
DEFAULT_CV = 3.0


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a traffic stream, before it is served."""

    request_id: str
    arrival_s: float  # seconds from the start of the run
    num_prompt_tokens: int
    num_output_tokens: int  # generated exactly: max_tokens with EOS ignored
    slo: SLO  # slo.slo_class is the class name
    priority: int = 0  # vLLM-style: lower is served first
    prompt: str | None = None  # a trace's text prompt; None: synthesize num_prompt_tokens tokens

    def to_request(self) -> Request:
        return Request(
            request_id=self.request_id,
            arrival_s=self.arrival_s,
            num_prompt_tokens=self.num_prompt_tokens,
            sampling=SamplingParams(max_tokens=self.num_output_tokens, ignore_eos=True),
            slo=self.slo,
            prompt_token_ids=None,
            priority=self.priority,
        )


@dataclass(frozen=True, slots=True)
class Traffic:
    """A request stream and how it was made (what a result file records)."""

    workload: str  # workload name, or the trace file's name
    arrival: ArrivalKind
    rate_rps: float | None  # None for a trace
    cv: float | None  # gamma only
    seed: int
    requests: tuple[RequestSpec, ...]
    class_order: tuple[str, ...]  # for reports: the workload's classes, then others

    def to_requests(self) -> list[Request]:
        return [spec.to_request() for spec in self.requests]


# --- arrival processes ---

def poisson_arrivals(rate_rps: float, num_requests: int, rng: np.random.Generator) -> list[float]:
    """Arrival times (s) of a Poisson process: exponential gaps with mean 1 / rate."""
    _check_rate(rate_rps)
    gaps = rng.standard_exponential(num_requests) / rate_rps
    return np.cumsum(gaps).tolist()


def gamma_arrivals(rate_rps: float, cv: float, num_requests: int,
                   rng: np.random.Generator) -> list[float]:
    """Arrival times (s) with gamma gaps: mean 1 / rate, coefficient of variation `cv`.

    Shape k = 1 / cv^2 (cv = 1 is Poisson; cv > 1 is bursty), scale = 1 / (k rate).
    """
    _check_rate(rate_rps)
    if not (math.isfinite(cv) and cv > 0):
        raise ValueError(f"gamma arrivals: cv must be a positive number, got {cv!r}")
    shape = 1.0 / (cv * cv)
    gaps = rng.standard_gamma(shape, num_requests) / (shape * rate_rps)
    return np.cumsum(gaps).tolist()


def _check_rate(rate_rps: float) -> None:
    if not (isinstance(rate_rps, (int, float)) and math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"arrival rate must be a positive number of requests/s, got {rate_rps!r}")


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    arrivals, contents = np.random.SeedSequence(seed).spawn(2)
    return np.random.Generator(np.random.PCG64(arrivals)), np.random.Generator(
        np.random.PCG64(contents))


# --- generation ---

def generate_traffic(workload: Workload, *, arrival: str = "poisson", rate_rps: float,
                     num_requests: int, seed: int, latency_model: LatencyModel | None = None,
                     cv: float = DEFAULT_CV) -> Traffic:
    """`num_requests` requests of `workload`, arriving by `arrival` at `rate_rps` on average."""
    if not isinstance(num_requests, int) or num_requests < 1:
        raise ValueError(f"num_requests must be an integer >= 1, got {num_requests!r}")
    if workload.is_device_relative and latency_model is None:
        raise ValueError(f"workload {workload.name!r} has SLOs relative to the device "
                         "(l1, pf): give a latency model")
    arrival_rng, content_rng = _streams(seed)
    if arrival == "poisson":
        times = poisson_arrivals(rate_rps, num_requests, arrival_rng)
    elif arrival == "gamma":
        times = gamma_arrivals(rate_rps, cv, num_requests, arrival_rng)
    else:
        raise ValueError(f"unknown arrival process {arrival!r}; valid: {', '.join(ARRIVALS)} "
                         "(a trace is read with load_trace)")
    cumulative = np.cumsum([c.share for c in workload.classes]).tolist()
    specs = []
    for i, arrival_s in enumerate(times):
        index = min(bisect.bisect_right(cumulative, content_rng.random()), len(cumulative) - 1)
        cls = workload.classes[index]
        num_prompt = draw_length(cls.prompt_tokens, cls.lengths, content_rng)
        num_output = draw_length(cls.output_tokens, cls.lengths, content_rng)
        ttft, tpot, deadline = resolve_class_slo(cls, num_prompt, num_output, latency_model,
                                                 slo_picker(content_rng))
        slo = SLO(ttft_ms=ttft, tpot_ms=tpot, deadline_ms=deadline, utility=cls.utility,
                  slo_class=cls.name)
        specs.append(RequestSpec(f"req-{i}", arrival_s, num_prompt, num_output, slo,
                                 workload.priority_of(cls)))
    return Traffic(workload.name, arrival, float(rate_rps),  # type: ignore[arg-type]
                   float(cv) if arrival == "gamma" else None, seed, tuple(specs),
                   workload.class_names)


def draw_length(bounds: tuple[int, int], dist: str, rng: np.random.Generator) -> int:
    """An integer in [lo, hi], uniform or log-uniform (one uniform draw either way)."""
    lo, hi = bounds
    u = rng.random()
    if dist == "log_uniform":
        value = math.exp(math.log(lo) + u * (math.log(hi + 1) - math.log(lo)))
    else:
        value = lo + u * (hi - lo + 1)
    return min(int(value), hi)


Picker = Callable[[SloChoice], SloExpr]


def slo_picker(rng: np.random.Generator) -> Picker:
    def pick(choice: SloChoice) -> SloExpr:
        # Draw only for a real choice, so adding a choice list to one class leaves the
        # random stream of workloads without one unchanged.
        return choice[0] if len(choice) == 1 else choice[int(rng.integers(len(choice)))]
    return pick


def resolve_class_slo(cls: ClassSpec, num_prompt_tokens: int, num_output_tokens: int,
                      latency_model: LatencyModel | None, pick: Picker,
                      ttft_ms: float | None = None, tpot_ms: float | None = None,
                      ) -> tuple[float, float, float | None]:
    """A class's (ttft_ms, tpot_ms, deadline_ms) for one request; given values win."""
    ctx = slo_context(latency_model, num_prompt_tokens, num_output_tokens)
    ttft = ttft_ms if ttft_ms is not None else pick(cls.ttft_ms).resolve(ctx)
    tpot = tpot_ms if tpot_ms is not None else pick(cls.tpot_ms).resolve(ctx)
    if cls.deadline_ms is None:
        return ttft, tpot, None
    deadline_ctx = replace(ctx, ttft_ms=ttft, tpot_ms=tpot)
    return ttft, tpot, pick(cls.deadline_ms).resolve(deadline_ctx)


def class_order(primary: Sequence[str], names: Sequence[str]) -> tuple[str, ...]:
    """`primary` (a workload's classes) first, then other names in first-seen order."""
    seen = dict.fromkeys(primary)
    for name in names:
        seen.setdefault(name, None)
    return tuple(seen)
