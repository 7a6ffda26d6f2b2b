"""Workloads as data, arrival processes and trace replay."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sliceserve.latency_model import LatencyModel
from sliceserve.request import RequestStatus
from sliceserve.workloads import (
    RequestSpec,
    estimate_prompt_tokens,
    gamma_arrivals,
    generate_traffic,
    list_presets,
    load_trace,
    load_workload,
    make_traffic,
    parse_trace,
    poisson_arrivals,
    workload_from_dict,
)

PAPER_LM = LatencyModel.load("paper")


def traffic(name: str = "paper", n: int = 200, seed: int = 0, rate: float = 1.0, **kw):
    return make_traffic(name, rate_rps=rate, num_requests=n, seed=seed, latency_model=PAPER_LM,
                        **kw)


def minimal_workload(**class_fields) -> dict:
    cls = {"share": 1, "prompt_tokens": [10, 20], "output_tokens": [5, 8], "ttft_ms": 100,
           "tpot_ms": 50, "utility": 1}
    cls.update(class_fields)
    return {"name": "w", "classes": {"a": cls}}


# --- presets ---

def test_presets_load_with_normalized_shares():
    assert {"paper", "edge"} <= set(list_presets())
    for name in ("paper", "edge"):
        workload = load_workload(name)
        assert workload.name == name
        assert math.isclose(sum(c.share for c in workload.classes), 1.0)
    assert load_workload("edge").class_names == ("control", "navigation", "chat", "background")
    assert load_workload("paper").get_class("nrt-short").tpot_ms[1].to_json() == 120


# --- generation ---

def test_same_seed_same_requests_and_other_seed_differs():
    a, b = traffic(seed=7), traffic(seed=7)
    assert a.requests == b.requests
    assert traffic(seed=8).requests != a.requests


def test_rate_scales_arrivals_but_keeps_contents():
    slow, fast = traffic(rate=1.0), traffic(rate=4.0)
    for s, f in zip(slow.requests, fast.requests, strict=True):
        assert (s.num_prompt_tokens, s.num_output_tokens, s.slo) == \
            (f.num_prompt_tokens, f.num_output_tokens, f.slo)
        assert math.isclose(s.arrival_s, 4 * f.arrival_s)


def test_shares_and_length_ranges():
    workload = load_workload("edge")
    requests = traffic("edge", n=4000).requests
    counts = Counter(r.slo.slo_class for r in requests)
    for cls in workload.classes:
        assert abs(counts[cls.name] / len(requests) - cls.share) < 0.03
    for r in requests:
        cls = workload.get_class(r.slo.slo_class)
        assert cls.prompt_tokens[0] <= r.num_prompt_tokens <= cls.prompt_tokens[1]
        assert cls.output_tokens[0] <= r.num_output_tokens <= cls.output_tokens[1]
    assert [r.arrival_s for r in requests] == sorted(r.arrival_s for r in requests)


def test_edge_lengths_are_log_uniform_paper_uniform():
    chat = [r.num_prompt_tokens for r in traffic("edge", n=4000).requests
            if r.slo.slo_class == "chat"]
    # log-uniform over 32..512: median near the geometric mean 128, far below the midpoint 272
    assert 100 < np.median(chat) < 160
    paper = [r.num_prompt_tokens for r in traffic("paper", n=4000).requests]
    assert 72 < np.median(paper) < 88  # uniform over 32..128
    assert min(paper) == 32 and max(paper) == 128


def test_edge_slos_are_relative_to_the_latency_model():
    fast = LatencyModel("fast", (5.0, 8.0), 2.0, 0.05)
    for model in (PAPER_LM, fast):
        l1 = model.decode_latency_ms(1)
        for r in make_traffic("edge", rate_rps=1, num_requests=300, seed=1,
                              latency_model=model).requests:
            factor = {"control": (3, 2), "navigation": (5, 3), "chat": (10, 6),
                      "background": (50, 12)}[r.slo.slo_class]
            pf = model.prefill_ms(r.num_prompt_tokens)
            assert math.isclose(r.slo.ttft_ms, factor[0] * (pf + l1))
            assert math.isclose(r.slo.tpot_ms, factor[1] * l1)
            if r.slo.slo_class == "navigation":
                expected = 0.8 * (r.slo.ttft_ms + r.num_output_tokens * r.slo.tpot_ms)
                assert math.isclose(r.slo.deadline_ms, expected)
            else:
                assert r.slo.deadline_ms is None


def test_relative_slos_need_a_latency_model():
    with pytest.raises(ValueError, match="latency model"):
        make_traffic("edge", rate_rps=1, num_requests=5, seed=0, latency_model=None)
    make_traffic("paper", rate_rps=1, num_requests=5, seed=0, latency_model=None)  # absolute


def test_choice_list_gives_both_values():
    tpots = Counter(r.slo.tpot_ms for r in traffic(n=1000).requests
                    if r.slo.slo_class == "nrt-short")
    assert set(tpots) == {100.0, 120.0}
    assert abs(tpots[100.0] - tpots[120.0]) < 0.3 * sum(tpots.values())


def test_priority_from_utility_rank_unless_given():
    by_class = {r.slo.slo_class: r.priority for r in traffic(n=200).requests}
    assert by_class == {"rt-short": 0, "rt-long": 0, "nrt-short": 1, "nrt-long": 1}
    edge = {r.slo.slo_class: r.priority for r in traffic("edge", n=200).requests}
    assert edge == {"control": 0, "navigation": 1, "chat": 2, "background": 2}
    workload = workload_from_dict(minimal_workload(priority=5))
    spec = generate_traffic(workload, rate_rps=1, num_requests=3, seed=0).requests[0]
    assert spec.priority == 5


def test_to_request_is_fresh_and_exact():
    spec = traffic(n=1).requests[0]
    request = spec.to_request()
    assert request is not spec.to_request()
    assert request.status is RequestStatus.WAITING
    assert request.prompt_token_ids is None
    assert request.num_prompt_tokens == spec.num_prompt_tokens
    assert request.sampling.max_tokens == spec.num_output_tokens
    assert request.sampling.ignore_eos
    assert request.slo is spec.slo and request.priority == spec.priority


# --- arrival processes ---

def _cv(times: list[float]) -> tuple[float, float]:
    gaps = np.diff([0.0, *times])
    return float(gaps.mean()), float(gaps.std() / gaps.mean())


def test_poisson_and_gamma_rate_and_cv():
    rng = np.random.Generator(np.random.PCG64(3))
    mean, cv = _cv(poisson_arrivals(2.0, 20000, rng))
    assert abs(mean - 0.5) < 0.02 and abs(cv - 1.0) < 0.05
    for target in (3.0, 0.5):
        mean, cv = _cv(gamma_arrivals(2.0, target, 20000, rng))
        assert abs(mean - 0.5) / 0.5 < 0.1
        assert abs(cv - target) / target < 0.12


def test_gamma_traffic_records_cv_and_bad_arguments_fail():
    t = traffic(arrival="gamma", cv=2.0)
    assert (t.arrival, t.cv) == ("gamma", 2.0)
    for kwargs, match in [({"rate": -1}, "rate"), ({"rate": 0}, "rate"),
                          ({"arrival": "uniform"}, "arrival"), ({"seed": -1}, "seed"),
                          ({"arrival": "gamma", "cv": 0}, "cv"), ({"n": 0}, "num_requests")]:
        with pytest.raises(ValueError, match=match):
            traffic(**kwargs)


# --- workload validation ---

@pytest.mark.parametrize("change, field", [
    ({"share": -1}, "classes.a.share"),
    ({"share": "x"}, "classes.a.share"),
    ({"prompt_tokens": [20, 10]}, "classes.a.prompt_tokens"),
    ({"output_tokens": [0, 3]}, "classes.a.output_tokens"),
    ({"ttft_ms": -5}, "classes.a.ttft_ms"),
    ({"tpot_ms": {"l2": 3}}, "classes.a.tpot_ms"),
    ({"tpot_ms": {"ttft": 1}}, "classes.a.tpot_ms"),
    ({"tpot_ms": []}, "classes.a.tpot_ms"),
    ({"deadline_ms": {"l1": -1}}, "classes.a.deadline_ms.l1"),
    ({"utility": 0}, "classes.a.utility"),
    ({"priority": -1}, "classes.a.priority"),
    ({"lengths": "normal"}, "classes.a.lengths"),
    ({"colour": "red"}, "classes.a.colour"),
])
def test_invalid_class_fields_name_the_file_and_field(tmp_path: Path, change, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(minimal_workload(**change)))
    with pytest.raises(ValueError) as info:
        load_workload(str(path))
    message = str(info.value)
    assert str(path) in message and field in message and "\n" not in message


@pytest.mark.parametrize("text, field", [
    ("{", "not valid JSON"),
    ("[]", "JSON object"),
    ('{"classes": {}}', "name"),
    ('{"name": "w", "classes": {}}', "classes"),
    ('{"name": "w", "classes": {"a": {"share": 1}}}', "classes.a.prompt_tokens: missing"),
    ('{"name": "w", "classes": {"a": {}, "a": {}}}', "duplicate key 'a'"),
    ('{"name": "w", "schema": "v0", "classes": {}}', "schema"),
])
def test_invalid_workload_files(tmp_path: Path, text, field):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=field):
        load_workload(path)


def test_unknown_workload_name_and_missing_file():
    with pytest.raises(ValueError, match="unknown workload 'nope'.*edge"):
        load_workload("nope")
    with pytest.raises(ValueError, match="missing.json"):
        load_workload("missing.json")


def test_user_workload_file_round_trip(tmp_path: Path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(minimal_workload(tpot_ms={"l1": 2, "ms": 10}, lengths="log_uniform",
                                                deadline_ms={"ttft": 1, "n_out_tpot": 1})))
    t = make_traffic(str(path), rate_rps=2, num_requests=20, seed=0, latency_model=PAPER_LM)
    assert t.workload == "w" and t.class_order == ("a",)
    for r in t.requests:
        assert r.slo.tpot_ms == 2 * 14 + 10
        assert math.isclose(r.slo.deadline_ms, 100 + r.num_output_tokens * 38)


# --- traces ---

def _trace(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_trace_with_class_defaults_and_explicit_fields(tmp_path: Path):
    path = _trace(
        tmp_path,
        {"arrival_s": 0.5, "prompt_tokens": 100, "output_tokens": 20, "slo_class": "control"},
        "",
        {"arrival_s": 1.0, "prompt": "x" * 41, "output_tokens": 3, "slo_class": "mine",
         "ttft_ms": 300, "tpot_ms": 60, "utility": 50, "request_id": "a"},
        {"arrival_s": 2.0, "prompt_tokens": 300, "output_tokens": 50,
         "slo_class": "navigation", "deadline_ms": 4000, "tpot_ms": 99},
    )
    t = load_trace(path, workload=load_workload("edge"), latency_model=PAPER_LM)
    assert (t.arrival, t.rate_rps, t.workload) == ("trace", None, "t.jsonl")
    control, mine, nav = t.requests
    assert control.request_id == "line-1" and control.arrival_s == 0.5
    assert math.isclose(control.slo.ttft_ms, 3 * (PAPER_LM.prefill_ms(100) + 14))
    assert control.priority == 0
    assert mine.prompt == "x" * 41 and mine.num_prompt_tokens == 11 == estimate_prompt_tokens(
        "x" * 41)
    assert (mine.slo.ttft_ms, mine.slo.utility, mine.request_id) == (300, 50, "a")
    assert mine.priority == 1  # utility 50 ranks between control (100) and navigation (30)
    assert nav.slo.tpot_ms == 99 and nav.slo.deadline_ms == 4000 and nav.priority == 2
    assert t.class_order == ("control", "navigation", "chat", "background", "mine")


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not valid JSON"),
    ('[1, 2]', "line 2: must be a JSON object"),
    ('{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 2, "slo_class": "x"}',
     "line 2: missing ttft_ms, tpot_ms, utility"),
    ('{"arrival_s": -1, "prompt_tokens": 5, "output_tokens": 2, "slo_class": "control"}',
     "line 2: field arrival_s"),
    ('{"arrival_s": 1, "output_tokens": 2, "slo_class": "control"}',
     "line 2: needs prompt"),
    ('{"arrival_s": 1, "prompt_tokens": 0, "output_tokens": 2, "slo_class": "control"}',
     "line 2: field prompt_tokens"),
    ('{"arrival_s": 1, "prompt_tokens": 5, "slo_class": "control"}',
     "line 2: field output_tokens: missing"),
    ('{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 2, "slo_class": "control", '
     '"tpot_ms": -3}', "line 2: field tpot_ms"),
    ('{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 2, "slo_class": "control", '
     '"ttft": 3}', "line 2: unknown field 'ttft'"),
    ('{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 2}', "line 2: field slo_class"),
])
def test_trace_errors_name_the_line(tmp_path: Path, line: str, message: str):
    good = {"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 2, "slo_class": "control"}
    path = _trace(tmp_path, good, line)
    with pytest.raises(ValueError, match=message) as info:
        load_trace(path, workload=load_workload("edge"), latency_model=PAPER_LM)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_trace_without_workload_needs_slo_fields_and_empty_trace_fails(tmp_path: Path):
    line = {"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 2, "slo_class": "control"}
    with pytest.raises(ValueError, match="line 1: missing.*no workload"):
        load_trace(_trace(tmp_path, line))
    with pytest.raises(ValueError, match="no requests"):
        parse_trace("\n\n")
    with pytest.raises(ValueError, match="duplicate request_id"):
        parse_trace('{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 2, "slo_class": "a",'
                    ' "ttft_ms": 1, "tpot_ms": 1, "utility": 1, "request_id": "x"}\n' * 2)
    with pytest.raises(ValueError, match="latency model"):
        load_trace(_trace(tmp_path, line), workload=load_workload("edge"))


def test_make_traffic_reads_a_jsonl_trace(tmp_path: Path):
    path = _trace(tmp_path, {"arrival_s": 3, "prompt_tokens": 5, "output_tokens": 2,
                             "slo_class": "rt-short"})
    t = make_traffic(str(path), rate_rps=99, num_requests=50, class_defaults="paper")
    assert len(t.requests) == 1 and t.requests[0].arrival_s == 3.0
    assert isinstance(t.requests[0], RequestSpec) and t.requests[0].slo.ttft_ms == 200
