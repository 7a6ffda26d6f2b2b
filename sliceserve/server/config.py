"""The server's settings (`sliceserve serve` flags), validated before anything loads: the
engine's (an EngineConfig: model, backend, number format, limits, policy) and the server's own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sliceserve.engine.config import EngineConfig

INFEASIBLE = ("reject", "best-effort")
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
EXIT_ENGINE_FAILED = 1  # the engine gave up (repeated failed iterations) or failed to load


@dataclass(frozen=True)
class ServerConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)  # what the server runs
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    slo_classes: str = "edge"  # a workload preset or file whose classes give SLO defaults
    served_model_names: tuple[str, ...] = ()  # default: the model's name
    max_queued_requests: int | None = 256  # None: unbounded
    infeasible: Literal["reject", "best-effort"] = "reject"
    drain_timeout_s: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_after_s: int = 1  # Retry-After of a 429
    log_level: str = "info"
    malloc_arena_max: int | None = None  # glibc malloc arenas (server/memory.py); None: glibc's
    malloc_trim_interval_s: float = 60.0  # malloc_trim every this many seconds; 0: never

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")
        if not isinstance(self.engine, EngineConfig):
            raise ValueError(f"engine must be an EngineConfig, got {self.engine!r}")
        if self.max_queued_requests is not None and self.max_queued_requests < 0:
            raise ValueError(f"--max-queued-requests must be >= 0, got "
                             f"{self.max_queued_requests}")
        if self.infeasible not in INFEASIBLE:
            raise ValueError(f"--infeasible must be one of {', '.join(INFEASIBLE)}, got "
                             f"{self.infeasible!r}")
        if not self.drain_timeout_s >= 0:
            raise ValueError(f"--drain-timeout must be >= 0, got {self.drain_timeout_s}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"--max-request-bytes must be >= 1024, got {self.max_body_bytes}")
        if any(not key for key in self.api_keys):
            raise ValueError("--api-key must not be empty")
        if self.malloc_arena_max is not None and self.malloc_arena_max < 1:
            raise ValueError(f"--malloc-arena-max must be >= 1 (0: glibc's default), got "
                             f"{self.malloc_arena_max}")
        if not self.malloc_trim_interval_s >= 0:
            raise ValueError(f"--malloc-trim-interval must be >= 0, got "
                             f"{self.malloc_trim_interval_s}")
        if self.retry_after_s < 0:
            raise ValueError(f"--retry-after must be >= 0, got {self.retry_after_s}")
