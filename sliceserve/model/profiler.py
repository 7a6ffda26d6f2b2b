"""Measure a model runner on this device and fit the latency model of the core to it.

    profile = profile_runner(runner)                      # decode x context, prefill, mixed
    model = fit_latency_model(profile, "smollm2@cpu")     # sliceserve.latency_model.LatencyModel
    model = latency_model_for(runner, "smollm2-135m")     # cached per model/device/dtype/
                                                          # threads/engine code (ProfileKey)

Timings come from synthetic plans handed straight to `runner.execute` (no scheduler): random
prompt ids, KV block ids assigned here from the runner's pool. The KV content is garbage, which
does not change the work done. Shapes run round-robin, `repeats` times each, and the median
is kept, so a burst of noise from another process hits one sample of many points rather than
every sample of one point.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from sliceserve.config import blocks_for_tokens
from sliceserve.core.plan import ExecuteResult, Plan, ScheduledChunk
from sliceserve.latency_model import LatencyModel
from sliceserve.model.profile_fit import (
    FitError,
    Profile,
    ProfileError,
    ProfilePoint,
    fit_errors,
    fit_latency_model,
)
from sliceserve.request import SLO, Request, SamplingParams

__all__ = ["DEFAULT_BATCH_SIZES", "DEFAULT_CONTEXT_LENGTHS", "DEFAULT_MIXED",
           "DEFAULT_PREFILL_CHUNKS",
           "DEFAULT_PREFILL_TOKENS", "QUICK", "FitError", "Profile", "ProfileError",
           "ProfileKey", "ProfilePoint", "Shape", "cached_profile_path", "engine_fingerprint",
           "engine_id", "fit_errors", "fit_latency_model", "latency_model_for",
           "load_cached_profile", "measured_on_busy_machine", "prefault_kv_cache",
           "profile_key", "profile_runner", "store_profile", "warm_up"]

log = logging.getLogger(__name__)

# Dense where the edge workloads live (1-6 rows): the fitted table interpolates between
# these, and one noisy point bends it for its neighbours.
DEFAULT_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# A decode shape is timed over at least this many steps (cheap: tens of ms each for a small
# model), a prompt shape `repeats` times.
MIN_DECODE_STEPS = 7
DEFAULT_CONTEXT_LENGTHS = (256, 1024)
# Up to 1024: the longest prompts of the `edge` workload. Not only powers of two: the cost per
# token is bumpy in between (docs/BENCHMARKS.md, "Figures behind the code").
DEFAULT_PREFILL_TOKENS = (32, 64, 128, 192, 256, 384, 512, 768, 1024)
# (decode rows, their context, prefill tokens): iterations that mix both, fit-checked only.
DEFAULT_MIXED: tuple[tuple[int, int, int], ...] = ((4, 256, 128), (16, 256, 256))
# No profiled iteration is larger than the engine's default token budget
# (EngineConfig.max_num_batched_tokens).
MAX_ITERATION_TOKENS = 2048
# (new tokens, tokens already cached): later chunks of long prompts, as chunked prefill runs
# them (SLICE cuts prompts into chunks of 512).
DEFAULT_PREFILL_CHUNKS: tuple[tuple[int, int], ...] = ((256, 512), (512, 512))
# The start-up calibration: every term measured once, in seconds for a small model
# (docs/BENCHMARKS.md, "Profile").
QUICK: dict[str, Any] = {"batch_sizes": (1, 2, 4, 8, 16, 32), "context_lengths": (256, 1024),
                         "prefill_tokens": (32, 256, 1024),
                         "prefill_chunks": ((512, 512),), "mixed": (), "repeats": 1,
                         "min_decode_steps": 3, "warmup": 0}
CACHE_SCHEMA = "sliceserve.profile-cache/v1"
_PROFILE_SLO = SLO(ttft_ms=1e6, tpot_ms=1e6)
# Greedy, like the live runs: sampling cost is part of every measured iteration.
_PROFILE_SAMPLING = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)


class Runner(Protocol):
    """What the profiler needs of sliceserve.model.runner.ModelRunner."""

    num_kv_blocks: int
    block_size: int
    max_model_len: int

    def execute(self, plan: Plan) -> ExecuteResult: ...


Progress = Callable[[int, int, str], None]  # (done, total, what)


# --- measuring ---

class Shape(NamedTuple):
    """One iteration to time: `rows` decode rows over `context` tokens each, plus a prefill
    chunk of `prefill` tokens after `prefill_context` of its prompt already cached."""

    rows: int
    context: int
    prefill: int
    prefill_context: int = 0

    def label(self) -> str:
        return self.point(1.0).label()

    def point(self, ms: float, samples_ms: tuple[float, ...] = ()) -> ProfilePoint:
        kind = "mixed" if self.rows and self.prefill else ("decode" if self.rows else "prefill")
        return ProfilePoint(kind, self.rows, self.context if self.rows else 0,  # type: ignore
                            self.prefill, ms, samples_ms, self.prefill_context)


def profile_runner(runner: Runner, *, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                   context_lengths: Sequence[int] = DEFAULT_CONTEXT_LENGTHS,
                   prefill_tokens: Sequence[int] = DEFAULT_PREFILL_TOKENS,
                   prefill_chunks: Sequence[tuple[int, int]] = DEFAULT_PREFILL_CHUNKS,
                   mixed: Sequence[tuple[int, int, int]] = DEFAULT_MIXED, repeats: int = 3,
                   warmup: int = 1, model: str = "", seed: int = 0,
                   min_decode_steps: int = MIN_DECODE_STEPS,
                   progress: Progress | None = None) -> Profile:
    """Median latency of `runner.execute` for every shape that fits the KV cache.

    `prefill_chunks` are (new tokens, tokens already cached) of later prompt chunks. Shapes are
    measured in `repeats` rounds over all of them. Per round, a decode shape runs its rows for
    some steps in a row, as a live batch does (at least `min_decode_steps` timed in all); a
    shape with a prompt chunk gets a fresh one (new token ids, new blocks), as live prefills
    are new (re-running one plan finds its data in cache and runs faster: measured in
    docs/BENCHMARKS.md, "Figures behind the code")."""
    if repeats < 1 or warmup < 0:
        raise ProfileError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    shapes = ([Shape(b, c, 0) for c in context_lengths for b in batch_sizes]
              + [Shape(0, 0, n) for n in prefill_tokens]
              + [Shape(0, 0, n, c) for n, c in prefill_chunks]
              + [Shape(*m) for m in mixed])
    if any(min(s) < 0 or s.rows + s.prefill < 1 for s in shapes):
        raise ProfileError(f"profile shapes need positive sizes, got {shapes}")
    rng = np.random.default_rng(seed)
    fits = [_fits(runner, shape) for shape in shapes]
    timed = [shape for shape, ok in zip(shapes, fits) if ok]
    if not timed:
        raise ProfileError(f"no profile shape fits this runner's KV cache "
                           f"({runner.num_kv_blocks} blocks of {runner.block_size})")
    started = time.perf_counter()
    prefault_kv_cache(runner)
    runner.execute(_plan(runner, timed[0], rng, "setup"))  # one-time set-up: never timed
    samples: list[list[float]] = [[] for _ in timed]
    # `repeats` rounds over all shapes rather than all of a shape's runs at once: a shared
    # machine's speed drifts over tens of seconds (other tenants' memory traffic; a decode at
    # batch 1 streams all the weights; docs/BENCHMARKS.md), and every shape should see the mix
    # of fast and slow moments. A decode shape takes `warmup` untimed steps and its share of
    # at least `min_decode_steps` timed ones per round; a prompt shape one fresh chunk.
    decode_per_round = -(-max(repeats, min_decode_steps) // repeats)
    plans = [_plan(runner, shape, rng, f"s{i}") if not shape.prefill else None
             for i, shape in enumerate(timed)]
    runs_of = [warmup + (decode_per_round if plan is not None else 1) for plan in plans]
    total = sum(repeats * runs if plan is not None else warmup + repeats
                for plan, runs in zip(plans, runs_of))
    done = 0
    for round_ in range(repeats):
        for i, shape in enumerate(timed):
            first = 0 if plans[i] is not None or round_ == 0 else warmup
            for rep in range(first, runs_of[i]):
                # Decode rows continue step after step (their KV was just read: on a CPU,
                # small batches find it in cache); a prompt chunk is new every time.
                plan = plans[i] or _plan(runner, shape, rng, f"s{i}r{round_}.{rep}")
                t0 = time.perf_counter()
                runner.execute(plan)
                ms = (time.perf_counter() - t0) * 1000.0
                if rep >= warmup:
                    samples[i].append(ms)
                done += 1
                if progress is not None:
                    progress(done, total, shape.label())
    facts = runner_facts(runner)
    return Profile(model=model, device=facts["device"], dtype=facts["dtype"],
                   num_threads=facts["num_threads"], machine=facts["machine"],
                   kv_capacity_tokens=runner.num_kv_blocks * runner.block_size,
                   points=tuple(s.point(statistics.median(t), tuple(t))
                                for s, t in zip(timed, samples)),
                   repeats=repeats, seconds=time.perf_counter() - started,
                   skipped=tuple(s.label() for s, ok in zip(shapes, fits) if not ok),
                   load_average=_load_average())


def measured_on_busy_machine(profile: Profile) -> bool:
    """True when other processes competed for a CPU profile's cores: the 1-minute load
    average exceeded the cores by more than the profile's own threads could explain (one
    runnable thread per core, plus one). Such figures are inflated, often many times over."""
    cores = os.cpu_count() or 1
    return (profile.device.startswith("cpu") and profile.load_average is not None
            and profile.load_average > cores + 1)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform
        return None


def prefault_kv_cache(runner: Runner) -> None:
    """Write the runner's whole KV cache once, if it exposes one (`runner.cache.keys` and
    `.values`). Only before serving: it erases every cached token.

    Memory is mapped on first touch: a cache allocated with torch.empty and never written
    makes synthetic plans read the kernel's shared zero page, which stays in the CPU's cache,
    so long contexts looked twice as cheap as in a server that has written all of its cache.
    (The runner now zeroes its cache when it allocates it; this keeps the profiler right for
    any runner.)"""
    cache = getattr(runner, "cache", None)
    for name in ("keys", "values"):
        tensor = getattr(cache, name, None)
        if tensor is not None and hasattr(tensor, "zero_"):
            tensor.zero_()


def warm_up(runner: Runner, *, seed: int = 0) -> None:
    """The KV cache touched once and a few untimed iterations (prefill, decode, mixed), so
    that a run's first real iterations do not pay one-time set-up costs. Only before serving
    (see prefault_kv_cache)."""
    prefault_kv_cache(runner)
    rng = np.random.default_rng(seed)
    for shape in (Shape(0, 0, 64), Shape(4, 128, 0), Shape(2, 64, 32)):
        if _fits(runner, shape):
            runner.execute(_plan(runner, shape, rng, "warm-up"))


def _fits(runner: Runner, shape: Shape) -> bool:
    block_size = runner.block_size
    prefill = shape.prefill + shape.prefill // 32  # the longest jittered chunk (see _plan)
    need = (shape.rows * blocks_for_tokens(shape.context + 1, block_size)
            + blocks_for_tokens(shape.prefill_context + prefill, block_size))
    return (need <= runner.num_kv_blocks
            and max(shape.context + 1, shape.prefill_context + prefill) <= runner.max_model_len
            and shape.rows + prefill <= MAX_ITERATION_TOKENS)


def _plan(runner: Runner, shape: Shape, rng: np.random.Generator, prefix: str,
          layout: str = "contiguous") -> Plan:
    """A synthetic iteration of `shape` with random token ids and KV blocks laid out by
    `layout` (see `_block_tables`)."""
    vocab = _vocab_size(runner)
    # (tokens in the sequence, already computed): decode rows, then the prefill chunk.
    rows = [(shape.context + 1, shape.context)] * shape.rows
    if shape.prefill:
        # Jittered by up to 1/32 either way, so that a prompt length hardly ever repeats: live
        # ones rarely do, and the first call at a new length costs more (per-shape set-up in
        # the math libraries; docs/BENCHMARKS.md, "Figures behind the code"). The median
        # stays at the nominal length.
        spread = shape.prefill // 32
        prefill = max(1, shape.prefill + int(rng.integers(-spread, spread + 1)))
        rows.append((shape.prefill_context + prefill, shape.prefill_context))
    sizes = [blocks_for_tokens(length, runner.block_size) for length, _ in rows]
    chunks = []
    for i, ((length, computed), blocks) in enumerate(
            zip(rows, _block_tables(sizes, runner.num_kv_blocks, rng, layout))):
        ids = rng.integers(min(16, vocab - 1), vocab, size=length).tolist()
        request = Request(f"{prefix}-{i}", 0.0, length, _PROFILE_SAMPLING, _PROFILE_SLO,
                          prompt_token_ids=ids)
        chunks.append(ScheduledChunk(request, length - computed, computed, True, blocks))
    return Plan(0.0, tuple(chunks))


def _block_tables(sizes: Sequence[int], num_blocks: int, rng: np.random.Generator,
                  layout: str) -> list[tuple[int, ...]]:
    """Block tables of `sizes` blocks each, from a pool of `num_blocks`.

    On a CPU the cost of attention depends on where the blocks lie: decode over blocks
    scattered across the whole pool costs several times what it costs over consecutive ones
    (docs/BENCHMARKS.md, "Figures behind the code"). The
    scheduler's block manager places each request's blocks consecutively with room to grow,
    so live tables are consecutive but where the pool is fragmented: "contiguous" (the
    default) is what the profile measures; "scattered" and "mixed" (each row's first half
    consecutive, its second half scattered) are the worse cases, for comparison.
    """
    if layout not in ("contiguous", "scattered", "mixed"):
        raise ProfileError(f"block layout must be contiguous, scattered or mixed, got {layout!r}")
    if layout == "scattered":
        heads = [0] * len(sizes)
    elif layout == "contiguous":
        heads = list(sizes)
    else:
        heads = [-(-n // 2) for n in sizes]
    start = sum(heads)
    rest = iter(int(b) for b in rng.permutation(np.arange(start, num_blocks)))
    tables, next_block = [], 0
    for n, head in zip(sizes, heads):
        table = list(range(next_block, next_block + head))
        next_block += head
        table += [next(rest) for _ in range(n - head)]
        tables.append(tuple(table))
    return tables


def _vocab_size(runner: Runner) -> int:
    config = getattr(runner, "model_config", None)
    return int(getattr(config, "vocab_size", 256))


def runner_facts(runner: Runner) -> dict[str, Any]:
    """Device name, number format (dtype, "+int8" with int8 weights), torch thread count and
    CPU that a runner's timings depend on, and its machine block (None for a runner without
    a model)."""
    import torch

    from sliceserve.model.cpu import cpu_info
    from sliceserve.model.precision import Precision, machine_block

    config = getattr(runner, "config", None)
    device = str(getattr(config, "device", None) or getattr(runner, "device", "cpu"))
    precision = getattr(runner, "precision", None)
    if isinstance(precision, Precision):
        dtype = precision.label
    else:
        dtype = str(getattr(config, "dtype", None) or getattr(runner, "dtype", "")).split(".")[-1]
    return {"device": device_name(device), "dtype": dtype,
            "num_threads": int(torch.get_num_threads()),
            "cpu": cpu_info().describe() if device.split(":")[0] == "cpu" else "",
            "machine": machine_block(runner) if hasattr(runner, "model") else None}


def device_name(device: str) -> str:
    """A readable name for a torch device: 'cpu (<CPU model>)', 'cuda:0 (<GPU name>)'."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    if device == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return f"cpu ({line.split(':', 1)[1].strip()})"
        except OSError:
            pass
    return device


# --- the cached profile of a model on a device ---

@dataclass(frozen=True)
class ProfileKey:
    """What a profile is valid for. The KV budget is not part of it: it changes capacity,
    not latency, so a cached model takes the current runner's capacity. `engine` is the
    engine's own share (`engine_id`): a profile measured before the engine's code changed, or
    with its compiled kernels off or built for another vector path, is not this engine's.
    `cpu` is the CPU model and the flags that matter (CpuInfo.describe): a profile is never
    reused on another CPU model or flag set, even one that /proc/cpuinfo names alike."""

    model_id: str
    device: str
    dtype: str
    num_threads: int
    engine: str
    cpu: str = ""

    def filename(self) -> str:
        readable = re.sub(r"[^A-Za-z0-9.]+", "-", f"{self.model_id}-{self.dtype}-"
                                                   f"t{self.num_threads}").strip("-")[:80]
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{readable}-{digest[:12]}.json"


# The code an iteration's time depends on, relative to the sliceserve package: the forward
# pass, its kernels (and their build flags, in kernels/__init__.py), the runner around it.
ENGINE_SOURCES = ("model/kernels/*.cpp", "model/kernels/*.h", "model/kernels/__init__.py",
                  "model/llama.py", "model/linear.py", "model/attention.py", "model/rope.py",
                  "model/runner.py", "model/sampler.py")


def source_fingerprint(package_dir: Path, version: str) -> str:
    """12 hex digits of a hash of `version` and the text of the ENGINE_SOURCES files under
    `package_dir` (names included, so a file added or removed counts)."""
    digest = hashlib.sha256(f"{version}\0".encode())
    for pattern in ENGINE_SOURCES:
        for path in sorted(package_dir.glob(pattern)):
            digest.update(f"{path.relative_to(package_dir).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:12]


@functools.cache
def engine_fingerprint() -> str:
    """This installation's source_fingerprint: computed once per process (a few small files)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("sliceserve")
    except PackageNotFoundError:  # run from a source tree that is not installed
        package_version = "unknown"
    return source_fingerprint(Path(__file__).resolve().parent.parent, package_version)


def engine_id(runner: Runner) -> str:
    """The engine fingerprint, which optional fast paths `runner` uses and the kernels' vector
    path, e.g. '3f09c1d2ab77/attention-kernel+fused-ops/avx512' (a runner without a model:
    the fingerprint)."""
    model = getattr(runner, "model", None)
    if model is None:
        return engine_fingerprint()
    paths = [name for name, on in (("attention-kernel", getattr(model, "decode_kernel", None)),
                                   ("fused-ops", getattr(model, "fused_ops", None)),
                                   ("cuda-graphs", getattr(runner, "graphs", None)))
             if on is not None]
    vector = getattr(runner, "kernel_path", "eager")
    return (f"{engine_fingerprint()}/{'+'.join(paths) or 'eager'}"
            + ("" if vector == "eager" else f"/{vector}"))


def profile_key(runner: Runner, model_id: str) -> ProfileKey:
    """The key of `runner`'s profile. A runner that knows its weights folder is keyed by the
    folder's content id (sliceserve.model.loader.model_id), so every caller finds the same
    profile whatever name it used for the model; `model_id` keys the others."""
    folder = getattr(runner, "folder", None)
    if folder is not None:
        from sliceserve.model.loader import model_id as folder_model_id

        model_id = folder_model_id(folder)
    facts = runner_facts(runner)
    return ProfileKey(model_id, facts["device"], facts["dtype"], facts["num_threads"],
                      engine_id(runner), facts["cpu"])


def cached_profile_path(key: ProfileKey) -> Path:
    from sliceserve.model.loader import cache_dir

    return Path(cache_dir()) / "profiles" / key.filename()


def load_cached_profile(key: ProfileKey) -> tuple[LatencyModel, Profile] | None:
    """The stored model and profile for `key`; None when absent, stale or unreadable."""
    path = cached_profile_path(key)
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != CACHE_SCHEMA or data.get("key") != asdict(key):
            return None
        return LatencyModel.from_dict(data["latency_model"]), Profile.from_dict(data["profile"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignoring the unreadable cached profile %s (%s)", path, e)
        return None


def store_profile(key: ProfileKey, model: LatencyModel, profile: Profile) -> Path:
    """Write the cached profile atomically (a reader sees the old file or the new one)."""
    path = cached_profile_path(key)
    data = {"schema": CACHE_SCHEMA, "key": asdict(key), "latency_model": model.to_dict(),
            "profile": profile.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def model_name(model_id: str, key: ProfileKey) -> str:
    return f"profile:{model_id}@{key.device.split(' ')[0]}/{key.dtype}/t{key.num_threads}"


def latency_model_for(runner: Runner, model_id: str, *, cache: bool = True) -> LatencyModel:
    """The latency model of `runner`: the cached profile for this model, device, dtype,
    thread count and engine (`profile_key`), or a quick calibration (stored in the cache when
    `cache`)."""
    key = profile_key(runner, model_id)
    capacity = runner.num_kv_blocks * runner.block_size
    if cache:
        found = load_cached_profile(key)
        if found is not None:
            return replace(found[0], kv_capacity_tokens=capacity)
    profile = profile_runner(runner, model=model_id, **QUICK)
    model = fit_latency_model(profile, model_name(model_id, key), key.device, model_id,
                              notes="quick calibration at start;")
    if cache and measured_on_busy_machine(profile):
        log.warning("the machine was busy during the calibration (load average %s): using it "
                    "for this run only, not caching it", profile.load_average)
    elif cache:
        try:
            store_profile(key, model, profile)
        except OSError as e:  # a read-only cache only costs the next start a calibration
            log.warning("could not store the profile in the cache: %s", e)
    return model
