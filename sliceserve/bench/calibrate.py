"""How well a latency model predicted a live run, and the model recalibrated on it.

`IterationRecorder` wraps the engine's executor: every iteration's shape (what the latency
model prices it by) and its measured duration. `calibrate` then scales the model's two parts
so that its predictions of that run's iterations add up to what was measured: the decode part
(per-row table, slope, context term) by the ratio over the decode-only iterations, the prompt
part (per prompt token, per query-key pair) by the ratio of what remained of the iterations
with prompt chunks once their decode part is taken out. The shape of the model, fitted on the
device profile, is kept; only its two scales follow the device's speed during the run (on a
shared CPU it drifts by 5-10% between minutes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.engine.engine import Executor
from sliceserve.latency_model import LatencyModel


@dataclass(frozen=True, slots=True)
class Iteration:
    rows: int
    new_tokens: int
    context_tokens: int
    pairs: float
    measured_ms: float


@dataclass
class IterationRecorder:
    """An Executor that runs `executor` and records every iteration."""

    executor: Executor
    iterations: list[Iteration] = field(default_factory=list)

    def execute(self, plan: Plan) -> ExecuteResult:
        result = self.executor.execute(plan)
        if plan.chunks:
            self.iterations.append(Iteration(*plan.shape(), result.duration_s * 1000.0))
        return result


def calibrate(model: LatencyModel, iterations: list[Iteration],
              ) -> tuple[LatencyModel, dict[str, Any]]:
    """The model rescaled to the recorded iterations, and the figures behind it: per kind of
    iteration, how many, and measured / predicted before and after."""
    decode = [it for it in iterations if it.new_tokens == it.rows]
    prompt = [it for it in iterations if it.new_tokens > it.rows]

    def predicted(m: LatencyModel, its: list[Iteration]) -> float:
        return sum(m.iteration_ms(it.rows, it.new_tokens, it.context_tokens, it.pairs)
                   for it in its)

    def measured(its: list[Iteration]) -> float:
        return sum(it.measured_ms for it in its)

    decode_scale = measured(decode) / predicted(model, decode) if decode else 1.0
    prompt_scale = 1.0
    if prompt:
        decode_part = sum(model.decode_part_ms(it.rows, it.context_tokens) for it in prompt)
        rest = measured(prompt) - decode_scale * decode_part
        part = predicted(model, prompt) - decode_part
        if part > 0 and rest > 0:
            prompt_scale = rest / part
    calibrated = model.scaled(
        decode_scale, prompt_scale, name=f"{model.name}+calibrated",
        notes=(f"{model.notes} Recalibrated on {len(iterations)} live iterations: decode part "
               f"x{decode_scale:.3f}, prompt part x{prompt_scale:.3f}.").strip())

    def kind(its: list[Iteration]) -> dict[str, Any]:
        if not its:
            return {"iterations": 0}
        return {"iterations": len(its), "measured_ms": round(measured(its), 1),
                "measured_over_predicted": round(measured(its) / predicted(model, its), 4),
                "after_calibration": round(measured(its) / predicted(calibrated, its), 4)}

    return calibrated, {"decode_scale": round(decode_scale, 4),
                        "prompt_scale": round(prompt_scale, 4),
                        "decode_iterations": kind(decode), "prompt_iterations": kind(prompt)}
