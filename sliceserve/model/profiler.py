"""Measure a model runner on this device and fit the latency model of the core to it.

    profile = profile_runner(runner)                      # decode x context, prefill, mixed
    model = fit_latency_model(profile, "smollm2@cpu")     # sliceserve.latency_model.LatencyModel
    model = latency_model_for(runner, "smollm2-135m")     # cached (profile_cache.py)

Timings come from synthetic plans handed straight to `runner.execute` (no scheduler): random
prompt ids, KV block ids assigned here from the runner's pool. The KV content is garbage, which
does not change the work done. Shapes run round-robin, `repeats` times each, and the median
is kept, so a burst of noise from another process hits one sample of many points rather than
every sample of one point.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sliceserve.core.plan import Plan
from sliceserve.model.profile_fit import (
    FitError,
    Profile,
    ProfileError,
    ProfilePoint,
    fit_errors,
    fit_latency_model,
)
from sliceserve.model.profile_plans import Runner, Shape, fits, synthetic_plan

__all__ = ["DEFAULT_BATCH_SIZES", "DEFAULT_CONTEXT_LENGTHS", "DEFAULT_MIXED",
           "DEFAULT_PREFILL_CHUNKS", "DEFAULT_PREFILL_TOKENS", "QUICK", "FitError", "Profile",
           "ProfileError", "ProfilePoint", "Runner", "Shape", "device_name", "fit_errors",
           "fit_latency_model", "measured_on_busy_machine", "prefault_kv_cache",
           "profile_runner", "runner_facts", "warm_up"]

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
# (new tokens, tokens already cached): later chunks of long prompts, as chunked prefill runs
# them (SLICE cuts prompts into chunks of 512).
DEFAULT_PREFILL_CHUNKS: tuple[tuple[int, int], ...] = ((256, 512), (512, 512))
# The start-up calibration: every term measured once, in seconds for a small model
# (docs/BENCHMARKS.md, "Profile").
QUICK: dict[str, Any] = {"batch_sizes": (1, 2, 4, 8, 16, 32), "context_lengths": (256, 1024),
                         "prefill_tokens": (32, 256, 1024),
                         "prefill_chunks": ((512, 512),), "mixed": (), "repeats": 1,
                         "min_decode_steps": 3, "warmup": 0}
Progress = Callable[[int, int, str], None]  # (done, total, what)


# --- measuring ---

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
    measured in max(`repeats`, `min_decode_steps`) rounds over all of them. Per round, a decode
    shape runs its rows for `warmup` + 1 steps in a row, as a live batch does, the last one
    timed; a shape with a prompt chunk gets a fresh one (new token ids, new blocks) in
    `repeats` of the rounds, as live prefills are new (re-running one plan finds its data in
    cache and runs faster: measured in docs/BENCHMARKS.md, "Figures behind the code")."""
    if repeats < 1 or warmup < 0:
        raise ProfileError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    shapes = ([Shape(b, c, 0) for c in context_lengths for b in batch_sizes]
              + [Shape(0, 0, n) for n in prefill_tokens]
              + [Shape(0, 0, n, c) for n, c in prefill_chunks]
              + [Shape(*m) for m in mixed])
    if any(min(s) < 0 or s.rows + s.prefill < 1 for s in shapes):
        raise ProfileError(f"profile shapes need positive sizes, got {shapes}")
    rng = np.random.default_rng(seed)
    fitting = [fits(runner, shape) for shape in shapes]
    timed = [shape for shape, ok in zip(shapes, fitting) if ok]
    if not timed:
        raise ProfileError(f"no profile shape fits this runner's KV cache "
                           f"({runner.num_kv_blocks} blocks of {runner.block_size})")
    started = time.perf_counter()
    prefault_kv_cache(runner)
    runner.execute(_prepared(runner, synthetic_plan(runner, timed[0], rng, "setup")))  # untimed
    samples: list[list[float]] = [[] for _ in timed]
    # Rounds over all shapes rather than all of a shape's runs at once: a shared machine's
    # speed drifts over seconds (other tenants' memory traffic; a decode at batch 1 streams
    # all the weights; docs/BENCHMARKS.md, "Simulator fidelity"), and every shape should see
    # the mix of fast and slow moments. So a decode shape takes one timed step (after `warmup`
    # untimed ones) in each of at least `min_decode_steps` rounds, not a few steps in each of
    # `repeats` rounds: its median is over that many moments, not over two or three. A prompt
    # shape takes one fresh chunk in `repeats` of the rounds, spread over them.
    rounds = max(repeats, min_decode_steps)
    prompt_rounds = {k * rounds // repeats for k in range(repeats)}
    plans = [synthetic_plan(runner, shape, rng, f"s{i}") if not shape.prefill else None
             for i, shape in enumerate(timed)]
    runs = warmup + 1  # per visit: the untimed steps (a prompt shape: first visit only), one timed
    total = sum(rounds * runs if plan is not None else warmup + repeats for plan in plans)
    done = 0
    for round_ in range(rounds):
        for i, shape in enumerate(timed):
            if plans[i] is None and round_ not in prompt_rounds:
                continue
            first = 0 if plans[i] is not None or round_ == 0 else warmup
            for rep in range(first, runs):
                # Decode rows continue step after step (their KV was just read: on a CPU,
                # small batches find it in cache); a prompt chunk is new every time.
                plan = _prepared(runner, plans[i]
                                 or synthetic_plan(runner, shape, rng, f"s{i}r{round_}.{rep}"))
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
                   skipped=tuple(s.label() for s, ok in zip(shapes, fitting) if not ok),
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
    """Write the runner's whole KV cache once (`runner.cache.keys` and `.values`). Only
    before serving: it erases every cached token.

    Memory is mapped on first touch: a cache allocated with torch.empty and never written
    makes synthetic plans read the kernel's shared zero page, which stays in the CPU's cache,
    so long contexts looked twice as cheap as in a server that has written all of its cache.
    (The runner now zeroes its cache when it allocates it; this keeps the profiler right for
    any runner.)"""
    if runner.cache is None:  # llama.cpp's executor: its own memory, written by llama.cpp
        return
    runner.cache.keys.zero_()
    runner.cache.values.zero_()


def warm_up(runner: Runner, *, seed: int = 0) -> None:
    """The KV cache touched once and a few untimed iterations (prefill, decode, mixed), so
    that a run's first real iterations do not pay one-time set-up costs. Only before serving
    (see prefault_kv_cache)."""
    prefault_kv_cache(runner)
    rng = np.random.default_rng(seed)
    for shape in (Shape(0, 0, 64), Shape(4, 128, 0), Shape(2, 64, 32)):
        if fits(runner, shape):
            runner.execute(_prepared(runner, synthetic_plan(runner, shape, rng, "warm-up")))


def _prepared(runner: Runner, plan: Plan) -> Plan:
    """`plan`, after an executor whose cache must hold a row's history before it can decode
    it (llama.cpp checks that positions continue: `fill_history`) has filled it, untimed,
    with placeholder KV. The PyTorch runner reads whatever its blocks hold and needs none."""
    fill = getattr(runner, "fill_history", None)
    if fill is not None:
        fill(plan)
    return plan


def runner_facts(runner: Runner) -> dict[str, Any]:
    """Device name, number format (dtype, "+int8" with int8 weights), torch thread count and
    CPU that a runner's timings depend on, and its machine block."""
    import torch

    from sliceserve.model.cpu import cpu_info
    from sliceserve.model.precision import machine_block

    device = str(runner.device)
    return {"device": device_name(device), "dtype": runner.precision.label,
            "num_threads": int(torch.get_num_threads()),
            "cpu": cpu_info().describe() if device.split(":")[0] == "cpu" else "",
            "machine": machine_block(runner)}


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
