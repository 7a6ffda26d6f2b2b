"""The commands that need no model: `simulate`, `sweep`, `show`, `workload`, `policies`.

They are plain functions here; `sliceserve.cli` registers them on the app, in help order.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sliceserve.cli.common import (
    LATENCY_HELP,
    WORKLOAD_HELP,
    ArrivalOpt,
    BadInput,
    ClassDefaultsOpt,
    CvOpt,
    LoadOpt,
    NumRequestsOpt,
    OnlineLatencyOpt,
    OutOpt,
    PlotOpt,
    PolicyOpt,
    PolicyOptionOpt,
    SeedOpt,
    TableOpt,
    WorkloadOpt,
    _check_common,
    _check_positive,
    _console,
    _parse_names,
    _parse_rates,
    _write,
    parse_policy_options,
    rates_for_loads,
)
from sliceserve.latency_model import LatencyModel
from sliceserve.metrics.results import dumps, load_results
from sliceserve.metrics.table import (
    SWEEP_METRICS,
    home_metrics_table,
    run_table,
    sweep_table,
    workload_table,
)
from sliceserve.workloads import DEFAULT_CV, is_trace_path, load_workload

METRICS = SWEEP_METRICS

# Options of the simulator's commands.
LatencyOpt = Annotated[str, typer.Option("--latency-model", "-l", help=LATENCY_HELP)]
MaxTimeOpt = Annotated[float | None, typer.Option(
    help="abort what is unfinished at this virtual time (s)")]
MetricOpt = Annotated[str, typer.Option(help=f"table metric: {', '.join(METRICS)}")]
E2eRateOpt = Annotated[float | None, typer.Option(
    help="rate of the E2E bar chart (default: the heaviest)")]
SlowdownOpt = Annotated[str | None, typer.Option(
    help="START:FACTOR[:END]: the simulated device runs FACTOR times slower from START s "
    "(to END s) of virtual time, unknown to the policy's profile")]


def _slowdown(text: str | None) -> Any:
    if text is None:
        return None
    from sliceserve.sim.sim_executor import Slowdown

    try:
        return Slowdown.parse(text)
    except ValueError as e:
        raise BadInput(f"--slowdown: {e}") from None


def simulate(
    workload: WorkloadOpt,
    policy: PolicyOpt,
    rate: Annotated[float | None, typer.Option(
        "--rate", "-r", help="mean arrival rate, requests/s (default 1.0)")] = None,
    load: LoadOpt = None,
    arrival: ArrivalOpt = "poisson",
    cv: CvOpt = DEFAULT_CV,
    num_requests: NumRequestsOpt = 200,
    seed: SeedOpt = 0,
    latency_model: LatencyOpt = "paper",
    policy_option: PolicyOptionOpt = None,
    class_defaults: ClassDefaultsOpt = None,
    max_time_s: MaxTimeOpt = None,
    online_latency: OnlineLatencyOpt = True,
    slowdown: SlowdownOpt = None,
    out: OutOpt = None,
    table: TableOpt = True,
) -> None:
    """Simulate one run of a workload under one policy: a table and a result JSON."""
    from sliceserve.sim.run import load_latency_model, simulate_run

    _check_common(num_requests, seed, cv, arrival)
    _check_positive("--rate", rate)
    _check_positive("--max-time-s", max_time_s)
    load_info: dict[str, Any] = {}
    if load is not None:
        if rate is not None:
            raise BadInput("give --rate or --load, not both")
        (rate,), estimate = rates_for_loads([load], workload, load_latency_model(latency_model))
        load_info = {"load": load, "capacity_estimate": estimate}
    if rate is not None and is_trace_path(workload):
        print("note: a trace replays its own arrival times; --rate is ignored", file=sys.stderr)
    options = parse_policy_options(policy_option or [], [policy])[policy]
    run = simulate_run(workload, policy, rate if rate is not None else 1.0, arrival,
                       num_requests, seed, latency_model, options, cv=cv,
                       class_defaults=class_defaults, max_time_s=max_time_s, per_request=True,
                       online_latency=online_latency, slowdown=_slowdown(slowdown))
    run.update(load_info)
    if table:
        _console().print(run_table(run))
        _console().print(home_metrics_table(run))
    if out is not None:
        _write(out, dumps(run))


def sweep(
    workload: WorkloadOpt,
    policies: Annotated[str | None, typer.Option(
        help="comma-separated policy names (default: all registered)")] = None,
    rates: Annotated[str, typer.Option(help="comma-separated arrival rates, requests/s")] = "",
    loads: Annotated[str, typer.Option(
        help="comma-separated loads (multiples of the device's estimated capacity) instead "
        "of --rates")] = "",
    arrival: ArrivalOpt = "poisson",
    cv: CvOpt = DEFAULT_CV,
    num_requests: NumRequestsOpt = 200,
    seed: SeedOpt = 0,
    latency_model: LatencyOpt = "paper",
    policy_option: PolicyOptionOpt = None,
    class_defaults: ClassDefaultsOpt = None,
    max_time_s: MaxTimeOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="worker processes")] = 1,
    online_latency: OnlineLatencyOpt = True,
    slowdown: SlowdownOpt = None,
    metric: MetricOpt = "slo_attainment",
    out: Annotated[Path | None, typer.Option(help="write the JSON list of runs here")] = None,
    plot: PlotOpt = None,
    e2e_rate: E2eRateOpt = None,
) -> None:
    """Run every policy at every rate on the same traffic: a table, a JSON list, plots."""
    from tqdm import tqdm

    from sliceserve.policies.registry import policy_names
    from sliceserve.sim.run import sweep as run_sweep

    _check_common(num_requests, seed, cv, arrival)
    _check_positive("--max-time-s", max_time_s)
    if metric not in METRICS:
        raise BadInput(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if jobs < 1:
        raise BadInput(f"--jobs must be >= 1, got {jobs}")
    names = _parse_names(policies) if policies is not None else policy_names()
    trace = is_trace_path(workload)
    load_of: dict[float, float] = {}
    estimate: dict[str, Any] = {}
    if loads:
        from sliceserve.sim.run import load_latency_model

        if rates:
            raise BadInput("give --rates or --loads, not both")
        load_list = _parse_rates(loads.replace(" ", ""), "--loads")
        rates_from, estimate = rates_for_loads(load_list, workload,
                                               load_latency_model(latency_model))
        load_of = dict(zip(rates_from, load_list))
        rates = ",".join(repr(r) for r in rates_from)
    rate_list = [] if trace and not rates else _parse_rates(rates)
    if trace and rates:
        print("note: a trace replays its own arrival times; --rates is ignored",
              file=sys.stderr)
    if e2e_rate is not None and e2e_rate not in rate_list:
        raise BadInput(f"--e2e-rate {e2e_rate:g} is not one of --rates")
    options = parse_policy_options(policy_option or [], names)
    total = len(names) * (1 if trace else len(rate_list))
    with tqdm(total=total, desc="sweep", unit="run", disable=None, file=sys.stderr) as bar:
        def progress(done: int, total: int, run: dict[str, Any]) -> None:
            bar.set_postfix_str(f"{run['policy']} @ {run['rate_rps'] or 'trace'}")
            bar.update(1)

        runs = run_sweep(workload, names, rate_list, arrival, num_requests, seed, latency_model,
                         options, cv=cv, class_defaults=class_defaults, max_time_s=max_time_s,
                         jobs=jobs, progress=progress, online_latency=online_latency,
                         slowdown=_slowdown(slowdown))
    for run in runs:
        if run["rate_rps"] in load_of:
            run.update(load=load_of[run["rate_rps"]], capacity_estimate=estimate)
    _console().print(sweep_table(runs, metric))
    if out is not None:
        _write(out, dumps(runs))
    if plot is not None:
        _plot(runs, plot, e2e_rate, metric)


def show(
    results: Annotated[list[Path], typer.Argument(help="result JSON files (a run or a list)")],
    plot: PlotOpt = None,
    metric: MetricOpt = "slo_attainment",
    e2e_rate: E2eRateOpt = None,
) -> None:
    """Print the tables of result files (and plot them)."""
    if metric not in METRICS:
        raise BadInput(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    runs = [run for path in results for run in load_results(path)]
    console = _console()
    if len(runs) == 1:
        console.print(run_table(runs[0]))
        console.print(home_metrics_table(runs[0]))
    else:
        console.print(sweep_table(runs, metric))
    if plot is not None:
        _plot(runs, plot, e2e_rate, metric)


def workload(
    name: Annotated[str, typer.Argument(help=WORKLOAD_HELP.split(", or a .jsonl")[0])],
    latency_model: Annotated[str | None, typer.Option(
        "--latency-model", "-l", help=LATENCY_HELP + " (resolves relative SLOs)")] = None,
) -> None:
    """Validate a workload and show its classes (SLOs resolved at the mid lengths)."""
    spec = load_workload(name)
    model = LatencyModel.load(latency_model) if latency_model else None
    _console().print(workload_table(spec, model))


def policies() -> None:
    """List the registered policies, each with its options and their defaults."""
    import dataclasses

    from sliceserve.policies.registry import policy_class, policy_names

    for name in policy_names():
        print(name)
        for field in dataclasses.fields(policy_class(name).Options):
            print(f"    {field.name} = {field.default!r}")


def _plot(runs: list[dict[str, Any]], path: Path, e2e_rate: float | None, metric: str) -> None:
    from sliceserve.metrics.plots import plot_runs

    try:
        plot_runs(runs, path, e2e_rate=e2e_rate, metric=metric)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror}") from None
    print(f"wrote {path}", file=sys.stderr)
