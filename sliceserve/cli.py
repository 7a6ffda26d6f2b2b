"""The `sliceserve` command line: simulate one run, sweep policies x rates, inspect results.

    sliceserve simulate --workload edge --policy orca --rate 1.5 --out run.json
    sliceserve sweep --workload paper --policies orca,slice --rates 0.2,0.4,0.8 \
        --out sweep.json --plot sweep.png
    sliceserve show sweep.json --plot sweep.png
    sliceserve workload edge --latency-model paper
    sliceserve profile --model smollm2-135m --out profile.json --plot profile.png
    sliceserve run --workload edge --policy slice --rate 0.4 -n 60 --out live.json \
        --trace-out edge.jsonl --latency-model profile.json

Bad input ends with one line `error: ...` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sliceserve.latency_model import LatencyModel
from sliceserve.latency_model import list_presets as latency_presets
from sliceserve.metrics.results import dumps, load_results
from sliceserve.metrics.table import run_table, sweep_table, workload_table
from sliceserve.workloads import ARRIVALS, DEFAULT_CV, is_trace_path, load_workload
from sliceserve.workloads import list_presets as workload_presets

try:  # recent typer vendors click as typer._click; older versions raise click's own
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException, UsageError  # type: ignore[no-redef]

EXIT_BAD_INPUT = 2
METRICS = ("slo_attainment", "slo_attainment_strict", "utility_attainment")
MODEL_DTYPES = ("bfloat16", "float16", "float32")  # sliceserve.model.runner.DTYPES, without torch

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="SLO-aware LLM serving for edge devices: simulate and compare "
                       "policies, profile a model on this device, serve workloads live.")

WORKLOAD_HELP = (f"a preset ({', '.join(workload_presets())}), a workload JSON file, or a "
                 ".jsonl trace (replayed at its own arrival times; --rate is then ignored)")
LATENCY_HELP = f"a preset ({', '.join(latency_presets())}) or a latency model JSON file"
OPTION_HELP = ("a policy option key=value (value parsed as JSON, else a string); "
               "policy.key=value applies to one policy only; repeatable")


class BadInput(ValueError):
    """A user error found by the CLI itself."""


# --- argument helpers ---

def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise BadInput(f"{name} must be a positive number, got {value:g}")


def _check_common(num_requests: int, seed: int, cv: float, arrival: str) -> None:
    if num_requests < 1:
        raise BadInput(f"--num-requests must be >= 1, got {num_requests}")
    if seed < 0:
        raise BadInput(f"--seed must be >= 0, got {seed}")
    _check_positive("--cv", cv)
    if arrival not in ARRIVALS:
        raise BadInput(f"--arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r} "
                       "(give a .jsonl --workload to replay a trace)")


def _parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadInput(f"--rates must be comma-separated numbers, got {text!r}") from None
    if not rates:
        raise BadInput("--rates needs at least one rate")
    for rate in rates:
        _check_positive("every rate in --rates", rate)
    return list(dict.fromkeys(rates))


def _parse_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise BadInput("--policies needs at least one policy name")
    return list(dict.fromkeys(names))


def parse_policy_options(items: Sequence[str], policies: Sequence[str]) -> dict[str, dict]:
    """`key=value` for every policy, `policy.key=value` for one; values parsed as JSON."""
    options: dict[str, dict[str, Any]] = {p: {} for p in policies}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--policy-option must look like key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target, dot, name = key.strip().rpartition(".")
        if dot and target not in options:
            raise BadInput(f"--policy-option {item!r} names policy {target!r}, which is not "
                           f"in this run ({', '.join(policies)})")
        for policy in [target] if dot else policies:
            options[policy][name] = value
    return options


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror}") from None
    print(f"wrote {path}", file=sys.stderr)


# --- commands ---

# Options shared by `simulate` and `sweep`.
WorkloadOpt = Annotated[str, typer.Option("--workload", "-w", help=WORKLOAD_HELP)]
ArrivalOpt = Annotated[str, typer.Option(help="poisson or gamma")]
CvOpt = Annotated[float, typer.Option(help="coefficient of variation of gamma arrivals")]
NumRequestsOpt = Annotated[int, typer.Option("--num-requests", "-n")]
SeedOpt = Annotated[int, typer.Option("--seed", "-s")]
LatencyOpt = Annotated[str, typer.Option("--latency-model", "-l", help=LATENCY_HELP)]
PolicyOptionOpt = Annotated[list[str] | None,
                            typer.Option("--policy-option", help=OPTION_HELP)]
ClassDefaultsOpt = Annotated[str | None, typer.Option(
    help="for a trace: a workload whose classes give SLO defaults")]
MaxTimeOpt = Annotated[float | None, typer.Option(
    help="abort what is unfinished at this virtual time (s)")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="write the plots here (PNG)")]
MetricOpt = Annotated[str, typer.Option(help=f"table metric: {', '.join(METRICS)}")]
E2eRateOpt = Annotated[float | None, typer.Option(
    help="rate of the E2E bar chart (default: the heaviest)")]


@app.command()
def simulate(
    workload: WorkloadOpt,
    policy: Annotated[str, typer.Option("--policy", "-p", help="a registered policy name")],
    rate: Annotated[float | None, typer.Option(
        "--rate", "-r", help="mean arrival rate, requests/s (default 1.0)")] = None,
    arrival: ArrivalOpt = "poisson",
    cv: CvOpt = DEFAULT_CV,
    num_requests: NumRequestsOpt = 200,
    seed: SeedOpt = 0,
    latency_model: LatencyOpt = "paper",
    policy_option: PolicyOptionOpt = None,
    class_defaults: ClassDefaultsOpt = None,
    max_time_s: MaxTimeOpt = None,
    out: Annotated[Path | None, typer.Option(help="write the result JSON here")] = None,
    table: Annotated[bool, typer.Option(help="print the console table")] = True,
) -> None:
    """Simulate one run of a workload under one policy: a table and a result JSON."""
    from sliceserve.sim.run import simulate_run

    _check_common(num_requests, seed, cv, arrival)
    _check_positive("--rate", rate)
    _check_positive("--max-time-s", max_time_s)
    if rate is not None and is_trace_path(workload):
        print("note: a trace replays its own arrival times; --rate is ignored", file=sys.stderr)
    options = parse_policy_options(policy_option or [], [policy])[policy]
    run = simulate_run(workload, policy, rate if rate is not None else 1.0, arrival,
                       num_requests, seed, latency_model, options, cv=cv,
                       class_defaults=class_defaults, max_time_s=max_time_s)
    if table:
        _console().print(run_table(run))
    if out is not None:
        _write(out, dumps(run))


@app.command()
def sweep(
    workload: WorkloadOpt,
    policies: Annotated[str | None, typer.Option(
        help="comma-separated policy names (default: all registered)")] = None,
    rates: Annotated[str, typer.Option(help="comma-separated arrival rates, requests/s")] = "",
    arrival: ArrivalOpt = "poisson",
    cv: CvOpt = DEFAULT_CV,
    num_requests: NumRequestsOpt = 200,
    seed: SeedOpt = 0,
    latency_model: LatencyOpt = "paper",
    policy_option: PolicyOptionOpt = None,
    class_defaults: ClassDefaultsOpt = None,
    max_time_s: MaxTimeOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="worker processes")] = 1,
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
                         jobs=jobs, progress=progress)
    _console().print(sweep_table(runs, metric))
    if out is not None:
        _write(out, dumps(runs))
    if plot is not None:
        _plot(runs, plot, e2e_rate, metric)


@app.command()
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
    else:
        console.print(sweep_table(runs, metric))
    if plot is not None:
        _plot(runs, plot, e2e_rate, metric)


@app.command()
def workload(
    name: Annotated[str, typer.Argument(help=WORKLOAD_HELP.split(", or a .jsonl")[0])],
    latency_model: Annotated[str | None, typer.Option(
        "--latency-model", "-l", help=LATENCY_HELP + " (resolves relative SLOs)")] = None,
) -> None:
    """Validate a workload and show its classes (SLOs resolved at the mid lengths)."""
    spec = load_workload(name)
    model = LatencyModel.load(latency_model) if latency_model else None
    _console().print(workload_table(spec, model))


@app.command()
def policies() -> None:
    """List the registered policies, each with its options and their defaults."""
    import dataclasses

    from sliceserve.policies.registry import policy_class, policy_names

    for name in policy_names():
        print(name)
        for field in dataclasses.fields(policy_class(name).Options):
            print(f"    {field.name} = {field.default!r}")


# Options of the commands that load a real model (`profile`, `run`).
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="smollm2-135m (default), a Hugging Face folder or a .gguf file")]
DtypeOpt = Annotated[str, typer.Option(help="bfloat16, float16 or float32")]
DeviceOpt = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="torch CPU threads (default: torch's choice)")]
KvCacheOpt = Annotated[float | None, typer.Option(
    "--kv-cache-gb", help="KV cache memory budget, GB (default: the runner's)")]


def _check_model_options(dtype: str, threads: int | None, kv_cache_gb: float | None) -> None:
    if dtype not in MODEL_DTYPES:
        raise BadInput(f"--dtype must be one of {', '.join(MODEL_DTYPES)}, got {dtype!r}")
    if threads is not None and threads < 1:
        raise BadInput(f"--threads must be >= 1, got {threads}")
    _check_positive("--kv-cache-gb", kv_cache_gb)


@app.command()
def profile(
    model: ModelOpt = None,
    dtype: DtypeOpt = "bfloat16",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    kv_cache_gb: KvCacheOpt = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="the start-up calibration: fewer points, one repeat")] = False,
    repeats: Annotated[int | None, typer.Option(help="timed runs per point (median)")] = None,
    cache: Annotated[bool, typer.Option(
        help="store the result as this model's cached profile on this device")] = True,
    cache_busy: Annotated[bool, typer.Option(
        "--cache-busy", help="cache it even if the machine was busy while measuring")] = False,
    out: Annotated[Path | None, typer.Option(
        help="write the fitted latency model here (JSON; raw points beside it)")] = None,
    plot: PlotOpt = None,
) -> None:
    """Measure decode and prefill latency on this device and fit the latency model."""
    from sliceserve.bench import profile_report as report
    from sliceserve.model import profiler

    _check_model_options(dtype, threads, kv_cache_gb)
    if repeats is not None and repeats < 1:
        raise BadInput(f"--repeats must be >= 1, got {repeats}")
    runner, name = _load_runner(model, dtype, device, threads, kv_cache_gb)
    key = profiler.profile_key(runner, name)
    settings = dict(profiler.QUICK) if quick else {}
    if repeats is not None:
        settings["repeats"] = repeats
    measured, fitted = _measure(runner, name, settings,
                                "quick calibration;" if quick else "sliceserve profile;")
    console = _console()
    for table in (report.decode_table(measured, fitted), report.prefill_table(measured, fitted),
                  report.model_table(fitted, measured)):
        console.print(table)
    if cache and profiler.measured_on_busy_machine(measured) and not cache_busy:
        print(f"warning: other processes competed for the CPU (load average "
              f"{measured.load_average}); not cached as this device's profile (rerun on a "
              "quiet machine, or pass --cache-busy)", file=sys.stderr)
    elif cache:
        print(f"cached as {profiler.store_profile(key, fitted, measured)}", file=sys.stderr)
    if out is not None:
        _write(out, report.latency_model_json(fitted))
        _write(report.points_path(out), report.points_json(measured, fitted))
    if plot is not None:
        try:
            report.plot_profile(measured, fitted, plot)
        except OSError as e:
            raise BadInput(f"cannot write {plot}: {e.strerror}") from None
        print(f"wrote {plot}", file=sys.stderr)


@app.command()
def run(
    workload: WorkloadOpt,
    policy: Annotated[str, typer.Option("--policy", "-p", help="a registered policy name")],
    rate: Annotated[float | None, typer.Option(
        "--rate", "-r", help="mean arrival rate, requests/s (default 0.5)")] = None,
    model: ModelOpt = None,
    arrival: ArrivalOpt = "poisson",
    cv: CvOpt = DEFAULT_CV,
    num_requests: NumRequestsOpt = 50,
    seed: SeedOpt = 0,
    latency_model: Annotated[str | None, typer.Option(
        "--latency-model", "-l", help="a latency model JSON file or preset (default: this "
        "device's cached profile, or a quick calibration)")] = None,
    policy_option: PolicyOptionOpt = None,
    class_defaults: ClassDefaultsOpt = None,
    max_time_s: Annotated[float | None, typer.Option(
        help="abort what is unfinished this many seconds into the run")] = None,
    dtype: DtypeOpt = "bfloat16",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    kv_cache_gb: KvCacheOpt = None,
    out: Annotated[Path | None, typer.Option(help="write the result JSON here")] = None,
    trace_out: Annotated[Path | None, typer.Option(
        help="write the exact requests as a .jsonl trace (`simulate -w` replays it)")] = None,
    profile_out: Annotated[Path | None, typer.Option(
        help="profile the model in this process first, run with that latency model and write "
        "it here (JSON; raw points beside it): a replay of the trace then simulates the very "
        "device state the run had")] = None,
    table: Annotated[bool, typer.Option(help="print the console table")] = True,
) -> None:
    """Serve a workload on the real engine, arrivals in wall time: a table and a result JSON."""
    from sliceserve.bench import live
    from sliceserve.model.profiler import device_name, warm_up
    from sliceserve.workloads import make_traffic

    _check_common(num_requests, seed, cv, arrival)
    _check_positive("--rate", rate)
    _check_positive("--max-time-s", max_time_s)
    _check_model_options(dtype, threads, kv_cache_gb)
    if trace_out is not None and trace_out.suffix != ".jsonl":
        raise BadInput(f"--trace-out must name a .jsonl file, got {trace_out}")
    if profile_out is not None and latency_model is not None:
        raise BadInput("give --latency-model or --profile-out, not both")
    if rate is not None and is_trace_path(workload):
        print("note: a trace replays its own arrival times; --rate is ignored", file=sys.stderr)
    options = parse_policy_options(policy_option or [], [policy])[policy]
    traffic_args: dict[str, Any] = dict(
        arrival=arrival, rate_rps=rate if rate is not None else 0.5, num_requests=num_requests,
        seed=seed, cv=cv, class_defaults=class_defaults)
    # Bad workloads, latency models and policies fail here, before a model is loaded.
    given_model = LatencyModel.load(latency_model) if latency_model else None
    make_traffic(workload, latency_model=given_model or LatencyModel.load("paper"),
                 **traffic_args)
    from sliceserve.engine.build import build_engine

    if profile_out is not None:  # a stand-in until this process's profile replaces it
        given_model = LatencyModel.load("paper")
    engine = build_engine(model, policy, options, dtype=dtype, device=device,
                          kv_cache_memory_gb=kv_cache_gb, num_threads=threads,
                          latency_model=given_model)
    model_lm = engine.latency_model
    if profile_out is not None:
        from sliceserve.bench import profile_report as report

        measured, model_lm = _measure(engine.runner, engine.model_name, {},
                                      "sliceserve run --profile-out;")
        _write(profile_out, report.latency_model_json(model_lm))
        _write(report.points_path(profile_out), report.points_json(measured, model_lm))
    traffic = make_traffic(workload, latency_model=model_lm, **traffic_args)
    if trace_out is not None:
        _write_trace(traffic, trace_out)
    requests = live.live_requests(
        traffic, engine.vocab_size, seed=seed,
        special_ids=getattr(engine.tokenizer, "all_special_ids", ()), encode=engine.encode)
    warm_up(engine.runner)
    result = live.run_live(traffic, engine.runner, policy, model_lm, engine.config, requests,
                           policy_options=options, model_id=engine.model_name,
                           device=device_name(device), max_time_s=max_time_s)
    if table:
        _console().print(run_table(result))
    if out is not None:
        _write(out, dumps(result))


# --- helpers of the commands ---

def _plot(runs: list[dict[str, Any]], path: Path, e2e_rate: float | None, metric: str) -> None:
    from sliceserve.metrics.plots import plot_sweep

    try:
        plot_sweep(runs, path, e2e_rate=e2e_rate, metric=metric)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror}") from None
    print(f"wrote {path}", file=sys.stderr)


def _load_runner(model: str | None, dtype: str, device: str, threads: int | None,
                 kv_cache_gb: float | None) -> tuple[Any, str]:
    """A model runner and the model's name (default: the embedded SmolLM2)."""
    from sliceserve.model.loader import DEFAULT_MODEL, resolve_model
    from sliceserve.model.runner import ModelRunner, RunnerConfig

    folder = resolve_model(model)
    runner = ModelRunner(folder, RunnerConfig(dtype=dtype, device=device, num_threads=threads,
                                              kv_cache_memory_gb=kv_cache_gb))
    return runner, DEFAULT_MODEL if model is None else str(model)


def _measure(runner: Any, name: str, settings: dict[str, Any], notes: str) -> tuple[Any, Any]:
    """Profile `runner` (a progress bar on stderr) and fit: (Profile, LatencyModel)."""
    from tqdm import tqdm

    from sliceserve.model import profiler

    key = profiler.profile_key(runner, name)
    with tqdm(desc="profile", unit="it", disable=None, file=sys.stderr) as bar:
        def progress(done: int, total: int, what: str) -> None:
            bar.total = total
            bar.set_postfix_str(what)
            bar.update(done - bar.n)

        measured = profiler.profile_runner(runner, model=name, progress=progress, **settings)
    fitted = profiler.fit_latency_model(measured, profiler.model_name(name, key), key.device,
                                        name, notes=notes)
    return measured, fitted


def _write_trace(traffic: Any, path: Path) -> None:
    from sliceserve.bench.live import write_trace

    try:
        write_trace(traffic, path)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror}") from None
    print(f"wrote {path}", file=sys.stderr)


# --- entry point ---

def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the app; bad input -> one `error:` line on stderr, exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="sliceserve", standalone_mode=False)
    except UsageError as e:
        where = f" (see: sliceserve {e.ctx.info_name} --help)" if e.ctx else ""
        if e.ctx is not None and e.ctx.parent is None:
            where = " (see: sliceserve --help)"
        print(f"error: {_one_line(e.format_message())}{where}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except ClickException as e:
        print(f"error: {_one_line(e.format_message())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as e:
        message = str(e)
        if isinstance(e, OSError) and e.strerror:
            message = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
        print(f"error: {_one_line(message)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
