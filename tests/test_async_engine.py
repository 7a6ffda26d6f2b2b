"""AsyncEngine on a real tiny model: streams, abort (explicit, by closing, by cancelling),
concurrency, rejection, step errors, shutdown, and no busy-waiting when idle.

asyncio.run in each test (no pytest-asyncio dependency)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sliceserve.engine.async_engine import AsyncEngine, EngineNotRunning, EngineStepError
from sliceserve.engine.build import LiveEngine, build_engine
from sliceserve.engine.config import EngineConfig
from sliceserve.engine.outputs import RequestOutput
from sliceserve.request import SamplingParams
from tests.tiny_models import make_tiny_model

GREEDY = dict(temperature=0.0, ignore_eos=True)
LONG = SamplingParams(max_tokens=100, **GREEDY)  # long enough to be stopped halfway


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> LiveEngine:
    folder: Path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")
    return build_engine(EngineConfig(model=folder, policy="slice", dtype="float32",
                                     latency_model="paper", kv_cache_memory_gb=0.01,
                                     max_model_len=128))


def run(live: LiveEngine, body: Callable[[AsyncEngine], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with AsyncEngine(live) as engine:
            result = await asyncio.wait_for(body(engine), timeout=30)
        scheduler = live.engine.scheduler
        assert not scheduler.has_unfinished()
        assert scheduler.blocks.num_free_blocks == scheduler.config.num_kv_blocks
        return result
    return asyncio.run(main())


async def collect(engine: AsyncEngine, prompt: Any, sampling: SamplingParams,
                  **kwargs: Any) -> list[RequestOutput]:
    return [out async for out in engine.generate(prompt, sampling, **kwargs)]


def check_stream(outs: list[RequestOutput], live: LiveEngine) -> RequestOutput:
    """One output per token, deltas adding up to the cumulative fields, the last finished."""
    final = outs[-1]
    assert final.finished and all(not o.finished for o in outs[:-1])
    assert "".join(o.delta_text for o in outs) == final.text
    assert sum((o.outputs[0].delta_token_ids for o in outs), ()) == final.token_ids
    for o in outs:
        assert final.text.startswith(o.text) and final.token_ids[:len(o.token_ids)] == o.token_ids
    return final


def test_stream_deltas_concatenate_to_the_final_text(live: LiveEngine) -> None:
    outs = run(live, lambda e: collect(e, "The quick brown", SamplingParams(max_tokens=12,
                                                                              **GREEDY)))
    final = check_stream(outs, live)
    assert len(outs) == 12 and final.finish_reason == "length"
    assert final.text == live.tokenizer.decode(final.token_ids, skip_special_tokens=True)
    assert final.metrics.met is True and final.metrics.ttft_s is not None


def test_concurrent_streams_match_each_request_run_alone(live: LiveEngine) -> None:
    prompts = ["Hello, world!", "Water boils at", "Once upon a time there was", "Paris"]
    params = [SamplingParams(max_tokens=n, **GREEDY) for n in (9, 4, 12, 6)]

    async def together(engine: AsyncEngine) -> list[list[RequestOutput]]:
        return list(await asyncio.gather(*(collect(engine, p, s, request_id=f"c{i}")
                                           for i, (p, s) in enumerate(zip(prompts, params)))))

    async def alone(engine: AsyncEngine) -> list[list[RequestOutput]]:
        return [await collect(engine, p, s) for p, s in zip(prompts, params)]

    streams = run(live, together)
    finals = [check_stream(outs, live) for outs in streams]
    assert [f.request_id for f in finals] == ["c0", "c1", "c2", "c3"]
    singles = [outs[-1] for outs in run(live, alone)]
    assert [f.token_ids for f in finals] == [s.token_ids for s in singles]


def test_abort_mid_stream_ends_with_abort_and_frees_the_blocks(live: LiveEngine) -> None:
    async def body(engine: AsyncEngine) -> list[RequestOutput]:
        outs = []
        async for out in engine.generate("Hello", LONG, request_id="a"):
            outs.append(out)
            if len(outs) == 3:
                engine.abort("a")
                engine.abort("a")  # twice, and unknown ids: ignored
                engine.abort("nobody")
        return outs

    outs = run(live, body)
    final = check_stream(outs, live)
    assert final.finish_reason == "abort" and final.status == "aborted"
    assert 3 <= len(final.token_ids) < 100 and final.metrics.met is False


def test_a_consumer_that_stops_listening_aborts_its_request(live: LiveEngine) -> None:
    scheduler = live.engine.scheduler
    ended: list[Any] = []

    async def ended_as(request_id: str) -> str:
        while not any(r.request_id == request_id for r in ended):
            await asyncio.sleep(0.005)
        request = next(r for r in ended if r.request_id == request_id)
        assert request.num_output_tokens < LONG.max_tokens
        return request.status.value

    async def body(engine: AsyncEngine) -> None:
        # Closing the generator (break out of `async for`).
        stream = engine.generate("Hello", LONG, request_id="closed")
        async for out in stream:
            if len(out.token_ids) == 2:
                break
        await stream.aclose()
        assert await ended_as("closed") == "aborted"
        # Cancelling the task that reads the stream.
        started = asyncio.Event()

        async def reader() -> None:
            async for _ in engine.generate("Hello", LONG, request_id="cancelled"):
                started.set()

        task = asyncio.create_task(reader())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await ended_as("cancelled") == "aborted"
        # The engine still serves afterwards.
        outs = await collect(engine, "Hello", SamplingParams(max_tokens=2, **GREEDY))
        assert outs[-1].finish_reason == "length"

    scheduler.finished_listeners.append(ended.append)
    try:
        run(live, body)
    finally:
        scheduler.finished_listeners.remove(ended.append)


def test_a_request_that_can_never_fit_is_rejected_with_one_final_output(
        live: LiveEngine) -> None:
    outs = run(live, lambda e: collect(e, "Hello", SamplingParams(max_tokens=500)))
    assert len(outs) == 1
    out = outs[0]
    assert out.finished and out.status == "rejected" and out.token_ids == ()
    assert out.finish_reason == "rejected" and out.finish_code == "context_length_exceeded"
    assert "max_model_len 128" in (out.finish_detail or "") and out.metrics.met is False


def test_bad_prompts_and_duplicate_ids_raise_in_the_caller(live: LiveEngine) -> None:
    async def body(engine: AsyncEngine) -> None:
        with pytest.raises(ValueError, match="outside the vocabulary"):
            await collect(engine, [5, 10**6], LONG)
        with pytest.raises(ValueError, match="empty"):
            await collect(engine, "", LONG)
        first = engine.generate("Hello", LONG, request_id="dup")
        await first.__anext__()
        with pytest.raises(ValueError, match="already in use"):
            await collect(engine, "Hi", LONG, request_id="dup")
        await first.aclose()

    run(live, body)

    async def not_started() -> None:
        with pytest.raises(EngineNotRunning):
            await collect(AsyncEngine(live), "Hello", LONG)
    asyncio.run(not_started())


def test_an_error_in_a_step_fails_every_open_stream(live: LiveEngine) -> None:
    runner = live.engine.executor

    class Failing:
        calls = 0

        def execute(self, plan: Any) -> Any:
            Failing.calls += 1
            if Failing.calls == 4:
                raise RuntimeError("device on fire")
            return runner.execute(plan)

    async def body(engine: AsyncEngine) -> list[Any]:
        results = await asyncio.gather(*(collect(engine, p, LONG) for p in ("Hi", "Hello")),
                                       return_exceptions=True)
        live.engine.executor = runner  # healthy again: new requests are served
        after = await collect(engine, "Hi", SamplingParams(max_tokens=2, **GREEDY))
        return [*results, after[-1]]

    live.engine.executor = Failing()
    try:
        first, second, after = run(live, body)
    finally:
        live.engine.executor = runner
    for result in (first, second):
        assert isinstance(result, EngineStepError) and "device on fire" in str(result)
        assert isinstance(result.__cause__, RuntimeError)
    assert after.finish_reason == "length"


def test_shutdown_aborts_what_runs_and_idle_does_not_spin(live: LiveEngine) -> None:
    steps = 0
    step = live.engine.step

    def counting_step() -> Any:
        nonlocal steps
        steps += 1
        return step()

    async def main() -> list[RequestOutput]:
        engine = AsyncEngine(live)
        await engine.start()
        await collect(engine, "Hi", SamplingParams(max_tokens=2, **GREEDY))
        steps_before, cpu_s = steps, time.process_time()
        await asyncio.sleep(0.3)  # idle: the thread sleeps on its event
        assert steps == steps_before and time.process_time() - cpu_s < 0.1
        outs: list[RequestOutput] = []
        stopping: list[asyncio.Task[None]] = []

        async def reader() -> None:
            async for out in engine.generate("Hello", LONG):
                outs.append(out)
                if len(outs) == 2:
                    stopping.append(asyncio.create_task(engine.shutdown()))

        await asyncio.wait_for(reader(), timeout=30)
        await stopping[0]
        assert not engine.is_running and steps >= steps_before + 2
        return outs

    live.engine.step = counting_step  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        outs = asyncio.run(main())
    finally:
        del live.engine.step
    assert time.perf_counter() - start < 30
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert sum(o.finished for o in outs) == 1
    assert not live.engine.scheduler.has_unfinished()
