"""The llama.cpp executor (sliceserve/llamacpp) on the embedded SmolLM2 GGUF (Q4_1, as shipped).

Greedy tokens equal llama-cpp-python's own high-level generation, alone, batched with other
requests (chunked prefill mixed with decodes), masked out of iterations and preempted and
recomputed; every policy runs it to completion; no sequence or block leaks over 1,000 mixed
requests, and a reused sequence id gives the same tokens. The tests that need the bindings
skip, saying why, where the `llamacpp` extra is not installed (scripts/setup.sh installs it).
"""

from __future__ import annotations

import random
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from sliceserve.clock import WallClock
from sliceserve.core.plan import Plan, ScheduledChunk
from sliceserve.core.scheduler import Scheduler
from sliceserve.engine.engine import Engine
from sliceserve.latency_model import LatencyModel
from sliceserve.llamacpp import LlamaCppConfig, missing_reason
from sliceserve.model.config import ModelLoadError
from sliceserve.policies.base import Decision, Policy
from sliceserve.policies.registry import make_policy, policy_names
from sliceserve.request import SLO, Request, RequestStatus, SamplingParams
from tests.engine_helpers import Interfere, run_to_completion

MISSING = missing_reason()
needs_llama_cpp = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))

LENIENT = SLO(ttft_ms=1e7, tpot_ms=1e7)
NUM_TOKENS = 32
PROMPTS = ["The capital of France is", "Write a haiku about a robot arm:",
           "def fibonacci(n):", "Three primary colors are", "Once upon a time, in a small"]
THREADS = 1  # no spinning OpenMP barrier on a shared CPU (tests run beside other work)
CONFIG = LlamaCppConfig(context_tokens=512, max_num_seqs=8, num_threads=THREADS)


@pytest.fixture(scope="module")
def gguf() -> Path:
    from sliceserve.model.loader import default_gguf_path

    return default_gguf_path()


@pytest.fixture(scope="module")
def tokenizer(gguf):
    from sliceserve.llamacpp.loading import load_gguf_tokenizer

    return load_gguf_tokenizer(gguf)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def reference(gguf, prompt_ids) -> list[list[int]]:
    """llama-cpp-python's own greedy generation, one sequence at a time (its high-level API),
    with flash attention as the executor's default ("auto") resolves it on a CPU: on."""
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=512, n_threads=THREADS, n_batch=512, flash_attn=True,
                verbose=False)
    out = []
    for ids in prompt_ids:
        tokens: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            tokens.append(token)
            if len(tokens) == NUM_TOKENS:
                break
        out.append(tokens)
    llm.close()
    return out


@pytest.fixture(scope="module")
def executor(gguf):
    from sliceserve.llamacpp.executor import LlamaCppExecutor

    ex = LlamaCppExecutor(gguf, CONFIG)
    yield ex
    ex.close()


def scheduler_config(executor, **overrides):
    from sliceserve.config import SchedulerConfig

    base = SchedulerConfig(block_size=executor.block_size, num_kv_blocks=executor.num_kv_blocks,
                           max_model_len=executor.max_model_len, max_num_seqs=CONFIG.max_num_seqs,
                           eos_token_ids=executor.model_config.eos_token_ids)
    return replace(base, **overrides)


def make_engine(executor, policy="vllm", options=None, wrap=None, **config) -> Engine:
    cfg = scheduler_config(executor, **config)
    inner = make_policy(policy, LatencyModel.load("paper"), cfg, options or {})
    # the engine registers the executor's `release` as a finish listener itself
    return Engine(Scheduler(cfg, wrap(inner) if wrap else inner), executor, WallClock())


def request(rid, prompt, max_tokens=NUM_TOKENS, slo=LENIENT, **sampling) -> Request:
    params = SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, "ignore_eos": True,
                                                      **sampling})
    return Request(rid, 0.0, len(prompt), params, slo, prompt_token_ids=list(prompt))


def assert_no_leak(engine, executor) -> None:
    blocks = engine.scheduler.blocks
    assert blocks.num_free_blocks == engine.scheduler.config.num_kv_blocks
    blocks.check_conserved()
    assert executor.sequences_in_use() == {}  # llama.cpp's own count, per sequence


# --- without the bindings: clear errors, a sound choice of backend ---

def test_missing_bindings_give_a_clear_error_and_auto_falls_back(monkeypatch):
    import sliceserve.llamacpp as package
    from sliceserve.engine.backends import resolve_backend
    from sliceserve.llamacpp.bindings import load_bindings

    monkeypatch.setattr(package.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"sliceserve\[llamacpp\]"):
        load_bindings()
    assert resolve_backend("auto", "model.gguf") == "torch"
    assert resolve_backend("auto", None) == "torch"
    assert resolve_backend("llamacpp", "/some/folder") == "llamacpp"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("onnx", None)


def test_auto_picks_llama_cpp_for_a_gguf_only_where_installed():
    from sliceserve.engine.backends import resolve_backend

    expected = "torch" if MISSING else "llamacpp"
    assert resolve_backend("auto", "x.gguf") == expected
    assert resolve_backend("auto", "smollm2-135m") == expected
    assert resolve_backend("auto", "/a/hf-folder") == "torch"


def _gguf_header(path: Path, arch: str) -> Path:
    key, value = b"general.architecture", arch.encode()
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
                     + struct.pack("<Q", len(key)) + key + struct.pack("<I", 8)
                     + struct.pack("<Q", len(value)) + value)
    return path


def test_unsupported_architectures_and_non_gguf_models_are_refused(tmp_path):
    from sliceserve.llamacpp.loading import resolve_gguf

    with pytest.raises(ModelLoadError, match="does not support the GGUF architecture 'mamba'"):
        resolve_gguf(_gguf_header(tmp_path / "m.gguf", "mamba"))
    with pytest.raises(ModelLoadError, match="is a folder"):
        resolve_gguf(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_gguf(tmp_path / "absent.gguf")


def test_stream_runs_count_the_breaks_between_consecutive_ids():
    from sliceserve.llamacpp.executor import _runs

    assert [_runs(x) for x in ([], [3], [0, 1, 2], [0, 1, 3], [0, 2, 4], [1, 2, 5, 6])] == \
        [0, 1, 1, 2, 3, 2]


def test_config_is_checked():
    with pytest.raises(ValueError, match="max_num_seqs"):
        LlamaCppConfig(max_num_seqs=0)
    with pytest.raises(ValueError, match="max_num_seqs must be at most 255"):
        LlamaCppConfig(max_num_seqs=256)
    with pytest.raises(ValueError, match="n_gpu_layers"):
        LlamaCppConfig(n_gpu_layers=-2)
    for bad in ("yes", 1):
        with pytest.raises(ValueError, match="flash_attn"):
            LlamaCppConfig(flash_attn=bad)


def test_engine_config_carries_llama_cpp_options_and_checks_them():
    from sliceserve.cli.backend_options import llamacpp_options
    from sliceserve.engine.config import EngineConfig

    options = llamacpp_options(ctx_size=1024, kv_seqs=4, n_gpu_layers=0, batch_size=None)
    config = EngineConfig(backend="llamacpp", num_threads=3, llamacpp=options)
    made = config.llamacpp_config()
    assert (made.context_tokens, made.max_num_seqs, made.num_threads) == (1024, 4, 3)
    assert config.to_dict()["llamacpp"] == options
    with pytest.raises(ValueError, match="unknown option"):
        EngineConfig(backend="llamacpp", llamacpp={"n_ctx": 5})
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineConfig(backend="llamacpp", llamacpp={"max_num_seqs": 0})
    with pytest.raises(ValueError, match="backend must be one of"):
        EngineConfig(backend="onnx")


# --- greedy equality with llama.cpp's own generation ---

@needs_llama_cpp
def test_greedy_tokens_equal_llama_cpp_alone(executor, prompt_ids, reference):
    for i, ids in enumerate(prompt_ids):
        got = run_to_completion(make_engine(executor), [request(f"a{i}", ids)])[f"a{i}"]
        assert got == reference[i], PROMPTS[i]
    assert executor.sequences_in_use() == {}


@needs_llama_cpp
def test_greedy_tokens_equal_llama_cpp_batched_with_chunked_prefill(executor, prompt_ids,
                                                                   reference):
    rng = random.Random(3)
    others = [request(f"o{i}", [rng.randrange(20, 40000) for _ in range(rng.randrange(5, 90))],
                      rng.randrange(4, 40)) for i in range(3)]
    reqs = [request(f"b{i}", ids) for i, ids in enumerate(prompt_ids)]
    # A 48-token budget cuts the long prompts into chunks that share iterations with decodes.
    engine = make_engine(executor, max_num_batched_tokens=48)
    out = run_to_completion(engine, [*others[:2], *reqs, others[2]])
    assert [out[f"b{i}"] for i in range(len(PROMPTS))] == reference
    assert_no_leak(engine, executor)


@needs_llama_cpp
@pytest.mark.parametrize("preempt", [False, True])
def test_masked_or_preempted_request_resumes_exactly(executor, prompt_ids, reference, preempt):
    wrapped = []

    def wrap(inner):
        wrapped.append(Interfere(inner, "r1", {4, 5, 6, 9, 15}, 12 if preempt else None))
        return wrapped[0]

    engine = make_engine(executor, wrap=wrap)
    reqs = [request(f"r{i}", ids) for i, ids in enumerate(prompt_ids)]
    out = run_to_completion(engine, reqs)
    assert [out[f"r{i}"] for i in range(len(PROMPTS))] == reference
    assert wrapped[0].masked >= 3
    assert reqs[1].num_preemptions == (1 if preempt else 0)
    assert_no_leak(engine, executor)


@needs_llama_cpp
def test_streams_stay_dense_and_a_moved_stream_continues_exactly(executor, prompt_ids,
                                                               reference, monkeypatch):
    """Short requests take the low streams and end first: the long ones above are moved down
    into the gaps (llama.cpp runs one ubatch per run of consecutive stream ids), every batch
    is written in stream order, and the moved requests' greedy tokens are unchanged."""
    seen = {"dense": 0, "moves": executor.stream_moves}
    execute = executor.execute

    def checked(plan):
        result = execute(plan)
        held = sorted(executor.sequences_in_use())
        assert held == list(range(len(held))), held
        streams = executor._buffers.seq[:plan.num_tokens]
        assert (streams[1:] >= streams[:-1]).all(), list(streams)
        if len(set(streams.tolist())) == len(held):  # every held stream ran: one run
            assert executor.last_stream_runs == 1, list(streams)
        seen["dense"] += 1
        return result

    monkeypatch.setattr(executor, "execute", checked)
    rng = random.Random(5)
    shorts = [request(f"s{i}", [rng.randrange(20, 40000) for _ in range(rng.randrange(3, 12))],
                      2 + i) for i in range(3)]
    longs = [request(f"l{i}", ids) for i, ids in enumerate(prompt_ids)]
    engine = make_engine(executor, "vllm", {"max_batch_size": 8})
    out = run_to_completion(engine, [*shorts, *longs])
    assert [out[f"l{i}"] for i in range(len(PROMPTS))] == reference
    assert executor.stream_moves - seen["moves"] >= 2
    assert seen["dense"] >= NUM_TOKENS
    assert_no_leak(engine, executor)


# --- policies, leaks, reuse ---

@needs_llama_cpp
def test_every_policy_drives_llama_cpp_to_completion(executor, prompt_ids):
    slos = [SLO(ttft_ms=300, tpot_ms=80, utility=100, slo_class="rt"),
            SLO(ttft_ms=5000, tpot_ms=500, slo_class="be")]
    prompts = [ids * (1 + i % 3) for i, ids in enumerate(prompt_ids * 2)]
    for name in policy_names():
        engine = make_engine(executor, name)
        reqs = [request(f"{name}-{i}", p, 4 + 3 * (i % 4), slo=slos[i % 2])
                for i, p in enumerate(prompts)]
        run_to_completion(engine, reqs)
        done = [r for r in reqs if r.status is RequestStatus.COMPLETED]
        assert all(r.finish_reason == "length" and len(r.output_token_ids) == r.max_tokens
                   for r in done), name
        # Only a policy's own admission control (e.g. scorpio's TTFT guard) may refuse one.
        assert all(r.status is RequestStatus.REJECTED and r.finish_code
                   for r in reqs if r not in done), name
        assert len(done) >= len(reqs) // 2, name
        assert_no_leak(engine, executor)


class _Preempter(Policy):
    """Wraps a policy: every `every`-th iteration also preempts one running request (taken out
    of the batch if it was in it), so that preemption happens although one stream always
    holds a whole request."""

    name = "preempter"

    def __init__(self, inner: Policy, every: int, seed: int = 0):
        super().__init__(inner.options, inner.latency_model, inner.config)
        self.inner, self.every, self.rng, self.step = inner, every, random.Random(seed), 0

    def on_arrival(self, request, view):
        self.inner.on_arrival(request, view)

    def on_finish(self, request, view):
        self.inner.on_finish(request, view)

    def on_preempt(self, request, view):
        self.inner.on_preempt(request, view)

    def schedule(self, view) -> Decision:
        decision = self.inner.schedule(view)
        self.step += 1
        if self.step % self.every:
            return decision
        gone = {r.request_id for r in decision.preempt}
        candidates = [r for r in view.running if r.request_id not in gone]
        if not candidates:
            return decision
        victim = self.rng.choice(candidates)
        batch = [(r, n) for r, n in decision.batch if r.request_id != victim.request_id]
        return replace(decision, batch=batch, preempt=[*decision.preempt, victim])


@needs_llama_cpp
def test_no_kv_leak_after_1000_mixed_requests_and_reused_sequences_stay_exact(
        executor, prompt_ids, reference):
    """Completions, aborts, rejections and preemptions over 8 streams (each reused more than a
    hundred times): every block back in the pool, every llama.cpp sequence empty, and a
    greedy request on a reused stream still equals llama.cpp's own tokens."""
    engine = make_engine(executor, "vllm", {"max_batch_size": 8},
                         wrap=lambda inner: _Preempter(inner, every=5),
                         max_num_batched_tokens=64)
    scheduler = engine.scheduler
    rng = random.Random(0)
    reqs = []
    for i in range(1000):
        prompt = [rng.randrange(20, 40000) for _ in range(rng.randrange(1, 20))]
        r = request(f"m{i}", prompt, rng.randrange(1, 9),
                    temperature=rng.choice([0.0, 0.8]))
        if i % 97 == 0:  # longer than a stream: rejected
            r = request(f"m{i}", prompt * 20 + [7] * 600, 40)
        reqs.append(r)
        engine.add_request(r)
        if rng.random() < 0.5:
            engine.step()
        if i % 13 == 0 and scheduler.running:
            engine.abort(rng.choice(list(scheduler.running)).request_id)
    while engine.has_unfinished():
        engine.step()
    assert {r.status for r in reqs} == {RequestStatus.COMPLETED, RequestStatus.ABORTED,
                                        RequestStatus.REJECTED}
    assert sum(r.num_preemptions for r in reqs) > 20
    assert_no_leak(engine, executor)
    out = run_to_completion(engine, [request("after", prompt_ids[0])])
    assert out["after"] == reference[0]
    assert_no_leak(engine, executor)


@needs_llama_cpp
def test_a_plan_the_streams_cannot_hold_is_refused(executor, prompt_ids):
    from sliceserve.llamacpp.executor import LlamaCppError

    r = request("x", prompt_ids[0])
    with pytest.raises(LlamaCppError, match="exactly one block"):
        executor.execute(Plan(0.0, (ScheduledChunk(r, 3, 0, False, (0, 1)),)))
    with pytest.raises(LlamaCppError, match="its sequence holds 0"):
        executor.execute(Plan(0.0, (ScheduledChunk(r, 1, 4, True, (2,)),)))
    executor.reset()
    assert executor.sequences_in_use() == {}


# --- profiling, the offline API ---

@needs_llama_cpp
def test_profiler_fits_a_latency_model_on_llama_cpp(executor):
    from sliceserve.model import profiler

    profile = profiler.profile_runner(
        executor, batch_sizes=(1, 2, 4), context_lengths=(64, 200), prefill_tokens=(32, 96),
        prefill_chunks=((32, 64),), mixed=((2, 64, 32),), repeats=1, warmup=1,
        min_decode_steps=2)
    model = profiler.fit_latency_model(profile, "llama.cpp-test", "cpu", "smollm2")
    assert model.kv_capacity_tokens == executor.num_kv_blocks * executor.block_size
    assert all(p.ms > 0 for p in profile.points)
    assert profile.dtype.startswith("llamacpp-v") and profile.dtype.endswith("Q4_1-fa-auto")
    profiler.warm_up(executor)
    executor.reset()
    assert executor.sequences_in_use() == {}


@needs_llama_cpp
def test_llm_runs_the_gguf_on_llama_cpp(reference):
    from sliceserve import LLM

    llm = LLM(backend="llamacpp", latency_model="paper",
              llamacpp={"context_tokens": CONFIG.context_tokens,
                        "max_num_seqs": CONFIG.max_num_seqs, "num_threads": THREADS})
    assert llm.live.runner.kernel_path == "llama.cpp"
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=NUM_TOKENS, temperature=0,
                                                ignore_eos=True))
    assert [list(o.token_ids) for o in outs] == reference
    assert all(o.text for o in outs)
    assert llm.live.runner.sequences_in_use() == {}
