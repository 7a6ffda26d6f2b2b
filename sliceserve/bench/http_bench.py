"""A live benchmark of any OpenAI-compatible server: a workload's traffic replayed in wall time.

    target = Target("http://127.0.0.1:8000", model="smollm2", options=client_options("vllm"))
    run = bench_traffic(traffic, target, prompts, slo_scale="absolute")

Each request is sent at its arrival time (asyncio, one connection each, no client-side queue),
streamed, and timed on the client: arrival = when it was sent, one timestamp per output token
(sliceserve/bench/http_client.py). The records go through the project's metric functions
(sliceserve/metrics/slo.py: TTFT, TPOT = (last - first) / (n - 1), E2E, met, strict), so
simulator, engine and client share one definition; vLLM's `bench serve` defines TTFT, TPOT and
ITL (gaps between chunks) the same way, and goodput as met requests per second.

Equal work is checked on every request: a completed request whose output is not exactly its
`max_tokens` counts as not met (aborted, code "wrong_length") and the run reports how many;
the prompt tokens the server counted are compared with the workload's. The result object is
the simulator's (docs/RESULTS.md) with backend "http", plus `client` (how the run was made,
the checks, the server's own description), one row per request (`requests`) and, in each STATS,
`itl_ms` (besides `failures`, the requests not completed by reason, which every run has).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from sliceserve.bench.http_client import Outcome, send_request
from sliceserve.bench.systems import ClientOptions, request_body
from sliceserve.metrics.results import build_run
from sliceserve.metrics.slo import RequestRecord, is_met, latency_stats
from sliceserve.workloads import RequestSpec, Traffic

CODE_WRONG_LENGTH = "wrong_length"
DEFAULT_TIMEOUT_S = 600.0
Progress = Callable[[int, int, int], None]  # (done, met, total)


@dataclass(frozen=True)
class Target:
    """A server and how to talk to it."""

    base_url: str
    model: str
    options: ClientOptions
    api_key: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S  # per request
    max_run_s: float | None = None  # from the first arrival; what is unfinished then: aborted

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.options.path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def new_client() -> httpx.AsyncClient:
    # No connection limit: every request goes out at its arrival time, as users would send it.
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=None,
                                                 max_keepalive_connections=64))


async def serve_traffic(specs: Sequence[RequestSpec], prompts: Sequence[str], target: Target,
                        progress: Progress | None = None) -> tuple[float, list[Outcome]]:
    """Send every spec at its arrival time; (start time, outcomes in spec order)."""
    outcomes: list[Outcome | None] = [None] * len(specs)
    counts = {"done": 0, "met": 0}

    async with new_client() as client:
        async def one(i: int, spec: RequestSpec) -> None:
            body = request_body(spec, prompts[i], target.model, target.options)
            outcome = await send_request(client, target.url, body, timeout_s=target.timeout_s,
                                         headers=target.headers, run_deadline_s=deadline_s)
            outcomes[i] = outcome
            counts["done"] += 1
            counts["met"] += int(is_met(_record(spec, outcome, start_s)))
            if progress is not None:
                progress(counts["done"], counts["met"], len(specs))

        start_s = time.perf_counter()
        deadline_s = None if target.max_run_s is None else start_s + target.max_run_s
        tasks = []
        for i, spec in sorted(enumerate(specs), key=lambda item: item[1].arrival_s):
            delay_s = start_s + spec.arrival_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            tasks.append(asyncio.create_task(one(i, spec)))
        await asyncio.gather(*tasks)
    return start_s, [o for o in outcomes if o is not None]


def _record(spec: RequestSpec, outcome: Outcome, start_s: float) -> RequestRecord:
    """The metrics' record of one request; a wrong output length is a failure."""
    status, code = outcome.status, outcome.code
    times = outcome.token_times_s()
    if status == "completed" and len(times) != spec.num_output_tokens:
        status, code = "aborted", CODE_WRONG_LENGTH
    if status != "completed":
        times = times if status == "aborted" else []
    reason = {"completed": outcome.finish_reason or "length", "rejected": "rejected",
              "aborted": "abort"}[status]
    return RequestRecord(spec.request_id, spec.slo, outcome.sent_s - start_s,
                         tuple(t - start_s for t in times), spec.num_prompt_tokens,
                         status, reason, code)  # type: ignore[arg-type]


def _itl_ms(outcomes: Sequence[Outcome]) -> list[float]:
    return [(b - a) * 1000.0 for o in outcomes if o.status == "completed"
            for a, b in zip(o.chunk_times_s, o.chunk_times_s[1:])]


def checks(specs: Sequence[RequestSpec], outcomes: Sequence[Outcome],
           records: Sequence[RequestRecord], start_s: float) -> dict[str, Any]:
    """The run's equal-work and client checks (what the result file's `client` reports)."""
    ended = [(s, o) for s, o in zip(specs, outcomes) if o.status == "completed"]
    wrong = [{"request_id": s.request_id, "max_tokens": s.num_output_tokens,
              "got": o.num_output_tokens} for s, o in ended
             if len(o.token_times_s()) != s.num_output_tokens]
    diffs = Counter(o.num_prompt_tokens - s.num_prompt_tokens for s, o in ended
                    if o.num_prompt_tokens is not None)
    lags = [(o.sent_s - start_s - s.arrival_s) * 1000.0 for s, o in zip(specs, outcomes)]
    from_usage = sum(1 for _, o in ended if o.usage and "completion_tokens" in o.usage)
    reports = [(r, o.slo_report) for r, o in zip(records, outcomes) if o.slo_report]
    agree = sum(1 for r, rep in reports if bool(rep.get("met")) == is_met(r))
    return {
        "output_length": {"checked": len(ended), "wrong": len(wrong), "examples": wrong[:5],
                          "counted_from_usage": from_usage},
        "prompt_tokens_minus_workload": {str(k): v for k, v in sorted(diffs.items())},
        "send_lag_ms": {"median": statistics.median(lags) if lags else None,
                        "max": max(lags, default=None)},
        "server_slo_reports": {"n": len(reports), "met_agrees_with_client": agree},
    }


def build_http_run(traffic: Traffic, outcomes: Sequence[Outcome], start_s: float,
                   target: Target, *, slo_scale: str, latency_model_name: str, device: str,
                   policy: str, policy_options: dict[str, Any] | None = None,
                   extra_client: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result object of a finished benchmark run."""
    specs = traffic.requests
    records = [_record(s, o, start_s) for s, o in zip(specs, outcomes)]
    ends = [t for r in records for t in r.token_times_s[-1:]]
    duration_s = max([*ends, *(r.arrival_s for r in records), 1e-9])
    run = build_run(
        records, duration_s=duration_s, backend="http", system=target.options.system,
        policy=policy, policy_options=policy_options, workload=traffic.workload,
        arrival=traffic.arrival, rate_rps=traffic.rate_rps, arrival_cv=traffic.cv,
        seed=traffic.seed, model=target.model, device=device,
        latency_model=latency_model_name, class_order=traffic.class_order, per_request=True)
    by_class: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        by_class.setdefault(spec.slo.slo_class, []).append(i)
    groups = [(run["summary"], list(range(len(specs))))]
    groups += [(run["classes"][name], idx) for name, idx in by_class.items()]
    for stats, idx in groups:
        stats["itl_ms"] = latency_stats(_itl_ms([outcomes[i] for i in idx]))
    run["client"] = {"base_url": target.base_url, "endpoint": target.options.path,
                     "slo_scale": slo_scale, "timeout_s": target.timeout_s,
                     "max_run_s": target.max_run_s,
                     "options": target.options.to_dict(),
                     **checks(specs, outcomes, records, start_s), **(extra_client or {})}
    return run


def bench_traffic(traffic: Traffic, target: Target, prompts: Sequence[str], *,
                  slo_scale: str, latency_model_name: str, device: str = "",
                  policy: str = "", policy_options: dict[str, Any] | None = None,
                  progress: Progress | None = None,
                  extra_client: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay `traffic` against `target` now; the run's result object."""
    if len(prompts) != len(traffic.requests):
        raise ValueError(f"{len(prompts)} prompts for {len(traffic.requests)} requests")
    start_s, outcomes = asyncio.run(serve_traffic(traffic.requests, prompts, target, progress))
    return build_http_run(traffic, outcomes, start_s, target, slo_scale=slo_scale,
                          latency_model_name=latency_model_name, device=device,
                          policy=policy or target.options.system,
                          policy_options=policy_options, extra_client=extra_client)


# --- what the server says about itself ---

async def _server_info(base_url: str, api_key: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    info: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=10.0, headers=headers) as client:
        for path in ("/v1/models", "/version", "/props"):
            try:
                response = await client.get(base_url.rstrip("/") + path)
            except httpx.HTTPError as e:
                if path == "/v1/models":
                    raise ValueError(f"cannot reach {base_url}: {type(e).__name__}: {e}") \
                        from None
                continue
            if response.status_code == 200:
                try:
                    info[path] = response.json()
                except ValueError:
                    continue
            elif path == "/v1/models":
                raise ValueError(f"{base_url}/v1/models answered HTTP {response.status_code}: "
                                 f"{response.text[:200]}")
    return info


def server_info(base_url: str, api_key: str | None = None) -> dict[str, Any]:
    """/v1/models, and /version (vLLM) or /props (llama.cpp) where the server has them."""
    return asyncio.run(_server_info(base_url, api_key))


def served_model(info: dict[str, Any]) -> str:
    """The first model the server lists."""
    data = (info.get("/v1/models") or {}).get("data") or []
    if not data or not isinstance(data[0], dict) or "id" not in data[0]:
        raise ValueError("the server lists no model at /v1/models: give --model")
    return str(data[0]["id"])


def server_summary(info: dict[str, Any]) -> dict[str, Any]:
    """A few facts to keep in the result file (version, model, slots)."""
    out: dict[str, Any] = {}
    version = info.get("/version")
    if isinstance(version, dict) and "version" in version:
        out["version"] = version["version"]
    props = info.get("/props")
    if isinstance(props, dict):
        for key in ("build_info", "total_slots", "model_path"):
            if key in props:
                out[key] = props[key]
    data = (info.get("/v1/models") or {}).get("data") or []
    if data and isinstance(data[0], dict):
        out["models"] = [d.get("id") for d in data if isinstance(d, dict)]
        for key in ("owned_by", "max_model_len"):
            if key in data[0]:
                out[key] = data[0][key]
    return out
