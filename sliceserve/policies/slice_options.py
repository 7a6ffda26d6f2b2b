"""The options of SLICE, full mode (`slice`, sliceserve/policies/slice.py), and what each does.

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
- first_token_edf (on, for prompt-bound requests; docs/BENCHMARKS.md, issue 11): a prompt
  before its first token that is longer than a chunk (`max_prefill_ratio` x P) and due
  within `first_token_edf_periods` periods is not charged to the period; it is taken if
  every such prompt taken, run earliest deadline first on what the rows decoding now leave
  of the period (a prompt done starts decoding and takes its share from those after it), is
  ready by its deadline, the first part of that work on the whole device for as long as the
  decoding rows are ahead of their schedules (their lead). Its decode row is charged to the
  mask as always. On a slow device whose prompts take about a period (paper workload, AVX2
  profile) the period test otherwise turns away a prompt beside a row that runs far ahead
  of its TPOT, and a later arrival due first displaces a half-done prompt. Applied to every
  first-token prompt it costs much attainment on `edge` (prompts admitted on what the
  decoding rows leave crowd the rows that start decoding), so it applies only to
  prompt-bound requests (below).
- prompt_bound_share (0.35): first_token_edf and overdue_prefill_ratio apply only to a
  request whose prompt alone takes at least this share of its TTFT. Such a prompt cannot
  be spread over periods beside decode slots and still be on time; a prompt with a TTFT of
  several times its own length can. Unscoped, overdue_prefill_ratio alone cost 5.5 points
  of utility on `edge` with the slow profile at 1.5x; scoped so, the two are level on every
  simulated fast profile and `edge`, and gain 5-8.5 points of SLO attainment on `paper` with
  the slow profile (docs/BENCHMARKS.md, prompt-bound requests).
- ttft_chunk_share (0.7): a chunk is also capped at this share of the tightest TTFT slack
  seen (floors: a few one-row steps, and a chunk at least 10x its row's slot in a batch). On
  a fast CPU a 0.3 s chunk is longer than a control request's TTFT slack (about 0.1 s): one
  arriving during a background prompt was judged infeasible behind it. Better on fast
  CPUs' profiles at every load, simulated and live; neutral where every slack is long; a
  little worse on `paper` with the slow AVX2 profile (docs/BENCHMARKS.md, the chunk cap).
- ttft_without_own_row (on): a prompt due before every prompt taken so far this period has
  its own first token predicted without its own decode columns (its row decodes only after
  that token). A lone control request beside decoding rows was turned away by its own
  mask's columns. Applied to every candidate it cost up to 5 points of utility on one
  overloaded profile; scoped so, it is better or level almost everywhere simulated, and
  about a point lower in SLO attainment on the Zen 4 profile under overload
  (docs/BENCHMARKS.md, a prompt's own row).
- overdue_prefill_ratio (2.0, for prompt-bound requests): a prompt that would miss its
  first-token deadline, counting the decode slot each of its chunks pays (a whole l(1) when
  nothing else runs: 13% of a 0.3 s chunk on the slow profile), gets chunks of up to this x
  P instead of `max_prefill_ratio` x P. null: off.
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
- decode_ahead (off by default; issue 12, light load): when nothing else waits (no prompt to run, no
  unselected or triaged request), selected rows whose credit is not due in this column decode
  too, the least ahead first, each charged its marginal latency, adding at most
  `decode_ahead_ratio` x a one-row step to the iteration and keeping every decoding row
  `extras_guard_tpots` ahead. Where batching is cheap (a CPU: a row costs a few percent of a
  step) rows then stream at the device's speed instead of their SLO's pace at light load;
  where a row costs about a step (the paper's model) nothing changes, since it would only
  move work. Credits are untouched: the mask's pace stays the floor. Simulated it is neutral
  or better everywhere; live on the Zen 5 EPYC at load 0.3 it lowered TPOT p90 and raised
  utility but cost TTFT and the navigation class (the extra rows cost more live than the
  profile says), so it is not the default (docs/BENCHMARKS.md). Measured before
  ttft_chunk_share; beside it, it costs about 3 points of utility on a cheap device at
  4 requests/s (tests/test_policy_slice_ahead.py pins the old cap).
- triage: a request whose SLO can no longer be met (TTFT passed without a first token, or
  remaining tokens beyond reach even alone) leaves the selection for good and runs on leftover
  capacity, or is rejected with a reason when `reject_infeasible`.
- aging (off by default: it costs 3 points on `edge` and nothing on `paper`, and triage plus
  `best_effort_share` already bound how long a request waits): a request that has not started
  ranks higher the longer it waits, up to `aging_max_factor`.
- lost_cause_min_qoe: a lost cause is rejected once the QoE it could still reach falls
  below this (off at 0), so that triaged work does not outlive the traffic.
- best_effort_share: when requests are left out, this share of the period is kept for them
  (the selection leaves it free), so triaged requests finish even under sustained overload.
- max_rows: the paper's fixed cap of 16 selected rows by default. `null` makes it
  device-relative: the selection takes at most as many rows as keep the predicted decode step
  within `row_tpot_share` (0.9) of the tightest TPOT the policy has been given (at least 2, at
  most max_num_seqs), so that the tightest row keeps a tenth of its TPOT for prompt chunks and
  prediction error: 17 rows on this project's SmolLM2 CPU profile on `edge`, 32 on vLLM's CPU
  build (0.74 ms a row of a 33.6 ms step; the plug-in's recommended setting), 2 on the slow
  AVX2 profile (25 ms a row). `max_extra_rows` null: as many as that cap. Measured in
  docs/BENCHMARKS.md ("SLICE inside vLLM", the row cap): better SLO attainment, but less
  utility under sustained overload than 16, so not the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sliceserve.policies.base import PolicyOptions, RequestView

if TYPE_CHECKING:
    from sliceserve.latency_model import LatencyModel


@dataclass(frozen=True)
class SliceOptions(PolicyOptions):
    period_ratio: float = 1.0  # P = 1 s x period_ratio
    # Selected rows: a fixed cap (16, the paper's, the default), or None: derived from the
    # device, the most rows whose decode step the latency model predicts within
    # `row_tpot_share` of the tightest TPOT the policy has been given (at least 2, at most the
    # scheduler's max_num_seqs; re-derived as the model is corrected). Not the default: in
    # simulation it costs utility under sustained 3x overload (docs/BENCHMARKS.md).
    max_rows: int | None = 16
    row_tpot_share: float = 0.9
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
    # Selected rows whose credit is not due in this column decode too, last, while the
    # iteration's added time fits the decoding rows' lead (extras_guard_tpots): what the
    # device would spend on nothing at light load goes to the rows' speed.
    decode_ahead: bool = False
    decode_ahead_ratio: float = 0.5  # ... adding at most this x a one-row decode step
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
    # ... and no more than this share of the tightest TTFT slack (TTFT less the prompt's own
    # prefill, alone) of any request given so far, but at least `ttft_chunk_floor_l1`
    # one-row decode steps and long enough that its row's slot in a batch (l(2) - l(1)) is
    # at most `ttft_chunk_slot_share` of it: an arrival whose first token is due soon then
    # waits at most that long for the chunk running when it comes. None: off (the cap is
    # max_prefill_ratio x P alone; docs/BENCHMARKS.md, the chunk cap).
    ttft_chunk_share: float | None = 0.7
    ttft_chunk_floor_l1: float = 3.0
    ttft_chunk_slot_share: float = 0.1
    # A candidate due before every prompt taken so far has its own first token predicted on
    # what the rows chosen before it leave of the period, not counting its own decode columns
    # (its row decodes only after its first token). False: its own columns count against its
    # own prompt too (the previous rule). Unscoped (every candidate) it lost up to 5 points of
    # utility on one overloaded profile (docs/BENCHMARKS.md), so the scope stays.
    ttft_without_own_row: bool = True
    # A prompt that would miss its first-token deadline (counting the decode slot each of its
    # chunks pays, a whole l(1) when nothing else runs) gets chunks of up to this x P instead
    # of max_prefill_ratio x P. None: max_prefill_ratio, and chunks' slots are not counted.
    overdue_prefill_ratio: float | None = 2.0
    # A prompt before its first token is not charged to the period: the selection takes it
    # if the prompts taken, earliest first-token deadline first, are all ready in time on
    # what the rows that decode now leave (all of the device for as long as those rows are
    # ahead of their schedules); its decode row is charged to the mask as before.
    first_token_edf: bool = True
    # ... for the prompts longer than a chunk (max_prefill_ratio x P) whose first token is due
    # within this many periods; the others are charged to the period as before.
    first_token_edf_periods: float = 2.5
    # first_token_edf and overdue_prefill_ratio apply only to prompt-bound requests: those
    # whose prompt alone (batch 1, on the latency model) takes at least this share of their
    # TTFT, so that they cannot afford to share periods with decode slots. 0: every prompt.
    prompt_bound_share: float = 0.35
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
    # Unselected rows added to one iteration; None: as many as the selection's cap.
    max_extra_rows: int | None = 16
    replan_interval_ratio: float = 0.25  # re-plan at least this often (x P)
    reject_infeasible: bool = False  # triaged requests are rejected instead of kept
    # A triaged request (a lost cause) is rejected once its Andes QoE, were it served from
    # now on at its pace, would fall below this (estimated H / (H + lateness), H half its
    # ideal generation time): under overload lost causes no longer pile up and drain the
    # device after the traffic ends. 0: keep every lost cause (the previous behaviour).
    lost_cause_min_qoe: float = 0.0
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
            rows = getattr(self, name)
            if rows is not None and (type(rows) is not int or rows < 1):
                raise ValueError(f"{name} must be an integer >= 1 or null (from the device)")
        if not 0 < self.row_tpot_share <= 1:
            raise ValueError("row_tpot_share must be in (0, 1]")
        chunk = self.prefill_chunk_tokens
        if chunk is not None and (type(chunk) is not int or chunk < 1):
            raise ValueError("prefill_chunk_tokens must be an integer >= 1 or null (by time)")
        if not 0 < self.max_prefill_ratio <= 10:
            raise ValueError("max_prefill_ratio must be in (0, 10]")
        if not self.first_token_edf_periods > 0:
            raise ValueError("first_token_edf_periods must be > 0")
        if not 0 <= self.prompt_bound_share <= 1:
            raise ValueError("prompt_bound_share must be in [0, 1]")
        share = self.ttft_chunk_share
        if share is not None and not 0 < share <= 10:
            raise ValueError("ttft_chunk_share must be in (0, 10] or null")
        if not self.ttft_chunk_floor_l1 >= 1:
            raise ValueError("ttft_chunk_floor_l1 must be >= 1")
        if not 0 < self.ttft_chunk_slot_share <= 1:
            raise ValueError("ttft_chunk_slot_share must be in (0, 1]")
        ratio = self.overdue_prefill_ratio
        if ratio is not None and not 0 < ratio <= 10:
            raise ValueError("overdue_prefill_ratio must be in (0, 10] or null")
        if self.prefill_pacing not in ("deadline", "period"):
            raise ValueError("prefill_pacing must be 'deadline' or 'period'")
        if not 0 <= self.decode_ahead_ratio <= 10:
            raise ValueError("decode_ahead_ratio must be in [0, 10]")
        if not 0 <= self.lost_cause_min_qoe <= 1:
            raise ValueError("lost_cause_min_qoe must be in [0, 1]")
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

    def extra_rows(self, rows: int) -> int:
        """Unselected rows an iteration may add when the selection's cap is `rows`."""
        return rows if self.max_extra_rows is None else self.max_extra_rows

    def prompt_bound(self, lm: LatencyModel, r: RequestView) -> bool:
        """Whether `r`'s prompt alone (batch 1, on `lm`) takes at least `prompt_bound_share`
        of its TTFT: first_token_edf and overdue_prefill_ratio apply to it."""
        return lm.prefill_ms(r.num_prompt_tokens) >= self.prompt_bound_share * r.slo.ttft_ms
