"""Andes (arXiv 2404.16283; code in the first author's vLLM forks), as BASELINES.md specifies.

Andes serves for quality of experience (QoE): how closely each token reaches the reader by
the schedule `T0 + i * L` (T0 = the TTFT objective, L = the TPOT objective). Each request's
value is the QoE gain of serving it for a look-ahead `dt` rather than letting it wait:

    t = now - arrival, n = tokens so far, E = (t + dt) / L
    Q_serve = 1 if n > 0 and its last token came before T0 + n L,
              else min(1, ((n + dt / max(L, ell)) / E)^2)
    Q_wait  = [t + dt <= T0] if n == 0, else 1 if E <= n, else 1 - ((E - n) / E)^2
    gain    = (Q_serve - Q_wait) x (`running_bonus` if it holds KV, else 1)

with `ell` the per-token latency it would get, and the weight `w` of a request = the KV blocks
of its tokens plus one. Every iteration: if it is a solver iteration (every
`solver_interval`-th) and the KV cache is at least `kv_threshold` full, a greedy knapsack over
KV blocks decides whom to evict and whom to admit: preemption candidates are the first P
running requests by gain/w (lowest first) whose gain/w is at most the best waiting one's, with
`P = floor(p10(slack) / (c_re x block x mean w))` (slack = T0 + n L - t of the running
requests, c_re the recompute cost per token); candidates and waiting requests are taken by
gain / w^2 (gain/w per block, as the code does) while they fit, stopping at the first misfit;
candidates not taken are evicted (recompute), waiting ones taken are admitted. Otherwise,
waiting requests are admitted by gain/w, highest first, until the first misfit. An iteration
that admits runs only prefills (vLLM v0, as the code); otherwise every running request
decodes, with vLLM v0's preemption from the tail on KV shortage.

[A] defaults of BASELINES.md where the code has a constant: `ell` is the latency model's
decode step of the running batch at its mean context (`token_latency_ms` sets a constant, as
the code does), and `c_re` the model's prefill cost per token (`recompute_ms_per_token`).
Deviations: the project's latency model replaces the code's profiled constants; a prompt
longer than the whole token budget prefills in chunks; `preemption_cap` (off) is the older
code's guard that skips the solver while preemptions exceed `preemption_cap_ratio` x arrivals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sliceserve.config import SchedulerConfig
from sliceserve.policies.base import (
    Budget,
    Decision,
    LatencySource,
    Policy,
    PolicyOptions,
    RequestView,
    SchedulerView,
    tokens_to_compute,
)
from sliceserve.policies.registry import register

# A request's QoE gain per unit of weight now; `running`: it holds KV and decodes.
Density = Callable[[RequestView, bool], float]


@dataclass(frozen=True)
class AndesOptions(PolicyOptions):
    max_batch_size: int = 8
    lookahead_s: float = 10.0  # dt; the paper's sensitivity runs use 2, 10, 50 s
    token_latency_ms: float | None = None  # ell; None: from the latency model [A]
    recompute_ms_per_token: float | None = None  # c_re; None: the model's prefill cost [A]
    running_bonus: float = 1.1
    solver_interval: int = 10  # iterations
    kv_threshold: float = 0.9  # KV utilisation at which the knapsack runs
    preemption_cap: bool = False
    preemption_cap_ratio: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "solver_interval"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("lookahead_s", "running_bonus", "preemption_cap_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("token_latency_ms", "recompute_ms_per_token"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"{name} must be a positive number or null, got {value!r}")
        if not 0 < self.kv_threshold <= 1:
            raise ValueError(f"kv_threshold must be in (0, 1], got {self.kv_threshold!r}")
        if not isinstance(self.preemption_cap, bool):
            raise ValueError("preemption_cap must be a bool")


def qoe_gain(request: RequestView, now_s: float, lookahead_ms: float, token_latency_ms: float,
             running: bool, running_bonus: float = 1.1) -> float:
    """Andes' QoE gain of serving `request` for the look-ahead rather than letting it wait."""
    t0, pace = request.slo.ttft_ms, request.slo.tpot_ms
    t = (now_s - request.arrival_s) * 1000.0
    n = request.num_output_tokens
    expected = (t + lookahead_ms) / pace
    last = request.last_token_s
    if n > 0 and last is not None and (last - request.arrival_s) * 1000.0 <= t0 + n * pace:
        q_serve = 1.0
    else:
        q_serve = min(1.0, ((n + lookahead_ms / max(pace, token_latency_ms)) / expected) ** 2)
    if n == 0:
        q_wait = 1.0 if t + lookahead_ms <= t0 else 0.0
    elif expected <= n:
        q_wait = 1.0
    else:
        q_wait = 1.0 - ((expected - n) / expected) ** 2
    return (q_serve - q_wait) * (running_bonus if running else 1.0)


@register
class AndesPolicy(Policy):
    name = "andes"
    Options = AndesOptions
    options: AndesOptions

    def __init__(self, options: PolicyOptions, latency_model: LatencySource,
                 config: SchedulerConfig) -> None:
        super().__init__(options, latency_model, config)
        self._iteration = 0
        self._num_arrivals = 0
        self._num_preemptions = 0
        self._num_solver_runs = 0

    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:
        self._num_arrivals += 1

    def on_preempt(self, request: RequestView, view: SchedulerView) -> None:
        self._num_preemptions += 1

    def weight(self, request: RequestView) -> int:
        """KV blocks of its tokens plus one (what it holds after its next step)."""
        return self.config.blocks_for(request.num_tokens + 1)

    def token_latency_ms(self, view: SchedulerView) -> float:
        if self.options.token_latency_ms is not None:
            return self.options.token_latency_ms
        running = view.running
        rows = max(1, len(running))
        mean_ctx = sum(r.num_tokens for r in running) / rows if running else 0.0
        return self.latency_model.iteration_ms(rows, rows, int(rows * mean_ctx))

    # --- one iteration ---
    def schedule(self, view: SchedulerView) -> Decision:
        self._iteration += 1
        opts = self.options
        budget = Budget(view, min(opts.max_batch_size, view.config.max_num_seqs))
        ell = self.token_latency_ms(view)
        dt_ms = opts.lookahead_s * 1000.0
        now = view.now_s

        def density(r: RequestView, running: bool) -> float:
            return qoe_gain(r, now, dt_ms, ell, running, opts.running_bonus) / self.weight(r)

        waiting = sorted(view.waiting, key=lambda r: (-density(r, False), r.arrival_s))
        batch = self._continue_chunks(view, budget)
        evict: list[RequestView] = []
        if self._solver_due(view):
            self._num_solver_runs += 1
            admit, evict = self._knapsack(view, waiting, density)
            for r in evict:
                budget.release(r)
            for r in admit:
                n = min(tokens_to_compute(r), budget.tokens_left)
                if n <= 0 or not budget.take(r, n):
                    break
                batch.append((r, n))
        else:
            self._admit(waiting, budget, batch, len(view.running))
        if batch:  # prefill iterations take precedence over decode iterations
            return Decision(batch=batch, preempt=evict)
        gone = {r.request_id for r in evict}
        decode, preempt = self._decode([r for r in view.running if r.request_id not in gone],
                                       budget)
        return Decision(batch=decode, preempt=evict + preempt)

    def _continue_chunks(self, view: SchedulerView,
                         budget: Budget) -> list[tuple[RequestView, int]]:
        """Prompts longer than the whole token budget go on in chunks (a deviation)."""
        batch = []
        for r in view.running:
            todo = tokens_to_compute(r)
            n = min(todo, budget.tokens_left)
            if todo > 1 and n > 0 and budget.take(r, n):
                batch.append((r, n))
        return batch

    def _admit(self, waiting: list[RequestView], budget: Budget,
               batch: list[tuple[RequestView, int]], num_running: int) -> None:
        room = min(self.options.max_batch_size, self.config.max_num_seqs) - num_running
        for r in waiting[:max(room, 0)]:
            todo = tokens_to_compute(r)
            if todo > budget.tokens_left and (batch or todo <= self.config.max_num_batched_tokens):
                break
            n = min(todo, budget.tokens_left)
            if n <= 0 or not budget.take(r, n):
                break  # the first misfit ends admission
            batch.append((r, n))

    def _solver_due(self, view: SchedulerView) -> bool:
        opts = self.options
        if self._iteration % opts.solver_interval != 0 or not view.waiting:
            return False
        if (opts.preemption_cap
                and self._num_preemptions > opts.preemption_cap_ratio * self._num_arrivals):
            return False
        total = view.config.num_kv_blocks
        free = max(0, view.num_free_blocks - len(view.running))  # a block per row kept
        return (total - free) / total >= opts.kv_threshold

    def _knapsack(self, view: SchedulerView, waiting: list[RequestView],
                  density: Density) -> tuple[list[RequestView], list[RequestView]]:
        """(waiting to admit, running to evict) of the greedy knapsack over KV blocks."""
        running = list(view.running)
        if not waiting or not running:
            return [], []
        now_ms = view.now_s * 1000.0
        slack = [r.slo.ttft_ms + r.num_output_tokens * r.slo.tpot_ms
                 - (now_ms - r.arrival_s * 1000.0) for r in running]
        c_re = (self.options.recompute_ms_per_token
                if self.options.recompute_ms_per_token is not None
                else self.latency_model.prefill_ms_per_token)
        mean_w = sum(map(self.weight, running)) / len(running)
        p10 = float(np.percentile(slack, 10))
        per_eviction_ms = c_re * self.config.block_size * mean_w
        num_candidates = int(p10 // per_eviction_ms) if p10 > 0 and per_eviction_ms > 0 else 0
        if per_eviction_ms <= 0 < p10:
            num_candidates = len(running)
        best_waiting = density(waiting[0], False)
        decoding = [r for r in running if tokens_to_compute(r) == 1]
        candidates = sorted(decoding, key=lambda r: (density(r, True), -r.arrival_s))
        candidates = [r for r in candidates if density(r, True) <= best_waiting]
        candidates = candidates[:num_candidates]
        if not candidates:
            return [], []
        kept_rows = len(running) - len(candidates)
        capacity = view.num_free_blocks + sum(view.num_blocks_held(r) for r in candidates)
        pool = [(r, True) for r in candidates] + [(r, False) for r in waiting]
        pool.sort(key=lambda item: (-density(item[0], item[1]) / self.weight(item[0]),
                                    item[0].arrival_s))
        rows_left = min(self.options.max_batch_size, view.config.max_num_seqs) - kept_rows
        taken: set[str] = set()
        for r, _ in pool:
            w = self.weight(r)
            if w > capacity or rows_left <= 0:
                break
            capacity -= w
            rows_left -= 1
            taken.add(r.request_id)
        evict = [r for r in candidates if r.request_id not in taken]
        admit = [r for r in waiting if r.request_id in taken]
        return admit, evict

    @staticmethod
    def _decode(running: list[RequestView],
                budget: Budget) -> tuple[list[tuple[RequestView, int]], list[RequestView]]:
        """Every running row computes (a decode token, or a chunk of a prompt longer than
        the budget); on KV shortage the tail is preempted (vLLM v0)."""
        queue = list(running)
        batch: list[tuple[RequestView, int]] = []
        preempt: list[RequestView] = []
        while queue:
            r = queue.pop(0)
            n = min(tokens_to_compute(r), budget.tokens_left)
            if n <= 0:
                continue
            while not budget.take(r, n):
                victim = queue.pop() if queue else r
                budget.release(victim)
                preempt.append(victim)
                if victim is r:
                    break
            else:
                batch.append((r, n))
        return batch, preempt

    def state(self) -> dict[str, Any]:
        return {"iterations": self._iteration, "solver_runs": self._num_solver_runs,
                "preemptions": self._num_preemptions}
