"""The model runner against transformers on tiny random models (exact greedy tokens), and the
KV-cache properties: batch invariance, masking, chunked prefill, recompute preemption."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from sliceserve.request import RequestStatus
from tests.engine_helpers import (
    TEST_DEVICE,
    Interfere,
    make_engine,
    request,
    run_to_completion,
)
from tests.tiny_models import make_tiny_model

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
VARIANTS = {
    "llama": dict(arch="llama"),
    "llama-tied": dict(arch="llama", tie_word_embeddings=True),
    "llama3-rope": dict(arch="llama", rope_scaling=LLAMA3_SCALING),
    "qwen2": dict(arch="qwen2"),
    "mistral": dict(arch="mistral"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("tiny")
    return {name: make_tiny_model(base / name, **kw) for name, kw in VARIANTS.items()}


def prompts(n: int, seed: int = 0, vocab: int = 512) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randrange(1, 40))] for _ in range(n)]


def reference(folder, prompt: list[int], max_new: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.generation_config.eos_token_id = None
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_tokens_equal_transformers(folders, variant):
    folder = folders[variant]
    batch = prompts(6, seed=len(variant))
    expected = {f"r{i}": reference(folder, p, 12) for i, p in enumerate(batch)}
    engine = make_engine(folder)
    got = run_to_completion(engine, [request(f"r{i}", p, 12) for i, p in enumerate(batch)])
    assert got == expected


def test_batch_gives_the_same_tokens_as_each_alone(folders):
    folder = folders["qwen2"]
    batch = prompts(8, seed=7)
    engine = make_engine(folder)
    alone = {}
    for i, p in enumerate(batch):
        alone.update(run_to_completion(engine, [request(f"a{i}", p, 10)]))
    together = run_to_completion(engine, [request(f"b{i}", p, 10) for i, p in enumerate(batch)])
    assert [together[f"b{i}"] for i in range(8)] == [alone[f"a{i}"] for i in range(8)]


def test_chunked_prefill_mixed_with_decode(folders):
    folder = folders["llama"]
    batch = prompts(6, seed=3)
    whole = run_to_completion(make_engine(folder), [request(f"r{i}", p, 10)
                                                    for i, p in enumerate(batch)])
    # A 7-token budget cuts prompts into chunks and mixes them with other rows' decodes.
    engine = make_engine(folder, max_num_batched_tokens=7)
    chunked = run_to_completion(engine, [request(f"r{i}", p, 10) for i, p in enumerate(batch)])
    assert chunked == whole


@pytest.mark.parametrize("preempt", [False, True])
def test_masked_or_preempted_request_resumes_exactly(folders, preempt):
    folder = folders["llama"]
    batch = prompts(4, seed=11)
    plain = run_to_completion(make_engine(folder), [request(f"r{i}", p, 16)
                                                    for i, p in enumerate(batch)])
    policies = []

    def wrap(inner):
        policies.append(Interfere(inner, "r1", {4, 5, 6, 9}, 7 if preempt else None))
        return policies[0]

    engine = make_engine(folder, wrap=wrap)
    reqs = [request(f"r{i}", p, 16) for i, p in enumerate(batch)]
    assert run_to_completion(engine, reqs) == plain
    assert policies[0].masked >= 3
    assert reqs[1].num_preemptions == (1 if preempt else 0)


def test_seeded_sampling_is_reproducible_whatever_the_batch(folders):
    folder = folders["llama"]
    batch = prompts(5, seed=5)
    engine = make_engine(folder)

    def sampled(rid, p):
        return request(rid, p, 12, temperature=1.0, top_p=0.9, top_k=50, seed=1234)

    alone = run_to_completion(engine, [sampled("alone", batch[0])])["alone"]
    together = run_to_completion(engine, [sampled(f"t{i}", p) for i, p in enumerate(batch)])
    assert together["t0"] == alone
    # Unseeded rows draw from the runner's generator: they differ from run to run.
    draws = {tuple(run_to_completion(engine, [request(f"u{k}", batch[0], 12,
                                                      temperature=1.0)])[f"u{k}"])
             for k in range(4)}
    assert len(draws) > 1


def test_kv_blocks_return_to_the_pool_after_1000_mixed_requests(folders):
    """Completions, aborts, rejections and preemptions (a small cache) leak no block."""
    folder = folders["qwen2"]
    engine = make_engine(folder, "vllm", {"max_batch_size": 32}, num_kv_blocks=24,
                         block_size=4, max_num_batched_tokens=64)
    rng = random.Random(0)
    scheduler = engine.scheduler
    reqs = []
    for i in range(1000):
        prompt = [rng.randrange(3, 512) for _ in range(rng.randrange(1, 30))]
        r = request(f"m{i}", prompt, rng.randrange(1, 12), temperature=rng.choice([0.0, 0.8]))
        if i % 97 == 0:
            r = request(f"m{i}", prompt * 10, 40)  # longer than the whole cache: rejected
        reqs.append(r)
        engine.add_request(r)
        if rng.random() < 0.5:
            engine.step()
        if i % 13 == 0 and scheduler.running:
            engine.abort(rng.choice(list(scheduler.running)).request_id)
    while engine.has_unfinished():
        engine.step()
    statuses = {r.status for r in reqs}
    assert statuses == {RequestStatus.COMPLETED, RequestStatus.ABORTED, RequestStatus.REJECTED}
    assert sum(r.num_preemptions for r in reqs) > 0
    assert scheduler.blocks.num_free_blocks == scheduler.config.num_kv_blocks
    scheduler.blocks.check_conserved()


@pytest.mark.parametrize("block_size", [4, 16])
def test_padded_static_decode_path_gives_the_same_tokens(folders, block_size):
    """The CUDA-graph path (rows padded to a bucket, tables to a power of two, a scratch slot
    for padding rows) run eagerly: the same tokens as the plain path."""
    from sliceserve.model.cuda_graphs import DecodeGraphs

    folder = folders["llama"]
    batch = prompts(5, seed=13)

    def reqs():
        return [request(f"r{i}", p, 12) for i, p in enumerate(batch)]

    plain = run_to_completion(make_engine(folder, block_size=block_size), reqs())
    engine = make_engine(folder, block_size=block_size)
    runner = engine.executor
    runner.graphs = DecodeGraphs(runner.model, runner.cache, runner.max_model_len,
                                 runner.scratch_slot, capture=False)
    assert run_to_completion(engine, reqs()) == plain
    assert runner.graphs._graphs  # the static path did run


def test_cpu_decode_kernel_matches_the_pytorch_path():
    """The compiled decode-attention kernel against the gather + matmul path it replaces."""
    from sliceserve.model.attention import _decode_attention, _gather
    from sliceserve.model.kernels import paged_decode_attention

    kernel = paged_decode_attention()
    if kernel is None:
        pytest.skip("no C++ toolchain here: the engine uses the PyTorch path")
    gen = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, dim, bs, blocks = 7, 9, 3, 64, 16, 64
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        kc = torch.randn(kv_heads, blocks * bs, dim, generator=gen).to(dtype)
        vc = torch.randn(kv_heads, blocks * bs, dim, generator=gen).to(dtype)
        lengths = torch.tensor([1, 5, 16, 17, 40, 63, 100])
        tables = torch.randperm(blocks, generator=gen)[:rows * 7].view(rows, 7)
        q = torch.randn(rows, heads, dim, generator=gen).to(dtype)
        span = torch.arange(7 * bs)
        mask = torch.zeros(rows, 7 * bs).masked_fill_(span[None] >= lengths[:, None],
                                                        float("-inf"))[None, :, None, :]
        queries = q.view(rows, kv_heads, 3, dim).transpose(0, 1) * dim**-0.5
        expected = _decode_attention(queries, _gather(kc, tables, bs), _gather(vc, tables, bs),
                                     mask).transpose(0, 1).reshape(rows, heads, dim)
        got = kernel(q, kc, vc, tables, lengths, bs, dim**-0.5)
        torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize(("max_row_chunk", "budget"), [(None, 2048), (1, 16), (6, 16)])
def test_greedy_tokens_equal_transformers_with_the_cpu_kernel(tmp_path, max_row_chunk, budget):
    """head_dim 64 (the kernel's shape) on a tiny Qwen2: the same tokens as transformers.
    The kernel attends chunks of up to `max_row_chunk` tokens as rows (None: the runner's
    default, every prompt here); with a 16-token budget prompts are cut into chunks, so rows,
    fresh prompts and later chunks over their history meet in one iteration."""
    folder = make_tiny_model(tmp_path / "hd64", "qwen2", hidden_size=256, num_heads=4,
                             num_kv_heads=2, intermediate_size=256)
    batch = prompts(5, seed=21)
    expected = {f"r{i}": reference(folder, p, 10) for i, p in enumerate(batch)}
    engine = make_engine(folder, max_num_batched_tokens=budget)
    if max_row_chunk is not None:
        engine.executor.max_row_chunk = max_row_chunk
    got = run_to_completion(engine, [request(f"r{i}", p, 10) for i, p in enumerate(batch)])
    assert got == expected
    from sliceserve.model.kernels import paged_decode_attention

    if TEST_DEVICE == "cpu" and paged_decode_attention() is not None:
        assert engine.executor.model.decode_kernel is not None  # the kernel did the decodes


def test_slots_no_request_wrote_do_not_leak_into_attention(folders):
    """Padded block tables read slots of other (or no) requests: whatever finite values they
    hold must not change any token. A fresh cache is zeroed: never NaN."""
    folder = folders["llama"]
    batch = prompts(6, seed=17)
    clean = run_to_completion(make_engine(folder), [request(f"r{i}", p, 10)
                                                    for i, p in enumerate(batch)])
    engine = make_engine(folder)
    cache = engine.executor.cache
    assert torch.isfinite(cache.keys).all() and torch.isfinite(cache.values).all()
    cache.keys.fill_(1e4)
    cache.values.fill_(-1e4)
    dirty = run_to_completion(engine, [request(f"r{i}", p, 10) for i, p in enumerate(batch)])
    assert dirty == clean


def test_an_empty_plan_computes_nothing(tmp_path):
    """No chunks (every request waiting or masked out): no tokens, no error, on the kernel
    path (head_dim 64) as on the PyTorch one."""
    from sliceserve.core.plan import Plan
    from sliceserve.model.runner import ModelRunner, RunnerConfig

    folder = make_tiny_model(tmp_path / "hd64", "qwen2", hidden_size=256, num_heads=4,
                             num_kv_heads=2, intermediate_size=256)
    for dtype in ("float32", "bfloat16"):
        runner = ModelRunner(folder, RunnerConfig(dtype=dtype, num_kv_blocks=8,
                                                  device=TEST_DEVICE))
        assert runner.execute(Plan(0.0, ())).token_ids == []
