"""One generation request, from its validated body to the HTTP answer.

    body -> prompt ids, SamplingParams, SLO (400 naming the field for anything the engine
    would refuse) -> AsyncEngine.generate -> the first output decides the answer:
      rejected -> 429 (load: slo_infeasible, queue_full) or 400 (it can never fit), with the
                  scheduler's code and reason; nothing was streamed yet, so a status fits;
      aborted  -> 503 (shutting down) / 500;
      else     -> a server-sent event stream, or one JSON object once the request finished.

A client that goes away, before its first token or mid-stream, aborts its request at once
(its KV blocks are freed in the next scheduling round). A request that ends badly after its
stream began gets a final `data: {"error": ...}` event and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from sliceserve.engine.async_engine import CODE_SHUTDOWN, EngineNotRunning, EngineStepError
from sliceserve.engine.outputs import RequestOutput
from sliceserve.request import CODE_CONTEXT_LENGTH, CODE_KV_CAPACITY, SamplingParams
from sliceserve.server.errors import APIError, bad_request
from sliceserve.server.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from sliceserve.server.responses import DONE, Shape, slo_report, sse, usage
from sliceserve.server.runtime_state import ServerState

T = TypeVar("T")
NEVER_FITS = (CODE_CONTEXT_LENGTH, CODE_KV_CAPACITY)


class ClientGone(Exception):
    """The client disconnected while we waited for the engine."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _or_disconnect(work: Awaitable[T], request: Request) -> T:
    """`work`'s result, unless the client goes away first: then `work` is cancelled (which
    aborts the engine request) and ClientGone is raised."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        gone.cancel()
    if task.cancelled() or not task.done():
        raise ClientGone
    return task.result()


def _prompt_ids(state: ServerState, body: GenerationRequest) -> tuple[list[int], str]:
    """Token ids of the prompt and the field they came from."""
    live = state.live
    if isinstance(body, ChatCompletionRequest):
        try:
            ids = live.encode_chat([m.to_template() for m in body.messages])
        except ValueError as e:
            raise bad_request(f"messages: {e}", "messages") from None
        field = "messages"
    else:
        assert isinstance(body, CompletionRequest)
        prompt = body.prompt_input
        if isinstance(prompt, str):
            if not prompt:
                raise bad_request("prompt: must not be empty", "prompt")
            ids = live.encode(prompt)
        else:
            ids = list(prompt)
        field = "prompt"
    try:
        live.check_token_ids(ids, field)
    except ValueError as e:
        raise bad_request(str(e), field) from None
    return ids, field


def _sampling(state: ServerState, body: GenerationRequest, num_prompt: int,
              field: str) -> SamplingParams:
    cfg = state.live.config
    room = cfg.max_model_len - num_prompt
    if room < 1:
        raise bad_request(f"{field}: the prompt has {num_prompt} tokens; the context holds "
                          f"{cfg.max_model_len} (with at least 1 to generate)", field,
                          code=CODE_CONTEXT_LENGTH)
    chat = isinstance(body, ChatCompletionRequest)
    max_tokens = body.max_new_tokens if chat else body.max_tokens  # type: ignore[attr-defined]
    param = "max_completion_tokens" if chat and body.max_completion_tokens else "max_tokens"
    if max_tokens is None:
        max_tokens = min(room, cfg.kv_capacity_tokens - num_prompt) if chat else 16
    try:
        state.live.check_fits(num_prompt, max_tokens, param)
    except ValueError as e:
        raise bad_request(str(e), param, code=CODE_CONTEXT_LENGTH) from None
    vocab = state.live.vocab_size
    bad_ids = [t for t in body.stop_token_ids or () if t >= vocab]
    if bad_ids:
        raise bad_request(f"stop_token_ids: ids outside the vocabulary [0, {vocab}): "
                          f"{bad_ids[:5]}", "stop_token_ids")
    if body.min_tokens > max_tokens:
        raise bad_request(f"min_tokens: must be <= {param} ({max_tokens})", "min_tokens")
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_k=max(body.top_k, 0),
            top_p=body.top_p, seed=body.seed, stop=body.stop_strings,
            stop_token_ids=tuple(body.stop_token_ids or ()), ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens)
    except ValueError as e:
        raise bad_request(str(e)) from None


def _refusal(out: RequestOutput, state: ServerState) -> APIError:
    """The HTTP error for a request that ended before its first token."""
    code = out.finish_code or str(out.finish_reason)
    detail = out.finish_detail or code
    if out.status == "rejected":
        if code in NEVER_FITS:
            return bad_request(detail, "max_tokens", code=code)
        return APIError(429, f"request refused: {detail}", code=code, type_="rate_limit_error",
                        headers={"Retry-After": str(state.config.retry_after_s)})
    if code == CODE_SHUTDOWN:
        return APIError(503, f"the server is shutting down: {detail}", code="shutting_down",
                        type_="service_unavailable")
    return APIError(500, f"the request was aborted: {detail}", code=code, type_="server_error")


def _engine_error(error: EngineStepError) -> APIError:
    return APIError(500, f"the engine failed while serving this request: {error.__cause__!r}",
                    code="engine_error", type_="server_error")


async def generate(state: ServerState, http: Request, body: GenerationRequest) -> Response:
    engine = state.require_engine()
    if body.model not in state.model_names:
        raise APIError(404, f"model: the model {body.model!r} does not exist; this server "
                            f"serves {', '.join(state.model_names)}", code="model_not_found",
                       param="model")
    ids, field = _prompt_ids(state, body)
    sampling = _sampling(state, body, len(ids), field)
    slo = body.slo
    try:
        resolved = state.slo_classes.resolve(
            len(ids), sampling.max_tokens, body.slo_class,
            slo.ttft_ms if slo else None, slo.tpot_ms if slo else None,
            slo.deadline_ms if slo else None, body.utility, body.priority)
    except ValueError as e:
        raise bad_request(f"slo: {e}", "slo") from None
    chat = isinstance(body, ChatCompletionRequest)
    request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    shape = Shape(chat, request_id, int(time.time()), body.model)
    ticket = state.begin()
    try:
        stream = engine.generate(ids, sampling, resolved.slo, request_id, resolved.priority)
        try:
            first = await _or_disconnect(stream.__anext__(), http)
        except EngineStepError as e:
            raise _engine_error(e) from None
        except EngineNotRunning:
            raise APIError(503, "the server is shutting down", code="shutting_down",
                           type_="service_unavailable") from None
        if first.finished and first.status != "completed":
            raise _refusal(first, state)
        if body.stream:
            events = _events(first, stream, shape, body, ticket)
            response = _EventStream(events, _closer(stream, ticket))
            ticket = None  # the event stream ends it
            return response
        final = first
        try:
            if not first.finished:
                final = await _or_disconnect(_last(stream), http)
        except EngineStepError as e:
            raise _engine_error(e) from None
        if final.status != "completed":
            raise _refusal(final, state)
        return JSONResponse(shape.completion(final))
    except ClientGone:
        return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
    finally:
        if ticket is not None:
            ticket.end()


class _EventStream(StreamingResponse):
    """Server-sent events that release their request however the response ends, even when
    the client left before the first event was sent (the generator never ran then)."""

    def __init__(self, events: AsyncIterator[str], close: Any) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})
        self._close = close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()


def _closer(stream: AsyncIterator[RequestOutput], ticket: Any) -> Any:
    async def close() -> None:
        try:
            await stream.aclose()  # type: ignore[attr-defined]  # aborts it if unfinished
        finally:
            ticket.end()
    return close


async def _last(stream: AsyncIterator[RequestOutput]) -> RequestOutput:
    last = None
    async for out in stream:
        last = out
    assert last is not None
    return last


async def _events(first: RequestOutput, stream: AsyncIterator[RequestOutput], shape: Shape,
                  body: GenerationRequest, ticket: Any) -> AsyncIterator[str]:
    include_usage = body.include_usage
    every_usage = body.stream_options is not None and body.stream_options.continuous_usage_stats
    sent_role = False

    def extra(out: RequestOutput) -> dict[str, Any]:
        if every_usage:
            return {"usage": usage(out)}
        return {"usage": None} if include_usage else {}

    try:
        out = first
        while not out.finished:
            if out.delta_text or (shape.chat and not sent_role):
                yield sse(shape.chunk(out.delta_text, first=not sent_role, extra=extra(out)))
                sent_role = True
            out = await stream.__anext__()
        if out.status == "completed":
            report = slo_report(out)
            yield sse(shape.chunk(out.delta_text, str(out.finish_reason),
                                  first=shape.chat and not sent_role,
                                  extra={**extra(out), "slo_report": report}))
            if include_usage:
                yield sse(shape.usage_chunk(out))
        else:
            error = _refusal(out, ticket.state)
            yield sse(error.body())
        yield DONE
    except EngineStepError as e:
        yield sse(_engine_error(e).body())
        yield DONE
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        ticket.end()
