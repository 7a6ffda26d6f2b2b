"""The adapter: one project policy driving one vLLM scheduler (the second mechanism).

Per step: the policy decides from the view (`view.py`); its rejections end as aborted vLLM
requests whose finish reason and stop reason reach the client; its preemptions go through
vLLM's own preemption (KV freed, recompute later); its batch is carried out by one call of
vLLM's base `schedule()` with the state arranged around it (`plan.py`). The events vLLM
reports (admitted, preempted, finished) go to the policy's hooks, once each. Every executed
step's shape and duration feed the online latency model (`latency.py`); when a refit changes
the model, the policy is rebuilt on it and told the requests it must know about.

A policy that schedules nothing while requests wait gets vLLM's own choice for that step:
the engine never idles, and never runs a 0-token step, on the adapter's account.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import FCFSRequestQueue, SchedulingPolicy
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
from vllm.v1.request import RequestStatus

from sliceserve.config import SchedulerConfig
from sliceserve.integrations.vllm import compat
from sliceserve.integrations.vllm.latency import OnlineLatencyFit, StepShape, StepTimer
from sliceserve.integrations.vllm.plan import StepPlan, carry_out, plan_step
from sliceserve.integrations.vllm.settings import PluginSettings, slo_from_args
from sliceserve.integrations.vllm.stats import AdapterStats
from sliceserve.integrations.vllm.view import Queues, ReqView, SchedView, status_map
from sliceserve.latency_model import LatencyModel, chunk_pairs
from sliceserve.policies.base import EMPTY_DECISION, Policy, PolicyError, Rejection
from sliceserve.policies.registry import make_policy

# Under vLLM's logger namespace, so that its handlers print the plug-in's messages beside its
# own (vLLM configures the "vllm" logger only).
log = logging.getLogger("vllm.plugins.sliceserve")
CODE_INVALID_SLO = "invalid_slo"
LOG_INTERVAL_S = 60.0


class Adapter:
    def __init__(self, scheduler: Any, clock: Callable[[], float] = time.time) -> None:
        s = self.s = scheduler
        compat.raise_if_missing(compat.missing_names(s, compat.SCHEDULER_ATTRS, "Scheduler")
                                + compat.missing_names(s, compat.SCHEDULER_PATHS, "Scheduler"))
        if s.scheduler_config.async_scheduling and not isinstance(s, AsyncScheduler):
            raise ValueError("vLLM runs with async scheduling: use --scheduler-cls "
                             "sliceserve.integrations.vllm.SliceAsyncScheduler (or pass "
                             "--no-async-scheduling)")
        if s.policy != SchedulingPolicy.FCFS:
            log.warning("sliceserve: the policy orders requests; vLLM's --scheduling-policy "
                        "%s is ignored (select sliceserve's 'vllm-priority' policy for "
                        "vLLM's priority order)", s.policy.value)
            s.policy = SchedulingPolicy.FCFS
            s.waiting, s.kv_holding_waiting = FCFSRequestQueue(), FCFSRequestQueue()
        self.clock = clock
        self.settings = PluginSettings.load(s.vllm_config.additional_config)
        for module in self.settings.policy_modules:
            importlib.import_module(module)
        blocks = int(s.cache_config.num_gpu_blocks)
        self.config = SchedulerConfig(
            max_num_batched_tokens=int(s.max_num_scheduled_tokens),
            max_num_seqs=int(s.max_num_running_reqs), block_size=int(s.block_size),
            num_kv_blocks=blocks, max_model_len=int(s.max_model_len))
        start = replace(LatencyModel.load(self.settings.latency_model),
                        kv_capacity_tokens=blocks * int(s.block_size))
        self.fit = OnlineLatencyFit(start)
        self.timer = StepTimer()
        self.stats = AdapterStats()
        self.queues = Queues()
        self.view = SchedView(self.queues, self.config, s.kv_cache_manager.block_pool)
        self.views: dict[str, ReqView] = {}
        self._statuses = status_map(RequestStatus)
        self._seq = 0
        self._invalid: list[tuple[Any, str]] = []  # (vLLM request, why its SLO is invalid)
        self._outputs: list[tuple[int, EngineCoreOutput]] = []  # rejections to report
        self._force_plain = False
        self._schedule_start_s = 0.0
        self._checked_request = False
        self._next_log_s = clock() + LOG_INTERVAL_S
        self.policy: Policy = self._make_policy(start)
        log.info("sliceserve: policy %r %s on vLLM %s (latency model %s)", self.settings.policy,
                 self.settings.policy_options or "", compat.installed_version(), start.name)

    # --- the policy ---
    def _make_policy(self, model: LatencyModel) -> Policy:
        try:
            return make_policy(self.settings.policy, model, self.config,
                               self.settings.policy_options)
        except ValueError as e:
            raise ValueError(f"sliceserve: {e}") from None

    def select_policy(self, name: str, options: dict[str, Any] | None = None) -> None:
        """Switch to another registered policy (only while no request is unfinished)."""
        if self.views:
            raise RuntimeError("sliceserve: a policy can only be selected while no request "
                               f"is unfinished ({len(self.views)} are)")
        self.settings = replace(self.settings, policy=name, policy_options=dict(options or {}))
        self.policy = self._make_policy(self.fit.model)

    def _rebuild_policy(self, model: LatencyModel) -> None:
        """A new policy on `model`, told every request it must know about."""
        policy = self._make_policy(model)
        self.view.now_s = self.clock()
        for view in sorted(self.views.values(), key=lambda v: (v.arrival_s, v.seq)):
            policy.on_arrival(view, self.view)
        for view in self.queues.running:
            policy.on_admit(view, self.view)
        self.policy = policy
        self.stats.policy_rebuilds += 1
        log.info("sliceserve: latency model refitted (%s): decode %.1f ms at batch 1, "
                 "+%.2f ms a row; prefill %.3f ms a token", model.notes, model.decode_ms[0],
                 model.decode_slope_ms, model.prefill_ms_per_token)

    # --- events from vLLM ---
    def arrived(self, req: Any) -> None:
        if not self._checked_request:
            compat.raise_if_missing(compat.missing_names(req, compat.REQUEST_ATTRS, "Request"))
            self._checked_request = True
        params = req.sampling_params
        try:
            slo = slo_from_args(params.extra_args if params is not None else None,
                                self.settings.default_slo)
        except ValueError as e:
            self._invalid.append((req, f"invalid SLO in the request's extra args: {e}"))
            return
        view = ReqView(req, slo, self._seq, self._statuses)
        self._seq += 1
        self.views[req.request_id] = view
        self.queues.add_waiting(view)
        self.view.now_s = self.clock()
        self.policy.on_arrival(view, self.view)

    def finished(self, requests: list[Any]) -> None:
        for req in requests:
            view = self.views.pop(req.request_id, None)
            if view is not None:
                self.queues.remove(view)
                self.policy.on_finish(view, self.view)

    # --- one step ---
    def schedule(self, throttle_prefills: bool, base: Callable[[bool], Any]) -> Any:
        t0 = self._schedule_start_s = time.perf_counter()
        stats = self.stats
        stats.steps += 1
        self.view.now_s = self.clock()
        for req, detail in self._invalid:
            self._reject(req, None, CODE_INVALID_SLO, detail)
        self._invalid.clear()
        t1 = time.perf_counter()
        queues = self.queues
        decision = (self.policy.schedule(self.view) if queues.running or queues.waiting
                    else EMPTY_DECISION)
        t2 = time.perf_counter()
        for rejection in decision.reject:
            self._reject_view(rejection)
        for victim in decision.preempt:
            self._preempt(victim)
        plan = None
        if decision.batch and not self._force_plain:
            plan = plan_step(decision.batch, self._running_views(),
                             len(queues.waiting), self.fit.model)
        elif queues.running or queues.waiting:
            stats.fallback_steps += 1
        self._force_plain = False
        t3 = time.perf_counter()
        out = self._run_base(plan, throttle_prefills, base)
        t4 = time.perf_counter()
        self._after_schedule(out, plan)
        t5 = time.perf_counter()
        stats.policy_s += t2 - t1
        stats.adapter_s += (t5 - t0) - (t2 - t1) - (t4 - t3)
        return out

    def _running_views(self) -> list[ReqView]:
        views = self.views
        out = []
        for req in self.s.running:
            view = views.get(req.request_id)
            if view is None:
                raise PolicyError(f"vLLM runs {req.request_id!r}, which the policy never saw")
            out.append(view)
        return out

    def _run_base(self, plan: StepPlan | None, throttle: bool, base: Callable[[bool], Any]
                  ) -> Any:
        if plan is None:
            return base(throttle)
        stats = self.stats
        stats.planned_steps += 1
        stats.masked_rows += len(plan.masked)
        stats.unmasked_rows += plan.num_unmasked
        stats.held_back += plan.num_held
        return carry_out(self.s, plan, lambda: base(throttle), FCFSRequestQueue)

    def _after_schedule(self, out: Any, plan: StepPlan | None) -> None:
        s, views, queues, policy, view = self.s, self.views, self.queues, self.policy, self.view
        for rid in out.preempted_req_ids or ():
            v = views.get(rid)
            if v is not None and v.is_running:
                queues.preempt(v)
                policy.on_preempt(v, view)
        admitted = [d.req_id for d in out.scheduled_new_reqs]
        admitted += out.scheduled_cached_reqs.resumed_req_ids
        for rid in admitted:
            v = views.get(rid)
            if v is not None and not v.is_running:
                queues.admit(v)
                policy.on_admit(v, view)
        self.stats.max_running = max(self.stats.max_running, len(s.running))
        scheduled = out.num_scheduled_tokens
        if not scheduled:
            if plan is not None and (s.running or s.waiting):
                self.stats.zero_token_steps += 1
                self._force_plain = True
                log.warning("sliceserve: vLLM scheduled nothing of the policy's batch; the "
                            "next step is vLLM's own")
            return
        requests = s.requests
        total = out.total_num_scheduled_tokens
        # vLLM advanced num_computed_tokens already: the context read is what was there before
        context = sum(requests[rid].num_computed_tokens for rid in scheduled) - total
        pairs = 0.0
        if total > len(scheduled):  # prompt chunks
            for rid, num in scheduled.items():
                if num > 1:
                    pairs += chunk_pairs(num, requests[rid].num_computed_tokens - num)
        shape = StepShape(len(scheduled), total, context, pairs)
        self.timer.scheduled(out, shape, self._schedule_start_s)

    def update(self, out: Any, model_output: Any, base: Callable[[Any, Any], Any]) -> Any:
        t0 = time.perf_counter()
        self.timer.executed(out)
        result = base(out, model_output)
        t1 = time.perf_counter()
        now = self.clock()
        views = self.views
        finished = []
        for outputs in result.values():
            for output in outputs.outputs:
                v = views.get(output.request_id)
                if v is None:
                    continue
                if output.new_token_ids:
                    if v.first_token_s is None:
                        v.first_token_s = now
                    v.last_token_s = now
                if output.finish_reason is not None:
                    req = v.req
                    if req.is_finished():
                        finished.append(req)
                    elif v.is_running and req.status != RequestStatus.RUNNING:
                        self.queues.preempt(v)  # a resumable session's turn ended: waiting
                        self.policy.on_preempt(v, self.view)
        self.finished(finished)
        if self._outputs:
            for client, output in self._outputs:
                outputs = result.get(client)
                if outputs is None:
                    outputs = result[client] = EngineCoreOutputs()
                outputs.outputs.append(output)
            self._outputs.clear()
        if now >= self._next_log_s:
            self._next_log_s = now + LOG_INTERVAL_S
            log.info("sliceserve: %s", self.state())
        t2 = time.perf_counter()
        timed = self.timer.update_done(t2, bool(self.s.running or self.s.waiting
                                                or self.s.kv_holding_waiting))
        if timed is not None and self.settings.refit:
            model = self.fit.observe(*timed)
            if model is not None:
                self._rebuild_policy(model)
        self.stats.adapter_s += (time.perf_counter() - t0) - (t1 - t0)
        return result

    # --- decisions ---
    def _reject_view(self, rejection: Rejection) -> None:
        view = self.views.get(rejection.request.request_id)
        if view is None:
            raise PolicyError(f"cannot reject {rejection.request.request_id!r}: unknown or "
                              "finished")
        self._reject(view.req, view, rejection.code, rejection.detail)

    def _reject(self, req: Any, view: ReqView | None, code: str, detail: str) -> None:
        reason = f"rejected ({code}): {detail}"
        req.stop_reason = reason
        if view is not None:
            view.rejected = True
        for done in self.s.finish_requests(req.request_id, RequestStatus.FINISHED_ABORTED):
            self._outputs.append((done.client_index, EngineCoreOutput(
                request_id=done.request_id, new_token_ids=[], finish_reason=FinishReason.ABORT,
                stop_reason=reason, events=done.take_events(),
                trace_headers=done.trace_headers)))
            self.stats.rejected += 1
            log.info("sliceserve: %s %s", done.request_id, reason)

    def _preempt(self, victim: Any) -> None:
        view = self.views.get(victim.request_id)
        if view is None or not view.is_running or view.req.status != RequestStatus.RUNNING:
            raise PolicyError(f"cannot preempt {victim.request_id!r}: not running")
        self.s.running.remove(view.req)
        self.s._preempt_request(view.req, time.monotonic())
        self.queues.preempt(view)
        self.policy.on_preempt(view, self.view)
        self.stats.preempted_by_policy += 1

    def state(self) -> dict[str, Any]:
        """For logs and dashboards (JSON-serializable)."""
        model = self.fit.model
        return {"policy": self.settings.policy, "policy_state": self.policy.state(),
                "waiting": len(self.queues.waiting), "running": len(self.queues.running),
                "latency_model": {"name": model.name, "decode_1_ms": model.decode_ms[0],
                                  "decode_slope_ms": model.decode_slope_ms,
                                  "prefill_ms_per_token": model.prefill_ms_per_token,
                                  "observed_steps": self.fit.num_observed},
                "stats": self.stats.to_dict()}
