"""Load relative to the device: `--load X` = X times the device's estimated capacity.

A fixed rate means different things on different devices (4 requests/s is a mild overload on
one CPU and a threefold one on another). The capacity estimate, from the device's latency
model and the workload alone, is the arrival rate at which the device would be busy all the
time if it served every request at the SLO pace:

- the batch size B is the largest whose decode iteration still meets the tightest TPOT
  objective of the workload's requests (and whose KV fits the device's cache), so decoding
  at B costs decode_ms(B) / B of device time per token;
- a request costs its prompt beyond its first row's slot (`chunk_extra_ms`: the prefill
  tokens and their attention) plus n_out tokens at that per-token cost (with the context
  term at its mean context);
- capacity = 1 / E[cost], the mean over a large seeded sample of the workload's requests.

So load 1 is saturation: above it no scheduler can meet every SLO, below it a good one can
come close. It is an estimate from a model; the measured "capacity at the SLO" (the highest
rate with >= 90% attainment) is found by bisection (scripts/compare.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sliceserve.latency_model import LatencyModel
from sliceserve.workloads.generate import generate_traffic
from sliceserve.workloads.spec import Workload

SAMPLE_REQUESTS = 4000
SAMPLE_SEED = 20251
MAX_BATCH = 256  # the scheduler's max_num_seqs default


@dataclass(frozen=True)
class CapacityEstimate:
    rate_rps: float  # load 1.0
    batch_size: int
    tightest_tpot_ms: float
    mean_prompt_ms: float  # per request
    mean_decode_ms: float  # per request
    latency_model: str

    def rate_for(self, load: float) -> float:
        return load * self.rate_rps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_capacity(workload: Workload, latency_model: LatencyModel, *,
                      max_batch: int = MAX_BATCH,
                      samples: int = SAMPLE_REQUESTS) -> CapacityEstimate:
    """The device's capacity for `workload` (see the module docstring)."""
    specs = generate_traffic(workload, rate_rps=1.0, num_requests=samples, seed=SAMPLE_SEED,
                             latency_model=latency_model).requests
    tightest = min(s.slo.tpot_ms for s in specs)
    mean_tokens = sum(s.num_prompt_tokens + s.num_output_tokens for s in specs) / len(specs)
    kv = latency_model.kv_capacity_tokens
    limit = max_batch if kv is None else max(1, min(max_batch, int(kv // mean_tokens)))
    batch = 1
    for k in range(2, limit + 1):
        if latency_model.decode_latency_ms(k) <= tightest:
            batch = k
    per_token_ms = latency_model.decode_latency_ms(batch) / batch
    prompt_ms = decode_ms = 0.0
    for s in specs:
        prompt_ms += (latency_model.chunk_extra_ms(s.num_prompt_tokens)
                      + latency_model.context_ms_per_token * s.num_prompt_tokens)
        mean_context = s.num_prompt_tokens + s.num_output_tokens / 2
        decode_ms += s.num_output_tokens * (per_token_ms + latency_model.context_ms_per_token
                                            * mean_context)
    prompt_ms /= len(specs)
    decode_ms /= len(specs)
    return CapacityEstimate(1000.0 / (prompt_ms + decode_ms), batch, tightest, prompt_ms,
                            decode_ms, latency_model.name)


def rate_for_load(load: float, workload: Workload, latency_model: LatencyModel
                  ) -> tuple[float, CapacityEstimate]:
    if not load > 0:
        raise ValueError(f"--load must be a positive number, got {load:g}")
    estimate = estimate_capacity(workload, latency_model)
    return estimate.rate_for(load), estimate
