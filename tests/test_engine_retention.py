"""A long-running engine keeps nothing of the requests that ended (a soak's memory must not
grow with the number of requests served): after completions, aborts and rejections, no
`Request` object is left alive, and every per-request table is empty or bounded."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from sliceserve.engine.async_engine import AsyncEngine
from sliceserve.engine.build import LiveEngine, build_engine
from sliceserve.engine.config import EngineConfig
from sliceserve.request import Request, SamplingParams
from tests.tiny_models import make_tiny_model

GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> LiveEngine:
    folder: Path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")
    return build_engine(EngineConfig(model=folder, policy="slice", dtype="float32",
                                     latency_model="paper", kv_cache_memory_gb=0.01,
                                     max_model_len=128))


def _alive(live: LiveEngine, prefix: str) -> set[str]:
    """Ids of the requests still alive, less those the sampler holds until its next prune
    (a seeded request's generator; bounded, checked below)."""
    gc.collect()
    held = set(live.engine.executor.sampler._seeded)  # type: ignore[attr-defined]
    return {o.request_id for o in gc.get_objects()
            if isinstance(o, Request) and o.request_id.startswith(prefix)} - held


def _tables(engine: AsyncEngine) -> dict[str, int]:
    scheduler = engine.engine.scheduler
    sizes = {"streams": len(engine._streams), "outputs": len(engine._processor),
             "scheduler": scheduler.num_unfinished(), "block_tables": len(scheduler.blocks._tables),
             "commands": len(engine._commands), "outbox": len(engine._outbox)}
    for name, value in vars(scheduler.policy).items():  # the policy's per-request tables
        if isinstance(value, set) and all(isinstance(x, str) for x in value):
            continue  # ids of the last plan (rebuilt at the next one): no request kept
        if isinstance(value, (dict, list, set)):
            sizes[f"policy.{name}"] = len(value)
    return sizes


def test_ended_requests_leave_nothing_behind(live: LiveEngine) -> None:
    async def main() -> tuple[dict[str, int], set[str], set[str]]:
        async with AsyncEngine(live) as engine:
            async def one(i: int) -> None:
                sampling = SamplingParams(max_tokens=3 + i % 5, temperature=0.8,
                                          seed=i if i % 3 == 0 else None)
                async for _ in engine.generate(f"request number {i}", sampling,
                                               request_id=f"keep-{i}"):
                    pass

            async def abandoned(i: int) -> None:  # the consumer leaves after one token
                stream = engine.generate("Hello", SamplingParams(max_tokens=50, **GREEDY),
                                         request_id=f"keep-abort-{i}")
                await stream.__anext__()
                await stream.aclose()  # type: ignore[attr-defined]

            async def refused(i: int) -> None:  # can never fit: rejected on arrival
                outs = [o async for o in engine.generate(
                    list(range(1, 100)), SamplingParams(max_tokens=100, **GREEDY),
                    request_id=f"keep-reject-{i}")]
                assert outs[-1].status == "rejected"

            for wave in range(3):
                await asyncio.gather(*(one(wave * 12 + i) for i in range(12)),
                                     abandoned(wave), refused(wave))
            for _ in range(200):  # the abandoned requests' aborts reach the thread
                sizes = await engine.call(lambda _e: _tables(engine))
                if sizes["scheduler"] == 0:
                    break
                await asyncio.sleep(0.01)
            alive_running = _alive(live, "keep-")  # the engine still runs
        return sizes, alive_running, _alive(live, "keep-")

    sizes, alive_running, alive_after = asyncio.run(main())
    assert {k: v for k, v in sizes.items() if v} == {}, sizes
    assert alive_running == set() and alive_after == set()
    sampler = live.engine.executor.sampler  # type: ignore[attr-defined]
    assert len(sampler._seeded) <= 16  # seeded generators are pruned, not kept per request
