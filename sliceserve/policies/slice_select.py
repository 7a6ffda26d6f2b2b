"""SLICE's selection: which candidates the period can serve, and at what decode rates.

Stateless between calls: the policy (slice.py) keeps the plan (rows, credits) and runs it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sliceserve.config import SchedulerConfig
from sliceserve.latency_model import LatencyModel, chunk_pairs
from sliceserve.policies.base import RequestView, tokens_to_compute
from sliceserve.policies.slice_mask import decode_rate, period_ms, spread_row
from sliceserve.policies.slice_options import SliceOptions

TIER_URGENT, TIER_DEFERRABLE = 0, 1


@dataclass(slots=True)
class Candidate:
    request: RequestView
    rate: int  # decode iterations per period
    tier: int
    rank: float  # utility per decode slot, aged; higher first
    prefill_tokens: int  # tokens to compute before the next token (0 when decoding)
    charge_ms: float  # marginal latency of that prefill
    lifetime_blocks: int
    feasible: bool  # its SLO can still be met
    # The part of that prefill this period must run for it to finish in time: the whole of
    # it, or (`prefill_pacing="deadline"`) its share of the time left until it is due.
    period_charge_ms: float = 0.0
    # Decode iterations it takes in this period's mask: its rate, or 0 while its prompt still
    # needs more than a period (`prefill_then_decode`): it cannot decode in this period.
    mask_rate: int = 0


@dataclass(slots=True)
class Pending:
    """An admitted prefill, for the TTFT prediction."""

    deadline_s: float  # first-token deadline (inf for a recompute)
    tokens: int
    charge_ms: float


class Selector:
    """Assesses candidates and selects the rows of a period (SLICE full mode)."""

    def __init__(self, options: SliceOptions, latency_model: LatencyModel,
                 config: SchedulerConfig) -> None:
        self.options = options
        self.latency_model = latency_model
        self.config = config
        self.period_ms = 1000.0 * options.period_ratio
        self._l = latency_model.decode_latency_ms
        self._max_rate = max(1, int(self.period_ms // self._l(1)))
        cap = options.max_rows or config.max_num_seqs
        rows = cap + options.extra_rows(cap)
        self._min_step_ms = max(0.0, min(self._l(k + 1) - self._l(k) for k in range(1, rows + 1)))
        self._rows_within: dict[float, int] = {}

    def row_cap(self, tightest_tpot_ms: float) -> int:
        """The most rows the selection may take: `max_rows`, or (None) the most rows whose
        decode step stays within `row_tpot_share` of the tightest TPOT served."""
        if self.options.max_rows is not None:
            return self.options.max_rows
        return self.rows_within(self.options.row_tpot_share * tightest_tpot_ms)

    def rows_within(self, step_ms: float) -> int:
        """The most rows k with the decode steps of 2..k rows predicted within `step_ms`, at
        least 2 (a cap of one row would leave every other request to leftovers, even those
        whose laxer TPOTs a shared step keeps) and at most max_num_seqs."""
        k = self._rows_within.get(step_ms)
        if k is None:
            k, limit = min(2, self.config.max_num_seqs), self.config.max_num_seqs
            while k < limit and self._l(k + 1) <= step_ms:
                k += 1
            if len(self._rows_within) >= 64:  # e.g. TPOTs drawn from a range
                self._rows_within.clear()
            self._rows_within[step_ms] = k
        return k

    def assess(self, r: RequestView, now_s: float) -> Candidate:
        """Rate, tier and rank of a candidate, and whether its SLO can still be met."""
        opts, lm, slo = self.options, self.latency_model, r.slo
        l1 = self._l(1)
        todo = tokens_to_compute(r)
        prefill = todo if todo > 1 else 0
        # The rest of its prompt alone; its attention covers the part already cached too.
        pairs = chunk_pairs(prefill, r.num_computed_tokens)
        attention_ms = lm.prefill_attention_ms_per_pair * pairs
        prefill_ms = lm.iteration_ms(1, todo, todo, pairs) if prefill else 0.0
        rate = decode_rate(self.period_ms, slo.tpot_ms * (1.0 - opts.rate_margin))
        first_s = r.first_token_s
        started = first_s is not None
        owed = r.remaining_output_tokens  # tokens still to produce
        feasible = True
        ends = []  # when the last token is due: the mean-TPOT bound, the deadline
        start_s = now_s  # when decoding can start
        if first_s is not None:
            ends.append(first_s + (r.max_tokens - 1) * slo.tpot_ms / 1000.0)
            start_s += prefill_ms / 1000.0  # a recompute after preemption
        else:
            start_s += (prefill_ms or l1) / 1000.0  # the first token
            feasible = start_s <= r.ttft_deadline_s
            owed -= 1
        if r.deadline_s is not None:
            ends.append(r.deadline_s)
        if feasible and ends and owed > 0:
            left_ms = (min(ends) - start_s) * 1000.0
            feasible = left_ms >= owed * l1  # reachable at least alone
            if feasible and opts.deadlines:
                rate = max(rate, math.ceil(self.period_ms * owed / left_ms - 1e-9))
        if rate > self._max_rate:
            feasible, rate = False, self._max_rate
        tier = TIER_URGENT
        if (feasible and opts.ttft_urgency and not started
                and r.ttft_deadline_s - start_s > self.period_ms / 1000.0):
            tier = TIER_DEFERRABLE
        rank = slo.utility / rate
        if opts.aging and not started:
            rank *= min(opts.aging_max_factor, 1.0 + (now_s - r.arrival_s) / opts.aging_time_s)
        if opts.rank == "utility_per_token":
            rank /= (r.remaining_output_tokens
                     + (prefill * lm.prefill_ms_per_token + attention_ms) / l1)
        charge = (lm.prefill_ms_per_token + lm.context_ms_per_token) * prefill + attention_ms
        lifetime = self.config.blocks_for(r.num_prompt_tokens + r.max_tokens)
        period_charge = charge
        if prefill and opts.prefill_pacing == "deadline":
            if first_s is not None:  # a recompute: as long as it is ahead of its TPOT pace
                due_s = first_s + r.num_output_tokens * slo.tpot_ms / 1000.0
                window_ms = (due_s - now_s) * 1000.0
            else:  # the time left for its prompt: until its first-token deadline, less a step
                window_ms = (r.ttft_deadline_s - now_s) * 1000.0 - l1
            period_charge = charge * self.period_ms / max(window_ms, self.period_ms)
        mask_rate = rate
        if opts.prefill_then_decode and prefill_ms > self.period_ms:
            mask_rate = 0
        return Candidate(r, rate, tier, rank, prefill, charge, lifetime, feasible,
                         period_charge, mask_rate)

    def select(self, candidates: list[Candidate], budget_ms: float,
               credit: Mapping[str, int], now_s: float, max_rows: int) -> list[Candidate]:
        opts = self.options
        chosen: list[Candidate] = []
        counts: list[int] = []
        width = 0
        charges_ms = 0.0
        blocks = 0
        pending: list[Pending] = []
        total_blocks = self.config.num_kv_blocks
        t_now_ms = 0.0
        # Exact pruning of the period test: a new row's columns depend only on its rate and
        # the width, so once a rate failed with some prefill charge, any equal or larger
        # charge at that rate fails too, until a row is accepted.
        failed_charge: dict[tuple[int, int], float] = {}
        edf = opts.first_token_edf and opts.prefill_aware
        decoding: list[Candidate] = []  # chosen rows that decode now (first_token_edf)
        lead_ms = math.inf  # how long they may all pause (first_token_edf)
        prompts: list[Candidate] = []  # the first-token prompts taken (first_token_edf)
        for c in candidates:
            if len(chosen) >= max_rows:
                break
            charge = c.period_charge_ms if opts.prefill_aware else 0.0
            # first_token_edf: a prompt longer than a chunk, due within a few periods.
            first_prompt = (edf and bool(c.prefill_tokens) and c.request.first_token_s is None
                            and c.charge_ms > self.period_ms * opts.max_prefill_ratio
                            and (c.request.ttft_deadline_s - now_s) * 1000.0
                            <= opts.first_token_edf_periods * self.period_ms
                            and opts.prompt_bound(self.latency_model, c.request))
            if first_prompt:
                charge = 0.0  # its prompt is checked against its deadline instead, below
            # Exact only per (rate, whether the row has columns): mask_rate 0 adds none.
            key = (c.rate, bool(c.mask_rate)) if edf else (c.rate, 1)
            new_row = c.request.request_id not in credit or not opts.spread_mask
            fits = not opts.memory_aware or blocks + c.lifetime_blocks <= total_blocks
            if fits and c.rate <= width:  # a lower bound: every one of its ones costs >= step
                fits = (t_now_ms + c.mask_rate * self._min_step_ms + charges_ms + charge
                        <= budget_ms)
            if fits and new_row and charge >= failed_charge.get(key, math.inf):
                fits = False
            if fits:
                new_width = max(width, c.rate)
                new_counts = (self.columns(chosen + [c], new_width, credit) if new_width != width
                              else self._add_row(counts, c, width, credit))
                t_ms = period_ms(new_counts, self._l)
                fits = t_ms + charges_ms + charge <= budget_ms
                if not fits and new_row:
                    failed_charge[key] = min(charge, failed_charge.get(key, math.inf))
            if fits and opts.prefill_aware and c.prefill_tokens:
                if first_prompt:
                    fits = self.first_tokens_hold(decoding, prompts, c, new_width, credit,
                                                  budget_ms - charges_ms, now_s, lead_ms)
                else:
                    # ttft_without_own_row: only for a prompt due before every one taken.
                    own = ((t_now_ms, width) if opts.ttft_without_own_row and all(
                        p.deadline_s > c.request.ttft_deadline_s for p in pending) else None)
                    fits = self.ttft_holds(pending, c, t_ms, new_width, budget_ms, now_s, own)
            if not fits:
                if opts.skip_and_continue:
                    continue
                break
            chosen.append(c)
            counts, width, t_now_ms = new_counts, new_width, t_ms
            failed_charge.clear()
            blocks += c.lifetime_blocks
            if c.prefill_tokens:
                if first_prompt:
                    prompts.append(c)
                else:
                    charges_ms += c.period_charge_ms
                pending.append(self.pending(c))
            elif edf and c.request.first_token_s is not None:
                decoding.append(c)
                r = c.request
                due_ms = ((r.first_token_s - now_s) * 1000.0  # type: ignore[operator]
                          + (r.num_output_tokens - opts.prefill_lead_guard_tpots) * r.slo.tpot_ms)
                lead_ms = min(lead_ms, max(0.0, due_ms))
        return chosen

    def pending(self, c: Candidate) -> Pending:
        started = c.request.first_token_s is not None
        return Pending(math.inf if started else c.request.ttft_deadline_s, c.prefill_tokens,
                        c.charge_ms)

    def ttft_holds(self, pending: list[Pending], c: Candidate, mask_ms: float, width: int,
                   budget_ms: float, now_s: float,
                   own: tuple[float, int] | None = None) -> bool:
        """Predicted first tokens, prefills run earliest deadline first, all still on time.

        With fixed `prefill_chunk_tokens`, every chunk rides a decode column. Else prompts
        get the period's time beyond the mask's decode columns (all of it when nothing
        decodes), `1 - mask_ms / budget_ms` of the device, then a column for the first token.
        `own` (`ttft_without_own_row`): the mask and width without `c`, for `c`'s own first
        token: its row does not decode before it, so its columns take nothing from its prompt.
        The selector passes it only when `c` is due before every prompt taken so far.
        """
        mine = self.pending(c)
        queue = sorted([*pending, mine], key=lambda p: p.deadline_s)
        chunk = self.options.prefill_chunk_tokens

        def pace(mask: float, cols: int) -> tuple[float, float]:  # (share, column_ms)
            return (1.0 if not cols else 1.0 - mask / budget_ms,
                    max(mask / max(cols, 1), self._l(1)))

        share, column_ms = pace(mask_ms, width)
        own_share, own_column_ms = pace(*own) if own is not None else (share, column_ms)
        if chunk is None and share <= 0 and own_share <= 0:
            return False
        t_ms, tokens = 0.0, 0
        for p in queue:
            tokens += p.tokens
            t_ms += p.charge_ms
            s, col = (own_share, own_column_ms) if p is mine else (share, column_ms)
            if chunk is not None:
                ready_ms = t_ms + math.ceil(tokens / chunk) * col
            elif s <= 0:
                return False
            else:
                ready_ms = t_ms / s + col
            if now_s + ready_ms / 1e3 > p.deadline_s:
                return False
        return True

    def first_tokens_hold(self, decoding: list[Candidate], prompts: list[Candidate],
                          c: Candidate, width: int, credit: Mapping[str, int], budget_ms: float,
                          now_s: float, lead_ms: float) -> bool:
        """`first_token_edf`: the first-token prompts taken and `c`, run earliest deadline
        first on what the rows that decode leave of the period, all ready in time. A prompt
        done starts decoding: the prompts after it get what the rows then leave. The first
        `lead_ms` of prompt work (the decoding rows' lead on their schedules) take the whole
        device."""
        queue = sorted([*prompts, c], key=lambda p: p.request.ttft_deadline_s)
        rows = list(decoding)
        t_ms = 0.0
        for p in queue:
            mask_ms = period_ms(self.columns(rows, width, credit), self._l) if rows else 0.0
            share = 1.0 - mask_ms / budget_ms if rows else 1.0
            if share <= 0:
                return False
            work_ms = p.charge_ms
            ahead_ms = min(work_ms, max(0.0, lead_ms - t_ms))
            t_ms += ahead_ms + (work_ms - ahead_ms) / share
            column_ms = max(mask_ms / max(width, 1), self._l(1))
            if now_s + (t_ms + column_ms) / 1e3 > p.request.ttft_deadline_s:
                return False
            rows.append(p)
        return True

    def row_columns(self, c: Candidate, width: int, credit: Mapping[str, int]) -> Iterable[int]:
        if not c.mask_rate:
            return ()
        if not self.options.spread_mask:
            return range(c.rate)
        rid = c.request.request_id
        start = credit.get(rid, width - c.rate)
        return spread_row(c.rate, width, min(max(start, 0), width - 1))

    def _add_row(self, counts: list[int], c: Candidate, width: int,
                 credit: Mapping[str, int]) -> list[int]:
        new = list(counts)
        for col in self.row_columns(c, width, credit):
            new[col] += 1
        return new

    def columns(self, rows: list[Candidate], width: int,
                credit: Mapping[str, int]) -> list[int]:
        """Column counts of the mask of `rows`, `width` columns wide."""
        counts = [0] * width
        for c in rows:
            for col in self.row_columns(c, width, credit):
                counts[col] += 1
        return counts


def reachable_qoe(r: RequestView, now_s: float) -> float:
    """Andes' QoE `r` could still reach if served at its pace from now: H / (H + lateness),
    H half its ideal generation time (every token shifted by the same delay)."""
    due_s = r.arrival_s + (r.slo.ttft_ms + r.num_output_tokens * r.slo.tpot_ms) / 1000.0
    half_ms = (r.max_tokens + 1) * r.slo.tpot_ms / 2.0
    return half_ms / (half_ms + max(0.0, (now_s - due_s) * 1000.0))
