"""The FastAPI app: routes, authentication, and errors in OpenAI's shape (docs/API.md).

    POST /v1/completions, /v1/chat/completions     generation (generation.py)
    GET  /v1/models                                 the served model
    GET  /v1/state                                  queues, the policy's plan, iterations
    GET  /health                                    200 ready, 503 loading / draining / failed
    GET  /version, /metrics                         version; Prometheus text

With API keys, every /v1/ route needs `Authorization: Bearer <key>` (compared in constant
time); /health, /version and /metrics stay open (probes and scrapers). Bodies are read and
validated by hand (errors.read_body, the protocol models), so that whatever arrives gets a
4xx naming its field, never a 5xx; the OpenAPI schema still describes them.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from sliceserve import __version__
from sliceserve.server.errors import APIError, error_body, read_body, validation_error
from sliceserve.server.generation import generate
from sliceserve.server.protocol import ChatCompletionRequest, CompletionRequest
from sliceserve.server.runtime_state import ServerState
from sliceserve.server.state import engine_state

STATE_TIMEOUT_S = 10.0


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def create_app(state: ServerState, lifespan: Any = None) -> FastAPI:
    app = FastAPI(title="sliceserve", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible LLM serving with per-request SLOs "
                              "(docs/API.md)")
    app.state.server = state
    keys = [key.encode() for key in state.config.api_keys]

    def authorize(request: Request) -> None:
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        matched = False
        for key in keys:  # every key compared, each in constant time
            matched |= hmac.compare_digest(given, key)
        if scheme.lower() != "bearer" or not matched:
            raise APIError(401, "missing or invalid API key: send Authorization: Bearer <key>",
                           code="invalid_api_key", type_="authentication_error")

    @app.exception_handler(APIError)
    async def on_api_error(_: Request, error: APIError) -> JSONResponse:
        state.metrics.http_errors.labels(str(error.status), error.code).inc()
        return error.response()

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        state.metrics.http_errors.labels(str(error.status_code), code).inc()
        return JSONResponse(error_body(str(error.detail), "invalid_request_error", code),
                            status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(str(error), "invalid_request_error", "invalid_value"),
                            status_code=400)

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, error: Exception) -> JSONResponse:
        state.metrics.http_errors.labels("500", "internal_error").inc()
        return JSONResponse(error_body(f"internal error: {error!r}", "server_error",
                                       "internal_error"), status_code=500)

    async def generation(request: Request, model: type[BaseModel]) -> Response:
        authorize(request)
        unavailable = state.unavailable()
        if unavailable is not None:
            raise unavailable
        data = await read_body(request, state.config.max_body_bytes)
        try:
            body = model.model_validate(data)
        except ValidationError as e:
            raise validation_error(e) from None
        return await generate(state, request, body)  # type: ignore[arg-type]

    @app.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await generation(request, CompletionRequest)

    @app.post("/v1/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        return await generation(request, ChatCompletionRequest)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        max_len = state.live.config.max_model_len if state.engine is not None else None
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": int(state.started_unix),
             "owned_by": "sliceserve", "root": state.model_names[0], "parent": None,
             "max_model_len": max_len} for name in state.model_names]}

    @app.get("/v1/state")
    async def engine_snapshot(request: Request) -> dict[str, Any]:
        authorize(request)
        engine = state.require_engine()
        snapshot = await _with_timeout(engine.call(
            lambda e: engine_state(e, state.iteration_log)))
        snapshot["server"] = {"phase": state.phase, "in_flight": state.in_flight,
                              "slo_classes": state.slo_classes.describe()}
        return snapshot

    @app.get("/health")
    async def health() -> Response:
        error = state.unavailable()
        if error is not None:
            return error.response()
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.engine is not None and state.engine.is_running:
            try:
                await _with_timeout(state.engine.call(state.metrics.refresh_queues))
            except Exception:  # noqa: BLE001 - the scrape still gets what is known
                pass
        return PlainTextResponse(state.metrics.render().decode(),
                                 media_type="text/plain; version=0.0.4")

    return app


async def _with_timeout(awaitable: Any) -> Any:
    try:
        return await asyncio.wait_for(awaitable, STATE_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise APIError(503, "the engine did not answer in time", code="engine_busy",
                       type_="service_unavailable") from None

