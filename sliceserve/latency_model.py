"""Iteration latency as a function of batch shape: one model for policies and simulator.

    iteration_ms(rows, new_tokens, context_tokens, attention_pairs)
        = decode_ms(rows)                                   # one token for each row
        + prefill_ms_per_token * (new_tokens - rows)        # extra tokens of prefill chunks
        + context_ms_per_token * context_tokens             # attention over the KV read
        + prefill_attention_ms_per_pair * attention_pairs   # causal attention within prompts

`decode_ms(k)` comes from a table for k = 1..len(table) and continues linearly beyond it.
A pure decode batch of k requests costs decode_ms(k) (+ its context term). A prompt chunk of
n > 1 new tokens after c cached ones has `chunk_pairs(n, c)` = n * (c + (n + 1) / 2) causal
query-key pairs, whose cost grows with the square of the prompt (a decode row's, n = 1, is
its context: the context term covers it). A prefill of n tokens alone costs
decode_ms(1) + prefill_ms_per_token * (n - 1) + attention over n * (n + 1) / 2 pairs
(+ context). The profiler of the engine fits these numbers on a real device; presets ship
as JSON (the attention term defaults to 0: a linear prefill).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

PRESETS_PACKAGE = "sliceserve.data.latency"
_LATENCIES = ("decode_slope_ms", "prefill_ms_per_token", "context_ms_per_token",
              "prefill_attention_ms_per_pair")


def chunk_pairs(num_new_tokens: int, num_cached_tokens: int = 0) -> float:
    """Causal query-key pairs of a prompt chunk: each of its n new tokens attends to the c
    cached ones and to itself and those before it, n * (c + (n + 1) / 2) in all. 0 for a
    decode row (n <= 1), whose attention the context term prices. Additive: the pairs of a
    prompt's chunks sum to those of the whole prompt, however it is cut."""
    if num_new_tokens <= 1:
        return 0.0
    return num_new_tokens * (num_cached_tokens + (num_new_tokens + 1) / 2)


@dataclass(frozen=True)
class LatencyModel:
    name: str
    decode_ms: tuple[float, ...]  # decode latency for batch sizes 1..len(decode_ms)
    decode_slope_ms: float  # added per row beyond the table
    prefill_ms_per_token: float
    context_ms_per_token: float = 0.0
    prefill_attention_ms_per_pair: float = 0.0  # per causal query-key pair of prompt chunks
    kv_capacity_tokens: int | None = None  # KV memory of the device, when known
    device: str = ""
    model: str = ""
    notes: str = ""
    _table: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.decode_ms:
            raise ValueError("latency model: decode_ms needs at least one entry (batch size 1)")
        values = [*self.decode_ms, *(getattr(self, k) for k in _LATENCIES)]
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

    def iteration_ms(self, num_rows: int, num_new_tokens: int, num_context_tokens: int = 0,
                     attention_pairs: float = 0.0) -> float:
        """`attention_pairs`: the sum of `chunk_pairs` over the iteration's prompt chunks."""
        if num_rows <= 0:
            return 0.0
        return (self.decode_latency_ms(num_rows)
                + self.prefill_ms_per_token * (num_new_tokens - num_rows)
                + self.context_ms_per_token * num_context_tokens
                + self.prefill_attention_ms_per_pair * attention_pairs)

    def decode_part_ms(self, num_rows: int, num_context_tokens: int = 0) -> float:
        """The part of `iteration_ms` that every row pays (its slot and its context); the rest
        is the prompt part (extra prompt tokens and their attention pairs)."""
        if num_rows <= 0:
            return 0.0
        return self.decode_latency_ms(num_rows) + self.context_ms_per_token * num_context_tokens

    def scaled(self, decode: float, prompt: float, name: str, notes: str) -> LatencyModel:
        """This model with its decode part times `decode` and its prompt part times `prompt`."""
        return replace(self, name=name, notes=notes,
                       decode_ms=tuple(v * decode for v in self.decode_ms),
                       decode_slope_ms=self.decode_slope_ms * decode,
                       context_ms_per_token=self.context_ms_per_token * decode,
                       prefill_ms_per_token=self.prefill_ms_per_token * prompt,
                       prefill_attention_ms_per_pair=self.prefill_attention_ms_per_pair * prompt)

    def prefill_ms(self, num_tokens: int) -> float:
        """Latency of a prefill of `num_tokens` alone (batch 1)."""
        return self.iteration_ms(1, num_tokens, num_tokens, chunk_pairs(num_tokens))

    def chunk_extra_ms(self, num_new_tokens: int, num_cached_tokens: int = 0) -> float:
        """What a prompt chunk adds to an iteration beyond its row's decode slot (the
        prefill and attention terms; not the context term)."""
        return (self.prefill_ms_per_token * (num_new_tokens - 1)
                + self.prefill_attention_ms_per_pair
                * chunk_pairs(num_new_tokens, num_cached_tokens))

    def chunk_tokens_within(self, extra_ms: float, num_cached_tokens: int = 0) -> int:
        """The most new tokens n >= 1 with chunk_extra_ms(n, num_cached_tokens) <= extra_ms
        (>= 0); sys.maxsize when prompt tokens cost nothing beyond their row."""
        per_token, per_pair = self.prefill_ms_per_token, self.prefill_attention_ms_per_pair
        if per_pair == 0:
            return 1 + int(extra_ms / per_token) if per_token > 0 else sys.maxsize
        # chunk_extra_ms(n) <= extra_ms is a quadratic in n: a/2 n^2 + b n - (pf + extra) <= 0
        b = per_token + per_pair * (num_cached_tokens + 0.5)
        n = int((math.sqrt(b * b + 2 * per_pair * (per_token + extra_ms)) - b) / per_pair)
        n = max(1, n)
        while self.chunk_extra_ms(n + 1, num_cached_tokens) <= extra_ms:  # rounding errors
            n += 1
        while n > 1 and self.chunk_extra_ms(n, num_cached_tokens) > extra_ms:
            n -= 1
        return n

    # --- serialization ---
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_table", None)
        d["decode_ms"] = list(self.decode_ms)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        known = {"name", "decode_ms", *_LATENCIES, "kv_capacity_tokens", "device", "model",
                 "notes"}
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
            for k in _LATENCIES:
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
