"""A server's own batch-1 speed, measured through its API, as a latency model for SLOs.

`--slo-scale relative` resolves a workload's device-relative SLOs (`l1`, `pf`) against the
system under test rather than against sliceserve's profile of the machine: what separates
scheduling from raw engine speed. One request at a time, after a warm-up, each with a fresh
prompt (no prefix cache can help):
- decode: a short prompt and `DECODE_TOKENS` new tokens; `l1` = the median TPOT;
- prefill: prompts of `PREFILL_TOKENS` tokens and one new token; TTFT(n) - l1 is fitted as
  a (n - 1) + b n (n + 1) / 2 (non-negative least squares: the latency model's prefill terms).
Each shape is measured `repeats` times and the median kept (single requests on these servers
occasionally stall for seconds). Client-side times: HTTP and tokenization included, as a user
sees them.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from sliceserve.bench.http_bench import Target, new_client
from sliceserve.bench.http_client import Outcome, send_request
from sliceserve.bench.prompts import PromptMaker
from sliceserve.bench.systems import request_body
from sliceserve.latency_model import LatencyModel
from sliceserve.request import SLO
from sliceserve.workloads import RequestSpec

DECODE_PROMPT_TOKENS = 32
DECODE_TOKENS = 64
PREFILL_TOKENS = (64, 256, 512, 1024)
REPEATS = 3
PROBE_SLO = SLO(ttft_ms=1e7, tpot_ms=1e7, utility=1.0, slo_class="probe")
SALT_OFFSET = 0x5EED  # probes never share a prompt with the run's requests


class SpeedProbeError(RuntimeError):
    """A probe request did not complete: the speed cannot be measured."""


async def _probe(target: Target, maker: PromptMaker, n_in: int, n_out: int, salt: int,
                 index: int) -> Outcome:
    spec = RequestSpec(f"probe-{index}", 0.0, n_in, n_out, PROBE_SLO)
    body = request_body(spec, maker.text(n_in, 0, salt + SALT_OFFSET, index), target.model,
                        target.options)
    async with new_client() as client:
        outcome = await send_request(client, target.url, body, timeout_s=target.timeout_s,
                                     headers=target.headers)
    if outcome.status != "completed" or outcome.num_output_tokens != n_out:
        raise SpeedProbeError(f"speed probe ({n_in} prompt tokens, {n_out} new) ended "
                              f"{outcome.status} ({outcome.code}: {outcome.detail}) with "
                              f"{outcome.num_output_tokens} tokens")
    return outcome


def _ttft_ms(o: Outcome) -> float:
    return (o.token_times_s()[0] - o.sent_s) * 1000.0


def _tpot_ms(o: Outcome) -> float:
    times = o.token_times_s()
    return (times[-1] - times[0]) * 1000.0 / (len(times) - 1)


def fit_prefill(points: Sequence[tuple[int, float]], l1_ms: float) -> tuple[float, float]:
    """(ms per prompt token, ms per causal query-key pair) >= 0 that fit TTFT(n) - l1."""
    n = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float) - l1_ms
    columns = np.stack([n - 1, n * (n + 1) / 2], axis=1)
    (a, b), *_ = np.linalg.lstsq(columns, y, rcond=None)
    if b < 0:
        b = 0.0
        a = float(np.dot(n - 1, y) / max(np.dot(n - 1, n - 1), 1e-12))
    if a < 0:
        a = 0.0
        pairs = n * (n + 1) / 2
        b = max(0.0, float(np.dot(pairs, y) / max(np.dot(pairs, pairs), 1e-12)))
    return float(a), float(b)


async def _measure(target: Target, maker: PromptMaker, prefill_tokens: Sequence[int],
                   repeats: int, salt: int) -> dict[str, Any]:
    index = 0

    async def probe(n_in: int, n_out: int) -> Outcome:
        nonlocal index
        index += 1
        return await _probe(target, maker, n_in, n_out, salt, index)

    for _ in range(2):  # warm-up
        await probe(DECODE_PROMPT_TOKENS, 8)
    decode, prefill = [], {n: [] for n in prefill_tokens}
    for _ in range(repeats):  # rounds over all shapes, so each sees the machine's drift alike
        decode.append(_tpot_ms(await probe(DECODE_PROMPT_TOKENS, DECODE_TOKENS)))
        for n in prefill_tokens:
            prefill[n].append(_ttft_ms(await probe(n, 1)))
    return {"decode_tpot_ms": decode, "prefill_ttft_ms": {str(n): v for n, v in prefill.items()}}


def measure_speed(target: Target, maker: PromptMaker, *, max_prompt_tokens: int = 1024,
                  repeats: int = REPEATS, salt: int = 0,
                  device: str = "") -> tuple[LatencyModel, dict[str, Any]]:
    """The system's batch-1 latency model (decode l1, prefill) and the raw measurements."""
    sizes = [n for n in PREFILL_TOKENS if n <= max_prompt_tokens] or [max_prompt_tokens]
    raw = asyncio.run(_measure(target, maker, sizes, repeats, salt))
    l1_ms = statistics.median(raw["decode_tpot_ms"])
    points = [(int(n), statistics.median(v)) for n, v in raw["prefill_ttft_ms"].items()]
    per_token, per_pair = fit_prefill(points, l1_ms)
    model = LatencyModel(
        name=f"measured:{target.options.system}", decode_ms=(l1_ms,), decode_slope_ms=0.0,
        prefill_ms_per_token=per_token, prefill_attention_ms_per_pair=per_pair,
        device=device, model=target.model,
        notes="batch-1 speed through the server's API (sliceserve bench --slo-scale "
              f"relative): median of {repeats}; for resolving SLOs only")
    fitted = {str(n): model.prefill_ms(n) for n, _ in points}
    return model, {**raw, "l1_ms": l1_ms, "prefill_fit_ms": fitted,
                   "prefill_ms_per_token": per_token, "prefill_ms_per_pair": per_pair}
