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

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.engine.engine import Executor
from sliceserve.latency_model import LatencyModel
from sliceserve.request import Request


@dataclass(frozen=True, slots=True)
class Iteration:
    rows: int
    new_tokens: int
    context_tokens: int
    pairs: float
    measured_ms: float
    gap_ms: float = 0.0  # wall time since the previous iteration ended (engine work, idling)
    rows_changed: bool = True  # its requests differ from the previous iteration's
    start_s: float = 0.0  # since the recorder's first iteration
    forward_ms: float | None = None  # the model's forward pass alone, where the executor says
    sample_ms: float | None = None  # sampling alone, where the executor says
    stream_runs: int | None = None  # llama.cpp: runs of consecutive KV streams in the batch


@dataclass
class IterationRecorder:
    """An Executor that runs `executor` and records every iteration, with the pause before
    it and whether its rows changed (how a live engine paces the device)."""

    executor: Executor
    iterations: list[Iteration] = field(default_factory=list)
    _last_end_s: float | None = None
    _last_ids: frozenset[str] = frozenset()
    _first_s: float | None = None

    def execute(self, plan: Plan) -> ExecuteResult:
        stats = getattr(self.executor, "stats", None)  # the PyTorch runner's RunnerStats
        before = (stats.forward_s, stats.sample_s) if stats is not None else None
        start = time.perf_counter()
        result = self.executor.execute(plan)
        if plan.chunks:
            if self._first_s is None:
                self._first_s = start
            ids = frozenset(c.request.request_id for c in plan.chunks)
            gap_ms = 0.0 if self._last_end_s is None else (start - self._last_end_s) * 1000.0
            forward_ms = sample_ms = None
            if before is not None:
                forward_ms = (stats.forward_s - before[0]) * 1000.0
                sample_ms = (stats.sample_s - before[1]) * 1000.0
            self.iterations.append(Iteration(*plan.shape(), result.duration_s * 1000.0,
                                             gap_ms, ids != self._last_ids,
                                             start - self._first_s, forward_ms, sample_ms,
                                             getattr(self.executor, "last_stream_runs", None)))
            self._last_ids = ids
        self._last_end_s = time.perf_counter()
        return result

    def release(self, request: Request) -> None:
        """The inner executor's `release` (llama.cpp's streams), which the Engine registers as
        a finish listener on the executor it is given: this recorder."""
        release = getattr(self.executor, "release", None)
        if release is not None:
            release(request)


GAP_BUCKETS_MS = (2.0, 20.0)  # engine work only / short idling / long idling


def write_iterations(path: str | Path, iterations: list[Iteration]) -> Path:
    """One JSON object per iteration (JSON Lines), in the order they ran."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for it in iterations:
            f.write(json.dumps(asdict(it)) + "\n")
    return path


def pacing_report(model: LatencyModel, iterations: list[Iteration]) -> dict[str, Any]:
    """Decode-only iterations, measured / predicted, by the pause before them and by whether
    their rows changed: where a live run's pacing departs from the profile's."""
    decode = [it for it in iterations if it.new_tokens == it.rows]

    def ratio(its: list[Iteration]) -> dict[str, Any]:
        if not its:
            return {"iterations": 0}
        pred = sum(model.iteration_ms(it.rows, it.new_tokens, it.context_tokens, it.pairs)
                   for it in its)
        return {"iterations": len(its),
                "measured_over_predicted": round(sum(it.measured_ms for it in its) / pred, 4)}

    lo, hi = GAP_BUCKETS_MS
    gaps = sorted(it.gap_ms for it in decode)
    return {
        f"gap_below_{lo:g}ms": ratio([it for it in decode if it.gap_ms < lo]),
        f"gap_{lo:g}_to_{hi:g}ms": ratio([it for it in decode if lo <= it.gap_ms < hi]),
        f"gap_from_{hi:g}ms": ratio([it for it in decode if it.gap_ms >= hi]),
        "same_rows": ratio([it for it in decode if not it.rows_changed]),
        "rows_changed": ratio([it for it in decode if it.rows_changed]),
        "gap_ms_p50": round(gaps[len(gaps) // 2], 3) if gaps else None,
    }


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
                        "decode_iterations": kind(decode), "prompt_iterations": kind(prompt),
                        "decode_pacing": pacing_report(model, iterations)}
