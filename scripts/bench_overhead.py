"""Engine overhead at N running requests: everything but the model forward, as a share of the
iteration time, with a breakdown and an operator profile.

Drives the live engine as `LLM.generate` does (schedule -> execute -> update, then the output
processor's incremental detokenization), times the steady decode phase only (after every
prompt is prefilled), and splits each iteration into:
    scheduling (policy + scheduler), tensor preparation, model forward (logits included),
    sampling, output processing (detokenization, stop checks).

    python scripts/bench_overhead.py --requests 32 --iterations 64 --out docs/bench/overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from sliceserve.engine.build import build_engine
from sliceserve.engine.config import EngineConfig
from sliceserve.engine.outputs import OutputProcessor
from sliceserve.policies.registry import policy_option_names
from sliceserve.request import SLO, Request, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=64)
    parser.add_argument("--policy", default="vllm")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="policy option max_batch_size (vllm, orca, ...); default: --requests")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile-out", type=Path, default=None,
                        help="write torch profiler's operator table of 8 decode iterations")
    args = parser.parse_args()

    options = {}
    if "max_batch_size" in policy_option_names(args.policy):  # the baselines' batch limit
        options["max_batch_size"] = args.max_batch_size or args.requests
    live = build_engine(EngineConfig(model=args.model, policy=args.policy, policy_options=options,
                                     dtype=args.dtype, num_threads=args.threads,
                                     latency_model="paper"))
    engine, runner = live.engine, live.runner
    processor = OutputProcessor(live.tokenizer, engine.scheduler.finish_request)
    rng = random.Random(0)
    vocab = live.vocab_size
    slo = SLO(ttft_ms=60_000, tpot_ms=1_000)
    for i in range(args.requests):
        ids = [rng.randrange(200, vocab) for _ in range(args.prompt_tokens)]
        sampling = SamplingParams(max_tokens=args.iterations + 16, temperature=0.0,
                                  ignore_eos=True)
        request = Request(f"r{i}", engine.clock.now(), len(ids), sampling, slo,
                          prompt_token_ids=ids)
        processor.add(request, None)
        engine.add_request(request)
    while any(r.num_output_tokens == 0 for r in engine.scheduler.running) or \
            engine.scheduler.waiting:
        engine.step()  # prefill everything first: the measured phase is pure decode

    def iteration() -> dict[str, float]:
        t0 = time.perf_counter()
        plan = engine.scheduler.schedule(engine.clock.now())
        t1 = time.perf_counter()
        before = (runner.stats.prepare_s, runner.stats.forward_s, runner.stats.sample_s)
        result = runner.execute(plan)
        t2 = time.perf_counter()
        step = engine.scheduler.update(plan, result, engine.clock.now())
        for request, _ in step.new_tokens:
            processor.process(request, engine.clock.now(), stream=True)
        t3 = time.perf_counter()
        after = (runner.stats.prepare_s, runner.stats.forward_s, runner.stats.sample_s)
        prepare, forward, sample = (a - b for a, b in zip(after, before))
        return {"rows": len(plan.chunks), "total_s": t3 - t0, "schedule_s": t1 - t0,
                "prepare_s": prepare, "forward_s": forward, "sample_s": sample,
                "execute_other_s": (t2 - t1) - prepare - forward - sample,
                "update_and_output_s": t3 - t2}

    for _ in range(3):
        iteration()
    samples = [iteration() for _ in range(args.iterations)]
    keys = [k for k in samples[0] if k.endswith("_s")]
    totals = {k: sum(s[k] for s in samples) for k in keys}
    overhead = 1 - totals["forward_s"] / totals["total_s"]
    report = {
        "command": "python scripts/bench_overhead.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if v is not None and k not in ("out", "profile_out")),
        "machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rows_per_iteration": statistics.median(s["rows"] for s in samples),
        "median_iteration_ms": 1000 * statistics.median(s["total_s"] for s in samples),
        "share_of_time": {k.removesuffix("_s"): totals[k] / totals["total_s"] for k in keys
                          if k != "total_s"},
        "overhead_share": overhead,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.profile_out:
        from torch.profiler import ProfilerActivity, profile

        _label_kernels(runner)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(8):
                iteration()
        args.profile_out.write_text(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30) + "\n")


def _label_kernels(runner: Any) -> None:
    """The compiled CPU kernels are not aten ops, so torch's profiler would not list them:
    wrap each call in a record_function labelled "kernel::<name>" (here only, not in the
    engine, where the labels would cost a little on every call)."""
    from torch.profiler import record_function

    def labelled(name: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            with record_function(f"kernel::{name}"):
                return fn(*args)
        return call

    model = runner.model
    if model.decode_kernel is not None:
        model.decode_kernel = labelled("paged_attention", model.decode_kernel)
    ops = model.fused_ops
    if ops is not None:
        model.fused_ops = SimpleNamespace(**{name: labelled(name, getattr(ops, name)) for name in
                                             ("rms_norm", "add_rms_norm_", "rope_store_",
                                              "silu_mul", "argmax_rows")})
        runner.sampler._argmax_rows = model.fused_ops.argmax_rows


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
