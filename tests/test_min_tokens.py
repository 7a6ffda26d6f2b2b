"""min_tokens (vLLM's semantics) on a real tiny model: end tokens (EOS, stop_token_ids) are
masked out of the sampled distribution until min_tokens tokens exist, the scheduler does not
stop on them before, and stop strings are looked for only in the text after them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sliceserve.engine.async_engine import AsyncEngine
from sliceserve.engine.build import build_engine
from sliceserve.engine.config import EngineConfig
from sliceserve.engine.engine import Engine
from sliceserve.request import SamplingParams
from tests.engine_helpers import make_engine, request, run_to_completion
from tests.tiny_models import make_tiny_model

PROMPT = [5, 17, 33, 64, 100, 7]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


def greedy(engine: Engine, rid: str, **sampling: object) -> list[int]:
    return run_to_completion(engine, [request(rid, PROMPT, 12, **sampling)])[rid]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_stop_token_cannot_end_the_output_before_min_tokens(folder: Path,
                                                              temperature: float) -> None:
    engine = make_engine(folder)
    free = greedy(engine, "free", temperature=temperature, seed=3)
    first = free[0]
    # Without min_tokens the first token ends the output at once.
    assert greedy(engine, "stop", temperature=temperature, seed=3,
                  stop_token_ids=(first,)) == [first]
    out = greedy(engine, "min", temperature=temperature, seed=3, stop_token_ids=(first,),
                 min_tokens=4)
    assert len(out) >= 5 or first not in out
    assert first not in out[:4]  # masked: never sampled within min_tokens
    if first in out:
        assert out[-1] == first and out.index(first) >= 4


def test_eos_is_masked_too_unless_ignored(folder: Path) -> None:
    engine = make_engine(folder)
    free = greedy(engine, "free")
    eos = free[1]  # pretend the second greedy token is the model's EOS
    engine.executor.sampler.eos_token_ids = (eos,)  # what build_engine sets from the config
    out = greedy(engine, "min", ignore_eos=False, min_tokens=6)
    assert eos not in out[:6]


def test_validation() -> None:
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=-1)


def test_stop_strings_count_only_after_min_tokens(folder: Path) -> None:
    import asyncio

    live = build_engine(EngineConfig(model=folder, policy="vllm", dtype="float32",
                                     latency_model="paper", kv_cache_memory_gb=0.01,
                                     max_model_len=128), warm_up=False)

    async def run(**sampling: object) -> str:
        async with AsyncEngine(live) as engine:
            outs = [o async for o in engine.generate(PROMPT, SamplingParams(
                max_tokens=10, temperature=0.0, ignore_eos=True, **sampling))]
        return outs[-1].text

    text = asyncio.run(run())
    stop = text[:2]  # found at once without min_tokens
    assert stop and asyncio.run(run(stop=(stop,))) == ""
    later = asyncio.run(run(stop=(stop,), min_tokens=10))
    assert later == text  # never cut: min_tokens covers the whole output
