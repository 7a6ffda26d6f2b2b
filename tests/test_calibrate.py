"""Recalibrating a latency model on a live run's measured iterations."""

from __future__ import annotations

import pytest

from sliceserve.bench.calibrate import Iteration, IterationRecorder, calibrate, pacing_report
from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.latency_model import LatencyModel

MODEL = LatencyModel(name="m", decode_ms=(10.0, 12.0, 14.0), decode_slope_ms=2.0,
                     prefill_ms_per_token=0.5, context_ms_per_token=0.01,
                     prefill_attention_ms_per_pair=0.001)


def predicted(model: LatencyModel, it: Iteration) -> float:
    return model.iteration_ms(it.rows, it.new_tokens, it.context_tokens, it.pairs)


def test_calibrated_model_adds_up_to_what_was_measured() -> None:
    decode = [Iteration(r, r, 100 * r, 0.0, 0.0) for r in (1, 2, 3, 5)]
    prompt = [Iteration(3, 130, 400, 128 * 64.5, 0.0), Iteration(1, 64, 64, 64 * 32.5, 0.0)]
    # The device ran decodes 1.2x and prompt work 0.9x as long as the model says.
    def run(it: Iteration) -> Iteration:
        dec = MODEL.decode_latency_ms(it.rows) + MODEL.context_ms_per_token * it.context_tokens
        ms = 1.2 * dec + 0.9 * (predicted(MODEL, it) - dec)
        return Iteration(it.rows, it.new_tokens, it.context_tokens, it.pairs, ms)

    iterations = [run(it) for it in decode + prompt]
    calibrated, fit = calibrate(MODEL, iterations)
    assert fit["decode_scale"] == pytest.approx(1.2) and fit["prompt_scale"] == pytest.approx(0.9)
    for it in iterations:  # each iteration, not only the sums
        assert predicted(calibrated, it) == pytest.approx(it.measured_ms)
    assert fit["decode_iterations"]["after_calibration"] == pytest.approx(1.0)
    assert fit["prompt_iterations"]["iterations"] == 2
    assert calibrated.decode_ms == pytest.approx((12.0, 14.4, 16.8))


def test_no_iterations_of_a_kind_leave_its_part_unchanged() -> None:
    only_decode = [Iteration(2, 2, 50, 0.0, 2 * predicted(MODEL, Iteration(2, 2, 50, 0.0, 0)))]
    calibrated, fit = calibrate(MODEL, only_decode)
    assert fit["decode_scale"] == pytest.approx(2.0) and fit["prompt_scale"] == 1.0
    assert calibrated.prefill_ms_per_token == MODEL.prefill_ms_per_token
    assert calibrate(MODEL, [])[0].decode_ms == MODEL.decode_ms


def test_recorder_passes_results_through_and_records_non_empty_plans() -> None:
    class Fixed:
        def execute(self, plan: Plan) -> ExecuteResult:
            return ExecuteResult(token_ids=[], duration_s=0.004)

    recorder = IterationRecorder(Fixed())
    assert recorder.execute(Plan(0.0, ())).duration_s == 0.004
    assert recorder.iterations == []  # nothing ran


def test_recorder_passes_release_on_to_the_engine() -> None:
    """An Engine registers its executor's `release` (llama.cpp's KV streams) as a finish
    listener; through the recorder (`sliceserve run`) it must still reach the executor, or
    finished requests keep their streams."""
    from sliceserve.clock import VirtualClock
    from sliceserve.config import SchedulerConfig
    from sliceserve.core.scheduler import Scheduler
    from sliceserve.engine.engine import Engine
    from sliceserve.policies.registry import make_policy
    from sliceserve.request import SLO, Request, SamplingParams

    class Releasing:
        def __init__(self) -> None:
            self.released: list[str] = []

        def execute(self, plan: Plan) -> ExecuteResult:
            return ExecuteResult(token_ids=[7 if c.samples else None for c in plan.chunks],
                                 duration_s=0.001)

        def release(self, request: Request) -> None:
            self.released.append(request.request_id)

    config = SchedulerConfig(max_num_seqs=4, num_kv_blocks=64, block_size=16,
                             max_model_len=256)
    inner = Releasing()
    engine = Engine(Scheduler(config, make_policy("vllm", MODEL, config, {})),
                    IterationRecorder(inner), VirtualClock())
    engine.add_request(Request("a", 0.0, 3, SamplingParams(max_tokens=2, ignore_eos=True),
                               SLO(ttft_ms=1e6, tpot_ms=1e6), prompt_token_ids=[1, 2, 3]))
    while engine.has_unfinished():
        engine.step()
    assert inner.released == ["a"]


def test_pacing_report_splits_decode_iterations_by_pause_and_rows() -> None:
    def decode(rows: int, factor: float, gap_ms: float, changed: bool) -> Iteration:
        it = Iteration(rows, rows, 10 * rows, 0.0, 0.0)
        return Iteration(rows, rows, 10 * rows, 0.0, factor * predicted(MODEL, it), gap_ms, changed)

    iterations = [decode(1, 1.0, 0.5, True), decode(1, 1.0, 1.0, False),
                  decode(2, 1.5, 30.0, True), Iteration(1, 64, 64, 64 * 32.5, 99.0)]
    report = pacing_report(MODEL, iterations)  # the prompt iteration is left out
    assert report["gap_below_2ms"] == {"iterations": 2, "measured_over_predicted": 1.0}
    assert report["gap_2_to_20ms"] == {"iterations": 0}
    assert report["gap_from_20ms"] == {"iterations": 1, "measured_over_predicted": 1.5}
    assert report["same_rows"]["iterations"] == 1 and report["rows_changed"]["iterations"] == 2
    assert report["gap_ms_p50"] == 1.0
    assert "decode_pacing" in calibrate(MODEL, iterations)[1]
