"""The server against the official `openai` client: completions and chat, streaming and not,
the shapes of chunks, usage, errors and the slo_report; the other endpoints; min_tokens.

One real `sliceserve serve` process on loopback for the module (tests/server_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.server_helpers import MODEL, ServerProcess, metric_values, state, wait_until_idle

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(["--served-model-name", MODEL, "--served-model-name", "alias"])
    try:
        srv.wait_ready()
        yield srv
    finally:
        assert srv.stop() == 0, srv.output()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def check_report(report: dict, slo_class: str = "best-effort") -> None:
    assert report["slo_class"] == slo_class
    assert set(report) >= {"slo_class", "utility", "target", "ttft_ms", "tpot_ms", "e2e_ms",
                           "met", "missed"}
    assert set(report["target"]) == {"ttft_ms", "tpot_ms", "deadline_ms"}
    assert report["ttft_ms"] > 0 and report["e2e_ms"] >= report["ttft_ms"]
    assert report["met"] is (report["missed"] == [])


def test_completion(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="The capital of France is",
                                    max_tokens=6, **GREEDY)
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert out.model == MODEL and len(out.choices) == 1
    choice = out.choices[0]
    assert isinstance(choice.text, str) and choice.text and choice.finish_reason == "length"
    assert out.usage.completion_tokens == 6 and out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + 6
    check_report(out.model_extra["slo_report"])
    again = client.completions.create(model="alias", prompt="The capital of France is",
                                      max_tokens=6, **GREEDY)
    assert again.choices[0].text == choice.text  # greedy: the same text, under either name


def test_completion_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True,
        stream_options={"include_usage": True}, **GREEDY))
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 8
    check_report(last.model_extra["slo_report"])
    finals = [c for c in body if c.choices[0].finish_reason is not None]
    assert len(finals) == 1 and finals[0] is body[-1] and finals[0].choices[0].finish_reason == (
        "length")
    assert "slo_report" in finals[0].model_extra
    assert all(c.usage is None for c in body)
    text = "".join(c.choices[0].text for c in body)
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                      **GREEDY)
    assert text == whole.choices[0].text


def test_chat_and_chat_stream(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are brief."},
                {"role": "user", "content": "Name a planet."}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                         **GREEDY)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    message = out.choices[0].message
    assert message.role == "assistant" and message.content
    assert out.choices[0].finish_reason in ("stop", "length")
    check_report(out.model_extra["slo_report"])
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages,
                                                 max_completion_tokens=10, stream=True,
                                                 **GREEDY))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason
    assert "slo_report" in chunks[-1].model_extra


def test_slo_fields_and_classes(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=4, **GREEDY,
        extra_body={"slo_class": "control", "slo": {"tpot_ms": 5000}, "priority": 1})
    report = out.model_extra["slo_report"]
    check_report(report, "control")
    assert report["target"]["tpot_ms"] == 5000 and report["utility"] == 100
    lenient = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=4, **GREEDY,
        extra_body={"slo": {"ttft_ms": 1e6, "tpot_ms": 1e6, "deadline_ms": 1e7},
                    "utility": 3})
    report = lenient.model_extra["slo_report"]
    check_report(report, "custom")
    assert report["met"] is True and report["utility"] == 3
    with pytest.raises(openai.RateLimitError) as e:  # no device decodes a token in 1 us
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, **GREEDY,
                                  extra_body={"slo_class": "nonsense", "slo": {"tpot_ms": 0.001}})
    assert e.value.body["code"] == "slo_infeasible" and e.value.body["message"]
    assert int(e.value.response.headers["retry-after"]) >= 0


def test_stop_seed_top_k_min_tokens(client: openai.OpenAI) -> None:
    base = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12,
                                     **GREEDY).choices[0].text
    cut = base[len(base) // 2:][:2].strip() or base[-1]
    stopped = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12,
                                        stop=[cut], **GREEDY).choices[0]
    assert stopped.finish_reason == "stop" and cut not in stopped.text
    assert base.startswith(stopped.text)
    a, b = (client.completions.create(model=MODEL, prompt="Tell me", max_tokens=8, seed=7,
                                      temperature=1.0, top_p=0.9,
                                      extra_body={"top_k": 20}).choices[0].text
            for _ in range(2))
    assert a == b  # seeded
    # An EOS-ending chat reply: with min_tokens it must go on past where it stopped.
    messages = [{"role": "user", "content": "Say yes."}]
    short = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=64,
                                           **GREEDY)
    n = short.usage.completion_tokens
    if short.choices[0].finish_reason == "stop":
        longer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=64,
                                                extra_body={"min_tokens": n + 3}, **GREEDY)
        assert longer.usage.completion_tokens >= n + 3
    ignored = client.completions.create(model=MODEL, prompt="Hi", max_tokens=5,
                                        extra_body={"ignore_eos": True}, **GREEDY)
    assert ignored.usage.completion_tokens == 5


def test_errors_have_the_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="Hi", max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=0)
    assert e.value.body["param"] == "max_tokens" and e.value.body["type"] == (
        "invalid_request_error")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2)
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, n=2)
    assert e.value.body["param"] == "n"


def test_models_health_version_metrics_state(server: ServerProcess) -> None:
    url = server.url
    models = httpx.get(url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL, "alias"]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    assert httpx.get(url + "/version").json()["version"]
    snap = wait_until_idle(url)
    assert snap["policy"]["name"] == "slice" and "selected" in snap["policy"]["state"]
    assert snap["iterations"], "recent iterations are listed"
    it = snap["iterations"][-1]
    assert it["measured_ms"] > 0 and it["predicted_ms"] > 0
    assert set(snap["server"]["slo_classes"]) >= {"control", "navigation", "chat", "background"}
    text = httpx.get(url + "/metrics").text
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                 "e2e_request_latency_seconds", "request_time_per_output_token_seconds",
                 "num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                 "request_success_total", "slo_met_total", "slo_missed_total",
                 "request_rejected_total", "iteration_duration_seconds",
                 "latency_model_measured_over_predicted", "latency_model_correction_factor"):
        assert f"sliceserve:{name}" in text, name
    assert set(snap["policy"]["latency_correction"]) >= {"decode_factor", "prompt_factor"}
    success = metric_values(url, "sliceserve:request_success_total")
    assert sum(success.values()) >= 5
    assert any('slo_class="control"' in k for k in success)
    assert metric_values(url, "sliceserve:num_requests_running")['slo_class="control"'] == 0
    assert state(url)["running"] == []
