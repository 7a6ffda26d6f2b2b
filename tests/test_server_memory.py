"""The server's malloc settings (sliceserve/server/memory.py): they apply where glibc is the
allocator, do nothing elsewhere, and bad values are refused before anything starts."""

from __future__ import annotations

import asyncio
import ctypes.util

import pytest

from sliceserve.server import memory
from sliceserve.server.config import ServerConfig

GLIBC = ctypes.util.find_library("c") is not None and memory._libc() is not None


def test_arenas_and_trim() -> None:
    assert memory.limit_arenas(8) is GLIBC  # 8 per core is glibc's own bound: harmless here
    assert isinstance(memory.trim(), bool)
    with pytest.raises(ValueError, match="arenas"):
        memory.limit_arenas(0)


def test_trim_every_runs_until_cancelled() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(memory.trim_every(0.001))
        await asyncio.sleep(0.05)
        assert not task.done()  # trimming never ends the task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ValueError, match="interval"):
            await memory.trim_every(0)
    asyncio.run(main())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="--malloc-arena-max"):
        ServerConfig(malloc_arena_max=0)
    with pytest.raises(ValueError, match="--malloc-trim-interval"):
        ServerConfig(malloc_trim_interval_s=float("nan"))
    assert ServerConfig(malloc_arena_max=None, malloc_trim_interval_s=0).malloc_arena_max is None
