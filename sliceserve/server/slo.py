"""Per-request SLOs: the body's `slo`, `utility`, `slo_class` and `priority` over class defaults.

The classes come from a workload file (`--slo-classes`, default the `edge` preset): each
class's ttft / tpot / deadline expressions are resolved for the request at hand against the
engine's latency model, exactly as the simulator resolves them (`pf` is the prefill latency
of this request's prompt, `n_out_tpot` uses its max_tokens), see docs/WORKLOADS.md.

    explicit keys of `slo`  >  the class's defaults  >  best effort (engine.build.DEFAULT_SLO)

A request without a known class and without `slo` is best effort. `priority` (vLLM's; lower
first) is the body's, else the class's (`priority` in the file, or its utility rank), else 0.
A request with `slo` but no known class is of class "custom". Metrics are labelled by class:
the file's classes, "best-effort", "custom", and "other" for any other name, so a client
cannot grow the label set without bound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sliceserve.engine.build import DEFAULT_SLO
from sliceserve.latency_model import LatencyModel
from sliceserve.request import SLO
from sliceserve.workloads.generate import resolve_class_slo, slo_picker
from sliceserve.workloads.spec import Workload, load_workload

BEST_EFFORT = DEFAULT_SLO.slo_class
CUSTOM = "custom"
OTHER = "other"


@dataclass(frozen=True, slots=True)
class ResolvedSlo:
    slo: SLO  # slo.slo_class: the class the client named (or "best-effort")
    priority: int
    label: str  # the metrics label: a class of the file, "best-effort" or "other"


class SloClasses:
    def __init__(self, workload: Workload, latency_model: LatencyModel, seed: int = 0) -> None:
        self.workload = workload
        self.latency_model = latency_model
        self._pick = slo_picker(_numpy_rng(seed))
        self.names = workload.class_names

    @classmethod
    def load(cls, name_or_path: str, latency_model: LatencyModel) -> SloClasses:
        return cls(load_workload(name_or_path), latency_model)

    def resolve(self, num_prompt_tokens: int, max_tokens: int, slo_class: str | None,
                ttft_ms: float | None, tpot_ms: float | None, deadline_ms: float | None,
                utility: float | None, priority: int | None) -> ResolvedSlo:
        """The request's SLO. Raises ValueError for values SLO refuses."""
        spec = self.workload.get_class(slo_class) if slo_class else None
        explicit = ttft_ms is not None or tpot_ms is not None or deadline_ms is not None
        if spec is not None:
            ttft, tpot, deadline = resolve_class_slo(
                spec, num_prompt_tokens, max_tokens, self.latency_model, self._pick,
                ttft_ms=ttft_ms, tpot_ms=tpot_ms)
            if deadline_ms is not None:
                deadline = deadline_ms
            slo = SLO(ttft, tpot, deadline, utility if utility is not None else spec.utility,
                      spec.name)
            return ResolvedSlo(slo, priority if priority is not None
                               else self.workload.priority_of(spec), spec.name)
        name = slo_class or (CUSTOM if explicit else BEST_EFFORT)
        slo = SLO(ttft_ms if ttft_ms is not None else DEFAULT_SLO.ttft_ms,
                  tpot_ms if tpot_ms is not None else DEFAULT_SLO.tpot_ms, deadline_ms,
                  utility if utility is not None else DEFAULT_SLO.utility, name)
        return ResolvedSlo(slo, priority if priority is not None else 0, self.label_of(name))

    def label_of(self, slo_class: str) -> str:
        """The metrics label of a class name."""
        if slo_class in self.names or slo_class in (BEST_EFFORT, CUSTOM):
            return slo_class
        return OTHER

    def describe(self) -> dict[str, dict[str, object]]:
        """Each class's resolved SLO for a 128-token prompt and 64 output tokens (for /v1/state
        and the start-up log: what "control" means on this device)."""
        out: dict[str, dict[str, object]] = {}
        for spec in self.workload.classes:
            ttft, tpot, deadline = resolve_class_slo(spec, 128, 64, self.latency_model,
                                                     lambda choice: choice[0])
            out[spec.name] = {"ttft_ms": round(ttft, 1), "tpot_ms": round(tpot, 1),
                              "deadline_ms": None if deadline is None else round(deadline, 1),
                              "utility": spec.utility,
                              "priority": self.workload.priority_of(spec)}
        return out


def _numpy_rng(seed: int):  # type: ignore[no-untyped-def]
    import numpy as np

    return np.random.Generator(np.random.PCG64(random.Random(seed).getrandbits(64)))
