"""Live runs: the simulator's workloads served by the real engine, arrivals in wall time.

    traffic = make_traffic("edge", rate_rps=0.4, num_requests=60, seed=0, latency_model=lm)
    write_trace(traffic, "edge.jsonl")            # `sliceserve simulate -w edge.jsonl` replays it
    run = run_live(traffic, runner, "slice", lm, model_id="smollm2-135m")

The loop is the simulator's (sliceserve/sim/simulator.py) with a wall clock: add the requests
whose arrival time has come, step the engine, and when nothing can run sleep until the next
arrival. A request that arrives during an iteration joins after it, in both. The result object
is the simulator's (docs/RESULTS.md) with backend "engine".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sliceserve.clock import WallClock
from sliceserve.config import SchedulerConfig
from sliceserve.core.scheduler import Scheduler
from sliceserve.engine.arrivals import serve_arrivals
from sliceserve.engine.engine import Engine, Executor
from sliceserve.latency_model import LatencyModel
from sliceserve.latency_online import OnlineLatencyOptions
from sliceserve.metrics.results import build_run
from sliceserve.metrics.slo import RequestRecord, is_met
from sliceserve.policies.registry import make_policy
from sliceserve.request import Request, SamplingParams
from sliceserve.workloads import RequestSpec, Traffic

SYSTEM = "sliceserve"
Progress = Callable[[int, int, int], None]  # (finished, met, total)
# Prompt ids are drawn from the vocabulary above the special tokens of Llama-family
# tokenizers (which sit at the bottom); `special_ids` removes any others.
FIRST_REGULAR_TOKEN = 16


@dataclass
class LiveResult:
    requests: list[Request]  # every arrived request, finished, in arrival order
    duration_s: float  # wall time from the start to the last finish (or arrival)
    num_iterations: int


def serve_live(engine: Engine, requests: Sequence[Request], *, max_time_s: float | None = None,
               sleep: Callable[[float], None] = time.sleep,
               on_step: Callable[[Engine], None] | None = None) -> LiveResult:
    """Serve `requests` (fresh; `arrival_s` on the engine's clock) until all have finished.

    `max_time_s` bounds the engine clock: requests unfinished then are aborted with a reason.
    """
    clock = engine.clock

    def wait_until(t_s: float) -> None:  # in short naps: requests may be added meanwhile
        sleep(max(0.0, min(t_s - clock.now(), 0.5)))

    pending, iterations = serve_arrivals(
        engine, requests, wait_until, max_time_s=max_time_s, on_step=on_step,
        limit_reason=f"run time limit {max_time_s} s reached")
    end = max((r.finish_s or 0.0 for r in pending), default=0.0)
    last_arrival = max((r.arrival_s for r in pending), default=0.0)
    return LiveResult(pending, max(end, last_arrival), iterations)


# --- requests with token ids ---

def live_requests(traffic: Traffic, vocab_size: int, *, seed: int = 0,
                  special_ids: Iterable[int] = (),
                  encode: Callable[[str], Sequence[int]] | None = None) -> list[Request]:
    """Fresh requests of `traffic` with prompt ids: a trace line's text through `encode` when
    both exist, else seeded random regular tokens (the workload fixes only the counts).
    Greedy and EOS ignored, so every output is exactly as long as the workload says."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x1D5])))
    allowed = np.setdiff1d(np.arange(min(FIRST_REGULAR_TOKEN, vocab_size - 1), vocab_size),
                           np.fromiter(special_ids, dtype=np.int64))
    if allowed.size == 0:
        raise ValueError(f"no regular token ids in a vocabulary of {vocab_size}")
    requests = []
    for spec in traffic.requests:
        if spec.prompt is not None and encode is not None:
            ids = list(encode(spec.prompt))
        else:
            ids = rng.choice(allowed, size=spec.num_prompt_tokens).tolist()
        requests.append(_request(spec, ids))
    return requests


def _request(spec: RequestSpec, prompt_token_ids: list[int]) -> Request:
    sampling = SamplingParams(max_tokens=spec.num_output_tokens, temperature=0.0,
                              ignore_eos=True)
    return Request(spec.request_id, spec.arrival_s, len(prompt_token_ids), sampling, spec.slo,
                   prompt_token_ids=prompt_token_ids, priority=spec.priority)


# --- traces ---

def trace_lines(traffic: Traffic) -> list[dict[str, Any]]:
    """One trace line per request with every SLO value explicit, so a replay needs no
    workload or latency model to rebuild exactly these requests."""
    lines = []
    for spec in traffic.requests:
        slo = spec.slo
        line: dict[str, Any] = {"request_id": spec.request_id, "arrival_s": spec.arrival_s,
                                "prompt_tokens": spec.num_prompt_tokens,
                                "output_tokens": spec.num_output_tokens,
                                "slo_class": slo.slo_class, "ttft_ms": slo.ttft_ms,
                                "tpot_ms": slo.tpot_ms}
        if slo.deadline_ms is not None:
            line["deadline_ms"] = slo.deadline_ms
        line.update(utility=slo.utility, priority=spec.priority)
        if spec.prompt is not None:
            line["prompt"] = spec.prompt
        lines.append(line)
    return lines


def write_trace(traffic: Traffic, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in trace_lines(traffic)))
    return path


# --- one run -> a result object ---

def progress_counter(requests: Sequence[Request], progress: Progress) -> Callable[[Engine], None]:
    """An `on_step` that reports (finished, met, total) each time more requests have ended."""
    seen: set[str] = set()
    met = [0]

    def on_step(engine: Engine) -> None:
        del engine
        before = len(seen)
        for request in requests:
            if request.status.is_finished and request.request_id not in seen:
                seen.add(request.request_id)
                met[0] += int(is_met(RequestRecord.from_request(request)))
        if len(seen) != before:
            progress(len(seen), met[0], len(requests))

    return on_step


def run_live(traffic: Traffic, executor: Executor, policy_name: str,
             latency_model: LatencyModel, config: SchedulerConfig, requests: Sequence[Request],
             *, policy_options: Mapping[str, Any] | None = None, model_id: str = "",
             device: str = "", max_time_s: float | None = None,
             machine: dict[str, Any] | None = None,
             progress: Progress | None = None,
             online_latency: bool = True) -> dict[str, Any]:
    """Serve `requests` (made from `traffic`, e.g. by `live_requests`) on a fresh engine whose
    wall clock starts now; the run's result object (with `machine` as its machine block).
    `progress(done, met, total)` is called as requests finish. With `online_latency` the
    policy corrects `latency_model` from the iterations it measures (latency_online.py); the
    result file records the correction (`latency_correction`)."""
    policy = make_policy(policy_name, latency_model, config, dict(policy_options or {}),
                         online_latency=OnlineLatencyOptions() if online_latency else None)
    engine = Engine(Scheduler(config, policy), executor, WallClock())
    on_step = progress_counter(requests, progress) if progress is not None else None
    result = serve_live(engine, requests, max_time_s=max_time_s, on_step=on_step)
    records = [RequestRecord.from_request(r) for r in result.requests]
    return build_run(
        records, duration_s=result.duration_s, backend="engine", system=SYSTEM,
        policy=policy_name, policy_options=policy.options.to_dict(), workload=traffic.workload,
        arrival=traffic.arrival, rate_rps=traffic.rate_rps, arrival_cv=traffic.cv,
        seed=traffic.seed, model=model_id or latency_model.model,
        device=device or latency_model.device, latency_model=latency_model.name,
        class_order=traffic.class_order, machine=machine, per_request=True,
        latency_correction=policy.latency_correction())
