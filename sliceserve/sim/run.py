"""One simulation run -> a result object (docs/RESULTS.md); a sweep over policies x rates.

Every run of a sweep at one rate replays the same traffic (same seed), so policies are
compared on identical requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sliceserve.config import SchedulerConfig
from sliceserve.latency_model import LatencyModel
from sliceserve.latency_online import OnlineLatencyOptions
from sliceserve.metrics.results import build_run
from sliceserve.metrics.slo import RequestRecord
from sliceserve.policies.registry import make_policy, policy_class
from sliceserve.sim.sim_executor import Slowdown
from sliceserve.sim.simulator import simulate
from sliceserve.workloads import DEFAULT_CV, Traffic, Workload, is_trace_path, make_traffic

DEFAULT_KV_CAPACITY_TOKENS = 32768
SYSTEM = "sliceserve"

WorkloadArg = str | Path | Workload
LatencyArg = str | LatencyModel
Progress = Callable[[int, int, dict[str, Any]], None]  # (done, total, the finished run)


def load_latency_model(latency_model: LatencyArg) -> LatencyModel:
    if isinstance(latency_model, LatencyModel):
        return latency_model
    return LatencyModel.load(str(latency_model))


def scheduler_config_for(latency_model: LatencyModel) -> SchedulerConfig:
    """The scheduler's limits for a device: its KV capacity (32768 tokens when unknown)."""
    return SchedulerConfig.for_capacity(latency_model.kv_capacity_tokens
                                        or DEFAULT_KV_CAPACITY_TOKENS)


def simulate_run(workload: WorkloadArg, policy_name: str, rate: float | None = 1.0,
                 arrival: str = "poisson", num_requests: int = 100, seed: int = 0,
                 latency_model: LatencyArg = "paper",
                 policy_options: Mapping[str, Any] | None = None,
                 config: SchedulerConfig | None = None, *, cv: float = DEFAULT_CV,
                 class_defaults: WorkloadArg | None = None,
                 max_time_s: float | None = None, per_request: bool = False,
                 online_latency: bool = True,
                 slowdown: Slowdown | None = None) -> dict[str, Any]:
    """Simulate one run and return its result object (with one row per request when
    `per_request`).

    `workload` is a preset name, a workload JSON file, a `Workload`, or a `.jsonl` trace (whose
    arrival times are used as they are; `rate`, `arrival` and `num_requests` are then ignored
    and `class_defaults` names a workload that supplies its classes' SLO defaults).
    """
    model = load_latency_model(latency_model)
    traffic = make_traffic(workload, arrival=arrival, rate_rps=rate,  # type: ignore[arg-type]
                           num_requests=num_requests, seed=seed, latency_model=model, cv=cv,
                           class_defaults=class_defaults)  # type: ignore[arg-type]
    return run_traffic(traffic, policy_name, model, policy_options, config,
                       max_time_s=max_time_s, per_request=per_request,
                       online_latency=online_latency, slowdown=slowdown)


def run_traffic(traffic: Traffic, policy_name: str, latency_model: LatencyModel,
                policy_options: Mapping[str, Any] | None = None,
                config: SchedulerConfig | None = None, *,
                max_time_s: float | None = None, per_request: bool = False,
                online_latency: bool = True,
                slowdown: Slowdown | None = None) -> dict[str, Any]:
    """Serve `traffic` in the simulator under one policy; the run's result object (with one
    row per request when `per_request`).

    `latency_model` is the device's truth (the executor's durations, stretched by `slowdown`)
    and the policy's profile; with `online_latency` the policy corrects that profile from
    the iterations it sees (as live runs do), else it plans with it frozen.
    """
    config = config or scheduler_config_for(latency_model)
    policy = make_policy(policy_name, latency_model, config, dict(policy_options or {}),
                         online_latency=OnlineLatencyOptions() if online_latency else None)
    result = simulate(traffic.to_requests(), policy, latency_model, config,
                      max_time_s=max_time_s, slowdown=slowdown)
    records = [RequestRecord.from_request(r) for r in result.requests]
    # All requests may end at arrival (rejected): the run lasts at least until the last one.
    last_arrival_s = max((spec.arrival_s for spec in traffic.requests), default=0.0)
    duration_s = max(result.duration_s, last_arrival_s)
    return build_run(
        records, duration_s=duration_s, backend="sim", system=SYSTEM, policy=policy_name,
        policy_options=policy.options.to_dict(), workload=traffic.workload,
        arrival=traffic.arrival, rate_rps=traffic.rate_rps, arrival_cv=traffic.cv,
        seed=traffic.seed, model=latency_model.model, device=latency_model.device,
        latency_model=latency_model.name, class_order=traffic.class_order,
        per_request=per_request, latency_correction=policy.latency_correction())


@dataclass(frozen=True)
class _Task:
    """One run of a sweep (picklable, for worker processes)."""

    workload: WorkloadArg
    policy: str
    rate: float | None
    arrival: str
    num_requests: int
    seed: int
    latency_model: LatencyModel
    policy_options: Mapping[str, Any] | None
    config: SchedulerConfig | None
    cv: float
    class_defaults: WorkloadArg | None
    max_time_s: float | None
    online_latency: bool = True
    slowdown: Slowdown | None = None

    def run(self) -> dict[str, Any]:
        return simulate_run(self.workload, self.policy, self.rate, self.arrival,
                            self.num_requests, self.seed, self.latency_model,
                            self.policy_options, self.config, cv=self.cv,
                            class_defaults=self.class_defaults, max_time_s=self.max_time_s,
                            online_latency=self.online_latency, slowdown=self.slowdown)


def _run_task(task: _Task) -> dict[str, Any]:
    return task.run()


def sweep(workload: WorkloadArg, policies: Sequence[str], rates: Sequence[float],
          arrival: str = "poisson", num_requests: int = 100, seed: int = 0,
          latency_model: LatencyArg = "paper",
          policy_options: Mapping[str, Mapping[str, Any]] | None = None,
          config: SchedulerConfig | None = None, *, cv: float = DEFAULT_CV,
          class_defaults: WorkloadArg | None = None, max_time_s: float | None = None,
          jobs: int = 1, progress: Progress | None = None, online_latency: bool = True,
          slowdown: Slowdown | None = None) -> list[dict[str, Any]]:
    """Runs for every policy x rate, policy-major in the given order (whatever `jobs` is).

    `policy_options` maps a policy name to its options. A trace workload ignores `rates` and
    gives one run per policy. `jobs` > 1 runs in that many worker processes.
    """
    if not policies:
        raise ValueError("sweep: give at least one policy")
    for policy in policies:
        policy_class(policy)  # fail before any run on an unknown name
    if not isinstance(workload, Workload) and is_trace_path(workload):
        rates_or_none: list[float | None] = [None]
    elif not rates:
        raise ValueError("sweep: give at least one rate")
    else:
        rates_or_none = list(rates)
    model = load_latency_model(latency_model)
    options = policy_options or {}
    tasks = [_Task(workload, policy, rate, arrival, num_requests, seed, model,
                   options.get(policy), config, cv, class_defaults, max_time_s,
                   online_latency, slowdown)
             for policy in policies for rate in rates_or_none]
    runs: list[dict[str, Any]] = []
    if jobs <= 1 or len(tasks) == 1:
        for task in tasks:
            runs.append(task.run())
            if progress is not None:
                progress(len(runs), len(tasks), runs[-1])
        return runs
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        # map() keeps the task order; progress is reported in that order too.
        for run in pool.map(_run_task, tasks):
            runs.append(run)
            if progress is not None:
                progress(len(runs), len(tasks), run)
    return runs
