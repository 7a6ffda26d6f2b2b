"""Injected time: a `WallClock` when serving, a `VirtualClock` in the simulator."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the clock's origin."""
        ...

    def elapse(self, duration_s: float) -> None:
        """Account for work that took `duration_s` (a virtual clock moves; a wall clock
        has already moved while the work ran)."""
        ...


class WallClock:
    def __init__(self) -> None:
        self._origin = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._origin

    def elapse(self, duration_s: float) -> None:
        return None


class VirtualClock:
    def __init__(self, start_s: float = 0.0) -> None:
        self._now = start_s

    def now(self) -> float:
        return self._now

    def elapse(self, duration_s: float) -> None:
        if duration_s < 0:
            raise ValueError(f"time cannot run backwards (elapse {duration_s})")
        self._now += duration_s

    def advance_to(self, t_s: float) -> None:
        if t_s > self._now:
            self._now = t_s
