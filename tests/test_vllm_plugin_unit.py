"""The vLLM plug-in's parts that need no vLLM: settings, SLOs from extra args, the version
check, the online latency fit, and how a batch becomes a plan for vLLM's scheduler.
(tests/test_vllm_plugin.py runs the plug-in inside vLLM's CPU build.)"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass

import pytest

from sliceserve.integrations.vllm import compat
from sliceserve.integrations.vllm.latency import (
    OnlineLatencyFit,
    StepShape,
    StepTimer,
    differs,
)
from sliceserve.integrations.vllm.plan import plan_step
from sliceserve.integrations.vllm.settings import PluginSettings, SettingsError, slo_from_args
from sliceserve.latency_model import LatencyModel, chunk_pairs
from sliceserve.policies.base import PolicyError
from sliceserve.request import DEFAULT_SLO, SLO

# --- settings and SLOs ---


def test_settings_come_from_the_additional_config_before_the_environment() -> None:
    env = {"SLICESERVE_POLICY": "vllm", "SLICESERVE_POLICY_OPTIONS": '{"max_batch_size": 4}',
           "SLICESERVE_POLICY_MODULES": "a, b", "SLICESERVE_LATENCY_REFIT": "0"}
    s = PluginSettings.load({"sliceserve": {"policy": "edf"}}, env)
    assert s.policy == "edf"  # the engine's own config wins
    assert s.policy_options == {"max_batch_size": 4}
    assert s.policy_modules == ("a", "b")
    assert s.refit is False
    assert PluginSettings.load(None, {}) == PluginSettings()
    assert PluginSettings().policy == "slice" and PluginSettings().default_slo == DEFAULT_SLO


@pytest.mark.parametrize("config, env, message", [
    ({"sliceserve": {"polcy": "slice"}}, {}, "unknown sliceserve setting"),
    ({"sliceserve": {"policy_options": [1]}}, {}, "policy_options must be a JSON object"),
    ({}, {"SLICESERVE_POLICY_OPTIONS": "{bad"}, "SLICESERVE_POLICY_OPTIONS is not valid JSON"),
    ({}, {"SLICESERVE_LATENCY_REFIT": "yes"}, "must be 0 or 1"),
    ({}, {"SLICESERVE_DEFAULT_SLO": '{"ttft_ms": -5}'}, "default_slo: SLO ttft_ms"),
])
def test_bad_settings_are_refused_naming_the_setting(config: dict, env: dict,
                                                     message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        PluginSettings.load(config, env)


def test_the_slo_comes_from_flat_extra_args_over_the_default() -> None:
    default = SLO(ttft_ms=1000.0, tpot_ms=100.0, utility=2.0, slo_class="best-effort")
    assert slo_from_args(None, default) is default
    assert slo_from_args({"kv_transfer_params": 1}, default) is default  # not ours: ignored
    slo = slo_from_args({"ttft_ms": 250, "tpot_ms": 40.5, "deadline_ms": 9000, "utility": 30,
                         "slo_class": "navigation"}, default)
    assert slo == SLO(ttft_ms=250, tpot_ms=40.5, deadline_ms=9000, utility=30,
                      slo_class="navigation")
    assert slo_from_args({"tpot_ms": 20}, default) == SLO(1000.0, 20, None, 2.0, "best-effort")


@pytest.mark.parametrize("args, message", [
    ({"ttft_ms": "soon"}, "ttft_ms must be a number"),
    ({"tpot_ms": True}, "tpot_ms must be a number"),
    ({"utility": 0}, "utility must be a positive number"),
    ({"deadline_ms": -1}, "deadline_ms must be a positive number"),
    ({"slo_class": ""}, "slo_class must be a non-empty string"),
])
def test_a_bad_slo_field_is_named(args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        slo_from_args(args, DEFAULT_SLO)


# --- the version check ---


@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu", "0.32.7", "v0.32.1rc1"])
def test_supported_versions_pass(version: str) -> None:
    compat.check_version(version, any_version=False)


@pytest.mark.parametrize("version", ["0.31.9", "0.33.0", "0.33.0rc1", "1.0.0"])
def test_unsupported_versions_are_refused_naming_the_supported_range(version: str) -> None:
    with pytest.raises(compat.VllmVersionError) as e:
        compat.check_version(version, any_version=False)
    assert f"found vLLM {version}" in str(e.value)
    assert compat.SUPPORTED_RANGE in str(e.value) and "0.32.0" in str(e.value)
    compat.check_version(version, any_version=True)  # the explicit opt-out


def test_an_unreadable_version_is_refused() -> None:
    with pytest.raises(compat.VllmVersionError, match="cannot read the vLLM version"):
        compat.check_version("dev")


def test_missing_attributes_are_named() -> None:
    @dataclass
    class Thing:
        a: int = 1

    assert compat.missing_names(Thing(), ["a", "b", "a.real", "a.nope"], "T") == ["T.b",
                                                                                  "T.a.nope"]
    with pytest.raises(compat.VllmVersionError, match=r"lacks what the plug-in uses: T\.b"):
        compat.raise_if_missing(["T.b"], "9.9.9")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_the_package_imports_without_vllm_and_says_what_its_classes_need() -> None:
    import sliceserve.integrations.vllm as plugin

    assert plugin.SUPPORTED_RANGE == compat.SUPPORTED_RANGE
    with pytest.raises(ImportError, match=r"needs vLLM >=0\.32,<0\.33 installed"):
        plugin.SliceScheduler  # noqa: B018


# --- the online latency model ---

TRUE = LatencyModel(name="true", decode_ms=(20.0,), decode_slope_ms=1.5,
                    prefill_ms_per_token=0.4, context_ms_per_token=0.002,
                    prefill_attention_ms_per_pair=0.0001)
START = LatencyModel.load("paper")


def shapes(rng: random.Random, n: int) -> list[StepShape]:
    out = []
    for _ in range(n):
        rows = rng.randint(1, 48)
        prompt = rng.choice([0, 0, 0, rng.randint(16, 900)])
        context = rows * rng.randint(50, 800)
        out.append(StepShape(rows, rows + prompt, context, chunk_pairs(prompt + 1, 0)))
    return out


def test_the_fit_recovers_the_device_from_observed_steps_and_ignores_stalls() -> None:
    rng = random.Random(1)
    fit = OnlineLatencyFit(START, first_fit=32, refit_every=64, change=0.10)
    changes = 0
    for i, shape in enumerate(shapes(rng, 600)):
        ms = TRUE.iteration_ms(shape.rows, shape.new_tokens, shape.context_tokens, shape.pairs)
        ms *= rng.uniform(0.97, 1.03)
        if i % 50 == 7:
            ms += 5000.0  # a stall of the machine
        changes += fit.observe(shape, ms) is not None
    assert changes >= 1 and fit.num_fits == changes
    assert not differs(fit.fit(), TRUE, 0.08), fit.fit()  # on the latest window
    assert not differs(fit.model, TRUE, 0.12), fit.model  # in use: refitted when 10% off
    assert fit.model.decode_latency_ms(10) == pytest.approx(TRUE.decode_latency_ms(10), rel=0.1)


def test_what_the_traffic_does_not_explore_keeps_the_start_model() -> None:
    fit = OnlineLatencyFit(START, first_fit=16)
    rng = random.Random(2)
    for _ in range(96):  # decode steps only: nothing about long prompts
        rows = rng.randint(1, 8)
        shape = StepShape(rows, rows, rows * 300, 0.0)
        fit.observe(shape, TRUE.iteration_ms(rows, rows, rows * 300))
    assert fit.num_fits >= 1
    assert fit.model.iteration_ms(4, 4, 1200) == pytest.approx(TRUE.iteration_ms(4, 4, 1200),
                                                               rel=0.1)
    for tokens in (256, 1024):
        assert fit.model.prefill_ms(tokens) == pytest.approx(START.prefill_ms(tokens), rel=0.25)
    assert fit.observe(StepShape(0, 0, 0, 0.0), 10.0) is None  # an empty step is no data


def test_the_step_timer_measures_the_gap_between_tokens_not_the_model_run_alone() -> None:
    timer = StepTimer()
    a, b, c, d = object(), object(), object(), object()
    shape = StepShape(1, 1, 10, 0.0)
    timer.scheduled(a, shape, 10.0)  # after an idle loop: from its own schedule()
    timer.executed(a)
    assert timer.update_done(11.0, busy=True) == (shape, pytest.approx(1000.0))
    # the next step is scheduled 5 ms after that update (the engine core's own work between
    # steps) and its update ends at 11.3: a decoding row waited 300 ms for its next token
    timer.scheduled(b, shape, 11.005)
    timer.executed(b)
    assert timer.update_done(11.3, busy=True) == (shape, pytest.approx(300.0))
    timer.executed(object())  # an unrecorded (empty) step
    assert timer.update_done(11.4, busy=False) is None
    timer.scheduled(c, shape, 20.0)  # the loop idled: from c's own schedule()
    timer.scheduled(d, shape, 20.1)  # async scheduling: d scheduled while c runs
    timer.executed(c)
    assert timer.update_done(20.5, busy=True) == (shape, pytest.approx(500.0))
    timer.executed(d)
    assert timer.update_done(20.9, busy=True) == (shape, pytest.approx(400.0))


# --- a batch as a plan for vLLM ---

MODEL = LatencyModel(name="m", decode_ms=(10.0,), decode_slope_ms=1.0, prefill_ms_per_token=0.1)


@dataclass(eq=False)
class FakeView:
    """Stands in for a ReqView (the real one wraps a vLLM request: tests/test_vllm_plugin.py)."""

    request_id: str
    num_tokens: int
    num_computed_tokens: int
    is_running: bool = True
    first_token_s: float | None = 1.0
    tpot_ms: float = 50.0
    rejected: bool = False

    @property
    def req(self) -> str:
        return self.request_id

    @property
    def slo(self) -> SLO:
        return SLO(ttft_ms=1000.0, tpot_ms=self.tpot_ms)


def decode(rid: str, tpot_ms: float = 50.0) -> FakeView:
    return FakeView(rid, 101, 100, tpot_ms=tpot_ms)


def test_a_batch_of_everything_runs_as_is() -> None:
    a, b = decode("a"), decode("b")
    plan = plan_step([(a, 1), (b, 1)], [a, b], 0, MODEL)
    assert plan.running_order == ["a", "b"] and not plan.masked and not plan.admit
    assert plan.token_budget == 2 and plan.num_held == 0


def test_masked_rows_are_unmasked_while_the_tightest_tpot_holds() -> None:
    a = decode("a", tpot_ms=15.0)  # the step may take 90% of 15 ms: 10 + 1 per added row
    rows = [a] + [decode(f"m{i}") for i in range(6)]
    plan = plan_step([(a, 1)], rows, 0, MODEL)
    assert plan.num_unmasked == 3 and plan.running_order[:4] == ["a", "m0", "m1", "m2"]
    assert plan.masked == ["m3", "m4", "m5"] and plan.running_order[-3:] == plan.masked
    assert plan.token_budget == 4 and plan.predicted_ms == pytest.approx(13.0)


def test_contention_keeps_the_mask() -> None:
    a = decode("a", tpot_ms=11.0)  # the batch alone (10 ms) leaves no room within 90%
    plan = plan_step([(a, 1)], [a, decode("m")], 0, MODEL)
    assert plan.masked == ["m"] and plan.num_unmasked == 0


def test_a_batch_that_decodes_nothing_lets_masked_rows_add_little() -> None:
    p = FakeView("p", 400, 0, first_token_s=None)  # a prompt of 400, chunk 300: 39.9 ms
    plan = plan_step([(p, 300)], [p, decode("m0"), decode("m1"), decode("m2")], 0, MODEL)
    assert plan.num_unmasked == 1  # 5% of 39.9 ms: one 1 ms row
    assert plan.running_order == ["m0", "p", "m1", "m2"]  # partial chunks after exact rows


def test_admissions_in_policy_order_and_the_rest_held_back() -> None:
    r = decode("r")
    w1 = FakeView("w1", 50, 0, is_running=False, first_token_s=None)
    w2 = FakeView("w2", 70, 0, is_running=False, first_token_s=None)
    plan = plan_step([(w2, 70), (r, 1), (w1, 20)], [r], 5, MODEL)
    assert plan.admit == ["w2", "w1"] and plan.num_held == 3 and plan.token_budget == 91


def test_partial_prefill_chunks_come_after_exact_rows_in_policy_order() -> None:
    a, b = FakeView("a", 500, 100), FakeView("b", 500, 0)
    d = decode("d")
    plan = plan_step([(b, 64), (d, 1), (a, 32)], [a, b, d], 0, MODEL)
    assert plan.running_order == ["d", "b", "a"] and plan.token_budget == 97


@pytest.mark.parametrize("batch, message", [
    ([("a", 0)], "bad batch entry"),
    ([("a", 1), ("a", 1)], "listed twice"),
    ([("gone", 1)], "does not run"),
])
def test_bad_batches_are_policy_errors(batch: list, message: str) -> None:
    views = {"a": decode("a"), "gone": decode("gone")}
    with pytest.raises(PolicyError, match=message):
        plan_step([(views[r], n) for r, n in batch], [views["a"]], 0, MODEL)
