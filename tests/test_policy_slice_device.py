"""SLICE's device-relative knobs, on a slow device (the `avx2-epyc-smollm2` preset: a CPU
without AVX-512, prefill about 15 ms per token, batch-1 decode 39 ms) and on the `paper` one.

Prompt work per iteration is time, not tokens; prompts are charged to the period at the rate
their first-token deadlines need; a high-utility request that may wait is not put behind
low-utility rows that already stream."""

from __future__ import annotations

import pytest

from sliceserve.config import SchedulerConfig
from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.registry import make_policy
from sliceserve.policies.slice import SlicePolicy
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams
from sliceserve.sim import simulator as simulator_module
from sliceserve.sim.run import simulate_run
from sliceserve.sim.sim_executor import SimExecutor
from sliceserve.sim.simulator import simulate

SLOW = LatencyModel.load("avx2-epyc-smollm2")
PAPER = LatencyModel.load("paper")
CONFIG = SchedulerConfig.for_capacity(32768)
# The README's main job on the slow device: `edge` at 4 requests/s, the previous defaults.
OLD_DEFAULTS = {"prefill_pacing": "period", "prefill_chunk_tokens": 512,
                "prefill_then_decode": False, "defer_rank_ratio": float("inf")}


def request(rid: str, arrival_s: float, prompt: int, out: int, ttft_ms: float, tpot_ms: float,
            utility: float, cls: str) -> Request:
    return Request(rid, arrival_s, prompt, SamplingParams(max_tokens=out, ignore_eos=True),
                   SLO(ttft_ms=ttft_ms, tpot_ms=tpot_ms, utility=utility, slo_class=cls))


def control_behind_streams(**options: object) -> tuple[Request, list[float]]:
    """Two chat replies and a background digest stream on the slow device; a control request
    (utility 100, TTFT 3 x (its prefill + l1), TPOT 2 l1) arrives 3 s later."""
    l1 = SLOW.decode_latency_ms(1)
    background = [request(f"chat{i}", 0.1 * i, 300, 200, 60_000, 6 * l1, 1.0, "chat")
                  for i in range(2)]
    background.append(request("bg", 0.2, 800, 300, 600_000, 12 * l1, 1.0, "background"))
    control = request("control", 3.0, 128, 16, 3 * (SLOW.prefill_ms(128) + l1), 2 * l1,
                      100.0, "control")
    prompt_ms: list[float] = []

    class Recorder(SimExecutor):
        def execute(self, plan: Plan) -> ExecuteResult:
            prompt_ms.append(sum(SLOW.chunk_extra_ms(c.num_new_tokens, c.num_computed_tokens)
                                 for c in plan.chunks if c.num_new_tokens > 1))
            return super().execute(plan)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulator_module, "SimExecutor", Recorder)
        simulate([*background, control], make_policy("slice", SLOW, CONFIG, dict(options)),
                 SLOW, CONFIG)
    return control, prompt_ms


def meets(r: Request) -> bool:
    times = r.token_times_s
    tpot = (times[-1] - times[0]) * 1000 / (len(times) - 1)
    return (times[0] - r.arrival_s) * 1000 <= r.slo.ttft_ms and tpot <= r.slo.tpot_ms


def test_a_control_request_is_met_behind_low_utility_streams() -> None:
    control, prompt_ms = control_behind_streams()
    assert control.status is RequestStatus.COMPLETED and meets(control)
    # No iteration's prompt work exceeds max_prefill_ratio x P (0.3 s here), plus rounding
    # to whole tokens.
    assert max(prompt_ms) <= 0.3 * 1000 + SLOW.prefill_ms_per_token


def test_with_the_token_count_knobs_the_same_control_request_is_missed() -> None:
    control, prompt_ms = control_behind_streams(**OLD_DEFAULTS)
    assert not meets(control)
    assert max(prompt_ms) > 7000  # a 512-token chunk: a 7.6 s iteration on this device


def test_a_long_prompt_does_not_charge_this_periods_mask() -> None:
    policy = make_policy("slice", SLOW, CONFIG)
    assert isinstance(policy, SlicePolicy)
    long_prompt = request("a", 0.0, 400, 16, 20_000, 78, 100.0, "control")
    short = request("b", 0.0, 20, 16, 20_000, 78, 100.0, "control")
    selector = policy.selector
    assert selector.assess(long_prompt, 0.0).mask_rate == 0  # 5.9 s of prompt first
    assert selector.assess(short, 0.0).mask_rate == selector.assess(short, 0.0).rate
    c = selector.assess(long_prompt, 0.0)  # charged its share of the 20 s it has
    assert c.period_charge_ms == pytest.approx(c.charge_ms * 1000 / (20_000 - 38.9176615608886))


@pytest.mark.parametrize("bad", [{"prefill_chunk_tokens": 0}, {"max_prefill_ratio": 0},
                                 {"prefill_pacing": "lump"}, {"defer_rank_ratio": 0.5},
                                 {"prefill_lead_guard_tpots": -1}])
def test_bad_device_relative_options_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_policy("slice", PAPER, CONFIG, bad)


def test_the_slow_device_main_job_serves_control_requests() -> None:
    """The README's main job on the slow device, simulated (60 requests at 4 requests/s): the
    previous defaults met no control request; the device-relative ones meet a third."""
    kwargs = dict(num_requests=60, seed=0, latency_model="avx2-epyc-smollm2")
    now = simulate_run("edge", "slice", 4.0, **kwargs)  # type: ignore[arg-type]
    before = simulate_run("edge", "slice", 4.0, policy_options=OLD_DEFAULTS,
                          **kwargs)  # type: ignore[arg-type]
    assert before["classes"]["control"]["slo_attainment"] == 0.0
    assert now["classes"]["control"]["slo_attainment"] >= 0.3
    assert now["summary"]["utility_attainment"] >= 0.25


# A fast CPU (the Zen 5 EPYC's SmolLM2 profile, rounded): a 0.3 s chunk is longer than a
# control request's TTFT slack there.
FAST = LatencyModel(name="fast-cpu", decode_ms=(13.7, 14.8, 14.8, 14.8, 15.4, 16.3),
                    decode_slope_ms=0.48, prefill_ms_per_token=0.355,
                    context_ms_per_token=0.0012, prefill_attention_ms_per_pair=0.00063)


def control_during_a_long_prompt(**options: object) -> Request:
    """A control request (TTFT 3 x (its prefill + l1), TPOT 4 l1) once, then a 1000-token
    background prompt (about 0.67 s of prefill), and a second control request 50 ms into it."""
    l1 = FAST.decode_latency_ms(1)

    def control(rid: str, arrival_s: float) -> Request:
        return request(rid, arrival_s, 64, 16, 3 * (FAST.prefill_ms(64) + l1), 4 * l1,
                       100.0, "control")

    late = control("control2", 1.05)
    requests = [control("control1", 0.0),
                request("bg", 1.0, 1000, 50, 60_000, 200.0, 1.0, "background"), late]
    simulate(requests, make_policy("slice", FAST, CONFIG, dict(options)), FAST, CONFIG)
    return late


def test_a_control_request_arriving_during_a_long_prompt_is_met() -> None:
    assert meets(control_during_a_long_prompt())
    # Chunks capped at max_prefill_ratio x P alone (0.3 s) hold it up past its TTFT.
    assert not meets(control_during_a_long_prompt(ttft_chunk_share=None))


@pytest.mark.parametrize("bad", [{"ttft_chunk_share": 0}, {"ttft_chunk_floor_l1": 0.5},
                                 {"ttft_chunk_slot_share": 0}])
def test_bad_chunk_cap_options_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_policy("slice", FAST, CONFIG, bad)


def own_row_selection(first: Request | None = None, **options: object) -> list[str]:
    """On the slow device, one control request (TTFT 3 x (prefill + l1), TPOT 1.3 l1: 21
    decode columns of its period's mask, about 0.8 s of 1 s), after `first` if given."""
    policy = make_policy("slice", SLOW, CONFIG, dict(options))
    assert isinstance(policy, SlicePolicy)
    selector = policy.selector
    l1 = SLOW.decode_latency_ms(1)
    control = request("control", 0.0, 8, 16, 3 * (SLOW.prefill_ms(8) + l1), 1.3 * l1,
                      100.0, "control")
    candidates = [selector.assess(r, 0.0) for r in ([first] if first else []) + [control]]
    return [c.request.request_id for c in
            selector.select(candidates, selector.period_ms, {}, 0.0, 16)]


def test_a_prompts_own_decode_columns_do_not_delay_its_first_token() -> None:
    # Its row decodes only after its first token: counting its own columns against its own
    # prompt left the prompt under a fifth of the period, and a lone control request, on
    # time alone, was judged late.
    assert own_row_selection() == ["control"]
    assert own_row_selection(ttft_without_own_row=False) == []


def test_a_prompts_own_row_counts_again_behind_an_earlier_prompt() -> None:
    l1 = SLOW.decode_latency_ms(1)

    def prompt(ttft_ms: float) -> Request:
        return request("chat", 0.0, 4, 16, ttft_ms, 40 * l1, 1.0, "chat")

    # Due after the control request: the control request's own columns still do not count.
    assert own_row_selection(prompt(5000.0)) == ["chat", "control"]
    # Due before it: they do (the scope of `ttft_without_own_row`), and it does not fit.
    assert own_row_selection(prompt(500.0)) == ["chat"]
    assert own_row_selection(prompt(5000.0), ttft_without_own_row=False) == ["chat"]
