"""One iteration of SLICE's plan (sliceserve/policies/slice.py): the mask's decode column, the
selected prompts' chunks within the iteration's prompt time, and leftover capacity for the
unselected requests.

`SliceIteration` is the part of `SlicePolicy` that runs the plan: `SlicePolicy.schedule` calls
these with `add`, which puts a request's chunk into the iteration's batch if the budget
allows (preempting for memory as the policy decides). The plan's state it reads is declared
below and kept by `SlicePolicy` (its replan fills it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain

from sliceserve.latency_model import LatencyModel
from sliceserve.policies.base import Budget, RequestView, SchedulerView, tokens_to_compute
from sliceserve.policies.slice_options import SliceOptions

Add = Callable[[RequestView, int], bool]  # a chunk of n tokens into the batch: did it fit?


class SliceIteration:
    """The plan's run, one iteration at a time (a base of SlicePolicy)."""

    # Kept by SlicePolicy: its options, the period and the latency model it plans with.
    options: SliceOptions
    period_ms: float
    _lm: LatencyModel
    _l: Callable[[int], float]  # decode latency (ms) of an iteration of n rows
    # The plan (SlicePolicy.replan): selected rows and their rates, mask width and credits,
    # selected prompts (earliest first-token deadline first), the unselected and triaged.
    _rows: list[tuple[RequestView, int]]
    _selected: set[str]
    _width: int
    _credit: dict[str, int]
    _prefills: list[RequestView]
    _extras: list[RequestView]
    _row_cap: int  # the selection's row cap (SliceOptions.max_rows, or from the device)
    _triaged: dict[str, RequestView]
    _triaged_order: list[RequestView]
    # Per-iteration time (ms) the plan leaves: prompt time, the spare share of the period, a
    # decode column's time, the leftovers per iteration; and the banks carried across them.
    _prefill_iter_ms: float
    _prefill_share: float
    _column_ms: float
    _extra_ms_per_iter: float
    _prompt_bank_ms: float
    _bucket_ms: float
    _tightest_ttft_slack_ms: float  # TTFT less its own prefill, of every request given so far

    def _chunk_cap_ms(self) -> float:
        """The longest prompt chunk (ms, with its row's slot): `max_prefill_ratio` x P, or
        less with `ttft_chunk_share`, so that an urgent first token is not held up long."""
        opts = self.options
        cap_ms = self.period_ms * opts.max_prefill_ratio
        share = opts.ttft_chunk_share
        if share is None or self._tightest_ttft_slack_ms == math.inf:
            return cap_ms
        # At least a few one-row steps, and long enough that the slot its row pays in a batch
        # is at most `ttft_chunk_slot_share` of it (where a row costs about a step, short
        # chunks would waste the device under load).
        floor_ms = max(opts.ttft_chunk_floor_l1 * self._l(1),
                       (self._l(2) - self._l(1)) / opts.ttft_chunk_slot_share)
        return min(cap_ms, max(floor_ms, share * self._tightest_ttft_slack_ms))

    def _run_mask(self, add: Add) -> None:
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
        cap_ms = self._chunk_cap_ms()
        lead_ms = self._rows_lead_ms(now_s, opts.prefill_lead_guard_tpots)
        if lead_ms == math.inf:  # nothing decodes
            return cap_ms
        lead_ms -= self._l(num_rows) if num_rows else 0.0
        return min(cap_ms, max(self._prefill_iter_ms, lead_ms))

    def _overdue_prompt_ms(self, now_s: float) -> tuple[float, bool]:
        """Prompt time that cannot wait: the prompts (earliest first-token deadline first) up
        to the last one that, at the period's spare share from now on, would be late; that
        one and those before it run now (in chunks of at most a period). And whether that
        last one is prompt-bound with `overdue_prefill_ratio` set (it may get longer chunks;
        its chunks' decode slots are counted)."""
        share = self._prefill_share
        column_ms = max(self._column_ms, self._l(1))
        lm = self._lm
        done_ms = overdue_ms = 0.0
        row_ms = plain_row_ms = self._l(2) - self._l(1)
        chunk_ms = 0.0
        if self.options.overdue_prefill_ratio is not None:
            # Each chunk of at most max_prefill_ratio x P pays its row's decode slot: a whole
            # l(1) when nothing decodes beside it.
            chunk_ms = self.period_ms * self.options.max_prefill_ratio
            if self._rows_lead_ms(now_s) == math.inf:
                row_ms = self._l(1)
        overdue_bound = False
        for r in self._prefills:
            todo = tokens_to_compute(r)
            if todo <= 1 or r.first_token_s is not None:
                continue
            extra_ms = lm.chunk_extra_ms(todo, r.num_computed_tokens)
            bound = bool(chunk_ms) and self.options.prompt_bound(lm, r)
            if bound:  # its chunks each pay a decode slot
                done_ms += extra_ms + max(math.ceil(extra_ms / max(chunk_ms - row_ms, 1e-9)),
                                          1) * row_ms
            else:
                done_ms += extra_ms + plain_row_ms
            left_ms = max(0.0, (r.ttft_deadline_s - now_s) * 1000.0 - column_ms)
            if done_ms > left_ms * share:
                overdue_ms = done_ms
                overdue_bound = bound
        return overdue_ms, overdue_bound

    def _run_prefills(self, add: Add, budget: Budget, num_rows: int, now_s: float) -> None:
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
            cap_ms = self._chunk_cap_ms()
            self._prompt_bank_ms = min(cap_ms, self._prompt_bank_ms + self._prefill_iter_ms)
            overdue_ms, overdue_bound = self._overdue_prompt_ms(now_s)
            overdue = overdue_ms > 0
            ms_left = min(cap_ms, max(self._prompt_bank_ms, self.prompt_time_ms(num_rows, now_s),
                                      overdue_ms))
            overdue_ratio = self.options.overdue_prefill_ratio
            if overdue and overdue_ratio is not None and overdue_bound:
                # a prompt-bound prompt would be late: longer chunks
                ms_left = max(ms_left, min(overdue_ms, self.period_ms * overdue_ratio))
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
                # Too little yet: bank it for a worthwhile chunk. An overdue prompt runs
                # regardless, but the prompts after it wait for a worthwhile chunk too (a
                # one-token chunk costs its row a whole decode slot).
                if (ms_left - row_ms < min(row_ms, rest_ms) and num_rows
                        and (not overdue or spent_ms > 0)):
                    break
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

    def _run_extras(self, add: Add, budget: Budget, batch: list[tuple[RequestView, int]],
                    now_s: float) -> None:
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
        extras_left = opts.extra_rows(self._row_cap)
        chunk_left = opts.prefill_chunk_tokens or budget.tokens_left
        if opts.prefill_chunk_tokens is None:  # in time: at most a period's worth
            allowance_ms = min(allowance_ms, self._chunk_cap_ms())
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

    def _run_ahead(self, add: Add, budget: Budget, batch: list[tuple[RequestView, int]],
                   now_s: float) -> None:
        """Selected decoding rows not due in this column, the least ahead first, each
        charged its marginal latency, while that fits every decoding row's lead (less
        `extras_guard_tpots`), and only when nothing else waits (no prompt to run, no
        unselected or triaged request): spare time, which under load there is none of.
        Their credits are left as they are: the mask's pace is the floor, this is on top."""
        if (not self._rows or self._extras or self._triaged_order
                or any(tokens_to_compute(r) > 1 for r in self._prefills)):
            return  # other work could use the time: only spare time runs rows ahead
        # At most `decode_ahead_ratio` x a one-row step more: an arrival then waits little
        # for this iteration, and where batching is dear (a row costs about a step) nothing
        # runs ahead, since it would only move work, not add any.
        allowance_ms = min(self._rows_lead_ms(now_s),
                           self.options.decode_ahead_ratio * self._l(1))
        if allowance_ms <= 0:
            return
        in_batch = {r.request_id for r, _ in batch}
        waiting = [r for r, _ in self._rows
                   if r.request_id not in in_batch and tokens_to_compute(r) == 1
                   and r.first_token_s is not None]
        if not waiting:
            return

        def lead_ms(r: RequestView) -> float:
            assert r.first_token_s is not None
            return (r.first_token_s - now_s) * 1000.0 + r.num_output_tokens * r.slo.tpot_ms

        waiting.sort(key=lead_ms)
        rows = len(batch)
        spent_ms = 0.0
        for r in waiting:
            if budget.rows_left <= 0 or budget.tokens_left <= 0:
                break
            row_ms = self._l(rows + 1) - self._l(rows) + self._lm.context_ms_per_token * (
                r.num_computed_tokens)
            if spent_ms + row_ms > allowance_ms:
                break
            if add(r, 1):
                rows += 1
                spent_ms += row_ms

    def _idle_chunk(self, r: RequestView, budget: Budget) -> int:
        """Tokens `r` computes in an iteration that would otherwise be empty."""
        n = min(tokens_to_compute(r), budget.tokens_left)
        if n > 1:
            chunk = self.options.prefill_chunk_tokens
            if chunk is not None:
                return min(n, chunk)
            ms = self._chunk_cap_ms()
            return min(n, self._lm.chunk_tokens_within(ms, r.num_computed_tokens))
        return n

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
