"""Requests, their service-level objectives and sampling parameters.

A `Request` is owned and mutated by the scheduler (and the engine's update step) only.
Policies see it through the read-only `RequestView` protocol (see policies/base.py), which
holds exactly the plain facts a policy may decide on, so that a thin adapter could drive the
same policies from another engine.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

REALTIME_UTILITY = 100.0
DEFAULT_UTILITY = 1.0


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, slots=True)
class SLO:
    """Per-request latency objectives (milliseconds) and the value of meeting them."""

    ttft_ms: float
    tpot_ms: float
    deadline_ms: float | None = None
    utility: float = DEFAULT_UTILITY
    slo_class: str = "default"

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms", "utility"):
            value = getattr(self, name)
            _require(
                isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                f"SLO {name} must be a positive number, got {value!r}",
            )
        if self.deadline_ms is not None:
            _require(
                math.isfinite(self.deadline_ms) and self.deadline_ms > 0,
                f"SLO deadline_ms must be a positive number, got {self.deadline_ms!r}",
            )
        _require(bool(self.slo_class), "SLO slo_class must be a non-empty name")


# The SLO of a request that comes without one: best effort. Lenient enough that a request an
# idle CPU serves is "met" (first token within a minute, a token a second after that), so the
# metrics stay meaningful without asking every offline user for objectives.
DEFAULT_SLO = SLO(ttft_ms=60_000.0, tpot_ms=1_000.0, utility=1.0, slo_class="best-effort")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop. Validated on construction."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0  # 0 = disabled
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # EOS and stop_token_ids cannot end the output (they are not sampled) and stop strings
    # are not looked for until this many tokens have been generated (vLLM's semantics).
    min_tokens: int = 0

    def __post_init__(self) -> None:
        _require(
            isinstance(self.max_tokens, int) and self.max_tokens >= 1,
            f"max_tokens must be an integer >= 1, got {self.max_tokens!r}",
        )
        _require(
            math.isfinite(self.temperature) and self.temperature >= 0,
            f"temperature must be >= 0, got {self.temperature!r}",
        )
        _require(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k!r}")
        _require(
            isinstance(self.min_tokens, int) and 0 <= self.min_tokens <= self.max_tokens,
            f"min_tokens must be an integer in [0, max_tokens={self.max_tokens}], "
            f"got {self.min_tokens!r}",
        )
        _require(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")


class FinishReason(str, enum.Enum):
    """Why a request ended: a small closed set (the OpenAI `finish_reason` values plus
    "rejected"). The cause in words, and a machine-readable code for rejections and aborts,
    are kept beside it (`Request.finish_detail`, `Request.finish_code`)."""

    STOP = "stop"  # an EOS token, a stop token id or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # ended early by a caller (client gone, shutdown, time limit, error)
    REJECTED = "rejected"  # never served: it could not run, or the policy refused it

    def __str__(self) -> str:
        return self.value


# Machine-readable causes (`Request.finish_code`) the core itself gives; policies and front
# ends add their own (e.g. a server's "queue_full").
CODE_CONTEXT_LENGTH = "context_length_exceeded"  # prompt + max_tokens > max_model_len
CODE_KV_CAPACITY = "kv_cache_too_small"  # prompt + max_tokens > the whole KV cache
CODE_SLO_INFEASIBLE = "slo_infeasible"  # a policy found the SLO cannot be met
CODE_ABORTED = "aborted"  # abort() without a more specific cause
CODE_QUEUE_FULL = "queue_full"  # the scheduler's bounded waiting queue was full


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # holds no KV cache: new, or preempted by recompute
    RUNNING = "running"  # holds KV cache; computes when the policy puts it in a plan
    COMPLETED = "completed"
    REJECTED = "rejected"
    ABORTED = "aborted"

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({RequestStatus.COMPLETED, RequestStatus.REJECTED, RequestStatus.ABORTED})


@dataclass(slots=True, eq=False)
class Request:
    """One generation request and its progress.

    Token accounting (as in vLLM v1): `num_tokens = num_prompt_tokens + len(output_token_ids)`;
    `num_computed_tokens` of them have their KV in the cache. An iteration that brings
    `num_computed_tokens` up to `num_tokens` samples one new token. A preemption by
    recompute resets `num_computed_tokens` to 0 and keeps the output tokens.
    """

    request_id: str
    arrival_s: float
    num_prompt_tokens: int
    sampling: SamplingParams
    slo: SLO
    prompt_token_ids: Sequence[int] | None = None
    priority: int = 0  # vLLM-style priority for the `vllm-priority` baseline: lower first
    # Filled by the scheduler / engine.
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    token_times_s: list[float] = field(default_factory=list)  # engine clock, one per output
    num_preemptions: int = 0
    finish_s: float | None = None
    finish_reason: FinishReason | None = None
    finish_code: str | None = None  # machine-readable cause of a rejection or abort
    finish_detail: str | None = None  # the cause in words (a rejection reason, a stop string)

    def __post_init__(self) -> None:
        _require(bool(self.request_id), "request_id must be non-empty")
        _require(
            isinstance(self.num_prompt_tokens, int) and self.num_prompt_tokens >= 1,
            f"a prompt needs at least one token, got {self.num_prompt_tokens!r}",
        )
        _require(
            math.isfinite(self.arrival_s) and self.arrival_s >= 0,
            f"arrival_s must be >= 0, got {self.arrival_s!r}",
        )
        if self.prompt_token_ids is not None:
            _require(
                len(self.prompt_token_ids) == self.num_prompt_tokens,
                "num_prompt_tokens must equal len(prompt_token_ids)",
            )

    # --- read-only facts (the RequestView protocol) ---
    @property
    def max_tokens(self) -> int:
        return self.sampling.max_tokens

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + len(self.output_token_ids)

    @property
    def remaining_output_tokens(self) -> int:
        return self.sampling.max_tokens - len(self.output_token_ids)

    @property
    def first_token_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None

    @property
    def last_token_s(self) -> float | None:
        return self.token_times_s[-1] if self.token_times_s else None

    @property
    def is_finished(self) -> bool:
        status = self.status
        return status is not RequestStatus.RUNNING and status is not RequestStatus.WAITING

    @property
    def ttft_deadline_s(self) -> float:
        return self.arrival_s + self.slo.ttft_ms / 1000.0

    @property
    def deadline_s(self) -> float | None:
        d = self.slo.deadline_ms
        return None if d is None else self.arrival_s + d / 1000.0
