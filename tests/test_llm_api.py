"""The offline API on a real tiny model: order, stop strings and ids, lengths, seeds, metrics,
chat, and clear errors before anything runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sliceserve import LLM, SLO, RequestOutput, SamplingParams
from sliceserve.engine.build import DEFAULT_SLO, build_engine
from sliceserve.engine.config import EngineConfig
from sliceserve.model.detokenizer import REPLACEMENT_CHAR
from tests.tiny_models import make_tiny_model

GREEDY = dict(temperature=0.0, ignore_eos=True)
PROMPTS = ["Hello, world!", "The quick brown fox jumps over", "Water boils at", "Paris"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def llm(folder: Path) -> LLM:
    return LLM(folder, policy="slice", dtype="float32", latency_model="paper",
               kv_cache_memory_gb=0.01, max_model_len=128)


def assert_idle(llm: LLM) -> None:
    scheduler = llm.engine.scheduler
    assert not scheduler.has_unfinished()
    assert scheduler.blocks.num_free_blocks == scheduler.config.num_kv_blocks


def test_outputs_come_back_in_input_order_with_their_own_parameters(llm: LLM) -> None:
    lengths = [5, 2, 7, 3]
    params = [SamplingParams(max_tokens=n, **GREEDY) for n in lengths]
    outs = llm.generate(PROMPTS, params)
    assert [o.prompt for o in outs] == PROMPTS
    assert [len(o.token_ids) for o in outs] == lengths
    tokenizer = llm.get_tokenizer()
    for prompt, out in zip(PROMPTS, outs):
        assert isinstance(out, RequestOutput) and out.finished and out.status == "completed"
        assert list(out.prompt_token_ids) == tokenizer.encode(prompt)
        assert out.finish_reason == "length"
        assert out.text == tokenizer.decode(out.token_ids, skip_special_tokens=True)
        assert not out.text.endswith(REPLACEMENT_CHAR) or out.text == tokenizer.decode(
            out.token_ids)
    assert len({o.request_id for o in outs}) == len(outs)
    assert_idle(llm)


def test_metrics_follow_the_token_times_and_the_slo(llm: LLM) -> None:
    impossible = SLO(ttft_ms=1e-3, tpot_ms=1e-3)
    outs = llm.generate(["Hello", "Hello"], SamplingParams(max_tokens=4, **GREEDY),
                        slos=[DEFAULT_SLO, impossible])
    for out, slo, met in zip(outs, (DEFAULT_SLO, impossible), (True, False)):
        m = out.metrics
        assert out.slo == slo and m.met is met
        assert m.arrival_s <= m.first_token_s <= m.finish_s  # type: ignore[operator]
        assert m.ttft_s == pytest.approx(m.first_token_s - m.arrival_s)  # type: ignore[operator]
        assert m.e2e_s == pytest.approx(m.finish_s - m.arrival_s)  # type: ignore[operator]
        assert m.tpot_s == pytest.approx((m.e2e_s - m.ttft_s) / 3)  # type: ignore[operator]
        assert (m.num_prompt_tokens, m.num_output_tokens, m.num_preemptions) == (
            len(out.prompt_token_ids), 4, 0)
    assert outs[0].slo.slo_class == "best-effort"


def test_stop_string_across_token_boundaries_cuts_the_text(llm: LLM) -> None:
    tokenizer = llm.get_tokenizer()

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    base = llm.generate("The quick brown", SamplingParams(max_tokens=24, **GREEDY))[0]
    ids = list(base.token_ids)
    stop = None
    for k in range(2, len(ids) - 2):  # a character either side of the end of token k
        head = decode(ids[:k])
        candidate = base.text[len(head) - 1:len(head) + 1]
        if (len(candidate) == 2 and REPLACEMENT_CHAR not in candidate
                and base.text.startswith(head) and candidate not in head):
            stop = candidate
            break
    assert stop is not None, f"no usable stop string in {base.text!r}"
    out = llm.generate("The quick brown", SamplingParams(max_tokens=24, stop=(stop, "never"),
                                                         **GREEDY))[0]
    assert out.finish_reason == "stop"
    assert out.text == base.text[:base.text.index(stop)]
    n = next(n for n in range(1, len(ids) + 1) if stop in decode(ids[:n]))
    assert stop not in decode(ids[n - 1:n])  # it spans two tokens
    assert list(out.token_ids) == ids[:n]  # ends with the token that completed the string
    assert_idle(llm)


def test_stop_token_ids_and_eos(llm: LLM) -> None:
    base = llm.generate("Hello", SamplingParams(max_tokens=12, **GREEDY))[0]
    ids = list(base.token_ids)
    stop_id = ids[4]
    out = llm.generate("Hello", SamplingParams(max_tokens=12, stop_token_ids=(stop_id,),
                                               **GREEDY))[0]
    assert out.finish_reason == "stop"
    assert list(out.token_ids) == ids[:ids.index(stop_id) + 1]

    # The engine's end-of-sequence ids stop a request unless it ignores them.
    scheduler = llm.engine.scheduler
    config = scheduler.config
    scheduler.config = replace(config, eos_token_ids=(stop_id,))
    try:
        params = SamplingParams(max_tokens=12, temperature=0.0)
        stopped, ignored = llm.generate(["Hello", "Hello"],
                                        [params, replace(params, ignore_eos=True)])
    finally:
        scheduler.config = config
    assert stopped.finish_reason == "stop" and list(stopped.token_ids) == list(out.token_ids)
    assert ignored.finish_reason == "length" and list(ignored.token_ids) == ids


def test_same_seed_same_text_under_temperature_one(llm: LLM) -> None:
    def sample(seed: int) -> list[RequestOutput]:
        return llm.generate(["Once upon a time", "Hello"],
                            SamplingParams(max_tokens=16, temperature=1.0, seed=seed,
                                           ignore_eos=True))

    first, again, other = sample(7), sample(7), sample(8)
    assert [o.token_ids for o in first] == [o.token_ids for o in again]
    assert [o.text for o in first] == [o.text for o in again]
    assert [o.token_ids for o in first] != [o.token_ids for o in other]


def test_token_id_prompts_and_chat(llm: LLM) -> None:
    tokenizer = llm.get_tokenizer()
    ids = tokenizer.encode("Paris is")
    params = SamplingParams(max_tokens=3, **GREEDY)
    by_text = llm.generate("Paris is", params)[0]
    by_ids, = llm.generate(ids, params)
    assert by_ids.prompt is None and by_ids.token_ids == by_text.token_ids
    two = llm.generate([ids, ids[:2]], params)
    assert [list(o.prompt_token_ids) for o in two] == [ids, ids[:2]]

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply, = llm.chat(messages, params)
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)
    assert list(reply.prompt_token_ids) == tokenizer.encode(expected, add_special_tokens=False)
    assert len(llm.chat([messages, messages], params, use_tqdm=True)) == 2


@pytest.mark.parametrize(("call", "message"), [
    (lambda llm: llm.generate("x" * 300), r"prompt 0: \d+ prompt tokens .* max_model_len 128"),
    (lambda llm: llm.generate(["ok", "Hi"], SamplingParams(max_tokens=128)),
     r"prompt 0: .* exceeds max_model_len 128"),
    (lambda llm: llm.generate(["a", "b", "c"], [SamplingParams()] * 2),
     "sampling_params has 2 entries for 3 prompts"),
    (lambda llm: llm.generate(["a", "b"], slos=[DEFAULT_SLO]), "slos has 1 entries for 2"),
    (lambda llm: llm.generate(["a"], slos="fast"), "slos must be a SLO"),
    (lambda llm: llm.generate(["a", ""]), "prompt 1 is empty"),
    (lambda llm: llm.generate([[1, 2], [3, 99999]]), r"prompt 1 has token ids outside .*512"),
    (lambda llm: llm.generate(["a", 5]), "prompt 1 must be a string or a list of token ids"),
    (lambda llm: llm.generate("a", SamplingParams(stop_token_ids=(600,))),
     r"prompt 0: stop_token_ids \[600\]"),
    (lambda llm: llm.generate("a", SamplingParams(stop=("ok", ""))), "non-empty strings"),
    (lambda llm: llm.chat([]), "conversation"),
])
def test_invalid_inputs_raise_before_anything_runs(llm: LLM, call: Any, message: str) -> None:
    iterations = llm.engine.scheduler.num_iterations
    with pytest.raises(ValueError, match=message):
        call(llm)
    assert llm.engine.scheduler.num_iterations == iterations
    assert_idle(llm)


def test_invalid_sampling_values_raise_value_error() -> None:
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(max_tokens=0), dict(top_k=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)  # type: ignore[arg-type]


def test_bad_policy_or_options_fail_before_the_model_loads(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"  # never reached: the policy is checked first
    with pytest.raises(ValueError, match="unknown policy 'fifo'; valid: .*orca, slice"):
        LLM(missing, policy="fifo")
    with pytest.raises(ValueError, match="has no option"):
        LLM(missing, policy="orca", policy_options={"nonsense": 1})
    with pytest.raises(ValueError, match="unknown setting.*'max_num_batch_tokens' "
                       "\\(did you mean 'max_num_batched_tokens'\\?\\)"):
        LLM(missing, policy="orca", max_num_batch_tokens=64)
    with pytest.raises(ValueError, match="does not exist"):
        build_engine(EngineConfig(model=missing, policy="orca", latency_model="paper"))


def test_empty_prompt_list_returns_nothing(llm: LLM) -> None:
    assert llm.generate([]) == []


def test_the_public_names_import_without_torch() -> None:
    """`import sliceserve` stays light: the API's names resolve with torch unavailable; only
    building an engine needs it."""
    script = textwrap.dedent("""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("torch is blocked")

        sys.meta_path.insert(0, Block())
        import sliceserve
        from sliceserve import (LLM, SLO, AsyncEngine, EngineConfig, RequestOutput,
                                SamplingParams, build_engine)
        EngineConfig(policy="orca", max_num_seqs=4)  # validated without torch
        assert "torch" not in sys.modules
        assert {"LLM", "SLO", "SamplingParams", "RequestOutput"} <= set(dir(sliceserve))
        try:
            sliceserve.nothing_here
        except AttributeError as e:
            assert "nothing_here" in str(e)
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr
