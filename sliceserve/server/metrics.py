"""Prometheus metrics, named as vLLM names them where the meaning is the same (docs/API.md).

Request metrics are recorded once per request, when it ends (a scheduler finish listener, on
the engine thread): latencies of completed requests, how each one ended, and whether its SLO
was met, all by `slo_class`. Queue gauges and the online latency model's correction factors
are refreshed after every iteration; iteration times and the latency model's predictions come
from `IterationLog`. One registry per server, so several can live in one process (tests).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sliceserve.core.plan import StepOutput
from sliceserve.engine.engine import Engine
from sliceserve.metrics.slo import RequestRecord, missed_objectives, tpot_ms
from sliceserve.request import Request, RequestStatus
from sliceserve.server.state import Iteration

P = "sliceserve:"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                     5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
TOKEN_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                   0.75, 1.0, 2.5, 5.0, 10.0)
ITERATION_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                       0.75, 1.0, 2.0, 5.0)


class ServerMetrics:
    def __init__(self, label_of: Callable[[str], str], class_labels: tuple[str, ...]) -> None:
        self.registry = CollectorRegistry()
        self._label_of = label_of
        self._class_labels = class_labels
        r, c = self.registry, ["slo_class"]
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time to first token",
                              c, buckets=LATENCY_BUCKETS_S, registry=r)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Time between two output "
                             "tokens", c, buckets=TOKEN_BUCKETS_S, registry=r)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "Arrival to last token",
                             c, buckets=LATENCY_BUCKETS_S, registry=r)
        self.tpot = Histogram(P + "request_time_per_output_token_seconds", "Mean time per "
                              "output token after the first", c, buckets=TOKEN_BUCKETS_S,
                              registry=r)
        self.running = Gauge(P + "num_requests_running", "Requests holding KV", c, registry=r)
        self.waiting = Gauge(P + "num_requests_waiting", "Requests waiting for KV", c,
                             registry=r)
        self.kv_usage = Gauge(P + "kv_cache_usage_perc", "Fraction of KV blocks in use (0-1)",
                              registry=r)
        self.success = Counter(P + "request_success", "Requests that ended after being "
                               "served, by finish reason (stop, length, abort)",
                               ["finished_reason", "slo_class"], registry=r)
        self.rejected = Counter(P + "request_rejected", "Requests refused, by reason",
                                ["reason", "slo_class"], registry=r)
        self.aborted = Counter(P + "request_aborted", "Requests aborted, by reason",
                               ["reason", "slo_class"], registry=r)
        self.met = Counter(P + "slo_met", "Requests that met their SLO", c, registry=r)
        self.missed = Counter(P + "slo_missed", "Requests that missed their SLO, by objective "
                              "missed (ttft, tpot, deadline, completion)",
                              ["slo_class", "objective"], registry=r)
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens of served requests",
                                     registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "Output tokens generated",
                                         registry=r)
        self.iteration = Histogram(P + "iteration_duration_seconds", "Measured duration of "
                                   "one engine iteration", ["kind"],
                                   buckets=ITERATION_BUCKETS_S, registry=r)
        self.measured_s = Counter(P + "iteration_measured_seconds", "Sum of measured "
                                  "iteration durations", ["kind"], registry=r)
        self.predicted_s = Counter(P + "iteration_predicted_seconds", "Sum of the latency "
                                   "model's predictions for the same iterations", ["kind"],
                                   registry=r)
        self.ratio = Gauge(P + "latency_model_measured_over_predicted", "Measured / predicted "
                           "iteration time over the recent iterations", ["kind"], registry=r)
        self.correction = Gauge(P + "latency_model_correction_factor", "The online latency "
                                "model's current factor over the profile, per part (decode, "
                                "prompt); absent when the policy plans with the profile frozen",
                                ["kind"], registry=r)
        self.http_errors = Counter(P + "http_errors", "Error answers, by status and code",
                                   ["status", "code"], registry=r)
        for label in class_labels:  # every class shows from the start, at 0
            self.running.labels(label).set(0)
            self.waiting.labels(label).set(0)
            self.met.labels(label)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- engine-thread listeners ---
    def on_finished(self, request: Request) -> None:
        label = self._label_of(request.slo.slo_class)
        record = RequestRecord.from_request(request)
        status = request.status
        reason = None if request.finish_reason is None else str(request.finish_reason)
        if status is RequestStatus.REJECTED:
            self.rejected.labels(request.finish_code or "rejected", label).inc()
        else:
            self.success.labels(reason or "abort", label).inc()
            self.prompt_tokens.inc(request.num_prompt_tokens)
            self.generation_tokens.inc(request.num_output_tokens)
        if status is RequestStatus.ABORTED:
            self.aborted.labels(request.finish_code or "aborted", label).inc()
        times = request.token_times_s
        if status is RequestStatus.COMPLETED and times:
            self.ttft.labels(label).observe(times[0] - request.arrival_s)
            self.e2e.labels(label).observe(times[-1] - request.arrival_s)
            self.tpot.labels(label).observe((tpot_ms(record) or 0.0) / 1000.0)
            itl = self.itl.labels(label)
            for a, b in zip(times, times[1:]):
                itl.observe(b - a)
        missed = missed_objectives(record)
        if not missed:
            self.met.labels(label).inc()
        for objective in missed:
            self.missed.labels(label, objective).inc()

    def step_listener(self, engine: Engine) -> Callable[[StepOutput], None]:
        def on_step(_: StepOutput) -> None:
            self.refresh_queues(engine)
        return on_step

    def refresh_queues(self, engine: Engine) -> None:
        scheduler = engine.scheduler
        for gauge, requests in ((self.running, scheduler.running),
                                (self.waiting, scheduler.waiting)):
            counts = dict.fromkeys(self._class_labels, 0)
            for r in requests:
                label = self._label_of(r.slo.slo_class)
                counts[label] = counts.get(label, 0) + 1
            for label, n in counts.items():
                gauge.labels(label).set(n)
        total = scheduler.config.num_kv_blocks
        self.kv_usage.set(1.0 - scheduler.blocks.num_free_blocks / total)
        correction = scheduler.policy.latency_correction()
        if correction is not None:
            for kind in ("decode", "prompt"):
                self.correction.labels(kind).set(correction[f"{kind}_factor"])

    def on_iteration(self, it: Iteration, ratio: Callable[[], dict[str, float | None]]) -> None:
        self.iteration.labels(it.kind).observe(it.measured_ms / 1000.0)
        self.measured_s.labels(it.kind).inc(it.measured_ms / 1000.0)
        self.predicted_s.labels(it.kind).inc(it.predicted_ms / 1000.0)
        value = ratio().get(it.kind)
        if value is not None:
            self.ratio.labels(it.kind).set(value)
