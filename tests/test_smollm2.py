"""The embedded default model, SmolLM2-135M-Instruct, against transformers (slow: real model)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sliceserve.model.loader import resolve_model
from sliceserve.model.runner import ModelRunner, RunnerConfig
from sliceserve.policies.registry import policy_names
from tests.engine_helpers import make_engine, request, run_to_completion

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Write a haiku about a robot that",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "List three uses of a paper clip:\n1.",
]


@pytest.fixture(scope="module")
def folder():
    return resolve_model(None)


@pytest.fixture(scope="module")
def tokenizer(folder):
    return AutoTokenizer.from_pretrained(folder)


def test_greedy_tokens_equal_transformers_on_five_prompts(folder, tokenizer):
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf.generation_config.eos_token_id = None
    expected = {}
    for i, prompt in enumerate(ids):
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                          pad_token_id=0)
        expected[f"p{i}"] = out[0, len(prompt):].tolist()
    engine = make_engine(folder, num_kv_blocks=64)
    got = run_to_completion(engine, [request(f"p{i}", p, 32) for i, p in enumerate(ids)])
    assert got == expected
    assert "Paris" in tokenizer.decode(got["p0"])


def test_every_policy_drives_the_real_model_to_completion(folder, tokenizer):
    """A mixed workload (tight and lax SLOs, short and long prompts) under each policy."""
    from sliceserve.request import SLO

    runner = ModelRunner(folder, RunnerConfig(num_kv_blocks=96, num_threads=None))
    prompts = [tokenizer(p * (1 + i % 3))["input_ids"] for i, p in enumerate(PROMPTS * 2)]
    slos = [SLO(ttft_ms=300, tpot_ms=80, utility=100, slo_class="rt"),
            SLO(ttft_ms=5000, tpot_ms=500, slo_class="be")]
    for name in policy_names():
        engine = make_engine(runner, name)
        reqs = [request(f"{name}-{i}", p, 4 + 3 * (i % 4), slo=slos[i % 2])
                for i, p in enumerate(prompts)]
        run_to_completion(engine, reqs)
        assert all(r.finish_reason == "length" for r in reqs), name
        assert all(len(r.output_token_ids) == r.max_tokens for r in reqs), name
        assert engine.scheduler.blocks.num_free_blocks == runner.num_kv_blocks
