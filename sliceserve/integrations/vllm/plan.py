"""A policy's batch turned into what vLLM's own `schedule()` needs to carry it out.

vLLM's scheduler serves its running list in order, each request as many tokens as it needs
(up to the step's token budget), then admits from its waiting queue in order. So a batch is
carried out by arranging vLLM's state around one call of the base `schedule()`:

- the decode mask: running requests the batch leaves out skip the step (vLLM's
  `next_decode_eligible_step`), their KV cache kept;
- the running order: rows that need exactly what the batch gives them first, then the rows
  the batch gives a part of their prompt, in the batch's order (the last of them takes what
  the budget leaves), then the masked rows: when vLLM must preempt for KV blocks it takes
  the last running request, so masked rows are its victims before any row of the batch;
- admission order and hold-back: the waiting queue holds only the batch's admissions, in the
  batch's order, during the call; the rest wait;
- the token budget: the batch's tokens.

No masking without contention: a row the batch leaves out runs anyway when it costs nobody
anything, that is while the predicted step, with it, stays within the tightest TPOT of the
batch's decoding rows (within 5% of the batch's own step when the batch decodes nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sliceserve.latency_model import LatencyModel, chunk_pairs
from sliceserve.policies.base import PolicyError

NO_DECODE_SLACK = 0.05  # a masked row may slow a batch that decodes nothing by this much


@dataclass(slots=True)
class StepPlan:
    running_order: list[Any]  # vLLM's running requests, in the order to serve them
    masked: list[Any]  # running vLLM requests that skip this step
    admit: list[Any]  # waiting vLLM requests to admit, in order
    token_budget: int
    num_held: int  # waiting requests held back
    num_unmasked: int  # left out by the policy, run anyway (no contention)
    predicted_ms: float  # the step as planned, by the latency model
    shape: tuple[int, int, int, float] = field(default=(0, 0, 0, 0.0))


def plan_step(batch: Sequence[tuple[Any, int]], running: Sequence[Any], num_waiting: int,
              model: LatencyModel) -> StepPlan:
    """`batch`: the policy's (view, tokens) entries; `running`: the views of vLLM's running
    list in its current order. Views carry the vLLM request as `.req`."""
    index: dict[str, int] = {}
    rows = tokens = context = 0
    pairs = 0.0
    tight_tpot_ms = math.inf
    admit = []
    for i, (view, num_new) in enumerate(batch):
        rid = view.request_id
        if num_new < 1 or rid in index or view.rejected:
            raise PolicyError(f"bad batch entry for {rid!r}: {num_new} tokens (or listed twice, "
                              "or rejected)")
        index[rid] = i
        computed = view.num_computed_tokens
        rows += 1
        tokens += num_new
        context += computed
        pairs += chunk_pairs(num_new, computed)
        if not view.is_running:
            admit.append(view.req)
        elif num_new == 1 and view.first_token_s is not None:
            tight_tpot_ms = min(tight_tpot_ms, view.slo.tpot_ms)
    exact, partial, masked_views = [], [], []
    for view in running:
        i = index.get(view.request_id)
        if i is None:
            masked_views.append(view)
        elif view.num_tokens - view.num_computed_tokens <= batch[i][1]:
            exact.append(view.req)
        else:
            partial.append((i, view.req))
    if len(exact) + len(partial) + len(admit) != len(batch):
        known = {v.request_id for v in running}
        lost = [v.request_id for v, _ in batch if v.is_running and v.request_id not in known]
        raise PolicyError(f"batch names requests vLLM does not run: {lost}")
    predicted = model.iteration_ms(rows, tokens, context, pairs)
    bound = tight_tpot_ms if tight_tpot_ms < math.inf else predicted * (1 + NO_DECODE_SLACK)
    masked, unmasked = [], 0
    step = model.decode_latency_ms
    per_context = model.context_ms_per_token
    for j, view in enumerate(masked_views):
        if predicted + step(rows + 1) - step(rows) > bound:  # not even a row without context
            masked.extend(v.req for v in masked_views[j:])
            break
        computed = view.num_computed_tokens
        if view.num_tokens - computed == 1:  # a decode row: the mask's subject
            extra = step(rows + 1) - step(rows) + per_context * computed
            if predicted + extra <= bound:
                predicted += extra
                rows += 1
                tokens += 1
                context += computed
                exact.append(view.req)
                unmasked += 1
                continue
        masked.append(view.req)
    partial.sort(key=lambda p: p[0])
    return StepPlan(running_order=exact + [r for _, r in partial] + masked, masked=masked,
                    admit=admit, token_budget=tokens, num_held=num_waiting - len(admit),
                    num_unmasked=unmasked, predicted_ms=predicted,
                    shape=(rows, tokens, context, pairs))
