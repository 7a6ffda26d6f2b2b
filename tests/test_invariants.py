"""Invariants that hold for every registered policy on random small workloads.

Each example simulates a random workload (arrivals, prompt and output lengths, SLOs with
optional deadlines and utilities, a few aborts) under one of several scheduler configurations
(roomy, tight KV memory, small token budgets, few rows) and checks after every step:

- every arrived request is in exactly one of waiting / running / finished, and the scheduler's
  queues agree with the request's status;
- KV blocks are conserved, only running requests hold blocks, and those cover the computed
  tokens;
- no plan breaks the token budget or max_num_seqs, names a request twice or shares a block;
- time never runs backwards;

and at the end that every request ended completed, rejected (with a reason) or aborted, that
none was lost, and that completed requests have all their tokens at increasing times.
Around every call of the policy (`tests/policy_audit.py`): it mutates no request, and its
state-change hooks pair up (arrival, admit / preempt alternating, finish, in that order, each
with the request in the state it names), so a policy's own queues can follow the scheduler's
exactly.
Policies register themselves; one that lands later is picked up here without edits.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_audit import PolicyAudit  # a helper beside this file

import sliceserve.sim.simulator as simulator_module
from sliceserve.config import SchedulerConfig
from sliceserve.core.kv_blocks import blocks_for_tokens
from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.core.scheduler import Scheduler
from sliceserve.engine.engine import Engine
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.registry import make_policy, policy_names
from sliceserve.request import SLO, FinishReason, Request, RequestStatus, SamplingParams
from sliceserve.sim.sim_executor import SimExecutor
from sliceserve.sim.simulator import STALL_REASON, SimulationResult, simulate

POLICIES = policy_names()

CONFIGS = {
    "roomy": SchedulerConfig(max_num_batched_tokens=2048, max_num_seqs=256, block_size=16,
                             num_kv_blocks=512, max_model_len=1024),
    "tight_kv": SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=16, block_size=4,
                                num_kv_blocks=40, max_model_len=160),
    "small_budget": SchedulerConfig(max_num_batched_tokens=24, max_num_seqs=8, block_size=8,
                                    num_kv_blocks=64, max_model_len=512),
    "few_rows": SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=2, block_size=16,
                                num_kv_blocks=24, max_model_len=256),
}
PAPER = LatencyModel.load("paper")
WITH_CONTEXT = LatencyModel(name="ctx", decode_ms=(8.0, 10.0, 12.0, 15.0), decode_slope_ms=3.0,
                            prefill_ms_per_token=0.3, context_ms_per_token=0.01)
LATENCY_MODELS = {"paper": PAPER, "ctx": WITH_CONTEXT}
FINAL = {RequestStatus.COMPLETED, RequestStatus.REJECTED, RequestStatus.ABORTED}
TEST_ABORT = "aborted by the test"
# In the simulator no EOS is sampled, so a completed request ran to max_tokens.
_REASON_OF = {RequestStatus.COMPLETED: FinishReason.LENGTH,
              RequestStatus.REJECTED: FinishReason.REJECTED,
              RequestStatus.ABORTED: FinishReason.ABORT}
# Examples per policy; raise it for a longer hunt: SLICESERVE_INVARIANT_EXAMPLES=2000 pytest ...
MAX_EXAMPLES = int(os.environ.get("SLICESERVE_INVARIANT_EXAMPLES", "40"))


# --- workloads ---

@dataclass(frozen=True)
class Spec:
    """A request to build fresh for every run (simulations mutate requests)."""

    rid: str
    arrival_ms: int
    prompt: int
    max_tokens: int
    ttft_ms: float
    tpot_ms: float
    deadline_ms: float | None
    utility: float
    slo_class: str
    priority: int

    def build(self) -> Request:
        slo = SLO(ttft_ms=self.ttft_ms, tpot_ms=self.tpot_ms, deadline_ms=self.deadline_ms,
                  utility=self.utility, slo_class=self.slo_class)
        return Request(self.rid, self.arrival_ms / 1000.0, self.prompt,
                       SamplingParams(max_tokens=self.max_tokens, ignore_eos=True), slo,
                       priority=self.priority)


@dataclass(frozen=True)
class Case:
    specs: tuple[Spec, ...]
    config_name: str
    latency_name: str
    aborts: tuple[tuple[int, int], ...] = ()  # (after step k, abort request index i)
    max_time_s: float | None = None

    @property
    def config(self) -> SchedulerConfig:
        return CONFIGS[self.config_name]

    @property
    def latency(self) -> LatencyModel:
        return LATENCY_MODELS[self.latency_name]


SLO_CLASSES = [  # (class, ttft_ms, tpot_ms, utility): the paper's classes and tighter/looser
    ("rt", 200.0, 50.0, 100.0),
    ("nrt", 2000.0, 100.0, 1.0),
    ("nrt-slow", 2000.0, 250.0, 1.0),
    ("voice", 800.0, 60.0, 20.0),
    ("impossible", 1.0, 1.0, 50.0),  # can never be met: policies must still finish it or say no
]


@st.composite
def specs(draw: st.DrawFn, index: int) -> Spec:
    cls, ttft, tpot, utility = draw(st.sampled_from(SLO_CLASSES))
    if draw(st.booleans()):
        utility = draw(st.sampled_from([0.5, 1.0, 10.0, 100.0]))
    deadline = draw(st.none() | st.sampled_from([300.0, 3000.0, 30000.0]))
    return Spec(rid=f"r{index}", arrival_ms=draw(st.integers(0, 1500)),
                prompt=draw(st.integers(1, 150)), max_tokens=draw(st.integers(1, 48)),
                ttft_ms=ttft, tpot_ms=tpot, deadline_ms=deadline, utility=utility,
                slo_class=cls, priority=draw(st.integers(0, 2)))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(1, 14))
    workload = tuple(draw(specs(i)) for i in range(n))
    if draw(st.booleans()):  # a burst: many arrive together
        workload = tuple(Spec(**{**s.__dict__, "arrival_ms": s.arrival_ms // 500 * 500})
                         for s in workload)
    aborts = tuple(draw(st.lists(st.tuples(st.integers(0, 80), st.integers(0, n - 1)),
                                 max_size=2)))
    return Case(specs=workload, config_name=draw(st.sampled_from(sorted(CONFIGS))),
                latency_name=draw(st.sampled_from(sorted(LATENCY_MODELS))), aborts=aborts,
                max_time_s=draw(st.sampled_from([None, None, None, 0.7])))


# --- checks ---

@dataclass
class Checker:
    """Checks the mechanism's invariants after every step and on every executed plan."""

    config: SchedulerConfig
    requests: list[Request]
    aborts: dict[int, list[int]] = field(default_factory=dict)
    num_steps: int = 0
    num_plans: int = 0
    last_now_s: float = 0.0
    audit: PolicyAudit | None = None

    def scheduler_class(self) -> type[Scheduler]:
        checker = self

        class AuditedScheduler(Scheduler):
            def __init__(self, config: SchedulerConfig, policy: object) -> None:
                super().__init__(config, policy)  # type: ignore[arg-type]
                checker.audit = PolicyAudit.attach(self.policy, self)

        return AuditedScheduler

    def executor_class(self) -> type[SimExecutor]:
        checker = self

        class CheckingExecutor(SimExecutor):
            def execute(self, plan: Plan) -> ExecuteResult:
                checker.check_plan(plan)
                return super().execute(plan)

        return CheckingExecutor

    def check_plan(self, plan: Plan) -> None:
        cfg = self.config
        self.num_plans += 1
        assert plan.now_s >= self.last_now_s, "a plan was made before the previous step ended"
        assert len(plan.chunks) <= cfg.max_num_seqs, "plan exceeds max_num_seqs"
        assert plan.num_tokens <= cfg.max_num_batched_tokens, "plan exceeds the token budget"
        ids = [c.request.request_id for c in plan.chunks]
        assert len(ids) == len(set(ids)), "a request appears twice in one plan"
        all_blocks = [b for c in plan.chunks for b in c.block_ids]
        assert len(all_blocks) == len(set(all_blocks)), "two chunks share a KV block"
        for c in plan.chunks:
            r = c.request
            assert r.status is RequestStatus.RUNNING
            assert c.num_new_tokens >= 1
            assert c.num_computed_tokens == r.num_computed_tokens
            end = c.num_computed_tokens + c.num_new_tokens
            assert end <= r.num_tokens
            assert c.samples == (end == r.num_tokens)
            assert len(c.block_ids) >= blocks_for_tokens(end, cfg.block_size)
            assert r.num_output_tokens < r.max_tokens

    def on_step(self, engine: Engine) -> None:
        self.num_steps += 1
        now = engine.clock.now()
        assert now >= self.last_now_s, f"time ran backwards: {now} < {self.last_now_s}"
        self.last_now_s = now
        self.check_states(engine)
        assert self.audit is not None
        self.audit.check()
        for i in self.aborts.get(self.num_steps, []):
            engine.abort(self.requests[i].request_id, TEST_ABORT)
        if self.num_steps in self.aborts:
            self.check_states(engine)

    def check_states(self, engine: Engine) -> None:
        s = engine.scheduler
        cfg = self.config
        waiting = {r.request_id: r for r in s.waiting}
        running = {r.request_id: r for r in s.running}
        assert len(waiting) == len(s.waiting) and len(running) == len(s.running)
        assert not waiting.keys() & running.keys(), "a request is both waiting and running"
        assert s.num_unfinished() == len(waiting) + len(running)
        arrivals = [r.arrival_s for r in s.waiting]
        assert arrivals == sorted(arrivals), "waiting queue out of arrival order"
        blocks = s.blocks
        blocks.check_conserved()
        held = 0
        for r in self.requests:
            rid = r.request_id
            states = (rid in waiting, rid in running, r.is_finished)
            if states.count(True) == 0:  # not arrived yet
                assert r.status is RequestStatus.WAITING and s.get(rid) is None
                assert not r.output_token_ids and r.num_computed_tokens == 0
                continue
            assert states.count(True) == 1, f"{rid} is in {states} (waiting, running, finished)"
            if rid in waiting:
                assert waiting[rid] is r and r.status is RequestStatus.WAITING
                assert r.num_computed_tokens == 0 and blocks.num_held(rid) == 0
            elif rid in running:
                assert running[rid] is r and r.status is RequestStatus.RUNNING
                n = blocks.num_held(rid)
                assert n * cfg.block_size >= r.num_computed_tokens, f"{rid}: KV under computed"
                assert r.num_computed_tokens <= r.num_tokens
                held += n
            else:
                assert r.status in FINAL and s.get(rid) is None
                assert blocks.num_held(rid) == 0, f"finished {rid} still holds KV"
            if not r.is_finished:
                assert s.get(rid) is r
            assert len(r.token_times_s) == len(r.output_token_ids) <= r.max_tokens
        assert held == blocks.num_used_blocks(), "held blocks do not add up to used blocks"


def run_case(policy_name: str, case: Case) -> tuple[SimulationResult, list[Request], Checker]:
    requests = [spec.build() for spec in case.specs]
    checker = Checker(case.config, requests)
    for step, i in case.aborts:
        checker.aborts.setdefault(step, []).append(i)
    policy = make_policy(policy_name, case.latency, case.config)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulator_module, "SimExecutor", checker.executor_class())
        mp.setattr(simulator_module, "Scheduler", checker.scheduler_class())
        result = simulate(requests, policy, case.latency, case.config,
                          max_time_s=case.max_time_s, on_step=checker.on_step)
    return result, requests, checker


def check_final(result: SimulationResult, requests: list[Request], checker: Checker,
                case: Case) -> None:
    assert len(result.requests) == len(requests), "a request was lost"
    assert {id(r) for r in result.requests} == {id(r) for r in requests}
    assert checker.num_plans == result.num_iterations
    cfg = case.config
    for r in requests:
        assert r.status in FINAL, f"{r.request_id} ended {r.status}"
        assert r.finish_s is not None and r.finish_s >= r.arrival_s
        assert r.finish_reason is _REASON_OF[r.status], f"{r.request_id}: {r.finish_reason}"
        if r.status is not RequestStatus.COMPLETED:
            assert r.finish_code and r.finish_detail, (
                f"{r.request_id} ended {r.status.value} without a reason")
        assert len(r.token_times_s) == len(r.output_token_ids) <= r.max_tokens
        times = r.token_times_s
        assert all(t >= r.arrival_s for t in times), f"{r.request_id}: a token before arrival"
        assert all(a < b for a, b in zip(times, times[1:], strict=False)), "token times"
        if r.status is RequestStatus.COMPLETED:
            assert r.num_output_tokens == r.max_tokens and r.finish_reason == "length"
            assert r.finish_s == times[-1]
        elif r.status is RequestStatus.ABORTED:
            assert r.finish_detail != STALL_REASON, (
                f"the policy stalled: it scheduled nothing while {r.request_id} was pending")
            assert r.finish_detail == TEST_ABORT or case.max_time_s is not None
        never_fits = r.num_prompt_tokens + r.max_tokens > min(cfg.max_model_len,
                                                               cfg.kv_capacity_tokens)
        if never_fits:
            assert r.status is RequestStatus.REJECTED and r.num_output_tokens == 0
    assert result.duration_s == max(r.finish_s or 0.0 for r in requests)
    assert checker.audit is not None
    checker.audit.check_end(requests)


@pytest.mark.parametrize("policy_name", POLICIES)
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_invariants_hold_for_every_policy(policy_name: str, case: Case) -> None:
    result, requests, checker = run_case(policy_name, case)
    check_final(result, requests, checker, case)


# --- fixed workloads: a heavier one per configuration, and determinism ---

def paper_like_workload(seed: int, n: int, rate_per_s: float,
                        max_prompt: int = 128, max_output: int = 64) -> tuple[Spec, ...]:
    rng = random.Random(seed)
    t_ms = 0.0
    out = []
    for i in range(n):
        t_ms += rng.expovariate(rate_per_s) * 1000.0
        rt = rng.random() < 0.3
        cls, ttft, tpot, utility = (SLO_CLASSES[0] if rt
                                    else SLO_CLASSES[rng.choice([1, 2])])
        deadline = rng.choice([None, None, 4000.0])
        out.append(Spec(rid=f"r{i}", arrival_ms=int(t_ms), prompt=rng.randint(8, max_prompt),
                        max_tokens=rng.randint(1, max_output), ttft_ms=ttft, tpot_ms=tpot,
                        deadline_ms=deadline, utility=utility, slo_class=cls,
                        priority=rng.randint(0, 2)))
    return tuple(out)


@pytest.mark.parametrize("policy_name", POLICIES)
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_invariants_on_an_overloaded_paper_workload(policy_name: str, config_name: str) -> None:
    case = Case(specs=paper_like_workload(seed=11, n=60, rate_per_s=30.0),
                config_name=config_name, latency_name="paper")
    result, requests, checker = run_case(policy_name, case)
    check_final(result, requests, checker, case)
    assert any(r.status is RequestStatus.COMPLETED for r in requests)


def outcome(requests: list[Request]) -> tuple:
    return tuple((r.request_id, r.status.value, r.finish_reason, r.finish_s,
                  tuple(r.token_times_s), tuple(r.output_token_ids), r.num_preemptions)
                 for r in requests)


@pytest.mark.parametrize("policy_name", POLICIES)
@pytest.mark.parametrize("config_name", ["roomy", "tight_kv"])
def test_simulation_is_deterministic(policy_name: str, config_name: str) -> None:
    case = Case(specs=paper_like_workload(seed=5, n=50, rate_per_s=20.0),
                config_name=config_name, latency_name="paper")
    first = run_case(policy_name, case)
    second = run_case(policy_name, case)
    assert outcome(first[1]) == outcome(second[1])
    assert first[0].num_iterations == second[0].num_iterations
    assert first[0].duration_s == second[0].duration_s


DIGEST_SCRIPT = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
import test_invariants as t
digests = {}
for name in t.POLICIES:
    for config_name in ("roomy", "tight_kv"):
        case = t.Case(specs=t.paper_like_workload(seed=3, n=40, rate_per_s=25.0),
                      config_name=config_name, latency_name="paper")
        try:  # a policy error is another test's business; here only sameness counts
            _, requests, _ = t.run_case(name, case)
            result = repr(t.outcome(requests))
        except Exception as e:
            result = f"{type(e).__name__}: {e}"
        digests[f"{name}/{config_name}"] = hashlib.sha256(result.encode()).hexdigest()
print(json.dumps(digests))
"""


def test_simulation_does_not_depend_on_the_hash_seed() -> None:
    """Set and dict orders of strings change with PYTHONHASHSEED between processes; a policy
    that iterates a set of request ids would give other results in another process."""
    tests_dir = str(Path(__file__).resolve().parent)
    digests = []
    for hash_seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT, tests_dir], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        digests.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    differ = sorted(k for k in digests[0] if digests[0][k] != digests[1].get(k))
    assert not differ, f"results depend on PYTHONHASHSEED: {differ}"


def test_every_policy_is_tested() -> None:
    assert "orca" in POLICIES
    assert len(POLICIES) == len(set(POLICIES))
