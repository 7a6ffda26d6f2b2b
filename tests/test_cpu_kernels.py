"""The compiled CPU kernels (sliceserve/model/kernels/) against the eager PyTorch code they
replace, in every build variant this CPU can run (`variants_here`: the AVX-512 path where the
CPU has it, the AVX2 path, ATen's portable vectors, the scalar path; each its own build,
cached): the fused element-wise ops op by op, in bfloat16, float16 and float32, at sizes that
exercise both the vector loops (16, 8 or 4 lanes) and their scalar tails; the decode-attention
kernel over strided query rows; and a whole forward pass of a tiny model with and without the
fused ops. What each build recorded (its vector path) is checked against its flags.

Exactness: the fused ops round where the eager code rounds, so the residual add, RoPE and the
KV store are bit for bit eager's in every dtype. RMSNorm (its float32 sum of squares
is ordered differently) and SiLU (the vector exp) may land one float32 ulp away from eager
before rounding to the storage dtype, which moves a tiny fraction of the rounded intermediate
(the normalized row, the SiLU) by one ulp; the multiply that follows (by the weight, by `up`)
can turn that into two ulps of the output.
"""

from __future__ import annotations

import functools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sliceserve.model import kernels as kernels_package
from sliceserve.model.cpu import detected_cpu
from sliceserve.model.kernels import cpu_kernels, kernel_info
from sliceserve.model.llama import _rms_norm
from sliceserve.model.rope import apply_rope


def variants_here() -> list[str]:
    """Every kernel build this CPU can run: native (AVX-512 here if the CPU has it, else AVX2,
    else portable), avx2 (built with AVX2 flags only) where native is not already that,
    portable (ATen's vectors) and scalar."""
    flags = set(detected_cpu().flags)
    variants = ["native"]
    if kernels_package.can_run("avx2") and {"avx512f", "avx512bw"} <= flags:
        variants.append("avx2")
    return variants + ["portable", "scalar"]


VARIANTS = variants_here()


@functools.cache
def built() -> dict[str, object]:
    """The variants' modules, built side by side (one compile each, cached across runs)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(VARIANTS, pool.map(cpu_kernels, VARIANTS)))


@pytest.fixture(scope="module", params=VARIANTS)
def kernels(request: pytest.FixtureRequest) -> object:
    module = built()[request.param]
    if module is None:
        pytest.skip(f"the {request.param} kernels do not build here (no C++ toolchain?): the "
                    "engine uses the PyTorch path")
    return module


DTYPES = (torch.bfloat16, torch.float16, torch.float32)
HALF_DTYPES = (torch.bfloat16, torch.float16)  # what the runner hands the fused ops
EPS = 1e-5


def ulps(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Distance in units in the last place, element by element (+0 and -0 are equal)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    int_dtype, magnitude = ((torch.int32, 0x7FFFFFFF) if got.dtype == torch.float32
                            else (torch.int16, 0x7FFF))

    def ordered(x: torch.Tensor) -> torch.Tensor:  # monotonic in the float's value
        bits = x.contiguous().view(int_dtype).long()
        return torch.where(bits < 0, -(bits & magnitude), bits)

    return (ordered(got) - ordered(expected)).abs()


def assert_nearly_eager(got: torch.Tensor, expected: torch.Tensor, max_ulps: int,
                        min_identical: float = 0.99) -> None:
    assert torch.isfinite(got).all() and torch.isfinite(expected).all()
    distance = ulps(got, expected)
    identical = (distance == 0).float().mean().item()
    assert distance.max().item() <= max_ulps, (
        f"{got.dtype}: {distance.max().item()} ulps off eager "
        f"({(distance > max_ulps).sum().item()} of {distance.numel()} elements beyond {max_ulps})")
    assert identical >= min_identical, f"{got.dtype}: only {identical:.4f} bit-identical"
    eps = torch.finfo(got.dtype).eps
    torch.testing.assert_close(got, expected, rtol=max_ulps * eps, atol=0.0)


# The criteria per dtype: (max ulps, min bit-identical fraction).
# - unit weight / unit `up`: the output is the rounded intermediate itself: <= 1 ulp.
# - random weight / `up`: the product can double that (see the module docstring).
# - float32: nothing rounds the float32 differences away (the sum of squares ordered
#   differently, the vector exp and reciprocal), so many elements differ by a few ulps;
#   16 ulps is still 2e-6 relative.
INTERMEDIATE = {torch.bfloat16: (1, 0.99), torch.float16: (1, 0.99), torch.float32: (16, 0.0)}
OUTPUT = {torch.bfloat16: (2, 0.99), torch.float16: (2, 0.99), torch.float32: (16, 0.0)}


def randn(*shape: int, gen: torch.Generator, dtype: torch.dtype, scale: float = 1.0
          ) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(dtype)


# --- RMSNorm and the residual add ---

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [8, 40, 576, 587, 2048])
def test_rms_norm_matches_eager(kernels: object, dtype: torch.dtype, hidden: int) -> None:
    """8 and 40, 587: scalar tails (8 and 40 = 2 x 16 + 8; 587 = 36 x 16 + 11); 576 (SmolLM2)
    and 2048: the vector loop alone."""
    gen = torch.Generator().manual_seed(hidden)
    x = randn(65, hidden, gen=gen, dtype=dtype, scale=3.0)
    for weight, criteria in ((torch.ones(hidden, dtype=dtype), INTERMEDIATE),
                             (randn(hidden, gen=gen, dtype=dtype), OUTPUT)):
        before = x.clone()
        got = kernels.rms_norm(x, weight, EPS)
        assert torch.equal(x, before)  # the input is left alone
        assert got.dtype == dtype and got.shape == x.shape
        assert_nearly_eager(got, _rms_norm(x, weight, EPS), *criteria[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [8, 40, 576, 587])
def test_add_rms_norm_adds_in_place_exactly_and_normalizes(kernels: object,
                                                           dtype: torch.dtype,
                                                           hidden: int) -> None:
    gen = torch.Generator().manual_seed(100 + hidden)
    hidden_states = randn(33, hidden, gen=gen, dtype=dtype, scale=3.0)
    residual = randn(33, hidden, gen=gen, dtype=dtype, scale=3.0)
    weight = randn(hidden, gen=gen, dtype=dtype)
    expected_sum = hidden_states + residual  # eager: one rounding of the float32 sum
    residual_before = residual.clone()
    got = kernels.add_rms_norm_(hidden_states, residual, weight, EPS)
    assert torch.equal(hidden_states, expected_sum)  # bit for bit, every dtype
    assert torch.equal(residual, residual_before)
    assert_nearly_eager(got, _rms_norm(expected_sum, weight, EPS), *OUTPUT[dtype])


# --- RoPE and the KV store ---

def rope_tables(dim: int, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, dim] as sliceserve.model.rope.cos_sin_table builds them (theta 10000)."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("dim", "heads", "kv_heads"), [
    (64, 9, 3),  # SmolLM2's shape: half = 32, the vector loop only
    (128, 4, 1),
    (80, 8, 8),  # half = 40: 2 x 16 + a tail of 8
    (48, 2, 2),  # half = 24: 16 + 8
    (6, 2, 1),  # half = 3: the scalar loop only
])
def test_rope_store_matches_eager_rope_and_index_copy(kernels: object, dtype: torch.dtype,
                                                     dim: int, heads: int,
                                                     kv_heads: int) -> None:
    gen = torch.Generator().manual_seed(dim * 10 + heads)
    tokens, cache_slots = 23, 300
    width = (heads + 2 * kv_heads) * dim
    qkv = randn(tokens, width, gen=gen, dtype=dtype, scale=2.0)
    positions = torch.randint(0, 8192, (tokens,), generator=gen)
    cos, sin = rope_tables(dim, positions, dtype)
    slots = torch.randperm(cache_slots, generator=gen)[:tokens]
    key_cache = randn(kv_heads, cache_slots, dim, gen=gen, dtype=dtype)
    value_cache = randn(kv_heads, cache_slots, dim, gen=gen, dtype=dtype)

    # Eager, as LlamaModel.forward and attention.paged_attention do it.
    q, k, v = qkv.split((heads * dim, kv_heads * dim, kv_heads * dim), dim=-1)
    eager_q = apply_rope(q.reshape(tokens, heads, dim), cos[:, None], sin[:, None])
    eager_k = apply_rope(k.reshape(tokens, kv_heads, dim), cos[:, None], sin[:, None])
    eager_v = v.reshape(tokens, kv_heads, dim).clone()
    eager_keys, eager_values = key_cache.clone(), value_cache.clone()
    eager_keys.index_copy_(1, slots, eager_k.transpose(0, 1))
    eager_values.index_copy_(1, slots, eager_v.transpose(0, 1))

    keys_before = key_cache.clone()
    got = qkv.clone()
    assert kernels.rope_store_(got, cos, sin, slots, key_cache, value_cache, heads) is None
    got_q, got_k, got_v = got.split((heads * dim, kv_heads * dim, kv_heads * dim), dim=-1)
    got_q = got_q.reshape(tokens, heads, dim)
    got_k = got_k.reshape(tokens, kv_heads, dim)
    # The store is a copy of what the kernel left in the row: k roped, v untouched; slots no
    # token maps to keep their old contents.
    assert torch.equal(key_cache, keys_before.index_copy(1, slots, got_k.transpose(0, 1)))
    assert torch.equal(value_cache, eager_values)
    assert torch.equal(got_v.reshape(tokens, kv_heads, dim), eager_v)
    # Both products rounded to the dtype, then the sum: eager's roundings, bit for bit, in
    # every dtype (float32 too: the build's -ffp-contract=off keeps the compiler from fusing
    # a product into the add, which would round once where eager rounds three times).
    assert torch.equal(got_q, eager_q)
    assert torch.equal(got_k, eager_k)
    assert torch.equal(key_cache, eager_keys)


# --- SiLU and multiply ---

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inter", [8, 40, 1536, 1544, 1547])
def test_silu_mul_matches_eager(kernels: object, dtype: torch.dtype, inter: int) -> None:
    """8: the scalar loop only; 40, 1544 = 96 x 16 + 8, 1547: with a tail; 1536 (SmolLM2)."""
    gen = torch.Generator().manual_seed(inter)
    gate = randn(65, inter, gen=gen, dtype=dtype, scale=4.0)
    for up, criteria in ((torch.ones_like(gate), INTERMEDIATE),
                         (randn(65, inter, gen=gen, dtype=dtype, scale=2.0), OUTPUT)):
        gate_up = torch.cat([gate, up], dim=-1)
        got = kernels.silu_mul(gate_up)
        assert got.shape == (65, inter) and got.dtype == dtype
        assert_nearly_eager(got, F.silu(gate) * up, *criteria[dtype])


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_silu_mul_at_large_magnitudes(kernels: object, dtype: torch.dtype) -> None:
    """Gate values where exp(-x) underflows or nears float32's largest value (|x| ~ 88)."""
    values = [-88.0, -87.5, -87.0, -60.0, -30.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 30.0, 88.0,
              100.0, 1000.0, 1e4]
    gate = torch.tensor(values * 3, dtype=dtype)[None]  # 45: two vector steps and a tail
    up = torch.ones_like(gate)
    got = kernels.silu_mul(torch.cat([gate, up], dim=-1))
    expected = F.silu(gate) * up
    # Below 1e-30 (x near -88: -88 / exp(88) is 5e-37) a build may give 0: under -ffast-math
    # the division can become a reciprocal, and 1 / exp(88) is subnormal in float32 (the
    # portable loop, built without AVX-512, flushed it).
    tiny = expected.abs() < 1e-30
    assert (got[tiny].abs() < 1e-30).all()
    assert_nearly_eager(got[~tiny], expected[~tiny], 1, min_identical=0.9)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_silu_mul_of_very_negative_gates_is_zero_not_nan(kernels: object,
                                                          dtype: torch.dtype) -> None:
    gate = torch.tensor([-89.0, -100.0, -1000.0, -1e4] * 8, dtype=dtype)[None]  # 32: vectors
    got = kernels.silu_mul(torch.cat([gate, torch.ones_like(gate)], dim=-1))
    assert not torch.isnan(got).any(), got
    assert torch.equal(got, F.silu(gate))  # -0 (-x / (1 + exp(-x)) underflows)


# --- errors ---

def test_fused_ops_refuse_bad_shapes_and_dtypes(kernels: object) -> None:
    x = torch.randn(4, 40, dtype=torch.bfloat16)
    w = torch.ones(40, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.rms_norm(torch.randn(40, 4, dtype=torch.bfloat16).t(), w, EPS)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.rms_norm(x[0], w, EPS)  # 1-D
    with pytest.raises(RuntimeError, match="weight"):
        kernels.rms_norm(x, torch.ones(39, dtype=torch.bfloat16), EPS)
    with pytest.raises(RuntimeError, match="weight"):
        kernels.rms_norm(x, torch.ones(40, dtype=torch.float16), EPS)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        kernels.rms_norm(x.double(), w.double(), EPS)
    with pytest.raises(RuntimeError, match="residual"):
        kernels.add_rms_norm_(x, torch.randn(3, 40, dtype=torch.bfloat16), w, EPS)
    with pytest.raises(RuntimeError, match="residual"):
        kernels.add_rms_norm_(x, torch.randn(4, 40, dtype=torch.float16), w, EPS)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.add_rms_norm_(x, torch.randn(4, 80, dtype=torch.bfloat16)[:, ::2], w, EPS)
    with pytest.raises(RuntimeError, match="even"):
        kernels.silu_mul(torch.randn(4, 41, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.silu_mul(torch.randn(8, 4, dtype=torch.bfloat16).t())
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        kernels.silu_mul(torch.randn(4, 8).to(torch.float64))

    heads, kv_heads, dim, tokens = 4, 2, 64, 3
    dtype = torch.bfloat16

    def call(**change: object) -> None:
        args = dict(qkv=torch.randn(tokens, (heads + 2 * kv_heads) * dim, dtype=dtype),
                    cos=torch.randn(tokens, dim, dtype=dtype),
                    sin=torch.randn(tokens, dim, dtype=dtype),
                    slots=torch.arange(tokens),
                    key_cache=torch.zeros(kv_heads, 16, dim, dtype=dtype),
                    value_cache=torch.zeros(kv_heads, 16, dim, dtype=dtype), heads=heads)
        args.update(change)
        kernels.rope_store_(*args.values())

    call()  # the valid call
    with pytest.raises(RuntimeError, match="int64 slots"):
        call(slots=torch.arange(tokens, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="contiguous"):
        call(key_cache=torch.zeros(kv_heads, dim, 16, dtype=dtype).transpose(1, 2))
    with pytest.raises(RuntimeError, match="shapes"):
        call(heads=heads + 1)  # qkv's width no longer matches
    with pytest.raises(RuntimeError, match="shapes"):
        call(cos=torch.randn(tokens, dim // 2, dtype=dtype))
    with pytest.raises(RuntimeError, match="shapes"):
        call(slots=torch.arange(tokens + 1))
    with pytest.raises(RuntimeError, match="share a dtype"):
        call(sin=torch.randn(tokens, dim, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="share a dtype"):
        call(value_cache=torch.zeros(kv_heads, 16, dim, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="contiguous"):
        call(qkv=torch.randn((heads + 2 * kv_heads) * dim, tokens, dtype=dtype).t())


# --- decode attention ---

def eager_decode(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 tables: torch.Tensor, lengths: torch.Tensor, block_size: int) -> torch.Tensor:
    """The gather + matmul path the kernel replaces (attention.paged_attention's rows)."""
    from sliceserve.model.attention import _decode_attention, _gather

    rows, heads, dim = q.shape
    kv_heads = key_cache.shape[0]
    span = torch.arange(tables.shape[1] * block_size)
    mask = torch.zeros(rows, span.numel()).masked_fill_(span[None] >= lengths[:, None],
                                                        float("-inf"))[None, :, None, :]
    queries = q.reshape(rows, kv_heads, heads // kv_heads, dim).transpose(0, 1) * dim**-0.5
    att = _decode_attention(queries, _gather(key_cache, tables, block_size),
                            _gather(value_cache, tables, block_size), mask)
    return att.transpose(0, 1).reshape(rows, heads, dim)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("group", [1, 3, 8])
def test_decode_attention_reads_strided_query_rows(kernels: object, dtype: torch.dtype,
                                                   block_size: int, dim: int,
                                                   group: int) -> None:
    """q as the fused forward passes it: a view of the qkv rows (row stride (H + 2 Hkv) D)."""
    kernel = kernels.paged_decode_attention
    gen = torch.Generator().manual_seed(group * 1000 + dim + block_size)
    kv_heads = 2
    heads = group * kv_heads
    # Every tile boundary: within a block, at one, across one; 1 token; 16 = one tile.
    lengths = torch.tensor([1, 15, 16, 17, 31, 32, 33, 64, 100, 129])
    rows = lengths.numel()
    max_blocks = -(-int(lengths.max()) // block_size)
    num_blocks = rows * max_blocks + 3
    key_cache = randn(kv_heads, num_blocks * block_size, dim, gen=gen, dtype=dtype)
    value_cache = randn(kv_heads, num_blocks * block_size, dim, gen=gen, dtype=dtype)
    tables = torch.randperm(num_blocks, generator=gen)[:rows * max_blocks].view(rows, -1)
    tokens = rows + 5  # as in a mixed batch: the decode rows come first
    qkv = randn(tokens, (heads + 2 * kv_heads) * dim, gen=gen, dtype=dtype)
    q = qkv[:, :heads * dim].view(tokens, heads, dim)[:rows]
    assert not q.is_contiguous() and q.stride(0) == (heads + 2 * kv_heads) * dim
    scale = dim**-0.5

    strided = kernel(q, key_cache, value_cache, tables, lengths, block_size, scale)
    packed = kernel(q.contiguous(), key_cache, value_cache, tables, lengths, block_size, scale)
    assert strided.shape == (rows, heads, dim) and strided.is_contiguous()
    assert torch.equal(strided, packed)  # the same arithmetic, only the addressing differs
    expected = eager_decode(q, key_cache, value_cache, tables, lengths, block_size)
    # The kernel keeps float32 throughout; eager rounds q * scale and the probabilities to
    # the dtype first.
    tol = {torch.float16: 4e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(strided.float(), expected.float(), atol=tol, rtol=tol)
    # A one-token row attends to its own key alone: the output is its value, exactly.
    first = tables[0, 0] * block_size
    assert torch.equal(strided[0], value_cache[:, first].repeat_interleave(group, 0))


def test_decode_attention_refuses_what_it_cannot_run(kernels: object) -> None:
    kernel = kernels.paged_decode_attention
    dtype = torch.float16
    cache = torch.zeros(2, 64, 64, dtype=dtype)
    tables = torch.zeros(3, 4, dtype=torch.long)
    lengths = torch.ones(3, dtype=torch.long)
    q = torch.randn(3, 4, 64, dtype=dtype)
    kernel(q, cache, cache, tables, lengths, 16, 0.125)  # valid
    with pytest.raises(RuntimeError, match="rows of q"):
        kernel(torch.randn(3, 64, 4, dtype=dtype).transpose(1, 2), cache, cache, tables,
               lengths, 16, 0.125)
    with pytest.raises(RuntimeError, match="int64"):
        kernel(q, cache, cache, tables.int(), lengths, 16, 0.125)
    with pytest.raises(RuntimeError, match="share a dtype"):
        kernel(q.bfloat16(), cache, cache, tables, lengths, 16, 0.125)
    with pytest.raises(RuntimeError, match="1 to 8"):
        kernel(torch.randn(3, 18, 64, dtype=dtype), cache, cache, tables, lengths, 16, 0.125)
    with pytest.raises(RuntimeError, match="head_dim"):
        kernel(torch.randn(3, 4, 80, dtype=dtype), torch.zeros(2, 64, 80, dtype=dtype),
               torch.zeros(2, 64, 80, dtype=dtype), tables, lengths, 16, 0.125)


# --- a whole forward pass ---

class _Recording:
    """The kernel module, counting the calls of each op (the fused path did run)."""

    def __init__(self, module: object) -> None:
        self._module = module
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> object:
        fn = getattr(self._module, name)

        def call(*args: object) -> object:
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args)

        return call


def _plans(block_size: int) -> list[tuple]:
    """Two iterations over four requests, every attention case: fresh prompts attended
    together, decode rows (one of them a whole one-token prompt), a later prefill chunk over
    its cached history. Blocks scattered. Returns [(chunks, ...)] per iteration."""
    import random

    from sliceserve.core.plan import ScheduledChunk
    from sliceserve.request import SLO, Request, SamplingParams

    rng = random.Random(5)
    lengths = {"a": 38, "b": 61, "c": 51, "d": 1}
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    blocks = list(range(64))
    rng.shuffle(blocks)
    requests, tables = {}, {}
    for rid, n in lengths.items():
        requests[rid] = Request(rid, 0.0, n, params, SLO(ttft_ms=1e6, tpot_ms=1e6),
                                prompt_token_ids=[rng.randrange(3, 512) for _ in range(n)])
        need = -(-n // block_size)
        tables[rid], blocks = tuple(blocks[:need]), blocks[need:]

    def chunk(rid: str, new: int, done: int) -> ScheduledChunk:
        # Every chunk samples (as the profiler's plans do): more rows of hidden states to compare.
        return ScheduledChunk(requests[rid], new, done, True, tables[rid])

    first = (chunk("a", 37, 0), chunk("b", 20, 0), chunk("c", 50, 0))
    second = (chunk("a", 1, 37), chunk("b", 41, 20), chunk("c", 1, 50), chunk("d", 1, 0))
    return [first, second]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("shape", ["head_dim 16", "head_dim 64"])
def test_fused_forward_matches_the_eager_forward(kernels: object, tmp_path: Path, dtype: str,
                                                 shape: str) -> None:
    """The same plans through the same model, fused ops (this variant's) on and off: the
    final hidden states, the logits and the KV cache agree to the dtype's rounding.
    "head_dim 16" (the default tiny model) runs RoPE's scalar loop and the gather path for
    decode rows; "head_dim 64" runs the vector loops, a tail in SiLU (intermediate 200) and
    the decode kernel."""
    from sliceserve.model.attention import build_layout
    from sliceserve.model.runner import ModelRunner, RunnerConfig
    from tests.engine_helpers import TEST_DEVICE
    from tests.tiny_models import make_tiny_model

    if TEST_DEVICE != "cpu":
        pytest.skip("the fused ops are CPU kernels")
    if shape == "head_dim 16" and kernel_info(kernels)["variant"] != "native":
        pytest.skip("the scalar RoPE loop and the gather path: the same in every variant")
    sizes = ({} if shape == "head_dim 16" else
             dict(hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=200))
    folder = make_tiny_model(tmp_path / "tiny", "llama", seed=3, **sizes)
    runner = ModelRunner(folder, RunnerConfig(dtype=dtype, num_kv_blocks=64, block_size=16))
    model, cache = runner.model, runner.cache
    assert model.fused_ops is cpu_kernels()  # the runner's choice on CPU, every dtype
    assert (model.decode_kernel is not None) == (shape == "head_dim 64")
    kernel = None if model.decode_kernel is None else kernels.paged_decode_attention
    recording = _Recording(kernels)

    def run(fused_ops: object) -> list[torch.Tensor]:
        model.fused_ops = fused_ops
        model.decode_kernel = kernel if fused_ops is not None else None
        cache.keys.zero_()
        cache.values.zero_()
        outputs = []
        with torch.inference_mode():
            for chunks in _plans(runner.block_size):
                layout = build_layout(chunks, runner.block_size, runner.dtype, runner.device)
                hidden = model.forward(layout, cache)
                outputs += [hidden, model.logits(hidden)]
        return outputs + [cache.keys.clone(), cache.values.clone()]

    eager = run(None)
    fused = run(recording)
    assert {"rope_store_", "add_rms_norm_", "silu_mul"} <= set(recording.calls)
    # Measured here: bfloat16 bit for bit, float16 within 1e-3 of each tensor's largest
    # element (its RMSNorm ulps); a sign error in RoPE's sin moves hidden states and logits by
    # 5e-3 to 5e-2 of that, and the keys by more than the largest element.
    tol = {"bfloat16": 1e-2, "float16": 3e-3, "float32": 1e-5}[dtype]
    names = ["hidden 1", "logits 1", "hidden 2", "logits 2", "keys", "values"]
    for name, got, expected in zip(names, fused, eager):
        assert torch.isfinite(got).all(), name
        scale = expected.float().abs().max().item()
        torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")
    for name, got, expected in zip(names[4:], fused[4:], eager[4:]):
        same = (got == expected).float().mean().item()
        assert same > 0.9, f"{name}: only {same:.3f} of the cache bit-identical"


# --- the builds ---

def test_each_build_records_the_vector_path_its_flags_give(kernels: object) -> None:
    """native: AVX-512 where the CPU has F and BW, else AVX2 (+FMA, F16C), else portable;
    avx2: AVX2 whatever the host; portable: ATen's vectors (16 lanes with AVX-512, 8 with
    AVX2, 4 with NEON); scalar: one lane. The build folder's build.json says the same, and
    every variant is a build of its own."""
    info = kernel_info(kernels)
    variant = info["variant"]
    flags = set(detected_cpu().flags)
    if variant == "native":
        expected = ("avx512" if {"avx512f", "avx512bw"} <= flags else
                    "avx2" if {"avx2", "fma", "f16c"} <= flags else "portable")
    else:
        expected = variant
    assert info["path"] == expected
    lanes = {"avx512": 16, "avx2": 8, "scalar": 1}.get(expected)
    if lanes is not None:
        assert info["lanes"] == lanes
    else:
        assert info["lanes"] in (4, 8, 16)
    folder = Path(kernels.__file__).parent
    record = json.loads((folder / "build.json").read_text())
    assert record["variant"] == variant and record["path"] == kernels.kernel_path()
    folders = {Path(m.__file__).parent for m in built().values() if m is not None}
    assert len(folders) == len([m for m in built().values() if m is not None])


def test_the_engine_variant_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("1", "native"), ("", "native"), ("0", None), ("off", None),
                            ("scalar", "scalar"), ("AVX2", "avx2")):
        monkeypatch.setenv("SLICESERVE_KERNELS", value)
        assert kernels_package.engine_variant() == expected
    monkeypatch.setenv("SLICESERVE_KERNELS", "avx1024")
    with pytest.raises(ValueError, match="native, avx2, portable, scalar"):
        kernels_package.engine_variant()
    with pytest.raises(ValueError, match="kernel variant"):
        cpu_kernels("sse")
