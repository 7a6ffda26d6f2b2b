"""`sliceserve bench`: replay a workload against any OpenAI-compatible server, live.

A plain function here; `sliceserve.cli` registers it on the app, in help order.
"""

from __future__ import annotations

import math
import secrets
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sliceserve.cli.common import (
    ArrivalOpt,
    BadInput,
    ClassDefaultsOpt,
    CvOpt,
    LoadOpt,
    OutOpt,
    PlotOpt,
    SeedOpt,
    TableOpt,
    WorkloadOpt,
    _check_common,
    _check_positive,
    _console,
    _write,
    progress_bar,
)
from sliceserve.workloads import DEFAULT_CV, is_trace_path

SLO_SCALES = ("absolute", "relative")


def bench(
    base_url: Annotated[str, typer.Option(help="the server, e.g. http://127.0.0.1:8000")],
    workload: WorkloadOpt = "edge",
    rate: Annotated[float | None, typer.Option(
        "--rate", "-r", help="mean arrival rate, requests/s (default 1.0)")] = None,
    load: LoadOpt = None,
    arrival: ArrivalOpt = "poisson",
    cv: CvOpt = DEFAULT_CV,
    burstiness: Annotated[float | None, typer.Option(
        help="gamma arrivals by vLLM's burstiness (shape; cv = 1 / sqrt(burstiness))")] = None,
    num_requests: Annotated[int | None, typer.Option(
        "--num-requests", "-n", help="requests to send (default 100)")] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", help="send the requests that arrive within this many seconds")] = None,
    seed: SeedOpt = 0,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="the model name the server serves (default: its first)")] = None,
    tokenizer: Annotated[str | None, typer.Option(
        help="the model's tokenizer (a folder or tokenizer.json) to make prompts of exact "
        "lengths (default: the embedded SmolLM2's)")] = None,
    system: Annotated[str, typer.Option(
        help="what serves: sliceserve, vllm, llama.cpp, llama-cpp-python or any name "
        "(picks how to force output lengths and which fields to send)")] = "openai",
    policy: Annotated[str | None, typer.Option(
        "--policy", "-p", help="the server's scheduling policy, for the result file "
        "(e.g. slice, fcfs, priority; default: the system's name)")] = None,
    slo_scale: Annotated[str, typer.Option(
        help="absolute: SLOs from --latency-model (this machine's sliceserve profile), the "
        "same for every system; relative: from this system's own measured batch-1 speed")
    ] = "absolute",
    latency_model: Annotated[str | None, typer.Option(
        "--latency-model", "-l", help="the device's latency model (JSON or preset): "
        "absolute SLOs and --load")] = None,
    api_key: Annotated[str | None, typer.Option(help="sent as a bearer token")] = None,
    timeout_s: Annotated[float, typer.Option(help="per-request time limit, s")] = 600.0,
    max_run_s: Annotated[float | None, typer.Option(
        help="end the run this many seconds after its start: what is unfinished then counts "
        "as aborted (time_limit)")] = None,
    force_length: Annotated[str | None, typer.Option(
        help="ignore_eos, logit_bias (on --eos-ids) or none (default: the system's)")] = None,
    eos_ids: Annotated[str | None, typer.Option(
        help="comma-separated EOS token ids for --force-length logit_bias")] = None,
    send_slo: Annotated[bool | None, typer.Option(
        "--send-slo/--no-send-slo", help="send the SLO extension fields")] = None,
    slo_format: Annotated[str | None, typer.Option(
        help="how the SLO is sent: sliceserve (slo, utility, slo_class) or vllm_xargs (flat, "
        "for the sliceserve plug-in inside vLLM); default: the system's")] = None,
    send_priority: Annotated[bool | None, typer.Option(
        "--send-priority/--no-send-priority", help="send vLLM's priority (utility rank)")
    ] = None,
    endpoint: Annotated[str, typer.Option(help="completions or chat")] = "completions",
    extra_body: Annotated[str | None, typer.Option(
        help="a JSON object merged into every request body")] = None,
    prompt_salt: Annotated[int | None, typer.Option(
        help="seed of the prompt texts (default: fresh each run; lengths come from --seed)")
    ] = None,
    class_defaults: ClassDefaultsOpt = None,
    out: OutOpt = None,
    plot: PlotOpt = None,
    table: TableOpt = True,
) -> None:
    """Benchmark an OpenAI-compatible server with a workload: client-side TTFT/TPOT, SLOs."""
    from sliceserve.bench import http_bench
    from sliceserve.bench.machine import device_label
    from sliceserve.bench.systems import client_options, parse_extra_body
    from sliceserve.metrics.results import dumps
    from sliceserve.metrics.table import home_metrics_table, run_table

    _check_common(num_requests or 1, seed, cv, arrival)
    for name, value in (("--rate", rate), ("--duration", duration), ("--timeout-s", timeout_s),
                        ("--burstiness", burstiness), ("--max-run-s", max_run_s)):
        _check_positive(name, value)
    if slo_scale not in SLO_SCALES:
        raise BadInput(f"--slo-scale must be one of {', '.join(SLO_SCALES)}, got {slo_scale!r}")
    if num_requests is not None and duration is not None:
        raise BadInput("give --num-requests or --duration, not both")
    if burstiness is not None:
        arrival, cv = "gamma", 1.0 / math.sqrt(burstiness)
    options = client_options(
        system, force_length=force_length, send_slo=send_slo, slo_format=slo_format,
        send_priority=send_priority,
        endpoint=endpoint, extra_body=parse_extra_body(extra_body) or None,
        eos_ids=_parse_ids(eos_ids))
    spec, device_model, rate_rps, load_info = _plan(workload, latency_model, rate, load,
                                                    slo_scale)
    info = http_bench.server_info(base_url, api_key)
    target = http_bench.Target(base_url, model or http_bench.served_model(info), options,
                               api_key, timeout_s, max_run_s)
    maker = _prompt_maker(tokenizer)
    if options.force_length == "logit_bias" and not options.eos_ids:
        from dataclasses import replace

        options = replace(options, eos_ids=maker.special_ids)
        target = replace(target, options=options)
    salt = prompt_salt if prompt_salt is not None else secrets.randbelow(2**31)
    extra: dict[str, Any] = {"server": http_bench.server_summary(info), "prompt_salt": salt,
                             "tokenizer": maker.name, **load_info}
    slo_model = device_model
    if slo_scale == "relative":
        from sliceserve.bench.speed import measure_speed

        print("measuring the server's batch-1 decode and prefill speed ...", file=sys.stderr)
        slo_model, raw = measure_speed(target, maker, salt=salt, device=device_label())
        extra["measured_speed"] = raw
        print(f"l1 = {slo_model.decode_ms[0]:.1f} ms, pf(512) = "
              f"{slo_model.prefill_ms(512):.0f} ms", file=sys.stderr)
    traffic = _traffic(workload, spec, slo_model, rate_rps, arrival, cv, seed, num_requests,
                       duration, class_defaults)
    prompts = [s.prompt or maker.text(s.num_prompt_tokens, seed, salt, i)
               for i, s in enumerate(traffic.requests)]
    with progress_bar(len(prompts), "bench") as update:
        run = http_bench.bench_traffic(
            traffic, target, prompts, slo_scale=slo_scale,
            latency_model_name=slo_model.name if slo_model else "", device=device_label(),
            policy=policy or options.system, progress=update, extra_client=extra)
    if table:
        _console().print(run_table(run))
        _console().print(home_metrics_table(run))
    if out is not None:
        _write(out, dumps(run))
    if plot is not None:
        from sliceserve.cli.sim_commands import _plot

        _plot([run], plot, None, "slo_attainment")
    wrong = run["client"]["output_length"]["wrong"]
    if wrong:
        print(f"error: {wrong} requests did not generate exactly max_tokens tokens (counted "
              "as not met): the server ignored the forced length; see --force-length",
              file=sys.stderr)
        raise typer.Exit(1)


def _parse_ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadInput(f"--eos-ids must be comma-separated integers, got {text!r}") from None


def _plan(workload: str, latency_model: str | None, rate: float | None, load: float | None,
          slo_scale: str) -> tuple[Any, Any, float, dict[str, Any]]:
    """(workload spec or None for a trace, the device's latency model, rate, load facts)."""
    from sliceserve.latency_model import LatencyModel
    from sliceserve.workloads import load_workload
    from sliceserve.workloads.load import rate_for_load

    device_model = LatencyModel.load(latency_model) if latency_model else None
    spec = None if is_trace_path(workload) else load_workload(workload)
    if rate is not None and load is not None:
        raise BadInput("give --rate or --load, not both")
    if load is not None:
        _check_positive("--load", load)
        if spec is None:
            raise BadInput("--load needs a generated workload, not a trace")
        if device_model is None:
            raise BadInput("--load needs --latency-model (the device's profile), so that "
                           "every system gets the same rate")
        rate_rps, estimate = rate_for_load(load, spec, device_model)
        return spec, device_model, rate_rps, {"load": load,
                                              "capacity_estimate": estimate.to_dict()}
    needs_model = spec is not None and spec.is_device_relative
    if slo_scale == "absolute" and needs_model and device_model is None:
        raise BadInput(f"workload {spec.name!r} has SLOs relative to the device: give "  # type: ignore[union-attr]
                       "--latency-model (e.g. from `sliceserve profile --out dev.json`) or "
                       "--slo-scale relative")
    return spec, device_model, rate if rate is not None else 1.0, {}


def _traffic(workload: str, spec: Any, slo_model: Any, rate_rps: float, arrival: str,
             cv: float, seed: int, num_requests: int | None, duration: float | None,
             class_defaults: str | None) -> Any:
    from dataclasses import replace

    from sliceserve.workloads import make_traffic

    count = num_requests or 100
    if duration is not None:  # enough requests to cover it; the same seed keeps their content
        count = max(10, math.ceil(rate_rps * duration * 2 + 20))
    traffic = make_traffic(spec if spec is not None else workload, arrival=arrival,
                           rate_rps=rate_rps, num_requests=count, seed=seed,
                           latency_model=slo_model, cv=cv, class_defaults=class_defaults)
    if duration is not None:
        kept = tuple(r for r in traffic.requests if r.arrival_s <= duration)
        if not kept:
            raise BadInput(f"no request arrives within --duration {duration:g} s")
        traffic = replace(traffic, requests=kept)
    return traffic


def _prompt_maker(tokenizer: str | None) -> Any:
    from sliceserve.bench.prompts import PromptMaker, default_tokenizer_path, load_tokenizer_file

    path = Path(tokenizer) if tokenizer else default_tokenizer_path()
    return PromptMaker(load_tokenizer_file(path), str(path))
