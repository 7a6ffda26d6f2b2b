"""Admission control in the scheduler: the bounded waiting queue ("queue_full") and the
policy's verdict on arrival (`Policy.assess_arrival`, "slo_infeasible"), both off unless set."""

from __future__ import annotations

from sliceserve.config import SchedulerConfig
from sliceserve.core.scheduler import Scheduler
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.registry import make_policy
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams

LM = LatencyModel.load("paper")
CONFIG = SchedulerConfig(num_kv_blocks=256, block_size=16)
LENIENT = SLO(ttft_ms=1e6, tpot_ms=1e6)


def req(rid: str, slo: SLO = LENIENT, prompt: int = 32) -> Request:
    return Request(rid, 0.0, prompt, SamplingParams(max_tokens=8, ignore_eos=True), slo)


def scheduler(policy: str = "slice") -> Scheduler:
    return Scheduler(CONFIG, make_policy(policy, LM, CONFIG))


def test_off_by_default_everything_waits() -> None:
    s = scheduler()
    requests = [req(f"r{i}") for i in range(5)] + [req("tight", SLO(ttft_ms=0.01, tpot_ms=1))]
    for r in requests:
        s.add_request(r, 0.0)
    assert all(r.status is RequestStatus.WAITING for r in requests)


def test_a_full_queue_rejects_with_queue_full() -> None:
    s = scheduler()
    s.set_admission(reject_infeasible=False, max_waiting=2)
    requests = [req(f"r{i}") for i in range(4)]
    for r in requests:
        s.add_request(r, 0.0)
    assert [r.status for r in requests] == [RequestStatus.WAITING] * 2 + [
        RequestStatus.REJECTED] * 2
    assert requests[2].finish_code == "queue_full" and "2 requests" in requests[2].finish_detail
    assert len(s.waiting) == 2 and s.num_unfinished() == 2


def test_slice_refuses_what_it_cannot_serve_in_time() -> None:
    s = scheduler("slice")
    s.set_admission(reject_infeasible=True, max_waiting=None)
    hopeless = req("hopeless", SLO(ttft_ms=0.01, tpot_ms=100))  # first token in 10 us
    fine = req("fine")
    s.add_request(hopeless, 0.0)
    s.add_request(fine, 0.0)
    assert hopeless.status is RequestStatus.REJECTED
    assert hopeless.finish_code == "slo_infeasible" and hopeless.finish_detail
    assert fine.status is RequestStatus.WAITING


def test_slice_refuses_an_urgent_request_the_booked_device_has_no_place_for() -> None:
    s = scheduler("slice")
    s.set_admission(reject_infeasible=True, max_waiting=None)
    # High-utility rows with tight TPOTs book the period ...
    for i in range(16):
        s.add_request(req(f"busy{i}", SLO(ttft_ms=300, tpot_ms=20, utility=100)), 0.0)
    # ... so a low-utility request whose first token is due now finds no place.
    late = req("late", SLO(ttft_ms=300, tpot_ms=20, utility=1))
    s.add_request(late, 0.0)
    assert late.status is RequestStatus.REJECTED and late.finish_code == "slo_infeasible"


def test_policies_without_predictions_take_everything() -> None:
    s = scheduler("vllm")
    s.set_admission(reject_infeasible=True, max_waiting=None)
    r = req("tight", SLO(ttft_ms=0.01, tpot_ms=1))
    s.add_request(r, 0.0)
    assert r.status is RequestStatus.WAITING
