"""The baseline policies: orca, vllm, vllm-priority(-preempt), fastserve, edf.

Each behaviour is checked on a real Scheduler driven step by step (`Harness`), with hand-made
requests and small latency models, so the expected decisions can be worked out by hand.
"""

from __future__ import annotations

import random

import pytest

from sliceserve.config import SchedulerConfig
from sliceserve.core.kv_blocks import blocks_for_tokens
from sliceserve.core.plan import Plan
from sliceserve.core.scheduler import Scheduler
from sliceserve.engine.engine import Engine
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.edf import EdfPolicy, deadline_key, next_token_deadline_s
from sliceserve.policies.fastserve import FastServePolicy
from sliceserve.policies.registry import make_policy
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams
from sliceserve.sim.sim_executor import SimExecutor
from sliceserve.sim.simulator import simulate

BASELINES = ["orca", "vllm", "vllm-priority", "vllm-priority-preempt", "fastserve", "edf"]
PAPER = LatencyModel.load("paper")
# prefill_ms(n) = 5 + (n - 1): easy to place on FastServe's levels (quanta 10, 20, 40, ... ms).
SIMPLE = LatencyModel(name="simple", decode_ms=(5.0, 9.0, 12.0), decode_slope_ms=3.0,
                      prefill_ms_per_token=1.0)
ROOMY = SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=64, block_size=4,
                        num_kv_blocks=1024, max_model_len=1024)


def make_request(rid: str, arrival_s: float = 0.0, prompt: int = 4, max_tokens: int = 8, *,
                 ttft_ms: float = 200.0, tpot_ms: float = 50.0, priority: int = 0) -> Request:
    return Request(rid, arrival_s, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                   SLO(ttft_ms=ttft_ms, tpot_ms=tpot_ms), priority=priority)


class Harness:
    """A scheduler and a policy, stepped by hand on a virtual time line."""

    def __init__(self, policy: str, config: SchedulerConfig = ROOMY,
                 latency: LatencyModel = SIMPLE, **options: object) -> None:
        self.policy = make_policy(policy, latency, config, options)
        self.scheduler = Scheduler(config, self.policy)
        self.executor = SimExecutor(latency)
        self.now_s = 0.0

    def add(self, *requests: Request) -> None:
        for request in requests:
            self.scheduler.add_request(request, self.now_s)

    def step(self) -> Plan:
        plan = self.scheduler.schedule(self.now_s)
        if not plan.is_empty:
            result = self.executor.execute(plan)
            self.now_s += result.duration_s
            self.scheduler.update(plan, result, self.now_s)
        return plan


def ids(plan: Plan) -> list[str]:
    return [c.request.request_id for c in plan.chunks]


def chunks(plan: Plan) -> list[tuple[str, int]]:
    return [(c.request.request_id, c.num_new_tokens) for c in plan.chunks]


def mixed_workload(n: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(20.0)
        ttft, tpot = rng.choice([(200.0, 50.0), (2000.0, 100.0), (800.0, 60.0)])
        out.append(make_request(f"r{i}", t, rng.randint(1, 120), rng.randint(1, 60),
                                ttft_ms=ttft, tpot_ms=tpot, priority=rng.randint(0, 2)))
    return out


# --- every baseline ---

@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("config", [
    SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=256, block_size=16,
                    num_kv_blocks=256, max_model_len=1024),
    SchedulerConfig(max_num_batched_tokens=32, max_num_seqs=4, block_size=4,
                    num_kv_blocks=48, max_model_len=192),  # tight: chunking and preemption
], ids=["roomy", "tight"])
def test_mixed_workload_runs_to_completion(name: str, config: SchedulerConfig) -> None:
    requests = mixed_workload(60, seed=7)

    def check(engine: Engine) -> None:
        engine.scheduler.blocks.check_conserved()

    result = simulate(requests, make_policy(name, PAPER, config), PAPER, config, on_step=check)
    assert [r.status for r in result.requests] == [RequestStatus.COMPLETED] * len(requests)
    assert all(r.num_output_tokens == r.max_tokens for r in result.requests)


@pytest.mark.parametrize("name", BASELINES)
def test_max_batch_size_bounds_the_rows(name: str) -> None:
    h = Harness(name, max_batch_size=3)
    h.add(*(make_request(f"r{i}", prompt=2, max_tokens=4) for i in range(6)))
    while h.scheduler.has_unfinished():
        assert len(h.step().chunks) <= 3


@pytest.mark.parametrize("name", ["vllm", "vllm-priority", "fastserve", "edf"])
@pytest.mark.parametrize("bad", [{"max_batch_size": 0}, {"max_batch_size": 2.5}])
def test_bad_options_are_rejected(name: str, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        make_policy(name, PAPER, ROOMY, bad)


@pytest.mark.parametrize("bad", [{"num_levels": 0}, {"base_quantum_ms": 0.0},
                                 {"starvation_check_iterations": 0}, {"starvation_s": -1.0}])
def test_bad_fastserve_options_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_policy("fastserve", PAPER, ROOMY, bad)


@pytest.mark.parametrize("name", ["vllm", "vllm-priority", "edf"])
def test_a_decision_that_is_not_applied_is_made_again(name: str) -> None:
    h = Harness(name, max_batch_size=2)
    h.add(*(make_request(f"r{i}", arrival_s=i / 100, priority=3 - i) for i in range(4)))
    first = h.policy.schedule(h.scheduler.view)
    second = h.policy.schedule(h.scheduler.view)
    assert [(r.request_id, n) for r, n in first.batch] == \
        [(r.request_id, n) for r, n in second.batch]


# --- orca ---

def test_orca_never_overcommits_the_kv_cache() -> None:
    config = SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=16, block_size=4,
                             num_kv_blocks=48, max_model_len=192)
    requests = mixed_workload(40, seed=3)
    peak = 0

    def check(engine: Engine) -> None:
        nonlocal peak
        reserved = sum(blocks_for_tokens(r.num_prompt_tokens + r.max_tokens, config.block_size)
                       for r in engine.scheduler.running)
        assert reserved <= config.num_kv_blocks
        peak = max(peak, reserved)

    result = simulate(requests, make_policy("orca", PAPER, config), PAPER, config, on_step=check)
    assert all(r.status is RequestStatus.COMPLETED for r in result.requests)
    assert all(r.num_preemptions == 0 for r in result.requests)
    assert peak > config.num_kv_blocks // 2  # memory really was the limit


# --- vllm ---

def test_vllm_serves_running_first_then_chunks_waiting_prefills_in_the_budget() -> None:
    config = SchedulerConfig(max_num_batched_tokens=10, max_num_seqs=8, block_size=4,
                             num_kv_blocks=64, max_model_len=256)
    h = Harness("vllm", config)
    h.add(make_request("a", prompt=3))
    assert chunks(h.step()) == [("a", 3)]
    h.add(make_request("b", prompt=25), make_request("c", prompt=2))
    assert chunks(h.step()) == [("a", 1), ("b", 9)]
    assert chunks(h.step()) == [("a", 1), ("b", 9)]
    assert chunks(h.step()) == [("a", 1), ("b", 7), ("c", 2)]


def test_vllm_admission_is_fcfs_and_stops_at_the_first_misfit() -> None:
    config = SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=8, block_size=4,
                             num_kv_blocks=10, max_model_len=64)
    h = Harness("vllm", config)
    h.add(make_request("a", 0.0, prompt=20, max_tokens=2))  # 5 blocks
    h.step()
    h.add(make_request("big", 0.1, prompt=24, max_tokens=2),  # 6 blocks: does not fit
          make_request("small", 0.2, prompt=2, max_tokens=2))  # would fit, must not overtake
    plan = h.step()
    assert ids(plan) == ["a"] and not plan.preempted_ids


def preemption_scenario(name: str) -> tuple[Harness, Plan]:
    """4 KV blocks of 4 tokens. `a` (priority 2) starts alone; `b` (0) and `c` (1) join.
    By the 4th iteration `b` and `c` each need a new block and none is free."""
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, block_size=4,
                             num_kv_blocks=4, max_model_len=16)
    h = Harness(name, config)
    h.add(make_request("a", 0.0, prompt=4, max_tokens=8, priority=2))
    assert ids(h.step()) == ["a"]  # a: 4 computed, 1 block
    h.add(make_request("b", 0.1, prompt=3, max_tokens=8, priority=0),
          make_request("c", 0.2, prompt=3, max_tokens=8, priority=1))
    assert sorted(ids(h.step())) == ["a", "b", "c"]  # a: 2 blocks; b, c: 1 each; 0 free
    assert sorted(ids(h.step())) == ["a", "b", "c"]  # no new blocks needed
    assert h.scheduler.blocks.num_free_blocks == 0
    return h, h.step()


def test_vllm_preempts_the_newest_running_request_on_kv_shortage() -> None:
    h, plan = preemption_scenario("vllm")
    assert plan.preempted_ids == ("c",)
    assert ids(plan) == ["a", "b"]
    assert h.scheduler.get("c").status is RequestStatus.WAITING  # type: ignore[union-attr]


def test_vllm_priority_preempts_the_lowest_priority_running_request() -> None:
    h, plan = preemption_scenario("vllm-priority")
    assert plan.preempted_ids == ("a",)
    assert ids(plan) == ["b", "c"]


def test_vllm_preempts_the_request_itself_when_it_is_the_newest() -> None:
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, block_size=4,
                             num_kv_blocks=2, max_model_len=8)
    h = Harness("vllm", config)
    h.add(make_request("a", 0.0, prompt=3, max_tokens=4),
          make_request("b", 0.1, prompt=4, max_tokens=4))
    assert ids(h.step()) == ["a", "b"]  # one block each, none free
    plan = h.step()  # a's token 4 fits its block; b's token 5 needs one: b is the newest
    assert plan.preempted_ids == ("b",) and ids(plan) == ["a"]


def test_vllm_priority_serves_running_in_admission_order_and_unschedules_its_victim() -> None:
    """vLLM v1: running requests take the token budget in admission order, whatever their
    priority; a victim already scheduled in this iteration leaves the batch again."""
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, block_size=4,
                             num_kv_blocks=3, max_model_len=12)
    h = Harness("vllm-priority", config)
    h.add(make_request("low", 0.0, prompt=4, max_tokens=6, priority=5))
    h.step()  # low: 4 computed, 1 block
    h.add(make_request("high", 0.1, prompt=4, max_tokens=6, priority=0))
    assert ids(h.step()) == ["low", "high"]  # low 2 blocks, high 1 block: none free
    plan = h.step()  # low fits its block; high needs a new one: the victim is low, served
    assert plan.preempted_ids == ("low",) and ids(plan) == ["high"]


def test_vllm_priority_never_preempts_for_a_better_waiting_request_but_the_fix_does() -> None:
    """vLLM issue 40004: with the rows full, a better waiting request waits under
    `vllm-priority`; `vllm-priority-preempt` preempts the worst running request for it."""
    outcomes = {}
    for name in ("vllm-priority", "vllm-priority-preempt"):
        h = Harness(name, max_batch_size=2)
        h.add(make_request("a", 0.0, max_tokens=20, priority=2),
              make_request("b", 0.0, max_tokens=20, priority=1))
        h.step()
        h.add(make_request("urgent", 0.1, max_tokens=4, priority=0),
              make_request("equal", 0.1, max_tokens=4, priority=1))
        plan = h.step()
        outcomes[name] = (plan.preempted_ids, sorted(ids(plan)))
        h.step()  # `equal` is not strictly better than b: never displaces it
        assert "equal" not in ids(h.step())
    assert outcomes["vllm-priority"] == ((), ["a", "b"])
    assert outcomes["vllm-priority-preempt"] == (("a",), ["b", "urgent"])


def test_vllm_priority_admits_by_priority_then_arrival() -> None:
    h = Harness("vllm-priority", max_batch_size=2)
    h.add(make_request("late-urgent", 0.3, priority=0), make_request("old-low", 0.0, priority=5),
          make_request("mid", 0.1, priority=1), make_request("early-urgent", 0.2, priority=0))
    assert ids(h.step()) == ["early-urgent", "late-urgent"]


# --- fastserve ---

def fastserve(**options: object) -> tuple[Harness, FastServePolicy]:
    h = Harness("fastserve", **options)
    assert isinstance(h.policy, FastServePolicy)
    return h, h.policy


def test_fastserve_skip_joins_the_first_level_covering_the_prefill_time() -> None:
    h, policy = fastserve()
    assert policy.quanta_ms == (10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
    prompts = {"p1": 1, "p6": 6, "p7": 7, "p16": 16, "p36": 36, "p300": 300, "p999": 999}
    h.add(*(make_request(rid, prompt=n) for rid, n in prompts.items()))
    # prefill_ms(n) = 5 + (n - 1) ms
    assert {rid: policy.level_of(rid) for rid in prompts} == \
        {"p1": 0, "p6": 0, "p7": 1, "p16": 1, "p36": 2, "p300": 5, "p999": 5}


def test_fastserve_demotes_a_request_that_used_its_quantum() -> None:
    h, policy = fastserve()
    h.add(make_request("a", prompt=1, max_tokens=100))
    levels = []
    for _ in range(8):  # 5 ms iterations: 10 ms at level 0, then 20 ms at level 1
        h.step()
        levels.append(policy.level_of("a"))
    assert levels == [0, 1, 1, 1, 1, 2, 2, 2]


def test_fastserve_serves_higher_levels_first_and_keeps_the_kv_of_the_others() -> None:
    h, policy = fastserve(max_batch_size=1)
    h.add(make_request("a", prompt=1, max_tokens=100))
    h.step()
    h.step()
    assert policy.level_of("a") == 1
    h.add(make_request("b", h.now_s, prompt=1, max_tokens=2))
    assert ids(h.step()) == ["b"]
    a = h.scheduler.get("a")
    assert a is not None and a.status is RequestStatus.RUNNING
    assert h.scheduler.blocks.num_held("a") > 0
    assert ids(h.step()) == ["b"]  # b finishes
    assert ids(h.step()) == ["a"]


def test_fastserve_fills_the_batch_from_lower_levels() -> None:
    h, policy = fastserve(max_batch_size=2)
    h.add(make_request("a", prompt=1, max_tokens=100))
    h.step()
    h.step()
    h.add(make_request("b", h.now_s, prompt=1, max_tokens=100))
    assert (policy.level_of("a"), policy.level_of("b")) == (1, 0)
    assert ids(h.step()) == ["b", "a"]


def test_fastserve_promotes_starved_requests_at_the_periodic_check() -> None:
    h, policy = fastserve(max_batch_size=1)
    h.add(make_request("a", prompt=1, max_tokens=100))
    h.step()
    h.step()
    assert policy.level_of("a") == 1  # demoted at t = 10 ms
    for i in range(997):  # one-token requests at level 0 take the only row: a starves
        h.add(make_request(f"s{i}", h.now_s, prompt=1, max_tokens=1))
        assert ids(h.step()) == [f"s{i}"]
    assert h.now_s > 3.0 and policy.level_of("a") == 1
    h.add(make_request("s-last", h.now_s, prompt=1, max_tokens=1))
    assert ids(h.step()) == ["s-last"]  # the 1000th iteration: a waited >= 3 s
    assert policy.level_of("a") == 0
    h.add(make_request("s-next", h.now_s, prompt=1, max_tokens=1))
    assert ids(h.step()) == ["a"]  # level 0 serves its running requests before new ones


def test_fastserve_preempts_the_lowest_level_running_request_for_memory() -> None:
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, block_size=4,
                             num_kv_blocks=4, max_model_len=16)
    h = Harness("fastserve", config, max_batch_size=1)
    policy = h.policy
    assert isinstance(policy, FastServePolicy)
    h.add(make_request("low", 0.0, prompt=8, max_tokens=8))  # 12 ms prefill: level 1
    for _ in range(4):  # 12 + 5 + 5 ms >= 20: down to level 2; 11 tokens in 3 blocks
        h.step()
    assert policy.level_of("low") == 2
    h.add(make_request("high", h.now_s, prompt=4, max_tokens=8))  # 8 ms prefill: level 0
    assert ids(h.step()) == ["high"]  # its 4 tokens take the last block
    plan = h.step()  # high's next token needs a block: low (level 2) is preempted
    assert plan.preempted_ids == ("low",) and ids(plan) == ["high"]


# --- edf ---

def test_edf_next_token_deadline_is_ttft_then_one_tpot_per_token() -> None:
    r = make_request("a", 1.0, ttft_ms=200.0, tpot_ms=50.0)
    assert next_token_deadline_s(r) == pytest.approx(1.2)
    r.output_token_ids.extend([0, 0, 0])
    assert next_token_deadline_s(r) == pytest.approx(1.35)
    assert deadline_key(r) < deadline_key(make_request("b", 1.0, ttft_ms=360.0))


def test_edf_orders_running_and_waiting_by_next_token_deadline() -> None:
    h = Harness("edf", max_batch_size=2)
    assert isinstance(h.policy, EdfPolicy)
    h.add(make_request("a", 0.0, prompt=1, max_tokens=20, ttft_ms=100.0, tpot_ms=50.0))
    for _ in range(3):
        h.step()
    a = h.scheduler.get("a")
    assert a is not None and a.num_output_tokens == 3  # next deadline 0.1 + 3 * 0.05 = 0.25
    h.add(make_request("b", 0.1, ttft_ms=100.0, tpot_ms=100.0),  # due 0.2, then 0.3
          make_request("c", 0.0, ttft_ms=1000.0),  # due 1.0
          make_request("d", 0.0, ttft_ms=240.0))   # due 0.24, then 0.29
    assert ids(h.step()) == ["b", "d"]
    assert ids(h.step()) == ["a", "d"]


def test_edf_preempts_a_later_deadline_for_memory_and_otherwise_skips() -> None:
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, block_size=4,
                             num_kv_blocks=4, max_model_len=16)
    h = Harness("edf", config)
    h.add(make_request("lazy", 0.0, prompt=8, max_tokens=4, ttft_ms=1000.0, tpot_ms=500.0))
    h.step()  # lazy: 2 blocks, next token due 1.5 s
    h.add(make_request("late", 0.0, prompt=8, max_tokens=1, ttft_ms=5000.0))  # due 5 s
    plan = h.step()  # lazy takes a 3rd block; late needs 2 of the 1 left and nobody is later
    assert ids(plan) == ["lazy"] and not plan.preempted_ids
    h.add(make_request("urgent", 0.0, prompt=8, max_tokens=1, ttft_ms=100.0))  # due 0.1 s
    plan = h.step()  # lazy (due 2.0 s) makes room; what is left then fits late
    assert plan.preempted_ids == ("lazy",) and ids(plan) == ["urgent", "late"]


def test_edf_without_preempt_to_admit_only_running_requests_preempt() -> None:
    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, block_size=4,
                             num_kv_blocks=4, max_model_len=16)
    h = Harness("edf", config, preempt_to_admit=False)
    h.add(make_request("lazy", 0.0, prompt=8, max_tokens=4, ttft_ms=1000.0, tpot_ms=500.0))
    h.step()
    h.step()  # lazy: 3 blocks, 1 free
    h.add(make_request("urgent", 0.0, prompt=8, max_tokens=1, ttft_ms=100.0),  # 2 blocks
          make_request("small", 0.0, prompt=2, max_tokens=1, ttft_ms=200.0))  # would fit
    plan = h.step()  # urgent waits for memory, and nobody due later overtakes it
    assert ids(plan) == ["lazy"] and not plan.preempted_ids


def test_fastserve_predicts_prompts_and_charges_chunks_with_the_attention_term() -> None:
    # SIMPLE plus 0.01 ms per query-key pair: prefill_ms(6) = 5 + 5 + 0.01 x 21 > 10 ms.
    curved = LatencyModel(name="curved", decode_ms=(5.0, 9.0, 12.0), decode_slope_ms=3.0,
                          prefill_ms_per_token=1.0, prefill_attention_ms_per_pair=0.01)
    h = Harness("fastserve", latency=curved)
    policy = h.policy
    assert isinstance(policy, FastServePolicy)
    h.add(make_request("p5", prompt=5), make_request("p6", prompt=6, max_tokens=100))
    assert (policy.level_of("p5"), policy.level_of("p6")) == (0, 1)
    # The predicted service is the simulated duration: one 11-token iteration of two prompts
    # (5 + 6 tokens, 15 + 21 pairs) takes 9 + 9 + 0.36 ms, which uses up p5's 10 ms quantum.
    h.step()
    assert h.now_s == pytest.approx((9.0 + 9.0 + 0.01 * 36) / 1000)
    assert (policy.level_of("p5"), policy.level_of("p6")) == (1, 1)
