"""Iteration latency as a function of batch shape: one model for policies and simulator.

    iteration_ms(rows, new_tokens, context_tokens)
        = decode_ms(rows)                                   # one token for each row
        + prefill_ms_per_token * (new_tokens - rows)        # extra tokens of prefill chunks
        + context_ms_per_token * context_tokens             # attention over the KV read

`decode_ms(k)` comes from a table for k = 1..len(table) and continues linearly beyond it.
A pure decode batch of k requests costs decode_ms(k) (+ its context term); a prefill of n
tokens alone costs decode_ms(1) + prefill_ms_per_token * (n - 1) (+ context).
The profiler of the engine fits these numbers on a real device; presets ship as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

PRESETS_PACKAGE = "sliceserve.data.latency"


@dataclass(frozen=True)
class LatencyModel:
    name: str
    decode_ms: tuple[float, ...]  # decode latency for batch sizes 1..len(decode_ms)
    decode_slope_ms: float  # added per row beyond the table
    prefill_ms_per_token: float
    context_ms_per_token: float = 0.0
    kv_capacity_tokens: int | None = None  # KV memory of the device, when known
    device: str = ""
    model: str = ""
    notes: str = ""
    _table: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.decode_ms:
            raise ValueError("latency model: decode_ms needs at least one entry (batch size 1)")
        values = [*self.decode_ms, self.decode_slope_ms, self.prefill_ms_per_token,
                  self.context_ms_per_token]
        if any(not math.isfinite(v) or v < 0 for v in values) or self.decode_ms[0] <= 0:
            raise ValueError("latency model: latencies must be finite, non-negative numbers "
                             "and decode_ms[0] must be positive")
        # Index 0 is a zero-row iteration, so decode_ms(k) is a plain lookup.
        object.__setattr__(self, "_table", (0.0, *map(float, self.decode_ms)))

    def decode_latency_ms(self, num_rows: int) -> float:
        table = self._table
        if num_rows < len(table):
            return table[num_rows]
        return table[-1] + self.decode_slope_ms * (num_rows - len(table) + 1)

    def iteration_ms(self, num_rows: int, num_new_tokens: int,
                     num_context_tokens: int = 0) -> float:
        if num_rows <= 0:
            return 0.0
        return (self.decode_latency_ms(num_rows)
                + self.prefill_ms_per_token * (num_new_tokens - num_rows)
                + self.context_ms_per_token * num_context_tokens)

    def prefill_ms(self, num_tokens: int) -> float:
        """Latency of a prefill of `num_tokens` alone (batch 1)."""
        return self.iteration_ms(1, num_tokens, num_tokens)

    # --- serialization ---
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_table", None)
        d["decode_ms"] = list(self.decode_ms)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        known = {"name", "decode_ms", "decode_slope_ms", "prefill_ms_per_token",
                 "context_ms_per_token", "kv_capacity_tokens", "device", "model", "notes"}
        unknown = set(data) - known - {"schema"}
        if unknown:
            raise ValueError(f"latency model: unknown field(s) {sorted(unknown)}")
        missing = {"decode_ms", "decode_slope_ms", "prefill_ms_per_token"} - set(data)
        if missing:
            raise ValueError(f"latency model: missing field(s) {sorted(missing)}")
        fields = {k: v for k, v in data.items() if k in known}
        fields.setdefault("name", "custom")
        try:
            fields["decode_ms"] = tuple(float(v) for v in fields["decode_ms"])
            for k in ("decode_slope_ms", "prefill_ms_per_token", "context_ms_per_token"):
                if k in fields:
                    fields[k] = float(fields[k])
        except (TypeError, ValueError) as e:
            raise ValueError(f"latency model: latencies must be numbers ({e})") from None
        return cls(**fields)

    @classmethod
    def load(cls, name_or_path: str) -> LatencyModel:
        """A built-in preset by name (e.g. 'paper'), or a JSON file."""
        path = Path(name_or_path)
        if path.suffix == ".json" or path.exists():
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                raise ValueError(f"latency model file not found: {name_or_path}") from None
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"latency model file {name_or_path} is not valid JSON: {e}") from None
            if not isinstance(data, dict):
                raise ValueError(f"latency model file {name_or_path} must hold a JSON object")
            return cls.from_dict(data)
        presets = list_presets()
        if name_or_path not in presets:
            raise ValueError(f"unknown latency model {name_or_path!r}: give a JSON file or one of "
                             f"{', '.join(presets)}")
        text = resources.files(PRESETS_PACKAGE).joinpath(f"{name_or_path}.json").read_text()
        return cls.from_dict(json.loads(text))


def list_presets() -> list[str]:
    files = resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".json"))
