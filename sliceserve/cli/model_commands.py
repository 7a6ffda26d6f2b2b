"""The commands that load a real model: `profile` and `run` (torch loads only when one runs).

They are plain functions here; `sliceserve.cli` registers them on the app, in help order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sliceserve.cli.backend_options import (
    BackendOpt,
    BatchOpt,
    CtxSizeOpt,
    GpuLayersOpt,
    SeqsOpt,
    llamacpp_options,
)
from sliceserve.cli.common import (
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
    _write,
    parse_policy_options,
    progress_bar,
)
from sliceserve.cli.model_common import (
    DeviceOpt,
    DtypeOpt,
    KvCacheOpt,
    ModelOpt,
    QuantOpt,
    ThreadsOpt,
    check_model_options,
    load_runner,
    machine_line,
)
from sliceserve.cli.model_helpers import apply_load, check_load, measure, write_trace
from sliceserve.engine.config import EngineConfig
from sliceserve.latency_model import LatencyModel
from sliceserve.metrics.results import dumps
from sliceserve.metrics.table import home_metrics_table, run_table
from sliceserve.workloads import DEFAULT_CV, is_trace_path


def profile(
    model: ModelOpt = None,
    dtype: DtypeOpt = "auto",
    quantization: QuantOpt = "none",
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
    backend: BackendOpt = "torch",
    ctx_size: CtxSizeOpt = None,
    kv_seqs: SeqsOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    batch_size: BatchOpt = None,
) -> None:
    """Measure decode and prefill latency on this device and fit the latency model."""
    from sliceserve.bench import profile_report as report
    from sliceserve.model import profile_cache, profiler

    check_model_options(dtype, threads, kv_cache_gb, quantization)
    if repeats is not None and repeats < 1:
        raise BadInput(f"--repeats must be >= 1, got {repeats}")
    runner, name = load_runner(EngineConfig(
        model=model, dtype=dtype, quantization=quantization, device=device,
        num_threads=threads, kv_cache_memory_gb=kv_cache_gb, backend=backend,
        llamacpp=llamacpp_options(ctx_size, kv_seqs, n_gpu_layers, batch_size)))
    print(machine_line(runner), file=sys.stderr)
    key = profile_cache.profile_key(runner, name)
    settings = dict(profiler.QUICK) if quick else {}
    if repeats is not None:
        settings["repeats"] = repeats
    measured, fitted = measure(runner, name, settings,
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
        print(f"cached as {profile_cache.store_profile(key, fitted, measured)}", file=sys.stderr)
    if out is not None:
        _write(out, report.latency_model_json(fitted))
        _write(report.points_path(out), report.points_json(measured, fitted))
    if plot is not None:
        try:
            report.plot_profile(measured, fitted, plot)
        except OSError as e:
            raise BadInput(f"cannot write {plot}: {e.strerror}") from None
        print(f"wrote {plot}", file=sys.stderr)


def run(
    workload: WorkloadOpt,
    policy: PolicyOpt,
    rate: Annotated[float | None, typer.Option(
        "--rate", "-r", help="mean arrival rate, requests/s (default 0.5)")] = None,
    load: LoadOpt = None,
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
    dtype: DtypeOpt = "auto",
    quantization: QuantOpt = "none",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    kv_cache_gb: KvCacheOpt = None,
    out: OutOpt = None,
    trace_out: Annotated[Path | None, typer.Option(
        help="write the exact requests as a .jsonl trace (`simulate -w` replays it)")] = None,
    profile_out: Annotated[Path | None, typer.Option(
        help="profile the model in this process first, run with that latency model and write "
        "it here (JSON; raw points beside it): a replay of the trace then simulates the very "
        "device state the run had")] = None,
    calibrated_out: Annotated[Path | None, typer.Option(
        help="also write the latency model rescaled to this run's measured iterations "
        "(JSON), and print how well the model predicted them")] = None,
    iterations_out: Annotated[Path | None, typer.Option(
        help="write every executed iteration (shape, measured ms, the pause before it) as "
        "JSON Lines")] = None,
    online_latency: OnlineLatencyOpt = True,
    table: TableOpt = True,
    backend: BackendOpt = "torch",
    ctx_size: CtxSizeOpt = None,
    kv_seqs: SeqsOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    batch_size: BatchOpt = None,
) -> None:
    """Serve a workload on the real engine, arrivals in wall time: a table and a result JSON."""
    import logging

    from sliceserve.bench import live
    from sliceserve.model.precision import machine_block
    from sliceserve.model.profiler import device_name, warm_up

    # The online latency correction logs when a factor moves by 10% or more.
    latency_log = logging.getLogger("sliceserve.latency")
    if not latency_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        latency_log.addHandler(handler)
        latency_log.setLevel(logging.INFO)
    from sliceserve.workloads import make_traffic

    _check_common(num_requests, seed, cv, arrival)
    _check_positive("--rate", rate)
    check_load(load, rate, workload)
    _check_positive("--max-time-s", max_time_s)
    check_model_options(dtype, threads, kv_cache_gb, quantization)
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
    from sliceserve.engine.build import load_model

    config = EngineConfig(model=model, policy=policy, policy_options=options, dtype=dtype,
                          quantization=quantization, device=device,
                          kv_cache_memory_gb=kv_cache_gb, num_threads=threads,
                          latency_model=given_model, online_latency=online_latency,
                          backend=backend,
                          llamacpp=llamacpp_options(ctx_size, kv_seqs, n_gpu_layers, batch_size))
    # The model alone: run_live puts the policy and a fresh engine around it.
    loaded = load_model(config)
    print(machine_line(loaded.runner), file=sys.stderr)
    if profile_out is not None:
        from sliceserve.bench import profile_report as report

        measured, model_lm = measure(loaded.runner, loaded.model_name, {},
                                      "sliceserve run --profile-out;")
        _write(profile_out, report.latency_model_json(model_lm))
        _write(report.points_path(profile_out), report.points_json(measured, model_lm))
    else:
        model_lm = given_model or loaded.device_latency_model()
    load_info = apply_load(load, workload, model_lm, traffic_args)
    traffic = make_traffic(workload, latency_model=model_lm, **traffic_args)
    if trace_out is not None:
        write_trace(traffic, trace_out)
    from sliceserve.model.tokenizer import encode_prompt

    tokenizer = loaded.tokenizer
    requests = live.live_requests(
        traffic, int(loaded.runner.model_config.vocab_size), seed=seed,
        special_ids=getattr(tokenizer, "all_special_ids", ()),
        encode=lambda prompt: list(encode_prompt(tokenizer, prompt)))
    warm_up(loaded.runner)  # once, right before the run (after a profile, if any)
    from sliceserve.bench.calibrate import IterationRecorder, calibrate

    recorder = IterationRecorder(loaded.runner)
    with progress_bar(len(requests), f"run {policy}") as update:
        result = live.run_live(traffic, recorder, policy, model_lm, loaded.limits, requests,
                               policy_options=options, model_id=loaded.model_name,
                               device=device_name(device), max_time_s=max_time_s,
                               machine=machine_block(loaded.runner), progress=update,
                               online_latency=online_latency)
    result.update(load_info)
    correction = result.get("latency_correction")
    if correction is not None:
        print(f"online latency correction at the end: decode x{correction['decode_factor']:.3f}"
              f" ({correction['decode_samples']} decode iterations), prompt "
              f"x{correction['prompt_factor']:.3f} ({correction['prompt_samples']} samples)",
              file=sys.stderr)
    if calibrated_out is not None:
        from sliceserve.bench import profile_report as report

        calibrated, fit = calibrate(model_lm, recorder.iterations)
        _write(calibrated_out, report.latency_model_json(calibrated))
        print(f"latency model vs this run's iterations (measured / predicted): "
              f"{json.dumps(fit)}", file=sys.stderr)
    if iterations_out is not None:
        from sliceserve.bench.calibrate import write_iterations

        write_iterations(iterations_out, recorder.iterations)
    if table:
        _console().print(run_table(result))
        _console().print(home_metrics_table(result))
    if out is not None:
        _write(out, dumps(result))
