"""An executor that computes nothing: placeholder tokens, the latency model's duration."""

from __future__ import annotations

from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.latency_model import LatencyModel, chunk_pairs

PLACEHOLDER_TOKEN = 0


class SimExecutor:
    def __init__(self, latency_model: LatencyModel) -> None:
        self.latency_model = latency_model

    def execute(self, plan: Plan) -> ExecuteResult:
        num_new = 0
        num_context = 0
        pairs = 0.0  # causal attention within the prompt chunks (0 for decode rows)
        tokens: list[int | None] = []
        for chunk in plan.chunks:
            num_new += chunk.num_new_tokens
            num_context += chunk.num_computed_tokens + chunk.num_new_tokens
            pairs += chunk_pairs(chunk.num_new_tokens, chunk.num_computed_tokens)
            tokens.append(PLACEHOLDER_TOKEN if chunk.samples else None)
        ms = self.latency_model.iteration_ms(len(plan.chunks), num_new, num_context, pairs)
        return ExecuteResult(token_ids=tokens, duration_s=ms / 1000.0)
