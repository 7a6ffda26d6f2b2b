"""The plug-in's checks on vLLM's offline engine; run by the vLLM venv's python.

    $VLLM_PY tests/vllm/offline_checks.py MODEL_DIR OUT.json

with the repository and tests/vllm on PYTHONPATH (tests/test_vllm_plugin.py does this and
asserts on OUT.json). One process, the engine core in it (VLLM_ENABLE_V1_MULTIPROCESSING=0)
so the scheduler can be inspected; two engines (vLLM's own scheduler, then the plug-in), both
float32 and greedy, each loaded once.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from typing import Any

for key, value in {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
                   "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1",
                   "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}.items():
    os.environ.setdefault(key, value)
if (os.cpu_count() or 2) < 2:
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0"

PROMPTS = ["The capital of France is", "Write a haiku about a robot:", "1, 2, 3, 4,",
           "Hello, my name is", "The best way to learn to program is",
           "def fibonacci(n):"]
MAX_TOKENS = 24


def version_checks() -> dict[str, Any]:
    from sliceserve.integrations.vllm import compat

    out: dict[str, Any] = {"installed": compat.installed_version()}
    compat.check_vllm()  # the installed version passes
    for version in ("0.33.0", "0.31.2", "1.0.0"):
        try:
            compat.check_vllm(version)
            out[version] = None
        except compat.VllmVersionError as e:
            out[version] = str(e)
    from vllm.v1.core.sched.scheduler import Scheduler

    try:
        compat.raise_if_missing(compat.missing_names(Scheduler, ["schedule", "no_such_hook"],
                                                     "Scheduler"))
        out["missing"] = None
    except compat.VllmVersionError as e:
        out["missing"] = str(e)
    return out


def make_llm(plugin: bool) -> Any:
    from vllm import LLM

    return LLM(model=sys.argv[1], dtype="float32", max_model_len=1024, enforce_eager=True,
               seed=0, scheduler_cls=("sliceserve.integrations.vllm.SliceScheduler" if plugin
                                      else None))


def params(**xargs: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True,
                          extra_args=xargs or None)


def run(llm: Any, prompts: list[str], sampling: Any) -> list[dict[str, Any]]:
    outs = llm.generate(prompts, sampling, use_tqdm=False)
    return [{"token_ids": list(o.outputs[0].token_ids), "prompt_len": len(o.prompt_token_ids),
             "finish_reason": o.outputs[0].finish_reason,
             "stop_reason": o.outputs[0].stop_reason} for o in outs]


def record_steps(scheduler: Any, watch_class: str) -> list[dict[str, Any]]:
    """Wrap the scheduler's schedule(): per step, tokens per request, and the KV blocks of the
    request of SLO class `watch_class`."""
    steps: list[dict[str, Any]] = []
    schedule = scheduler.schedule

    def recorded(*args: Any, **kwargs: Any) -> Any:
        out = schedule(*args, **kwargs)
        rid = next((rid for rid, r in scheduler.requests.items()
                    if (r.sampling_params.extra_args or {}).get("slo_class") == watch_class),
                   None)
        blocks = None
        if rid is not None and rid in scheduler.requests:
            blocks = [list(g) for g in scheduler.kv_cache_manager.get_block_ids(rid)]
        steps.append({"tokens": dict(out.num_scheduled_tokens), "watch": rid,
                      "watch_blocks": blocks,
                      "watch_computed": (scheduler.requests[rid].num_computed_tokens
                                         if rid in scheduler.requests else None)})
        return out

    scheduler.schedule = recorded
    return steps


def main() -> None:
    results: dict[str, Any] = {}
    try:
        results["version"] = version_checks()
        llm = make_llm(plugin=False)
        results["reference"] = run(llm, PROMPTS, params())
        del llm
        gc.collect()

        llm = make_llm(plugin=True)
        scheduler = llm.llm_engine.engine_core.engine_core.scheduler
        adapter = scheduler.sliceserve
        # Lax SLOs: a busy shared CPU may take seconds per step, and the online latency model
        # follows it; these tests are about the mechanism, not about meeting SLOs.
        slo = {"ttft_ms": 600000, "tpot_ms": 60000, "utility": 1, "slo_class": "chat"}
        results["plugin"] = run(llm, PROMPTS, params(**slo))
        results["plugin_state"] = adapter.state()

        import sliceserve_test_policies  # noqa: F401 - registers the test policies

        adapter.select_policy("test-mask", {"max_batch_size": 8, "mask_from": 4,
                                            "mask_steps": 8})
        steps = record_steps(scheduler, "mask")
        per_prompt = [params(ttft_ms=600000, tpot_ms=60000, slo_class="mask")]
        per_prompt += [params(ttft_ms=600000, tpot_ms=1, slo_class="tight")] * 3
        results["mask"] = run(llm, PROMPTS[:4], per_prompt)
        results["mask_steps"] = steps
        results["mask_state"] = adapter.state()
        scheduler.schedule = type(scheduler).schedule.__get__(scheduler)

        adapter.select_policy("slice", {"reject_infeasible": True})
        results["reject"] = run(llm, PROMPTS[:3], [
            params(ttft_ms=600000, tpot_ms=60000),
            params(ttft_ms=1, tpot_ms=60000, slo_class="control"),
            params(ttft_ms="soon")])
        results["reject_state"] = adapter.state()

        from sliceserve.policies.registry import policy_names

        results["policies"] = {}
        for name in [n for n in policy_names() if not n.startswith("test-")]:
            adapter.select_policy(name)
            results["policies"][name] = {"outputs": run(llm, PROMPTS, params(**slo)),
                                         "state": adapter.state()}
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        results["error"] = traceback.format_exc()
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":  # vLLM may start processes that re-import this module
    main()
