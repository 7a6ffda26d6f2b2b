"""SLICE, full mode (`slice`, the default): the paper's idea, made to hold on a real engine.

The plan (re-planned on every arrival and completion, and every `replan_interval_ratio` of a
period): every active request is assessed (slice_select.py: its decode rate per period, its
rank, what its prompt costs, whether it can still be met) and the best are selected while the
mask runs within the period; the rest run on leftover capacity, lost causes are triaged.
slice_iteration.py runs the plan; slice_options.py names each improvement over the paper.
"""

from __future__ import annotations

import bisect
import math
from itertools import chain
from typing import Any

from sliceserve.config import SchedulerConfig
from sliceserve.policies.base import (
    Budget,
    Decision,
    LatencySource,
    Policy,
    Rejection,
    RequestView,
    SchedulerView,
)
from sliceserve.policies.registry import register
from sliceserve.policies.slice_iteration import SliceIteration
from sliceserve.policies.slice_mask import period_ms
from sliceserve.policies.slice_options import SliceOptions
from sliceserve.policies.slice_select import TIER_URGENT, Candidate, Selector, reachable_qoe

__all__ = ["SliceOptions", "SlicePolicy", "reachable_qoe"]


@register
class SlicePolicy(SliceIteration, Policy):
    name = "slice"
    Options = SliceOptions
    options: SliceOptions

    def __init__(self, options: SliceOptions, latency_model: LatencySource,
                 config: SchedulerConfig) -> None:
        super().__init__(options, latency_model, config)
        self._lm = self.latency_model
        self._selector = Selector(self.options, self._lm, self.config)
        self.period_ms = self._selector.period_ms
        self._l = self._lm.decode_latency_ms
        self._active: dict[str, RequestView] = {}  # not triaged, unfinished
        self._triaged: dict[str, RequestView] = {}
        # Serving order of triaged requests: higher utility first, then fewer tokens owed at triage
        # (shortest first minimizes their mean completion time), then older; fixed at triage.
        self._triaged_order: list[RequestView] = []
        self._triaged_keys: list[tuple[float, int, float, str]] = []
        self._triaged_key_of: dict[str, tuple[float, int, float, str]] = {}
        self._dirty = True
        self._next_replan_s = 0.0
        # The plan (filled by replan).
        self._rows: list[tuple[RequestView, int]] = []  # selected, decode rates
        self._selected: set[str] = set()
        self._prefills: list[RequestView] = []  # selected rows still to prefill, EDF order
        self._extras: list[RequestView] = []  # unselected, in serving order
        self._width = 0
        self._credit: dict[str, int] = {}
        self._period_used_ms = 0.0
        self._prefill_iter_ms = 0.0
        self._prefill_share = 1.0
        self._column_ms = 0.0
        self._prompt_bank_ms = 0.0
        self._extra_ms_per_iter = self._bucket_ms = 0.0
        self._to_reject: list[Rejection] = []
        self._tightest_tpot_ms = math.inf  # of every request given so far: sets the row cap
        self._tightest_ttft_slack_ms = math.inf  # ... and the chunk cap (ttft_chunk_share)
        self._row_cap = self._selector.row_cap(math.inf)  # the selection's (replan sets it)

    @property
    def selector(self) -> Selector:
        """The assessment and selection the plan is made with (slice_select.py), on the
        latency model as corrected so far: read it, for tests and tools; the plan is the
        policy's."""
        return self._selector

    # --- events ---
    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:
        self._active[request.request_id] = request
        self._tightest_tpot_ms = min(self._tightest_tpot_ms, request.slo.tpot_ms)
        slack_ms = request.slo.ttft_ms - self._lm.prefill_ms(request.num_prompt_tokens)
        if slack_ms > 0:  # one that cannot be met alone sets no chunk length
            self._tightest_ttft_slack_ms = min(self._tightest_ttft_slack_ms, slack_ms)
        self._dirty = True

    def on_finish(self, request: RequestView, view: SchedulerView) -> None:
        self._forget(request.request_id)

    def _forget(self, rid: str) -> None:
        """Take a request out of the plan (finished, or rejected by the policy itself)."""
        self._active.pop(rid, None)
        if self._triaged.pop(rid, None) is not None:
            i = bisect.bisect_left(self._triaged_keys, self._triaged_key_of.pop(rid))
            del self._triaged_keys[i]
            del self._triaged_order[i]
        self._credit.pop(rid, None)
        self._dirty = True
        if not self._active and not self._triaged:  # idle: no plan of finished requests
            self._rows, self._prefills, self._extras = [], [], []

    def assess_arrival(self, request: RequestView, view: SchedulerView) -> Rejection | None:
        """Refuse a request whose SLO cannot be met even alone, or whose first token is due
        within a period while the selection, re-run with it, finds it no place (the requests
        already taken rank higher). One that can wait a period is taken: places free up."""
        now = view.now_s
        c = self._selector.assess(request, now)
        if not c.feasible:
            return Rejection(request, "its SLO cannot be met even if it were served alone now")
        if c.tier != TIER_URGENT:
            return None
        candidates = [a for r in self._active.values()
                      if (a := self._selector.assess(r, now)).feasible]
        candidates.append(c)
        candidates.sort(key=lambda c: (c.tier, -c.rank, c.request.first_token_s is None,
                                       c.request.arrival_s))
        budget_ms = self.period_ms * (1.0 - self.options.headroom)
        cap = self._selector.row_cap(min(self._tightest_tpot_ms, request.slo.tpot_ms))
        if self._triaged or len(candidates) > cap:
            budget_ms *= 1.0 - self.options.best_effort_share
        chosen = self._selector.select(candidates, budget_ms, self._credit, now, cap)
        if any(x.request is request for x in chosen):
            return None
        return Rejection(request, "the device cannot fit it in before its TTFT: the requests "
                                  "it would have to displace rank higher")

    # --- selection ---
    def replan(self, view: SchedulerView) -> bool:
        opts, now = self.options, view.now_s
        candidates = []
        for rid, r in list(self._active.items()):
            c = self._selector.assess(r, now)
            if c.feasible or not opts.triage:  # without triage, lost causes compete too
                candidates.append(c)
                continue
            del self._active[rid]
            self._triage(r)
            if opts.reject_infeasible:
                self._to_reject.append(Rejection(r, "its SLO can no longer be met"))
        if opts.lost_cause_min_qoe > 0 and not opts.reject_infeasible:  # lost causes
            self._drop_lost_causes(now)
        urgent = [c.rank for c in candidates if c.tier == TIER_URGENT]
        if urgent and opts.defer_rank_ratio < math.inf:
            floor = opts.defer_rank_ratio * min(urgent)
            for c in candidates:
                if c.tier != TIER_URGENT and c.rank >= floor:
                    c.tier = TIER_URGENT  # it outranks urgent low-value work: no deferral
        candidates.sort(key=lambda c: (c.tier, -c.rank, c.request.first_token_s is None,
                                       c.request.arrival_s))
        self._row_cap = self._selector.row_cap(self._tightest_tpot_ms)
        leftover = bool(self._triaged) or len(candidates) > self._row_cap
        budget_ms = self.period_ms * (1.0 - opts.headroom)
        if leftover:
            budget_ms *= 1.0 - opts.best_effort_share
        chosen = self._selector.select(candidates, budget_ms, self._credit, now, self._row_cap)
        self._install(chosen, candidates, budget_ms)
        self._dirty = False
        self._next_replan_s = self._next_change_s(chosen, candidates, now)
        return True

    def _next_change_s(self, chosen: list[Candidate], candidates: list[Candidate],
                       now_s: float) -> float:
        """When the plan should be looked at again without an arrival or a finish.

        The earliest moment an unselected request that has not started turns urgent (its
        first-token deadline comes within a period) or is lost (it passes), but no sooner than
        `replan_interval_ratio` of a period from now and no later than one period.
        """
        period_s = self.period_ms / 1000.0
        step_s = period_s * self.options.replan_interval_ratio
        nxt = now_s + period_s
        selected = {c.request.request_id for c in chosen}
        for c in candidates:
            r = c.request
            if r.first_token_s is not None or r.request_id in selected:
                continue
            lost_s = r.ttft_deadline_s - self._l(1) / 1000.0
            nxt = min(nxt, lost_s if c.tier == TIER_URGENT else r.ttft_deadline_s - period_s)
        return max(nxt, now_s + step_s)

    def _install(self, chosen: list[Candidate], candidates: list[Candidate],
                 budget_ms: float) -> None:
        old_width = self._width
        width = max((c.rate for c in chosen), default=0)
        credit = {}
        for c in chosen:
            rid = c.request.request_id
            if rid in self._credit and old_width:
                credit[rid] = min(width - 1, self._credit[rid] * width // old_width)
            else:
                credit[rid] = width - c.rate  # served in the first iteration it can decode
        self._credit = credit
        self._width = width
        self._rows = [(c.request, c.rate) for c in chosen]
        self._selected = {c.request.request_id for c in chosen}
        self._prefills = sorted((c.request for c in chosen if c.prefill_tokens),
                                key=lambda r: r.ttft_deadline_s if r.first_token_s is None
                                else math.inf)
        self._extras = [c.request for c in candidates
                        if c.request.request_id not in self._selected]
        counts = self._selector.columns(chosen, width, self._credit)
        t_ms = period_ms(counts, self._l)
        charges = sum(c.period_charge_ms for c in chosen if c.prefill_tokens)
        self._period_used_ms = t_ms + charges
        # Prompt time per iteration: the period's time beyond the decode columns, spread
        # over them (a period's worth at most, when nothing decodes).
        cap_ms = self._chunk_cap_ms()
        self._prefill_iter_ms = (min(cap_ms, max(0.0, budget_ms - t_ms) / width) if width
                                 else cap_ms)
        self._prefill_share = max(0.0, 1.0 - t_ms / budget_ms) if width else 1.0
        self._column_ms = t_ms / width if width else 0.0
        # Leftovers: the admitted rows take the period's spare time themselves (the mask
        # wraps as soon as its columns are done, so they run ahead of their pace and free
        # their place sooner); unselected requests get `best_effort_share` of it.
        self._extra_ms_per_iter = (self.period_ms * self.options.best_effort_share / width
                                   if width else 0.0)

    # --- one iteration ---
    def _follow_the_device(self) -> None:
        """Plan with the latency model as corrected so far (a new one: plan again)."""
        lm = self.latency_model
        if lm is not self._lm:
            self._lm = lm
            self._selector = Selector(self.options, lm, self.config)
            self._l = lm.decode_latency_ms
            self._dirty = True

    def schedule(self, view: SchedulerView) -> Decision:
        self._follow_the_device()
        if self._dirty or view.now_s >= self._next_replan_s:
            self.replan(view)
        reject, self._to_reject = self._to_reject, []
        rejected = {rejection.request.request_id for rejection in reject}
        budget = Budget(view, max_rows=self._row_cap + self.options.extra_rows(self._row_cap))
        batch: list[tuple[RequestView, int]] = []
        in_batch: set[str] = set()
        preempt: list[RequestView] = []
        preempted: set[str] = set()
        victims: list[RequestView] = []
        victims_known = False  # computed on the first KV shortage only

        def add(r: RequestView, n: int) -> bool:
            nonlocal victims, victims_known
            rid = r.request_id
            if rid in in_batch or rid in rejected or rid in preempted:
                return False
            fitted = budget.take(r, n)
            if fitted or budget.rows_left <= 0 or n > budget.tokens_left:
                pass
            elif not victims_known:
                victims, victims_known = self._victims(view, rejected), True
            while not fitted and victims and budget.rows_left > 0 and n <= budget.tokens_left:
                victim = victims.pop()
                if victim.request_id in in_batch or victim.request_id == rid:
                    continue
                preempt.append(victim)
                preempted.add(victim.request_id)
                budget.release(victim)
                fitted = budget.take(r, n)
            if fitted:
                batch.append((r, n))
                in_batch.add(rid)
            return fitted

        self._run_mask(add)
        self._run_prefills(add, budget, len(batch), view.now_s)
        self._run_extras(add, budget, batch, view.now_s)
        if self.options.decode_ahead:
            self._run_ahead(add, budget, batch, view.now_s)
        if not batch:  # never idle while something can run
            for r in chain((r for r, _ in self._rows), self._extras, self._triaged_order):
                if add(r, self._idle_chunk(r, budget)):
                    break
        return Decision(batch=batch, preempt=preempt, reject=reject)

    def _drop_lost_causes(self, now_s: float) -> None:
        """Reject triaged requests whose reachable QoE is below `lost_cause_min_qoe`
        (taken out of the plan at once; the scheduler's on_finish follows, a no-op)."""
        for r in [r for r in self._triaged_order if reachable_qoe(r, now_s)
                  < self.options.lost_cause_min_qoe]:
            self._to_reject.append(Rejection(r, "lost cause: its QoE would be too low"))
            self._forget(r.request_id)

    def _triage(self, r: RequestView) -> None:
        key = (-r.slo.utility, r.remaining_output_tokens, r.arrival_s, r.request_id)
        self._triaged[r.request_id] = r
        self._triaged_key_of[r.request_id] = key
        i = bisect.bisect_left(self._triaged_keys, key)
        self._triaged_keys.insert(i, key)
        self._triaged_order.insert(i, r)

    def state(self) -> dict[str, Any]:
        return {
            "selected": {r.request_id: v for r, v in self._rows},
            "width": self._width,
            "row_cap": self._row_cap,
            "period_used_ms": round(self._period_used_ms, 3),
            "triaged": len(self._triaged),
            "best_effort": len(self._extras),
        }
