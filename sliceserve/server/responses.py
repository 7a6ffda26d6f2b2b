"""Response bodies in OpenAI's shapes, plus sliceserve's `slo_report` (docs/API.md).

One request's outputs become either one completion object (non-streaming) or a sequence of
chunks (server-sent events): text deltas, then a chunk with `finish_reason` (and the
`slo_report`), then, with `stream_options.include_usage`, a chunk with empty `choices` and the
`usage` (and the `slo_report` again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sliceserve.engine.outputs import RequestOutput
from sliceserve.metrics.slo import missed_from

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def slo_report(out: RequestOutput) -> dict[str, Any]:
    """What happened against the SLO, measured by the engine (its clock, its definitions)."""
    slo, m = out.slo, out.metrics
    ttft, tpot, e2e = _ms(m.ttft_s), _ms(m.tpot_s), _ms(m.e2e_s)
    missed = missed_from(slo, out.status == "completed", ttft, tpot, e2e)
    return {
        "slo_class": slo.slo_class, "utility": slo.utility,
        "target": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms,
                   "deadline_ms": slo.deadline_ms},
        "ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": e2e,
        "met": not missed, "missed": missed, "preemptions": m.num_preemptions,
    }


def usage(out: RequestOutput) -> dict[str, int]:
    n_prompt, n_out = len(out.prompt_token_ids), len(out.token_ids)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out,
            "total_tokens": n_prompt + n_out}


@dataclass(frozen=True, slots=True)
class Shape:
    """Which endpoint's shapes: /v1/completions or /v1/chat/completions."""

    chat: bool
    request_id: str
    created: int
    model: str

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.request_id, "object": obj, "created": self.created,
                "model": self.model, "system_fingerprint": None}

    def completion(self, out: RequestOutput) -> dict[str, Any]:
        reason = str(out.finish_reason) if out.finish_reason is not None else None
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant",
                                                              "content": out.text},
                                      "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": out.text, "logprobs": None, "finish_reason": reason}
        return {**self._head(self.object), "choices": [choice], "usage": usage(out),
                "slo_report": slo_report(out)}

    def chunk(self, text: str, finish_reason: str | None = None, *, first: bool = False,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else (
                {"content": text} if text or finish_reason is None else {})
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": finish_reason}
        return {**self._head(self.chunk_object), "choices": [choice], **(extra or {})}

    def usage_chunk(self, out: RequestOutput) -> dict[str, Any]:
        return {**self._head(self.chunk_object), "choices": [], "usage": usage(out),
                "slo_report": slo_report(out)}
