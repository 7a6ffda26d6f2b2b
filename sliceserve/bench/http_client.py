"""One streamed request to an OpenAI-compatible server, timed on the client side.

    outcome = await send_request(client, url, body, timeout_s=600)

Every chunk of the server-sent-event stream is timestamped when it arrives
(`time.perf_counter`). A chunk carries the tokens of its `token_ids` (vLLM with
`return_token_ids`), else one token if it has text; the final usage (`stream_options:
include_usage`) gives the true count, and tokens the chunks did not show (special tokens
streamed as empty text) are placed at the last chunk, when they had certainly arrived.

How the request ended (`Outcome.status` / `code`), in the result files' terms:
- completed: the stream ended with [DONE] (or closed) after a finish_reason;
- rejected: HTTP 429 or 503 (`code` "429:<server code>", "503:<server code>"), or an error
  event before any token whose code is a rejection (`REJECTION_CODES`);
- aborted: any other HTTP status ("400:<code>"), an error event mid-stream
  ("stream:<code>"), a timeout ("timeout"), the run's time limit ("time_limit"), a broken
  connection ("connection"), a stream that ended without a finish ("incomplete").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

REJECTION_STATUSES = (429, 503)
REJECTION_CODES = ("slo_infeasible", "queue_full", "shutting_down", "loading", "rejected")
MAX_ERROR_TEXT = 300


@dataclass
class Outcome:
    """What the client saw of one request (times from `time.perf_counter`)."""

    sent_s: float
    status: str = "aborted"  # completed | rejected | aborted
    code: str | None = None
    detail: str | None = None
    chunk_times_s: list[float] = field(default_factory=list)  # chunks that carried tokens
    chunk_tokens: list[int] = field(default_factory=list)  # tokens per such chunk
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    slo_report: dict[str, Any] | None = None
    text_chars: int = 0

    @property
    def counted_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def num_output_tokens(self) -> int:
        """The server's count (usage) when it gave one, else the tokens the chunks showed."""
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return int(self.usage["completion_tokens"])
        return self.counted_tokens

    @property
    def num_prompt_tokens(self) -> int | None:
        value = (self.usage or {}).get("prompt_tokens")
        return value if isinstance(value, int) else None

    def token_times_s(self) -> list[float]:
        """One time per output token: each chunk's time for each of its tokens; tokens only
        the usage counted at the last chunk's time; more counted than the usage: cut."""
        times = [t for t, k in zip(self.chunk_times_s, self.chunk_tokens) for _ in range(k)]
        n = self.num_output_tokens
        if len(times) > n:
            return times[:n]
        if times and len(times) < n:
            times += [times[-1]] * (n - len(times))
        return times


def chunk_tokens(choice: dict[str, Any]) -> tuple[int, int]:
    """(tokens, characters) a streamed choice carries (completions or chat)."""
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content")
    text = text or ""
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return len(ids), len(text)
    return (1 if text else 0), len(text)


def _error_fields(payload: Any) -> tuple[str | None, str]:
    """(code, message) of an OpenAI-shaped error body, or of anything else."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            message = error.get("message") or json.dumps(error)[:MAX_ERROR_TEXT]
            return (str(code) if code is not None else None), str(message)[:MAX_ERROR_TEXT]
        if isinstance(error, str):
            return None, error[:MAX_ERROR_TEXT]
    return None, str(payload)[:MAX_ERROR_TEXT]


def _http_failure(outcome: Outcome, status_code: int, text: str) -> Outcome:
    try:
        code, message = _error_fields(json.loads(text))
    except ValueError:
        code, message = None, text[:MAX_ERROR_TEXT]
    outcome.status = "rejected" if status_code in REJECTION_STATUSES else "aborted"
    outcome.code = f"{status_code}:{code}" if code else str(status_code)
    outcome.detail = message
    return outcome


def _on_event(outcome: Outcome, data: dict[str, Any], now_s: float) -> bool:
    """Fold one stream event into `outcome`; True when it was an error event (the end)."""
    if "error" in data and not data.get("choices"):
        code, message = _error_fields(data)
        before_tokens = not outcome.chunk_tokens
        rejected = before_tokens and (code or "") in REJECTION_CODES
        outcome.status = "rejected" if rejected else "aborted"
        outcome.code = f"stream:{code or 'error'}"
        outcome.detail = message
        return True
    for choice in data.get("choices") or ():
        tokens, chars = chunk_tokens(choice)
        if tokens:
            outcome.chunk_times_s.append(now_s)
            outcome.chunk_tokens.append(tokens)
            outcome.text_chars += chars
        if choice.get("finish_reason") is not None:
            outcome.finish_reason = str(choice["finish_reason"])
    if isinstance(data.get("usage"), dict):
        outcome.usage = data["usage"]
    if isinstance(data.get("slo_report"), dict):
        outcome.slo_report = data["slo_report"]
    return False


async def send_request(client: httpx.AsyncClient, url: str, body: dict[str, Any], *,
                       timeout_s: float, headers: dict[str, str] | None = None,
                       run_deadline_s: float | None = None) -> Outcome:
    """POST `body` (with "stream": true) to `url` and follow its stream to the end, at most
    `timeout_s` (code "timeout") and not past `run_deadline_s` (a `time.perf_counter` time
    that bounds the whole run; code "time_limit")."""
    outcome = Outcome(sent_s=time.perf_counter())
    deadline_s = outcome.sent_s + timeout_s
    limit_code = "timeout"
    if run_deadline_s is not None and run_deadline_s < deadline_s:
        deadline_s, limit_code = max(run_deadline_s, outcome.sent_s + 0.001), "time_limit"
    budget_s = deadline_s - outcome.sent_s
    timeout = httpx.Timeout(budget_s, connect=min(budget_s, 30.0))
    try:
        async with client.stream("POST", url, json=body, headers=headers,
                                 timeout=timeout) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return _http_failure(outcome, response.status_code, text)
            async for line in response.aiter_lines():
                now_s = time.perf_counter()
                if not line.startswith("data:"):
                    if now_s > deadline_s:
                        raise httpx.ReadTimeout("request time limit")
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    data = json.loads(payload)
                except ValueError:
                    outcome.code, outcome.detail = "bad_event", payload[:MAX_ERROR_TEXT]
                    return outcome
                if _on_event(outcome, data, now_s):
                    return outcome
                if now_s > deadline_s:
                    raise httpx.ReadTimeout("request time limit")
    except httpx.TimeoutException as e:
        outcome.status, outcome.code, outcome.detail = "aborted", limit_code, str(e) or limit_code
        return outcome
    except httpx.HTTPError as e:
        outcome.status, outcome.code = "aborted", "connection"
        outcome.detail = f"{type(e).__name__}: {e}"[:MAX_ERROR_TEXT]
        return outcome
    if outcome.finish_reason is None:
        outcome.status, outcome.code = "aborted", "incomplete"
        outcome.detail = "the stream ended without a finish_reason"
        return outcome
    outcome.status = "completed"
    return outcome
