"""The benchmark client: request bodies per system, the stream protocol and its failure modes
(against a scripted stand-in server, tests/openai_standin.py), the equal-work checks, the
result files, the `sliceserve bench` command, prompts of exact lengths and the speed fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sliceserve.bench.http_bench import Target, bench_traffic
from sliceserve.bench.http_client import Outcome
from sliceserve.bench.prompts import PromptMaker, load_tokenizer_file
from sliceserve.bench.speed import fit_prefill
from sliceserve.bench.systems import client_options, request_body
from sliceserve.cli import main
from sliceserve.metrics.results import dumps, load_results
from sliceserve.request import SLO
from sliceserve.workloads import RequestSpec, make_traffic, workload_from_dict
from tests.openai_standin import standin
from tests.tiny_models import make_tiny_tokenizer

KINDS = ("ok", "merged", "short", "reject", "busy", "broken", "slow")


def _workload(kinds: tuple[str, ...] = KINDS) -> dict:
    return {"name": "protocol", "classes": {
        k: {"share": 1, "prompt_tokens": [4, 12], "output_tokens": [5, 9], "ttft_ms": 5000,
            "tpot_ms": 1000, "utility": 1 + i} for i, k in enumerate(kinds)}}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    make_tiny_tokenizer(1024).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def maker(tokenizer_dir: Path) -> PromptMaker:
    return PromptMaker(load_tokenizer_file(tokenizer_dir), "tiny")


def test_prompts_have_exact_token_counts_fresh_per_salt(maker: PromptMaker) -> None:
    for n in (1, 7, 64, 300):
        assert maker.count(maker.text(n, seed=1, salt=2, index=3)) == n
    assert maker.text(20, 1, 2, 3) == maker.text(20, 1, 2, 3)
    assert maker.text(20, 1, 2, 3) != maker.text(20, 1, 9, 3)  # a fresh salt: fresh words
    assert maker.special_ids and all(i < 1024 for i in maker.special_ids)
    with pytest.raises(ValueError, match="at least one token"):
        maker.text(0, 1, 2, 3)


def test_request_bodies_force_the_length_the_way_each_system_needs() -> None:
    spec = RequestSpec("r", 0.0, 10, 7, SLO(300, 60, 900, 100, "control"), priority=0)
    vllm = request_body(spec, "hi", "m", client_options("vllm"))
    assert vllm["ignore_eos"] and vllm["return_token_ids"] and vllm["priority"] == 0
    assert vllm["max_tokens"] == 7 and vllm["stream"] and vllm["temperature"] == 0.0
    # vLLM drops unknown top-level fields: the SLO goes flat in vllm_xargs, nothing else
    assert vllm["vllm_xargs"] == {"ttft_ms": 300, "tpot_ms": 60, "deadline_ms": 900,
                                  "utility": 100, "slo_class": "control"}
    assert not {"slo", "utility", "slo_class"} & set(vllm)
    no_deadline = RequestSpec("s", 0.0, 10, 7, SLO(300, 60, None, 1, "chat"), priority=2)
    assert "deadline_ms" not in request_body(no_deadline, "hi", "m",
                                             client_options("vllm"))["vllm_xargs"]
    ours = request_body(spec, "hi", "m", client_options("sliceserve"))
    assert ours["slo"] == {"ttft_ms": 300, "tpot_ms": 60, "deadline_ms": 900}
    assert "vllm_xargs" not in ours
    assert vllm["stream_options"] == {"include_usage": True}
    lcp = request_body(spec, "hi", "m", client_options("llama-cpp-python", eos_ids=[0, 2]))
    assert lcp["logit_bias"] == {"0": -100, "2": -100} and "ignore_eos" not in lcp
    assert "slo" not in lcp and "priority" not in lcp and "stream_options" not in lcp
    chat = request_body(spec, "hi", "m", client_options("sliceserve", endpoint="chat",
                                                        extra_body={"top_k": 1}))
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["top_k"] == 1
    assert chat["slo_class"] == "control" and chat["utility"] == 100
    with pytest.raises(ValueError, match="EOS token ids"):
        request_body(spec, "hi", "m", client_options("llama-cpp-python"))
    with pytest.raises(ValueError, match="force_length"):
        client_options("vllm", force_length="pray")
    with pytest.raises(ValueError, match="slo_format"):
        client_options("vllm", slo_format="nested")


def test_token_times_take_the_usage_count_at_the_last_chunk() -> None:
    outcome = Outcome(sent_s=0.0, chunk_times_s=[1.0, 2.0, 3.0], chunk_tokens=[1, 2, 1],
                      usage={"completion_tokens": 6})
    assert outcome.token_times_s() == [1.0, 2.0, 2.0, 3.0, 3.0, 3.0]
    outcome.usage = {"completion_tokens": 3}
    assert outcome.token_times_s() == [1.0, 2.0, 2.0]
    outcome.usage = None
    assert outcome.num_output_tokens == 4


def test_every_failure_is_counted_as_not_met_by_its_cause(maker: PromptMaker,
                                                          tmp_path: Path) -> None:
    traffic = make_traffic(workload_from_dict(_workload()), rate_rps=50.0, num_requests=28,
                           seed=4)
    prompts = [maker.text(s.num_prompt_tokens, 4, 1, i) for i, s in enumerate(traffic.requests)]
    with standin(slow_s=6.0) as server:  # a 3 s limit: slow times out, the rest never does
        target = Target(server.base_url, "stand-in", client_options("sliceserve"),
                        timeout_s=3.0)
        seen: list[tuple[int, int, int]] = []
        run = bench_traffic(traffic, target, prompts, slo_scale="absolute",
                            latency_model_name="", policy="slice",
                            progress=lambda *a: seen.append(a))
        bodies = list(server.bodies)
    # A request that timed out may not have reached the handler on a busy machine.
    slow = [p for p, s in zip(prompts, traffic.requests) if s.slo.slo_class == "slow"]
    assert 28 - len(slow) <= len(bodies) <= 28
    assert all(b["ignore_eos"] and b["stream"] for b in bodies)
    assert set(prompts) - set(slow) <= {b["prompt"] for b in bodies}
    (tmp_path / "run.json").write_text(dumps(run))
    (loaded,) = load_results(tmp_path / "run.json")
    assert loaded["client"]["slo_scale"] == "absolute"
    classes = run["classes"]
    assert run["backend"] == "http" and run["system"] == "sliceserve"
    for kind in ("ok", "merged"):
        stats = classes[kind]
        assert stats["completed"] == stats["n"] > 0 and stats["slo_attainment"] == 1.0
    expected = {"short": "wrong_length", "reject": "429:queue_full", "busy": "503:loading",
                "broken": "stream:internal", "slow": "timeout"}
    for kind, code in expected.items():
        stats = classes[kind]
        assert stats["failures"] == {code: stats["n"]}, kind
        assert stats["slo_attainment"] == 0.0 and stats["completed"] == 0
    assert classes["reject"]["rejected"] == classes["reject"]["n"]
    assert classes["broken"]["aborted"] == classes["broken"]["n"]
    client = run["client"]
    assert client["output_length"]["wrong"] == classes["short"]["n"]
    ended = classes["ok"]["n"] + classes["merged"]["n"] + classes["short"]["n"]
    assert client["output_length"]["checked"] == ended
    assert client["server_slo_reports"]["n"] == ended
    assert seen[-1][0] == seen[-1][2] == 28 and seen[-1][1] == run["summary"]["completed"]
    rows = {r["id"]: r for r in run["requests"]}
    assert len(rows) == 28 and all(r["met"] == (r["class"] in ("ok", "merged"))
                                   for r in rows.values())
    assert run["summary"]["itl_ms"]["p50"] is not None


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_bench_command_writes_a_result_file_and_fails_on_wrong_lengths(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, tokenizer_dir: Path) -> None:
    workload = tmp_path / "w.json"
    workload.write_text(json.dumps(_workload(("ok", "merged"))))
    with standin() as server:
        code, out, err = run_cli(capsys, "bench", "--base-url", server.base_url, "-w", workload,
                                 "-r", 40, "-n", 12, "--tokenizer", tokenizer_dir,
                                 "--system", "vllm", "-p", "fcfs", "--out", tmp_path / "r.json",
                                 "--plot", tmp_path / "r.png")
        assert code == 0, err
        (run,) = load_results(tmp_path / "r.json")
        assert run["system"] == "vllm" and run["policy"] == "fcfs" and run["model"] == "stand-in"
        assert run["summary"]["n"] == 12 and run["summary"]["slo_attainment"] == 1.0
        assert (tmp_path / "r.png").stat().st_size > 0 and "overall" in out
        workload.write_text(json.dumps(_workload(("ok", "short"))))
        code, _, err = run_cli(capsys, "bench", "--base-url", server.base_url, "-w", workload,
                               "-r", 40, "-n", 12, "--tokenizer", tokenizer_dir, "--no-table")
        assert code == 1 and "did not generate exactly max_tokens" in err
        code, _, err = run_cli(capsys, "bench", "--base-url", server.base_url, "-w", "edge",
                               "--tokenizer", tokenizer_dir)
        assert code == 2 and "relative to the device" in err
        code, _, err = run_cli(capsys, "bench", "--base-url", server.base_url, "-r", 1,
                               "--load", 1, "-l", "paper")
        assert code == 2 and "not both" in err
    code, _, err = run_cli(capsys, "bench", "--base-url", "http://127.0.0.1:9", "-w", workload,
                           "--tokenizer", tokenizer_dir)
    assert code == 2 and "cannot reach" in err


def test_prefill_fit_recovers_the_latency_model_terms() -> None:
    l1 = 10.0
    points = [(n, l1 + 0.5 * (n - 1) + 0.001 * n * (n + 1) / 2) for n in (64, 256, 512, 1024)]
    per_token, per_pair = fit_prefill(points, l1)
    assert per_token == pytest.approx(0.5, rel=1e-6) and per_pair == pytest.approx(0.001)
    flat = [(n, l1 + 0.3 * (n - 1) - 1e-5 * n * n) for n in (64, 256, 512)]
    per_token, per_pair = fit_prefill(flat, l1)
    assert per_pair == 0.0 and per_token > 0


def test_the_run_time_limit_aborts_what_is_unfinished(maker: PromptMaker) -> None:
    traffic = make_traffic(workload_from_dict(_workload(("ok", "slow"))), rate_rps=50.0,
                           num_requests=6, seed=2)
    prompts = [maker.text(s.num_prompt_tokens, 2, 1, i) for i, s in enumerate(traffic.requests)]
    with standin(slow_s=1.0) as server:
        target = Target(server.base_url, "stand-in", client_options("sliceserve"),
                        timeout_s=30.0, max_run_s=0.4)
        run = bench_traffic(traffic, target, prompts, slo_scale="absolute",
                            latency_model_name="")
    slow, ok = run["classes"]["slow"], run["classes"]["ok"]
    assert slow["n"] > 0 and slow["failures"] == {"time_limit": slow["n"]}
    assert ok["completed"] == ok["n"] and run["client"]["max_run_s"] == 0.4
