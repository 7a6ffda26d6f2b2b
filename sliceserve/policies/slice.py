"""SLICE, full mode (`slice`, the default): the paper's idea, made to hold on a real engine.

Selection (re-planned on every arrival and completion, and every `replan_interval_ratio` of a
period): each candidate gets a required decode rate v_i per period P, from its TPOT and, with
`deadlines`, from the tokens it still owes and the time left (its explicit deadline, and the
implicit one of its mean TPOT), planned `rate_margin` faster than needed. Candidates are
ranked by utility per decode slot over their remaining life, U_i / (v_i x tokens owed)
(`rank="utility_per_token"`; the paper's utility per slot of a period, U_i / v_i, is
`rank="utility_rate"`), and added greedily while the mask still runs within the period (T from
the mask's actual column counts, plus the prefills still to run) and, with `memory_aware`,
while their whole lifetime fits the KV cache. Each improvement over the paper is a named
option:

- spread_mask: a row's ones are spread evenly over the period by integer credits (Bresenham),
  so the gap between two tokens stays near P / v_i. Credits persist across re-plans, so a
  re-plan never starves a row whose ones fall late in the period.
- prefill_aware: pending prefills (chunked, earliest TTFT deadline first) are charged to the
  period, and a new request is admitted only if its predicted TTFT holds without breaking the
  predicted TTFT of prefills already admitted. Every knob that is a length of time on one
  device and not another is in time, relative to the device and the requests: a prompt is
  charged the share of it this period must run to be ready by its first-token deadline
  (`prefill_pacing="deadline"`), and an iteration's prompt chunk is the time the mask's
  decode columns leave in the period, spread over its columns, so that every decoding row
  keeps its pace, or more while the rows are ahead of their schedules, or all of a prompt that
  would otherwise miss its first-token deadline (`prefill_chunk_tokens=None`; never more than
  `max_prefill_ratio` x P in one iteration). The previous token-count rules
  (`prefill_pacing="period"`, `prefill_chunk_tokens=512`) remain for the ablation.
- prefill_then_decode: a request whose prompt takes more than a period does not decode in
  this one, so its decode iterations are not charged to this period's mask.
- defer_rank_ratio: a request that may wait (ttft_urgency) still goes before urgent ones it
  outranks by this factor: on a slow device, a control request's TTFT is several seconds away
  at arrival, and it must not queue behind chat replies that already stream.
- ttft_urgency: a request that has not started and whose first-token deadline is more than a
  period away can wait a period at no loss; it ranks after the urgent ones.
- memory_aware: the selected set's lifetime KV (prompt + max_tokens) fits the cache; when the
  cache runs short, unselected requests are preempted by recompute.
- skip_and_continue: a candidate that does not fit is skipped, not the end of the selection.
- work_conserving: the device never idles while requests wait. Spare time in the period goes
  first to the admitted rows (the mask wraps as soon as its columns are done, so they run
  ahead of their pace and free their place sooner: measured, this beats handing the spare to
  others); unselected requests (started ones by rank, then triaged ones by utility and size)
  get `best_effort_share` of the period, each charged its marginal latency, and only while
  every decoding row stays `extras_guard_tpots` ahead of its schedule and no selected first
  token is pending. A feasible request that has not started is never started on leftovers:
  that would start its TPOT clock with no place to keep it. With no row selected, everything
  runs on leftovers.
- triage: a request whose SLO can no longer be met (TTFT passed without a first token, or
  remaining tokens beyond reach even alone) leaves the selection for good and runs on leftover
  capacity, or is rejected with a reason when `reject_infeasible`.
- aging (off by default: it costs 3 points on `edge` and nothing on `paper`, and triage plus
  `best_effort_share` already bound how long a request waits): a request that has not started
  ranks higher the longer it waits, up to `aging_max_factor`.
- best_effort_share: when requests are left out, this share of the period is kept for them
  (the selection leaves it free), so triaged requests finish even under sustained overload.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

from sliceserve.policies.base import (
    Budget,
    Decision,
    Policy,
    PolicyOptions,
    Rejection,
    RequestView,
    SchedulerView,
    tokens_to_compute,
)
from sliceserve.policies.registry import register
from sliceserve.policies.slice_mask import period_ms
from sliceserve.policies.slice_select import TIER_URGENT, Candidate, Selector


@dataclass(frozen=True)
class SliceOptions(PolicyOptions):
    period_ratio: float = 1.0  # P = 1 s x period_ratio
    max_rows: int = 16  # selected rows (the paper's cap)
    spread_mask: bool = True
    prefill_aware: bool = True
    ttft_urgency: bool = True
    memory_aware: bool = True
    skip_and_continue: bool = True
    work_conserving: bool = True
    deadlines: bool = True
    triage: bool = True
    aging: bool = False  # off by default: measured to cost attainment (docs/RESULTS-paper.md)
    aging_time_s: float = 5.0  # waiting this long doubles a request's rank ...
    aging_max_factor: float = 4.0  # ... up to this factor
    best_effort_share: float = 0.02  # of the period, kept for unselected requests
    headroom: float = 0.0  # of the period, kept free for latency-prediction error
    # Prompt work per iteration, in time (device-relative): each iteration banks its share of
    # the period's time beyond the mask's decode columns (so every decoding row keeps its
    # pace) and a chunk is cut once the bank, or the decoding rows' lead on their schedule,
    # pays for it; a prompt that would miss its first-token deadline at that share runs at
    # once; no chunk takes more than `max_prefill_ratio` x P (an iteration never blocks an
    # urgent arrival for long). An integer instead: that many prompt tokens per iteration,
    # whatever they cost (the previous default, 512, is 7.6 s on a CPU without AVX-512).
    prefill_chunk_tokens: int | None = None
    max_prefill_ratio: float = 0.3
    # How a pending prefill is charged to the period: "deadline", the share of it this period
    # must run for the prompt to finish by its first-token deadline (device-relative: a 2 s
    # prompt due in 6 s takes a third of each period); "period", all of it in this period
    # (the previous rule: on a slow device no long prompt ever fits a 1 s period).
    prefill_pacing: Literal["deadline", "period"] = "deadline"
    # A selected request whose prompt needs more than a period does not decode in this one:
    # its decode iterations are not charged to this period's mask.
    prefill_then_decode: bool = True
    # A request that may wait a period (ttft_urgency) still goes before an urgent one that it
    # outranks by this factor: a new control request (utility 100) is not put behind a chat
    # reply (utility 1) that already streams. math.inf: every urgent request first.
    defer_rank_ratio: float = 10.0
    max_extra_rows: int = 16  # unselected rows added to one iteration
    replan_interval_ratio: float = 0.25  # re-plan at least this often (x P)
    reject_infeasible: bool = False  # triaged requests are rejected instead of kept
    # Rates are planned this much faster than the TPOT needs, so that re-plans, prefills and
    # prediction error do not push a row at exactly its pace over its TPOT.
    rate_margin: float = 0.05
    # Leftover capacity goes to unselected requests only while every selected row that
    # decodes is at least this many TPOTs ahead of its schedule (first + k * tpot).
    extras_guard_tpots: float = 2.0
    # A prompt chunk may make an iteration as long as keeps every decoding selected row this
    # many TPOTs ahead of its mean-TPOT schedule (rows that ran ahead absorb it).
    prefill_lead_guard_tpots: float = 0.5
    # "utility_rate": U / v, the paper's utility per decode slot of a period. "utility_per_token":
    # U / (v x tokens still owed), utility per decode slot over the request's remaining life.
    rank: Literal["utility_rate", "utility_per_token"] = "utility_per_token"

    def __post_init__(self) -> None:
        if not self.period_ratio > 0:
            raise ValueError("period_ratio must be > 0")
        for name in ("max_rows", "max_extra_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        chunk = self.prefill_chunk_tokens
        if chunk is not None and (type(chunk) is not int or chunk < 1):
            raise ValueError("prefill_chunk_tokens must be an integer >= 1 or null (by time)")
        if not 0 < self.max_prefill_ratio <= 10:
            raise ValueError("max_prefill_ratio must be in (0, 10]")
        if self.prefill_pacing not in ("deadline", "period"):
            raise ValueError("prefill_pacing must be 'deadline' or 'period'")
        for name in ("best_effort_share", "headroom", "rate_margin"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.extras_guard_tpots < 0 or self.prefill_lead_guard_tpots < 0:
            raise ValueError("extras_guard_tpots and prefill_lead_guard_tpots must be >= 0")
        if self.aging_time_s <= 0 or self.aging_max_factor < 1:
            raise ValueError("aging_time_s must be > 0 and aging_max_factor >= 1")
        if self.rank not in ("utility_rate", "utility_per_token"):
            raise ValueError("rank must be 'utility_rate' or 'utility_per_token'")
        if not self.defer_rank_ratio >= 1:
            raise ValueError("defer_rank_ratio must be >= 1 (inf: never)")
        if self.replan_interval_ratio <= 0:
            raise ValueError("replan_interval_ratio must be > 0")


@register
class SlicePolicy(Policy):
    name = "slice"
    Options = SliceOptions
    options: SliceOptions

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._lm = self.latency_model
        self._selector = Selector(self.options, self._lm, self.config)
        self.period_ms = self._selector.period_ms
        self._l = self._lm.decode_latency_ms
        self._active: dict[str, RequestView] = {}  # not triaged, unfinished
        self._triaged: dict[str, RequestView] = {}
        # Serving order of triaged requests: higher utility first, then fewer tokens owed at
        # triage (shortest first minimizes their mean completion time), then older. Kept
        # sorted by that key, fixed at triage.
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
        self._extra_ms_per_iter = 0.0
        self._bucket_ms = 0.0
        self._to_reject: list[Rejection] = []

    @property
    def selector(self) -> Selector:
        """The assessment and selection the plan is made with (slice_select.py), on the
        latency model as corrected so far: read it, for tests and tools; the plan is the
        policy's."""
        return self._selector

    # --- events ---
    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:
        self._active[request.request_id] = request
        self._dirty = True

    def on_finish(self, request: RequestView, view: SchedulerView) -> None:
        rid = request.request_id
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
        if self._triaged or len(candidates) > self.options.max_rows:
            budget_ms *= 1.0 - self.options.best_effort_share
        chosen = self._selector.select(candidates, budget_ms, self._credit, now)
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
        urgent = [c.rank for c in candidates if c.tier == TIER_URGENT]
        if urgent and opts.defer_rank_ratio < math.inf:
            floor = opts.defer_rank_ratio * min(urgent)
            for c in candidates:
                if c.tier != TIER_URGENT and c.rank >= floor:
                    c.tier = TIER_URGENT  # it outranks urgent low-value work: no deferral
        candidates.sort(key=lambda c: (c.tier, -c.rank, c.request.first_token_s is None,
                                       c.request.arrival_s))
        leftover = bool(self._triaged) or len(candidates) > opts.max_rows
        budget_ms = self.period_ms * (1.0 - opts.headroom)
        if leftover:
            budget_ms *= 1.0 - opts.best_effort_share
        chosen = self._selector.select(candidates, budget_ms, self._credit, now)
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
        cap_ms = self.period_ms * self.options.max_prefill_ratio
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
        budget = Budget(view, max_rows=self.options.max_rows + self.options.max_extra_rows)
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
        if not batch:  # never idle while something can run
            for r in chain((r for r, _ in self._rows), self._extras, self._triaged_order):
                if add(r, self._idle_chunk(r, budget)):
                    break
        return Decision(batch=batch, preempt=preempt, reject=reject)

    def _idle_chunk(self, r: RequestView, budget: Budget) -> int:
        """Tokens `r` computes in an iteration that would otherwise be empty."""
        n = min(tokens_to_compute(r), budget.tokens_left)
        if n > 1:
            chunk = self.options.prefill_chunk_tokens
            if chunk is not None:
                return min(n, chunk)
            ms = self.period_ms * self.options.max_prefill_ratio
            return min(n, self._lm.chunk_tokens_within(ms, r.num_computed_tokens))
        return n

    def _triage(self, r: RequestView) -> None:
        key = (-r.slo.utility, r.remaining_output_tokens, r.arrival_s, r.request_id)
        self._triaged[r.request_id] = r
        self._triaged_key_of[r.request_id] = key
        i = bisect.bisect_left(self._triaged_keys, key)
        self._triaged_keys.insert(i, key)
        self._triaged_order.insert(i, r)

    def _victims(self, view: SchedulerView, rejected: set[str]) -> list[RequestView]:
        """Running requests that may lose their KV; the list is popped from its end.

        First to go: triaged requests, newest first; then unselected ones, lowest rank first;
        last (only when the KV cache is overcommitted): selected rows, newest first.
        """
        ranked = {r.request_id: i for i, r in enumerate(self._extras)}
        selected, others, triaged = [], [], []
        for r in view.running:
            rid = r.request_id
            if rid in rejected:
                continue
            if rid in self._selected:
                selected.append(r)
            elif rid in self._triaged:
                triaged.append(r)
            else:
                others.append(r)
        others.sort(key=lambda r: ranked.get(r.request_id, len(ranked)))
        return [*selected, *others, *triaged]

    def _run_mask(self, add: Any) -> None:
        """Decode rows whose credit falls due in this iteration (one column of the mask)."""
        width = self._width
        for r, rate in self._rows:
            if tokens_to_compute(r) != 1:
                continue  # still prefilling: its credits start when it decodes
            rid = r.request_id
            credit = self._credit.get(rid, width - rate) + rate
            if credit >= width and add(r, 1):
                credit -= width
            self._credit[rid] = min(credit, 2 * width)

    def prompt_time_ms(self, num_rows: int, now_s: float) -> float:
        """Prompt time this iteration may take (beyond its `num_rows` decode rows): its share
        of the period's time beyond the decode columns, or, when more, as much as keeps every
        decoding selected row `prefill_lead_guard_tpots` ahead of its mean-TPOT schedule (rows
        that ran ahead absorb a longer iteration); a period's worth at most."""
        opts = self.options
        cap_ms = self.period_ms * opts.max_prefill_ratio
        lead_ms = self._rows_lead_ms(now_s, opts.prefill_lead_guard_tpots)
        if lead_ms == math.inf:  # nothing decodes
            return cap_ms
        lead_ms -= self._l(num_rows) if num_rows else 0.0
        return min(cap_ms, max(self._prefill_iter_ms, lead_ms))

    def _overdue_prompt_ms(self, now_s: float) -> float:
        """Prompt time that cannot wait: the prompts (earliest first-token deadline first) up
        to the last one that, at the period's spare share from now on, would be late; that
        one and those before it run now (in chunks of at most a period)."""
        share = self._prefill_share
        column_ms = max(self._column_ms, self._l(1))
        lm = self._lm
        done_ms = overdue_ms = 0.0
        for r in self._prefills:
            todo = tokens_to_compute(r)
            if todo <= 1 or r.first_token_s is not None:
                continue
            done_ms += lm.chunk_extra_ms(todo, r.num_computed_tokens) + self._l(2) - self._l(1)
            left_ms = max(0.0, (r.ttft_deadline_s - now_s) * 1000.0 - column_ms)
            if done_ms > left_ms * share:
                overdue_ms = done_ms
        return overdue_ms

    def _run_prefills(self, add: Any, budget: Budget, num_rows: int, now_s: float) -> None:
        """Prefill chunks of selected requests, earliest first-token deadline first, within
        the iteration's prompt time (or `prefill_chunk_tokens`).

        In time, each iteration banks its share of the period's spare time; a chunk is cut
        once the bank (or the rows' lead, or an overdue prompt) pays for its decode slot at
        least twice, or for the rest of the prompt: a chunk's row costs a decode slot besides
        its tokens, so many tiny chunks would waste the device."""
        chunk_left = self.options.prefill_chunk_tokens
        if chunk_left is None and not any(tokens_to_compute(r) > 1 for r in self._prefills):
            self._prompt_bank_ms = 0.0  # no prompt waits: nothing to bank for
            return
        ms_left = 0.0
        overdue = False
        if chunk_left is None:
            cap_ms = self.period_ms * self.options.max_prefill_ratio
            self._prompt_bank_ms = min(cap_ms, self._prompt_bank_ms + self._prefill_iter_ms)
            overdue_ms = self._overdue_prompt_ms(now_s)
            overdue = overdue_ms > 0
            ms_left = min(cap_ms, max(self._prompt_bank_ms, self.prompt_time_ms(num_rows, now_s),
                                      overdue_ms))
        spent_ms = 0.0
        lm = self._lm
        for r in self._prefills:
            todo = tokens_to_compute(r)
            if todo <= 1:
                continue
            cached = r.num_computed_tokens
            if chunk_left is None:
                row_ms = (self._l(num_rows + 1) - self._l(num_rows)
                          + lm.context_ms_per_token * cached)
                rest_ms = lm.chunk_extra_ms(todo, cached)
                if ms_left - row_ms < min(row_ms, rest_ms) and num_rows and not overdue:
                    break  # too little yet: bank it for a worthwhile chunk
                n = min(todo, budget.tokens_left,
                        lm.chunk_tokens_within(max(ms_left - row_ms, 0.0), cached))
            else:
                n = min(todo, chunk_left, budget.tokens_left)
            if n <= 0:
                break
            if add(r, n):
                num_rows += 1
                if chunk_left is None:
                    cost_ms = row_ms + lm.chunk_extra_ms(n, cached)
                    ms_left -= cost_ms
                    spent_ms += cost_ms
                else:
                    chunk_left -= n
        if chunk_left is None:
            self._prompt_bank_ms = max(0.0, self._prompt_bank_ms - spent_ms)

    def _rows_lead_ms(self, now_s: float, guard: float | None = None) -> float:
        """How much later the selected rows may run and all stay `guard` TPOTs ahead
        (default `extras_guard_tpots`); inf when none decodes.

        Row i's next token is due at first_i + n_out_i * tpot_i (the mean-TPOT schedule);
        its lead is the time until then, less the guard.
        """
        guard = self.options.extras_guard_tpots if guard is None else guard
        lead_ms = math.inf
        for r, _ in self._rows:
            first = r.first_token_s
            if first is None:
                continue
            tpot_ms = r.slo.tpot_ms
            due_ms = (first - now_s) * 1000.0 + r.num_output_tokens * tpot_ms
            lead_ms = min(lead_ms, due_ms - guard * tpot_ms)
        return lead_ms

    def _run_extras(self, add: Any, budget: Budget, batch: list, now_s: float) -> None:
        """Leftover capacity to unselected requests, each charged its marginal latency."""
        opts = self.options
        allowance_ms = math.inf  # with no selected rows, the whole iteration is leftover
        if self._rows:
            if not opts.work_conserving:
                return
            self._bucket_ms = min(self._bucket_ms + self._extra_ms_per_iter,
                                  self.period_ms * opts.best_effort_share)
            if any(r.first_token_s is None for r in self._prefills):
                return  # a selected first token is on its way: nothing may delay it
            allowance_ms = min(self._bucket_ms, self._rows_lead_ms(now_s))
        rows = len(batch)
        extras_left = opts.max_extra_rows
        chunk_left = opts.prefill_chunk_tokens or budget.tokens_left
        if opts.prefill_chunk_tokens is None:  # in time: at most a period's worth
            allowance_ms = min(allowance_ms, self.period_ms * opts.max_prefill_ratio)
        lm = self._lm
        spent_ms = 0.0
        for r in chain(self._extras, self._triaged_order):
            if extras_left <= 0 or budget.rows_left <= 0 or budget.tokens_left <= 0:
                break
            if self._rows and r.first_token_s is None and r.request_id not in self._triaged:
                # Starting a request starts its TPOT clock: one that can still meet its SLO
                # waits for a place in the selection rather than start on leftovers.
                continue
            row_ms = self._l(rows + 1) - self._l(rows)
            if spent_ms + row_ms > allowance_ms:
                break
            todo = tokens_to_compute(r)
            cached = r.num_computed_tokens
            n = 1
            if todo > 1:  # a prefill chunk, cut to what the allowance pays for
                n = min(todo, budget.tokens_left, chunk_left)
                if allowance_ms < math.inf:
                    n = min(n, lm.chunk_tokens_within(allowance_ms - spent_ms - row_ms, cached))
            if n >= 1 and add(r, n):
                rows += 1
                extras_left -= 1
                if todo > 1:
                    chunk_left -= n
                spent_ms += row_ms + lm.chunk_extra_ms(n, cached)
        if self._rows:
            self._bucket_ms -= spent_ms

    def state(self) -> dict[str, Any]:
        return {
            "selected": {r.request_id: v for r, v in self._rows},
            "width": self._width,
            "period_used_ms": round(self._period_used_ms, 3),
            "triaged": len(self._triaged),
            "best_effort": len(self._extras),
        }
