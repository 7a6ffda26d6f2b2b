"""What callers get back from the live engine: text, token ids, why it ended, and timing.

`OutputProcessor` turns the scheduler's requests into `RequestOutput`s after each step: it
detokenizes new tokens, ends a request whose text hit a stop string (through a callback to
the scheduler), and fills the metrics with the pure functions of `sliceserve.metrics.slo`, so
the engine, the simulator and a benchmark client compute TTFT, TPOT and "met" alike.
Times are on the engine's clock (seconds since it started).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sliceserve.metrics.slo import RequestRecord, e2e_ms, is_met, tpot_ms, ttft_ms
from sliceserve.model.detokenizer import TextStream
from sliceserve.request import SLO, FinishReason, Request, RequestStatus


@dataclass(frozen=True, slots=True)
class CompletionOutput:
    """One generated sequence (this engine makes one per request)."""

    index: int
    text: str  # all output text so far, cut before a matched stop string
    token_ids: tuple[int, ...]  # all output token ids so far
    finish_reason: FinishReason | None  # None while running
    delta_text: str = ""  # text new since the previous output of this request (streaming)
    delta_token_ids: tuple[int, ...] = ()  # token ids new since the previous output


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """Timing of one request, seconds on the engine clock. Fields that need the request to
    have ended (tpot, e2e, met, finish) are None until it has."""

    arrival_s: float
    first_token_s: float | None
    finish_s: float | None
    ttft_s: float | None
    tpot_s: float | None  # mean time between output tokens after the first (0 for one token)
    e2e_s: float | None  # last token - arrival
    met: bool | None  # SLO met (metrics.slo.is_met); False for rejected and aborted requests
    num_preemptions: int
    num_prompt_tokens: int
    num_output_tokens: int


@dataclass(frozen=True, slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None  # None when the prompt was given as token ids
    prompt_token_ids: tuple[int, ...]
    outputs: tuple[CompletionOutput, ...]
    finished: bool
    status: str  # "waiting" | "running" | "completed" | "rejected" | "aborted"
    metrics: RequestMetrics
    slo: SLO
    # Why it ended, beyond finish_reason: a machine-readable code for rejections and aborts
    # (e.g. "slo_infeasible", "context_length_exceeded", "aborted") and the cause in words.
    finish_code: str | None = None
    finish_detail: str | None = None

    # The one sequence's fields, for convenience.
    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> tuple[int, ...]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason

    @property
    def delta_text(self) -> str:
        return self.outputs[0].delta_text


def request_metrics(request: Request) -> RequestMetrics:
    first = request.first_token_s
    if not request.is_finished:
        ttft = None if first is None else first - request.arrival_s
        return RequestMetrics(request.arrival_s, first, None, ttft, None, None, None,
                              request.num_preemptions, request.num_prompt_tokens,
                              request.num_output_tokens)
    record = RequestRecord.from_request(request)
    return RequestMetrics(
        arrival_s=request.arrival_s, first_token_s=first, finish_s=request.finish_s,
        ttft_s=_seconds(ttft_ms(record)), tpot_s=_seconds(tpot_ms(record)),
        e2e_s=_seconds(e2e_ms(record)), met=is_met(record),
        num_preemptions=request.num_preemptions, num_prompt_tokens=request.num_prompt_tokens,
        num_output_tokens=request.num_output_tokens)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


@dataclass(slots=True)
class _State:
    request: Request
    prompt: str | None
    prompt_token_ids: tuple[int, ...]
    text: TextStream
    num_tokens: int = 0  # output tokens already detokenized
    num_sent: int = 0  # output tokens already handed out


# Called with (request_id, reason, now_s) to end a request early (a stop string matched).
FinishCallback = Callable[[str, FinishReason, float], None]


class OutputProcessor:
    """Tracks the requests whose outputs someone waits for; builds their `RequestOutput`s."""

    def __init__(self, tokenizer: Any, finish: FinishCallback) -> None:
        self._tokenizer = tokenizer
        self._finish = finish
        self._states: dict[str, _State] = {}

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._states

    def add(self, request: Request, prompt: str | None,
            skip_special_tokens: bool = True) -> None:
        if request.request_id in self._states:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        ids = tuple(request.prompt_token_ids or ())
        text = TextStream(self._tokenizer, ids, request.sampling.stop, skip_special_tokens,
                          request.sampling.min_tokens)
        self._states[request.request_id] = _State(request, prompt, ids, text)

    def discard(self, request_id: str) -> None:
        """Stop tracking a request without an output (its stream already ended)."""
        self._states.pop(request_id, None)

    def process(self, request: Request, now_s: float,
                stream: bool = True) -> RequestOutput | None:
        """Take in the request's new tokens. Returns its output when it has something new
        (`stream`) or has ended; a finished request's output is its last: it is forgotten."""
        state = self._states.get(request.request_id)
        if state is None:
            return None
        tokens = request.output_token_ids
        for token in tokens[state.num_tokens:]:
            state.num_tokens += 1
            if state.text.add(token):
                break
        if state.text.stopped and not request.is_finished:
            self._finish(request.request_id, FinishReason.STOP, now_s)
        if request.is_finished:
            state.text.finish()
            del self._states[request.request_id]
            return self._output(state, final=True)
        if stream and state.num_sent < len(tokens):
            return self._output(state, final=False)
        return None

    def _output(self, state: _State, final: bool) -> RequestOutput:
        request = state.request
        token_ids = tuple(request.output_token_ids)
        delta_ids = token_ids[state.num_sent:]
        state.num_sent = len(token_ids)
        reason = request.finish_reason if final else None
        if final and state.text.stopped and request.status is RequestStatus.COMPLETED:
            reason = FinishReason.STOP  # a stop string beats "length" when one token ends both
        completion = CompletionOutput(0, state.text.text, token_ids, reason,
                                      state.text.take_delta(final), delta_ids)
        return RequestOutput(request.request_id, state.prompt, state.prompt_token_ids,
                             (completion,), final, request.status.value,
                             request_metrics(request), request.slo,
                             request.finish_code if final else None,
                             request.finish_detail if final else None)

