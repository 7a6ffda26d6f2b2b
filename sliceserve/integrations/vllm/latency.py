"""A latency model fitted online from the steps vLLM actually runs.

vLLM's step costs are not sliceserve's (other kernels, other block size, other overheads), so
a policy planning inside vLLM needs vLLM's own numbers. Every executed step gives one
observation: its shape in the latency model's terms (rows, new tokens, context tokens read,
causal query-key pairs of prompt chunks) and its measured duration. A weighted least-squares
fit of the model's five coefficients

    step_ms = overhead + per_row * rows + per_prompt_token * (new_tokens - rows)
              + per_context_token * context_tokens + per_pair * pairs

over a sliding window of recent steps, constrained to non-negative coefficients, with steps
far off the fit (stalls) left out, gives a `LatencyModel` with a linear decode table
(decode_ms(k) = overhead + per_row * k). The start model (the project's profile of this device
and model when one exists, else a preset) enters as a few pseudo-observations at typical
shapes, so the fit is defined from the first steps and the directions the traffic does not
explore (say, long prompts) keep the start model's values until the traffic explores them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sliceserve.latency_model import LatencyModel, chunk_pairs


@dataclass(frozen=True, slots=True)
class StepShape:
    rows: int
    new_tokens: int
    context_tokens: int
    pairs: float


# Shapes at which the start model speaks for itself, and at which fits are compared.
_REFERENCE = (StepShape(1, 1, 256, 0.0), StepShape(8, 8, 2048, 0.0),
              StepShape(32, 32, 8192, 0.0), StepShape(1, 256, 256, chunk_pairs(256)),
              StepShape(1, 1024, 1024, chunk_pairs(1024)))


def _features(shape: StepShape) -> list[float]:
    return [1.0, float(shape.rows), float(shape.new_tokens - shape.rows),
            float(shape.context_tokens), float(shape.pairs)]


def _nonneg_lstsq(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares with coefficients >= 0 (an active set: a negative coefficient
    is fixed at 0 and the rest refitted)."""
    sw = np.sqrt(w)[:, None]
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    xs = x / scale * sw
    ys = y * sw[:, 0]
    active = np.ones(x.shape[1], dtype=bool)
    coef = np.zeros(x.shape[1])
    for _ in range(x.shape[1]):
        sol, *_ = np.linalg.lstsq(xs[:, active], ys, rcond=None)
        coef[:] = 0.0
        coef[active] = sol
        if (coef >= 0).all():
            break
        active &= coef > 0
    return np.clip(coef, 0.0, None) / scale


class OnlineLatencyFit:
    """Observed steps in, a refitted LatencyModel out when it differs from the one in use."""

    def __init__(self, start: LatencyModel, *, window: int = 1024, prior_weight: float = 2.0,
                 first_fit: int = 32, refit_every: int = 128, change: float = 0.10) -> None:
        self.start = start
        self.model = start
        self.num_fits = 0  # fits that replaced the model in use
        self.num_observed = 0
        self._obs: deque[tuple[list[float], float]] = deque(maxlen=window)
        self._prior_weight = prior_weight
        self._first_fit = first_fit
        self._refit_every = refit_every
        self._change = change
        self._since_fit = 0

    def observe(self, shape: StepShape, measured_ms: float) -> LatencyModel | None:
        """Record one executed step; the new model when a refit changed it, else None."""
        if shape.rows <= 0 or not measured_ms > 0:
            return None
        self._obs.append((_features(shape), float(measured_ms)))
        self.num_observed += 1
        self._since_fit += 1
        # Refit after the first `first_fit` steps, then each time the data has grown by half,
        # then every `refit_every` steps.
        due = min(self._refit_every, max(self._first_fit, self.num_observed // 2))
        if len(self._obs) < self._first_fit or self._since_fit < due:
            return None
        self._since_fit = 0
        fitted = self.fit()
        if not differs(self.model, fitted, self._change):
            return None
        self.model = fitted
        self.num_fits += 1
        return fitted

    def fit(self) -> LatencyModel:
        prior_x = [_features(s) for s in _REFERENCE]
        prior_y = [_predict(self.start, s) for s in _REFERENCE]
        data_x = [f for f, _ in self._obs]
        data_y = [ms for _, ms in self._obs]
        x = np.array(prior_x + data_x)
        y = np.array(prior_y + data_y)
        w = np.array([self._prior_weight / len(prior_x)] * len(prior_x) + [1.0] * len(data_x))
        coef = _nonneg_lstsq(x, y, w)
        if data_x:  # leave out steps far off the fit (stalls of the machine), refit once
            predicted = np.maximum(x[len(prior_x):] @ coef, 1e-3)
            relative = np.abs(predicted - y[len(prior_x):]) / predicted
            keep = relative <= 3.0 * float(np.median(relative)) + 0.1
            if not keep.all():
                mask = np.concatenate([np.ones(len(prior_x), dtype=bool), keep])
                coef = _nonneg_lstsq(x[mask], y[mask], w[mask])
        overhead, per_row, per_prompt, per_context, per_pair = (float(c) for c in coef)
        return LatencyModel(
            name=f"online({self.start.name})",
            decode_ms=(max(overhead + per_row, 0.1),), decode_slope_ms=per_row,
            prefill_ms_per_token=per_prompt, context_ms_per_token=per_context,
            prefill_attention_ms_per_pair=per_pair,
            kv_capacity_tokens=self.start.kv_capacity_tokens, device="vllm",
            model=self.start.model,
            notes=f"fitted online on {len(data_x)} vLLM steps, starting from {self.start.name}")


def _predict(model: LatencyModel, shape: StepShape) -> float:
    return model.iteration_ms(shape.rows, shape.new_tokens, shape.context_tokens, shape.pairs)


def differs(a: LatencyModel, b: LatencyModel, tolerance: float) -> bool:
    """Whether the two models' predictions differ by more than `tolerance` (relative) at any
    reference shape."""
    for shape in _REFERENCE:
        pa, pb = _predict(a, shape), _predict(b, shape)
        if abs(pa - pb) > tolerance * max(pa, pb, 1e-9):
            return True
    return False


class StepTimer:
    """Measured step durations, as the requests feel them: the time from one step's end
    (the end of its `update_from_output()`) to the next one's, that is vLLM's whole loop per
    token of a row that decodes every step (its `schedule()`, the model run, the update and
    the engine core's work between steps), not the model run alone: a policy pacing rows to
    their TPOT must plan with the gap between their tokens.

    A step that follows an idle loop (nothing was running or waiting when the last one ended)
    starts at its own `schedule()`. With async scheduling the next step is scheduled while
    one runs; the gap between two updates is still the time between a row's tokens."""

    def __init__(self) -> None:
        self._pending: deque[tuple[object, StepShape, float]] = deque()
        self._last_update_end_s: float | None = None  # None: the loop was idle after it
        self._executed: tuple[StepShape, float] | None = None

    def scheduled(self, output: object, shape: StepShape, schedule_start_s: float) -> None:
        self._pending.append((output, shape, schedule_start_s))

    def executed(self, output: object) -> None:
        """The step of `output` ran; its duration is known once its update is done."""
        # vLLM updates steps in the order it scheduled them; unrecorded (empty) steps are not
        # queued, so the head is this step or a later one.
        self._executed = None
        if not self._pending or self._pending[0][0] is not output:
            return
        _, shape, scheduled_s = self._pending.popleft()
        last = self._last_update_end_s
        self._executed = (shape, scheduled_s if last is None else last)

    def update_done(self, now_s: float, busy: bool) -> tuple[StepShape, float] | None:
        """The update of the step last `executed` ended at `now_s`: its shape and duration
        in ms (None for an unrecorded step). `busy`: requests remain (vLLM steps again at
        once); otherwise the loop idles and the next step starts at its own schedule."""
        done, self._executed = self._executed, None
        self._last_update_end_s = now_s if busy else None
        if done is None:
            return None
        shape, start_s = done
        return shape, (now_s - start_s) * 1000.0
