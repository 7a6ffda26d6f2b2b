"""The server's life cycle and what its handlers share.

    loading --(model ready)--> ready --(SIGTERM / SIGINT)--> draining --> stopped (exit 0)
                                 \\--(the engine gave up)--> failed --> stopped (exit 1)

Only `ready` takes generation requests; the others answer 503 with code "loading",
"shutting_down" or "engine_failed". In-flight generation handlers hold a `Ticket`, so a drain
knows when the last one has answered.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from sliceserve.engine.async_engine import AsyncEngine
from sliceserve.server.config import ServerConfig
from sliceserve.server.errors import APIError
from sliceserve.server.metrics import ServerMetrics
from sliceserve.server.slo import SloClasses
from sliceserve.server.state import IterationLog

Phase = Literal["loading", "ready", "draining", "failed"]
_UNAVAILABLE = {"loading": ("the model is still loading", "loading"),
                "draining": ("the server is shutting down", "shutting_down"),
                "failed": ("the engine failed and the server is stopping", "engine_failed")}


@dataclass
class Ticket:
    state: ServerState
    ended: bool = False

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.state._ticket_ended()


@dataclass
class ServerState:
    config: ServerConfig
    metrics: ServerMetrics
    model_names: tuple[str, ...]
    phase: Phase = "loading"
    engine: AsyncEngine | None = None
    slo_classes: Any = None  # SloClasses once the model (and its latency model) loaded
    iteration_log: IterationLog | None = None
    load_error: str | None = None
    in_flight: int = 0
    started_unix: float = field(default_factory=time.time)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def live(self) -> Any:
        assert self.engine is not None
        return self.engine.live

    def unavailable(self) -> APIError | None:
        if self.phase == "ready":
            return None
        message, code = _UNAVAILABLE[self.phase]
        if self.phase == "failed" and self.engine is not None and self.engine.fatal_error:
            message = f"{message}: {self.engine.fatal_error!r}"
        return APIError(503, message, code=code, type_="service_unavailable")

    def require_engine(self) -> AsyncEngine:
        error = self.unavailable()
        if error is not None:
            raise error
        assert self.engine is not None and isinstance(self.slo_classes, SloClasses)
        return self.engine

    def begin(self) -> Ticket:
        self.in_flight += 1
        self._idle.clear()
        return Ticket(self)

    def _ticket_ended(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when no generation handler is left (within `timeout_s`)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout_s, 0.0))
        except asyncio.TimeoutError:
            return False
        return True
