"""The adapter's counters: what it did to vLLM's steps, and what it cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class AdapterStats:
    steps: int = 0  # schedule() calls
    planned_steps: int = 0  # carried out a policy's batch
    fallback_steps: int = 0  # the policy scheduled nothing: vLLM's own step
    zero_token_steps: int = 0  # a planned step in which vLLM scheduled nothing (must stay 0)
    masked_rows: int = 0  # summed over steps
    unmasked_rows: int = 0  # left out by the policy, run anyway (no contention)
    held_back: int = 0  # waiting requests held back, summed over steps
    rejected: int = 0
    preempted_by_policy: int = 0
    policy_rebuilds: int = 0  # after a latency refit
    adapter_s: float = 0.0  # the adapter's own time (not the policy's, not vLLM's)
    policy_s: float = 0.0
    max_running: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        steps = max(1, self.steps)
        out["adapter_ms_per_step"] = round(1000.0 * self.adapter_s / steps, 4)
        out["policy_ms_per_step"] = round(1000.0 * self.policy_s / steps, 4)
        return out
