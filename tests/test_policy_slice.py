"""SLICE (full and paper mode): the mask arithmetic and the selection, with a fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sliceserve.config import SchedulerConfig
from sliceserve.core.scheduler import Scheduler
from sliceserve.latency_model import LatencyModel
from sliceserve.metrics.slo import RequestRecord, is_met
from sliceserve.policies.registry import make_policy
from sliceserve.policies.slice_mask import (
    brute_force_period_ms,
    decode_rate,
    front_packed_columns,
    front_packed_period_ms,
    period_ms,
    spread_row,
)
from sliceserve.policies.slice_paper import select_paper
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams
from sliceserve.sim.simulator import simulate

PAPER = LatencyModel.load("paper")
L = PAPER.decode_latency_ms
_ids = itertools.count()


def req(arrival_s: float = 0.0, prompt: int = 64, out: int = 32, ttft_ms: float = 200,
        tpot_ms: float = 50, utility: float = 100, deadline_ms: float | None = None) -> Request:
    return Request(f"r{next(_ids)}", arrival_s, prompt, SamplingParams(max_tokens=out,
                   ignore_eos=True), SLO(ttft_ms, tpot_ms, deadline_ms, utility))


def front_mask(rates: list[int]) -> list[list[int]]:
    width = max(rates)
    return [[1 if c < v else 0 for c in range(width)] for v in rates]


# --- the mask arithmetic ---

@given(st.lists(st.integers(1, 40), min_size=1, max_size=16))
def test_front_packed_period_equals_brute_force_sum(rates: list[int]) -> None:
    rates_desc = sorted(rates, reverse=True)
    expected = brute_force_period_ms(front_mask(rates), L)
    assert front_packed_period_ms(rates_desc, L) == pytest.approx(expected)
    assert period_ms(front_packed_columns(rates), L) == pytest.approx(expected)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=16), st.data())
def test_spread_period_equals_brute_force_sum(rates: list[int], data: st.DataObject) -> None:
    width = max(rates)
    mask, counts = [], [0] * width
    for v in rates:
        credit = data.draw(st.integers(0, width - 1))
        cols = spread_row(v, width, credit)
        mask.append([1 if c in cols else 0 for c in range(width)])
        for c in cols:
            counts[c] += 1
    assert period_ms(counts, L) == pytest.approx(brute_force_period_ms(mask, L))


@given(st.integers(1, 71), st.integers(1, 71), st.data())
def test_spread_row_gives_its_rate_with_even_gaps(v: int, extra: int, data: st.DataObject) -> None:
    width = max(v, extra)
    credit = data.draw(st.integers(0, width - 1))
    cols = spread_row(v, width, credit)
    assert len(cols) == v
    if v > 1:
        gaps = [b - a for a, b in zip(cols, cols[1:])] + [cols[0] + width - cols[-1]]
        assert max(gaps) - min(gaps) <= 1
        assert width // v <= min(gaps) and max(gaps) <= -(-width // v)


def test_new_spread_row_is_served_first() -> None:
    assert spread_row(5, 20, 20 - 5)[0] == 0


def test_decode_rate_is_ceiling_of_period_over_tpot() -> None:
    assert decode_rate(1000, 50) == 20
    assert decode_rate(1000, 120) == 9
    assert decode_rate(1000, 250) == 4
    assert decode_rate(1000, 5000) == 1


# --- paper mode ---

def test_paper_stops_at_first_misfit() -> None:
    # Four rt rows at v=20 fill exactly 20 * l(4) = 1000 ms; a fifth does not fit, and the
    # nrt request ranked after it is not considered either (paper mode stops).
    rts = [req(arrival_s=i * 0.001) for i in range(5)]
    nrt = req(arrival_s=1.0, ttft_ms=2000, tpot_ms=250, utility=1)
    chosen = select_paper([*rts, nrt], 1000.0, L, 16)
    assert [r for r, _ in chosen] == rts[:4]
    assert front_packed_period_ms([20] * 4, L) == pytest.approx(1000.0)


def test_paper_caps_at_16_rows() -> None:
    cheap = LatencyModel("flat", (1.0,), 0.0, 0.0).decode_latency_ms
    many = [req(arrival_s=i, tpot_ms=1000, utility=1) for i in range(40)]
    assert len(select_paper(many, 1000.0, cheap, 16)) == 16


def test_paper_ranks_by_utility_times_tpot() -> None:
    a = req(utility=1, tpot_ms=250)  # r = 250
    b = req(utility=100, tpot_ms=50)  # r = 5000
    c = req(utility=1, tpot_ms=100)  # r = 100
    chosen = [r for r, _ in select_paper([a, c, b], 1000.0, L, 16)]
    assert chosen == [b, a, c]


def test_paper_selects_the_best_alone_when_nothing_fits() -> None:
    slow = LatencyModel("slow", (900.0,), 100.0, 0.0).decode_latency_ms
    only = req(tpot_ms=50)  # needs 20 x 900 ms per period: cannot fit, runs anyway
    assert [r for r, _ in select_paper([only], 1000.0, slow, 16)] == [only]


# --- full mode, driven through the scheduler ---

def run(policy: str, requests: list[Request], kv_tokens: int = 32768,
        **options: object) -> list[Request]:
    cfg = SchedulerConfig.for_capacity(kv_tokens)
    simulate(requests, make_policy(policy, PAPER, cfg, dict(options)), PAPER, cfg)
    return requests


def met(r: Request) -> bool:
    """The paper's definition, as every result file counts it: completed, TTFT, mean TPOT and
    (if set) the deadline within the SLO."""
    return is_met(RequestRecord.from_request(r))


def test_light_load_meets_everything() -> None:
    requests = [req(arrival_s=i * 2.0, out=40) for i in range(10)]
    for r in run("slice", requests):
        assert r.status is RequestStatus.COMPLETED and met(r)


def test_spread_mask_paces_a_loose_request_beside_tight_ones() -> None:
    # Four tight rows fill the period; a loose one (tpot 250 -> v = 4) rides in every fifth
    # column, so its gaps stay near tpot instead of a burst then a long silence.
    tight = [req(arrival_s=0.0, out=200) for _ in range(3)]
    loose = req(arrival_s=0.0, out=20, tpot_ms=250, ttft_ms=2000, utility=1)
    run("slice", [*tight, loose], best_effort_share=0.0)
    assert met(loose)
    gaps = [b - a for a, b in zip(loose.token_times_s, loose.token_times_s[1:])]
    assert max(gaps) <= 0.250


def test_triaged_request_is_not_selected_but_completes() -> None:
    # Two requests whose TTFT (5 ms) no prefill can meet: triaged at once, they run on the
    # capacity the three selected rows leave, finish, and the three keep their SLO.
    rows = [req(arrival_s=0.0, out=100) for _ in range(3)]
    late = [req(arrival_s=0.01, out=10, ttft_ms=5), req(arrival_s=0.02, out=10, ttft_ms=5)]
    cfg = SchedulerConfig.for_capacity(32768)
    policy = make_policy("slice", PAPER, cfg)
    triaged = []
    simulate([*rows, *late], policy, PAPER, cfg,
             on_step=lambda engine: triaged.append(policy.state()["triaged"]))
    assert all(met(r) for r in rows)
    assert all(r.status is RequestStatus.COMPLETED for r in late)
    assert max(triaged) == 2


def test_reject_infeasible_rejects_with_a_reason() -> None:
    rows = [req(arrival_s=0.0, out=100) for _ in range(3)]
    late = req(arrival_s=0.01, out=10, ttft_ms=5)
    run("slice", [*rows, late], reject_infeasible=True)
    assert late.status is RequestStatus.REJECTED
    assert late.finish_reason == "rejected" and late.finish_code == "slo_infeasible"
    assert late.finish_detail and "SLO" in late.finish_detail


def test_ttft_urgency_serves_the_urgent_request_first() -> None:
    # A request with a far TTFT deadline ranks higher by utility rate but can wait: the
    # urgent one gets the first prefill.
    loose = req(arrival_s=0.0, prompt=1000, ttft_ms=5000, tpot_ms=250, utility=1, out=8)
    urgent = req(arrival_s=0.0, prompt=64, ttft_ms=300, tpot_ms=100, utility=1, out=8)
    run("slice", [loose, urgent], prefill_chunk_tokens=256)
    assert met(urgent) and met(loose)
    assert urgent.token_times_s[0] < loose.token_times_s[0]


def test_memory_aware_selection_never_overcommits() -> None:
    # 1024 tokens of KV: each request needs 64 + 200 tokens for its life; at most 3 fit.
    requests = [req(arrival_s=0.0, prompt=64, out=200, tpot_ms=200, ttft_ms=5000, utility=1)
                for _ in range(6)]
    cfg = SchedulerConfig.for_capacity(1024)
    policy = make_policy("slice", PAPER, cfg)
    sizes = []

    by_id = {r.request_id: r for r in requests}

    def check(engine: object) -> None:
        selected = [by_id[rid] for rid in policy.state()["selected"]]
        sizes.append(sum(cfg.blocks_for(r.num_prompt_tokens + r.max_tokens) for r in selected))

    simulate(requests, policy, PAPER, cfg, on_step=check)
    assert max(sizes) > 0, "nothing was ever selected: the check checked nothing"
    assert max(sizes) <= cfg.num_kv_blocks
    assert all(r.status is RequestStatus.COMPLETED for r in requests)


def test_policy_decisions_do_not_mutate_requests() -> None:
    cfg = SchedulerConfig.for_capacity(4096)
    for name in ("slice", "slice-paper"):
        policy = make_policy(name, PAPER, cfg)
        scheduler = Scheduler(cfg, policy)
        rs = [req(arrival_s=0.0) for _ in range(6)]
        for r in rs:
            scheduler.add_request(r, 0.0)
        before = [(r.status, r.num_computed_tokens, list(r.output_token_ids)) for r in rs]
        policy.schedule(scheduler.view)
        assert before == [(r.status, r.num_computed_tokens, list(r.output_token_ids)) for r in rs]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_full_mode_at_least_matches_paper_mode_under_overload(seed: int) -> None:
    import random

    def workload() -> list[Request]:
        rng = random.Random(seed)
        return [req(arrival_s=rng.uniform(0, 5), out=rng.randint(16, 128),
                    tpot_ms=rng.choice([50, 100, 250]), ttft_ms=rng.choice([200, 2000]),
                    utility=rng.choice([1, 100])) for _ in range(40)]
    full = sum(met(r) for r in run("slice", workload()))
    paper = sum(met(r) for r in run("slice-paper", workload()))
    assert full >= paper - 2


BOOL_OPTIONS = [f.name for f in __import__("dataclasses").fields(
    make_policy("slice", PAPER, SchedulerConfig()).Options) if f.type in ("bool", bool)]


@pytest.mark.parametrize("option", BOOL_OPTIONS)
def test_every_option_flipped_alone_still_serves_everything(option: str) -> None:
    import random

    rng = random.Random(7)
    requests = [req(arrival_s=rng.uniform(0, 3), out=rng.randint(4, 64),
                    prompt=rng.randint(8, 300), tpot_ms=rng.choice([50, 100, 250]),
                    ttft_ms=rng.choice([200, 2000]), utility=rng.choice([1, 100]),
                    deadline_ms=rng.choice([None, 4000.0])) for _ in range(40)]
    default = getattr(make_policy("slice", PAPER, SchedulerConfig()).options, option)
    run("slice", requests, kv_tokens=4096, **{option: not default})
    assert all(r.status in (RequestStatus.COMPLETED, RequestStatus.REJECTED) for r in requests)
    assert all(r.finish_reason for r in requests)
    if option != "reject_infeasible":
        assert all(r.status is RequestStatus.COMPLETED for r in requests)


def test_leftovers_never_start_a_request_that_can_still_be_selected() -> None:
    # Three tight rows fill the period; a fourth feasible one must not be started on leftover
    # capacity (its TPOT clock would start with no place to keep it): its first token comes
    # only once it is selected, and then it keeps its TPOT.
    rows = [req(arrival_s=0.0, out=30, ttft_ms=2000) for _ in range(3)]
    waiting = req(arrival_s=0.001, out=30, ttft_ms=2000)
    cfg = SchedulerConfig.for_capacity(32768)
    policy = make_policy("slice", PAPER, cfg)
    started_unselected = []

    def check(engine: object) -> None:
        # The plan the policy shows (`state()`; emptied once it has nothing left to serve).
        if (waiting.first_token_s is not None and not waiting.is_finished
                and waiting.request_id not in policy.state()["selected"]):
            started_unselected.append(waiting.num_output_tokens)

    simulate([*rows, waiting], policy, PAPER, cfg, on_step=check)
    assert not started_unselected
    assert all(met(r) for r in [*rows, waiting])


def test_selection_prices_a_prompt_with_its_attention_pairs() -> None:
    from sliceserve.policies.slice import SliceOptions
    from sliceserve.policies.slice_select import Selector

    curved = LatencyModel("curved", PAPER.decode_ms, PAPER.decode_slope_ms,
                          PAPER.prefill_ms_per_token, prefill_attention_ms_per_pair=1e-3)
    cfg = SchedulerConfig.for_capacity(32768)
    linear, with_term = Selector(SliceOptions(), PAPER, cfg), Selector(SliceOptions(), curved, cfg)
    r = req(prompt=256)
    assert with_term.assess(r, 0.0).charge_ms == pytest.approx(
        linear.assess(r, 0.0).charge_ms + 1e-3 * 256 * 257 / 2)
    # Half the prompt cached: the rest attends to it too.
    r.num_computed_tokens = 128
    assert with_term.assess(r, 0.0).charge_ms == pytest.approx(
        linear.assess(r, 0.0).charge_ms + 1e-3 * 128 * (128 + 129 / 2))
    # A 1000-token prompt: 214 ms on the linear model, within a 450 ms TTFT; with its 0.5 s
    # of attention, not any more.
    long = req(prompt=1000, ttft_ms=450)
    assert linear.assess(long, 0.0).feasible and not with_term.assess(long, 0.0).feasible
