"""An executor that computes nothing: placeholder tokens, the latency model's duration."""

from __future__ import annotations

from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.latency_model import LatencyModel, chunk_pairs

PLACEHOLDER_TOKEN = 0


class SimExecutor:
    def __init__(self, latency_model: LatencyModel) -> None:
        self.latency_model = latency_model

    def execute(self, plan: Plan) -> ExecuteResult:
        tokens = [PLACEHOLDER_TOKEN if chunk.samples else None for chunk in plan.chunks]
        ms = self.latency_model.iteration_ms(*plan_shape(plan))
        return ExecuteResult(token_ids=tokens, duration_s=ms / 1000.0)


def plan_shape(plan: Plan) -> tuple[int, int, int, float]:
    """What the latency model prices a plan by: (rows, new tokens, context tokens, query-key
    pairs of causal attention within the prompt chunks, 0 for decode rows)."""
    num_new = 0
    num_context = 0
    pairs = 0.0
    for chunk in plan.chunks:
        num_new += chunk.num_new_tokens
        num_context += chunk.num_computed_tokens + chunk.num_new_tokens
        pairs += chunk_pairs(chunk.num_new_tokens, chunk.num_computed_tokens)
    return len(plan.chunks), num_new, num_context, pairs
