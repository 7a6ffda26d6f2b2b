"""A latency model that follows the device: the profiled model, corrected online.

The profile is taken once; the device then runs hotter or cooler, shares its cores with other
processes, or was profiled under other load. `OnlineLatencyModel` keeps the profiled `base`
model's shape and corrects its two parts (latency_model.py: `decode_part_ms`, the rest is the
prompt part) by two factors, from what every executed iteration measured against what `base`
predicted for it:

- decode-only iterations (every row computes one token): a sample `measured / predicted`;
- iterations with prompt chunks: a sample of the prompt part alone,
  `(measured - decode_factor * decode part) / prompt part`, taken only when the prompt part is
  at least `min_prompt_share` of the prediction (else the decode factor explains it all).

Each factor is the median of the last `window` samples of its kind (robust: one stalled
iteration, or a few, do not move it), clamped to [`min_factor`, `max_factor`] (bounded: a
broken clock cannot make the policies plan with a device 100x slower), and 1 until
`min_samples` samples were seen. `current` is `base` scaled by the two factors, rebuilt only
when a factor moved by `rebuild_step` or more, so the policies' predictions stay put between
real changes. Every policy reads its predictions from `current` (Policy.latency_model); the
simulator's executor keeps the true model, so in simulation with an exact model every sample
is exactly 1 and nothing changes.

`snapshot()` is the read-only face for result files, logs and a server's /metrics.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from sliceserve.latency_model import LatencyModel

logger = logging.getLogger("sliceserve.latency")


@dataclass(frozen=True, slots=True)
class OnlineLatencyOptions:
    window: int = 32  # samples per kind in the running median
    min_samples: int = 4  # samples of a kind before its factor leaves 1
    min_factor: float = 0.5
    max_factor: float = 4.0
    min_prompt_share: float = 0.2  # of an iteration's prediction, for a prompt sample
    rebuild_step: float = 0.01  # relative change of a factor that rebuilds `current`
    log_step: float = 0.1  # relative change of a factor that is logged

    def __post_init__(self) -> None:
        if type(self.window) is not int or self.window < 1:
            raise ValueError(f"online latency: window must be an integer >= 1, got {self.window!r}")
        if type(self.min_samples) is not int or not 1 <= self.min_samples <= self.window:
            raise ValueError("online latency: min_samples must be an integer in [1, window]")
        if not 0 < self.min_factor <= 1 <= self.max_factor < math.inf:
            raise ValueError("online latency: need 0 < min_factor <= 1 <= max_factor")
        for name in ("min_prompt_share", "rebuild_step", "log_step"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"online latency: {name} must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class LatencySnapshot:
    """The correction as it stands (read-only; JSON via `to_dict`)."""

    base_model: str
    decode_factor: float
    prompt_factor: float
    decode_samples: int  # decode-only iterations seen
    prompt_samples: int  # prompt samples taken
    last_decode_ratio: float | None  # measured / predicted of the latest decode-only iteration
    last_prompt_ratio: float | None
    options: OnlineLatencyOptions

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = asdict(self.options)
        return d


def _median(values: deque[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class OnlineLatencyModel:
    """The profiled model `base`, corrected by what the device measures (see the module)."""

    def __init__(self, base: LatencyModel,
                 options: OnlineLatencyOptions | None = None) -> None:
        self.base = base
        self.options = options or OnlineLatencyOptions()
        self._decode: deque[float] = deque(maxlen=self.options.window)
        self._prompt: deque[float] = deque(maxlen=self.options.window)
        self._decode_factor = 1.0
        self._prompt_factor = 1.0
        self._decode_seen = 0
        self._prompt_seen = 0
        self._logged = (1.0, 1.0)
        self._current_factors = (1.0, 1.0)
        self.current = base  # what the policies predict with

    # --- feeding ---
    def observe(self, rows: int, new_tokens: int, context_tokens: int, pairs: float,
                measured_ms: float) -> None:
        """One executed iteration: its shape (as `LatencyModel.iteration_ms` takes it) and
        its measured duration."""
        if rows <= 0 or not math.isfinite(measured_ms) or measured_ms <= 0:
            return
        base = self.base
        predicted = base.iteration_ms(rows, new_tokens, context_tokens, pairs)
        if predicted <= 0:
            return
        if new_tokens <= rows:  # every row computes one token
            self._decode.append(measured_ms / predicted)
            self._decode_seen += 1
        else:
            decode_part = base.decode_part_ms(rows, context_tokens)
            prompt_part = predicted - decode_part
            if prompt_part < self.options.min_prompt_share * predicted or prompt_part <= 0:
                return
            sample = (measured_ms - self._decode_factor * decode_part) / prompt_part
            self._prompt.append(max(sample, 0.0))
            self._prompt_seen += 1
        self._update()

    def _factor(self, samples: deque[float]) -> float:
        opts = self.options
        if len(samples) < opts.min_samples:
            return 1.0
        return min(opts.max_factor, max(opts.min_factor, _median(samples)))

    def _update(self) -> None:
        decode, prompt = self._factor(self._decode), self._factor(self._prompt)
        self._decode_factor, self._prompt_factor = decode, prompt
        old_decode, old_prompt = self._current_factors
        step = self.options.rebuild_step
        if abs(decode / old_decode - 1) < step and abs(prompt / old_prompt - 1) < step:
            return
        self._current_factors = (decode, prompt)
        if decode == 1.0 and prompt == 1.0:
            self.current = self.base
        else:
            self.current = self.base.scaled(
                decode, prompt, name=f"{self.base.name}+online",
                notes=f"{self.base.notes} Corrected online: decode x{decode:.3f}, "
                      f"prompt x{prompt:.3f}.".strip())
        logged_decode, logged_prompt = self._logged
        if (abs(decode / logged_decode - 1) >= self.options.log_step
                or abs(prompt / logged_prompt - 1) >= self.options.log_step):
            logger.info("latency correction: decode x%.3f (was x%.3f), prompt x%.3f (was x%.3f)",
                        decode, logged_decode, prompt, logged_prompt)
            self._logged = (decode, prompt)

    # --- reading ---
    @property
    def decode_factor(self) -> float:
        return self._decode_factor

    @property
    def prompt_factor(self) -> float:
        return self._prompt_factor

    def snapshot(self) -> LatencySnapshot:
        return LatencySnapshot(
            base_model=self.base.name, decode_factor=self._decode_factor,
            prompt_factor=self._prompt_factor, decode_samples=self._decode_seen,
            prompt_samples=self._prompt_seen,
            last_decode_ratio=self._decode[-1] if self._decode else None,
            last_prompt_ratio=self._prompt[-1] if self._prompt else None,
            options=self.options)
