"""An executor that computes nothing: placeholder tokens, the latency model's duration."""

from __future__ import annotations

from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.latency_model import LatencyModel

PLACEHOLDER_TOKEN = 0


class SimExecutor:
    def __init__(self, latency_model: LatencyModel) -> None:
        self.latency_model = latency_model

    def execute(self, plan: Plan) -> ExecuteResult:
        num_new = 0
        num_context = 0
        tokens: list[int | None] = []
        for chunk in plan.chunks:
            num_new += chunk.num_new_tokens
            num_context += chunk.num_computed_tokens + chunk.num_new_tokens
            tokens.append(PLACEHOLDER_TOKEN if chunk.samples else None)
        ms = self.latency_model.iteration_ms(len(plan.chunks), num_new, num_context)
        return ExecuteResult(token_ids=tokens, duration_s=ms / 1000.0)
