"""The commands callers on the event loop queue for the engine thread (async_engine.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sliceserve.engine.engine import Engine
from sliceserve.request import Request


@dataclass(frozen=True, slots=True)
class _Add:
    request: Request
    prompt: str | None


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: str
    detail: str
    code: str


@dataclass(frozen=True, slots=True)
class _Call:
    fn: Callable[[Engine], Any]
    future: asyncio.Future[Any]


def settle_threadsafe(loop: asyncio.AbstractEventLoop | None, future: asyncio.Future[Any],
                      result: Any, error: BaseException | None) -> None:
    """Resolve `future` (of `loop`) from another thread, unless it is already done."""
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    if loop is not None:
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop is closed
            pass
