"""Policies for the vLLM plug-in's tests, registered on import (`policy_modules`).

- `test-mask`: vLLM's FCFS (the project's `vllm` policy) that leaves a request of SLO class
  "mask" out of the batch for `mask_steps` steps once it has `mask_from` output tokens: a
  decode mask at known steps, so a test can check that the request keeps its KV and resumes.
- `test-record-slice`: SLICE that appends every arrival's SLO to the JSON-lines file named by
  SLICESERVE_TEST_RECORD, so a test can see what reached the policy.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from sliceserve.policies.base import Decision, SchedulerView
from sliceserve.policies.registry import register
from sliceserve.policies.slice import SlicePolicy
from sliceserve.policies.vllm import VllmOptions, VllmPolicy


@dataclass(frozen=True)
class MaskOptions(VllmOptions):
    mask_from: int = 4
    mask_steps: int = 8


@register
class MaskTestPolicy(VllmPolicy):
    name = "test-mask"
    Options = MaskOptions
    options: MaskOptions

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._masked_steps: dict[str, int] = {}  # request id -> steps it was left out

    def schedule(self, view: SchedulerView) -> Decision:
        decision = super().schedule(view)
        batch = []
        for r, n in decision.batch:
            done = self._masked_steps.get(r.request_id, 0)
            if (r.slo.slo_class == "mask" and r.num_output_tokens >= self.options.mask_from
                    and done < self.options.mask_steps):
                self._masked_steps[r.request_id] = done + 1
                continue
            batch.append((r, n))
        return Decision(batch=batch, preempt=decision.preempt, reject=decision.reject)


@register
class RecordingSlicePolicy(SlicePolicy):
    name = "test-record-slice"

    def on_arrival(self, request, view) -> None:  # type: ignore[no-untyped-def]
        path = os.environ.get("SLICESERVE_TEST_RECORD")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"request_id": request.request_id, "slo": asdict(request.slo),
                                    "priority": request.priority}) + "\n")
        super().on_arrival(request, view)
