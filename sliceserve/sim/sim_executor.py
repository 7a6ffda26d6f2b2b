"""An executor that computes nothing: placeholder tokens, the latency model's duration.

The model is the simulation's ground truth: the policy may plan with another one (an online
correction of it, a wrong profile); the executor's durations come from this one, optionally
slowed for a stretch of time (`Slowdown`: the device throttled or shared for a while).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.latency_model import LatencyModel

PLACEHOLDER_TOKEN = 0


@dataclass(frozen=True, slots=True)
class Slowdown:
    """Iterations that start in [start_s, end_s) take `factor` times their modelled time."""

    start_s: float
    factor: float
    end_s: float = math.inf

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"slowdown start must be a time >= 0 s, got {self.start_s!r}")
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"slowdown factor must be a positive number, got {self.factor!r}")
        if not self.end_s > self.start_s:
            raise ValueError("slowdown end must be after its start")

    def at(self, now_s: float) -> float:
        return self.factor if self.start_s <= now_s < self.end_s else 1.0

    @classmethod
    def parse(cls, text: str) -> Slowdown:
        """START:FACTOR or START:FACTOR:END (seconds, a multiple)."""
        parts = text.split(":")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (2, 3):
            raise ValueError(f"slowdown must be START:FACTOR[:END] (numbers), got {text!r}")
        return cls(*values)  # type: ignore[arg-type]


class SimExecutor:
    def __init__(self, latency_model: LatencyModel, slowdown: Slowdown | None = None) -> None:
        self.latency_model = latency_model
        self.slowdown = slowdown

    def execute(self, plan: Plan) -> ExecuteResult:
        tokens = [PLACEHOLDER_TOKEN if chunk.samples else None for chunk in plan.chunks]
        ms = self.latency_model.iteration_ms(*plan.shape())
        if self.slowdown is not None:
            ms *= self.slowdown.at(plan.now_s)
        return ExecuteResult(token_ids=tokens, duration_s=ms / 1000.0)
