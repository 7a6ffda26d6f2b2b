"""OpenAI-style errors, and reading a request body that may be anything.

Every error the server answers has OpenAI's shape:
    {"error": {"message": "...", "type": "...", "param": <field or null>, "code": "..."}}
`read_body` turns whatever arrives (no JSON, a JSON array, invalid UTF-8, a wrong content
type, too many bytes) into an `APIError`; `validation_error` turns pydantic's first complaint
into a 400 that names the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

INVALID = "invalid_request_error"


class APIError(Exception):
    """An error answer: HTTP status, OpenAI type, code, the field it is about."""

    def __init__(self, status: int, message: str, *, code: str, type_: str = INVALID,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code=code, param=param)


_FIELD_PREFIX = re.compile(r"^(?:Value error, )?([A-Za-z_][\w.]*): (.*)$", re.S)


def validation_error(error: ValidationError) -> APIError:
    """The first complaint, naming its field (`slo.ttft_ms`, `messages.0.role`)."""
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first.get("loc", ()) if not _is_union_tag(part)]
    message = str(first.get("msg", "invalid value"))
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    match = _FIELD_PREFIX.match(message)
    if param is None and match:  # a model-level check names its field in its message
        param, message = match.group(1), match.group(2)
    code = "unknown_field" if first.get("type") == "extra_forbidden" else (
        "missing_field" if first.get("type") == "missing" else "invalid_value")
    return APIError(400, f"{param}: {message}" if param else message, code=code, param=param)


def _is_union_tag(part: Any) -> bool:
    """pydantic puts the union member it tried into loc (`str`, `list[int]`, ...)."""
    text = str(part)
    return not text.isdigit() and (text in ("str", "int", "float", "bool")
                                   or "[" in text or text.startswith("constrained-")
                                   or text.startswith("function-"))


async def read_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object, or an APIError (415, 413, 400)."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json":
        raise APIError(415, f"Content-Type must be application/json, got {content_type!r}",
                       code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the body is not valid UTF-8 (byte {e.start})",
                          code="invalid_json") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise bad_request(f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got a JSON {type(data).__name__}",
                          code="invalid_json")
    return data


def too_large(max_bytes: int) -> APIError:
    return APIError(413, f"the body exceeds {max_bytes} bytes", code="request_too_large")
