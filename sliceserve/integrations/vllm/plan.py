"""A policy's batch turned into what vLLM's own `schedule()` needs to carry it out.

vLLM's scheduler serves its running list in order, each request as many tokens as it needs
(up to the step's token budget), then admits from its waiting queue in order. So a batch is
carried out by arranging vLLM's state around one call of the base `schedule()`:

- the decode mask: running requests the batch leaves out skip the step (vLLM's
  `next_decode_eligible_step`), their KV cache kept;
- the running order: rows that need exactly what the batch gives them first, then the rows
  the batch gives a part of their prompt (the last of them takes what the budget leaves),
  both in the batch's order, then the masked rows: when vLLM must preempt for KV blocks it takes
  the last running request, so masked rows are its victims before any row of the batch;
- admission order and hold-back: the waiting queue holds only the batch's admissions, in the
  batch's order, during the call; the rest wait;
- the token budget: the batch's tokens.

`carry_out` does that arranging around the base call and restores the queues after it.

No masking without contention: a row the batch leaves out runs anyway when it costs nobody
anything, that is while the predicted step, with it, stays within `UNMASK_TPOT_SHARE` of the
tightest TPOT of the batch's decoding rows (within 5% of the batch's own step when the batch
decodes nothing). Not all of it: a step filled to exactly the tightest TPOT leaves that row no
room for prediction error or for a prompt chunk, and its mean TPOT ends just over.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sliceserve.latency_model import LatencyModel, chunk_pairs
from sliceserve.policies.base import PolicyError

NO_DECODE_SLACK = 0.05  # a masked row may slow a batch that decodes nothing by this much
UNMASK_TPOT_SHARE = 0.9  # unmasked rows may fill a step up to this share of the tightest TPOT


@dataclass(slots=True)
class StepPlan:
    running_order: list[Any]  # vLLM's running requests, in the order to serve them
    masked: list[Any]  # running vLLM requests that skip this step
    admit: list[Any]  # waiting vLLM requests to admit, in order
    token_budget: int
    num_held: int  # waiting requests held back
    num_unmasked: int  # left out by the policy, run anyway (no contention)
    predicted_ms: float  # the step as planned, by the latency model (nan: nothing masked)


def plan_step(batch: Sequence[tuple[Any, int]], running: Sequence[Any], num_waiting: int,
              model: LatencyModel) -> StepPlan:
    """`batch`: the policy's (view, tokens) entries; `running`: the views of vLLM's running
    list in its current order. Views carry the vLLM request as `.req`."""
    index: dict[str, int] = {}
    tokens = 0
    tight_tpot_ms = math.inf
    admit, exact, partial = [], [], []
    for i, (view, num_new) in enumerate(batch):
        rid = view.request_id
        if num_new < 1 or rid in index or view.rejected:
            raise PolicyError(f"bad batch entry for {rid!r}: {num_new} tokens (or listed twice, "
                              "or rejected)")
        index[rid] = i
        tokens += num_new
        if not view.is_running:
            admit.append(view.req)
        elif view.num_tokens - view.num_computed_tokens <= num_new:
            exact.append(view.req)
            if num_new == 1 and view.first_token_s is not None:
                tpot_ms = view.slo.tpot_ms
                if tpot_ms < tight_tpot_ms:
                    tight_tpot_ms = tpot_ms
        else:
            partial.append(view.req)
    masked_views = [v for v in running if v.request_id not in index]
    if len(running) - len(masked_views) != len(exact) + len(partial):
        known = {v.request_id for v in running}
        lost = [v.request_id for v, _ in batch if v.is_running and v.request_id not in known]
        raise PolicyError(f"batch names requests vLLM does not run: {lost}")
    masked, unmasked, predicted = [], 0, math.nan
    if masked_views:
        predicted, unmasked = _unmask(batch, masked_views, tight_tpot_ms, model, exact, masked)
        tokens += unmasked
    return StepPlan(running_order=exact + partial + masked, masked=masked, admit=admit,
                    token_budget=tokens, num_held=num_waiting - len(admit),
                    num_unmasked=unmasked, predicted_ms=predicted)


def _unmask(batch: Sequence[tuple[Any, int]], masked_views: list[Any], tight_tpot_ms: float,
            model: LatencyModel, run: list[Any], masked: list[Any]) -> tuple[float, int]:
    """Move the masked decode rows that cost nobody anything to `run`, the rest to `masked`;
    the predicted step and the number moved."""
    rows, tokens, context, pairs = len(batch), 0, 0, 0.0
    for view, num_new in batch:
        computed = view.num_computed_tokens
        tokens += num_new
        context += computed
        if num_new > 1:
            pairs += chunk_pairs(num_new, computed)
    predicted = model.iteration_ms(rows, tokens, context, pairs)
    bound = (tight_tpot_ms * UNMASK_TPOT_SHARE if tight_tpot_ms < math.inf
             else predicted * (1 + NO_DECODE_SLACK))
    step = model.decode_latency_ms
    per_context = model.context_ms_per_token
    unmasked = 0
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
                run.append(view.req)
                unmasked += 1
                continue
        masked.append(view.req)
    return predicted, unmasked


def carry_out(s: Any, plan: StepPlan, call: Callable[[], Any], queue_cls: Callable[..., Any]
              ) -> Any:
    """Run `call` (vLLM's base `schedule()` of scheduler `s`) with the state arranged for
    `plan`, and restore what is not the step's own outcome (queues, token budget) after it.
    `queue_cls` is vLLM's FCFSRequestQueue."""
    skip_until = s.current_step + 2  # schedule() counts this step first, then checks
    for req in plan.masked:
        if req.next_decode_eligible_step < skip_until:
            req.next_decode_eligible_step = skip_until
    s.running[:] = plan.running_order
    budget = s.max_num_scheduled_tokens
    s.max_num_scheduled_tokens = min(budget, plan.token_budget)
    waiting, holding = s.waiting, s.kv_holding_waiting
    if not waiting and not holding:
        try:
            return call()
        finally:
            s.max_num_scheduled_tokens = budget
    admit_ids = {r.request_id for r in plan.admit}
    held_w = [r for r in waiting if r.request_id not in admit_ids]
    held_k = [r for r in holding if r.request_id not in admit_ids]
    # Admissions in the batch's order, each from the queue vLLM keeps it in (a request
    # waiting for something else, e.g. a streaming session's next input, is in neither).
    in_waiting = {r.request_id for r in waiting} if len(held_w) < len(waiting) else set()
    in_holding = {r.request_id for r in holding} if len(held_k) < len(holding) else set()
    s.waiting = queue_cls(r for r in plan.admit if r.request_id in in_waiting)
    s.kv_holding_waiting = queue_cls(r for r in plan.admit if r.request_id in in_holding)
    try:
        return call()
    finally:
        left_w, left_k = list(s.waiting), list(s.kv_holding_waiting)
        waiting.clear()
        waiting.extend(left_w + held_w)
        holding.clear()
        holding.extend(left_k + held_k)
        s.waiting, s.kv_holding_waiting = waiting, holding
        s.max_num_scheduled_tokens = budget
