"""Keeping a long-running server's resident memory flat under glibc's malloc.

Each iteration allocates and frees activations whose sizes follow the batch (rows, prompt
chunks, context). glibc may keep freed memory in its arenas (one per allocating thread, up to
8 per core) instead of returning it to the OS, so that resident memory creeps up with the
spread of shapes seen although nothing stays allocated. Two remedies, no-ops without glibc:

- `limit_arenas(n)`: at most `n` malloc arenas (`mallopt(M_ARENA_MAX)`), set at start,
  before the loader and engine threads allocate;
- `trim()`: `malloc_trim(0)`, which hands the free pages inside every arena back to the OS;
  the server calls it every `--malloc-trim-interval` seconds, on a worker thread.

Measured (docs/BENCHMARKS.md, "Server"): most of a run's growth was live memory, oneDNN's
primitive cache (`--onednn-cache-capacity`, in cli/serve_command.py), not free memory in
the arenas; a small cache's churn leaves free memory that `trim()` does return.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from functools import cache

M_ARENA_MAX = -8  # glibc's malloc.h


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl has no mallopt / malloc_trim)
        return None
    return libc


def limit_arenas(n: int) -> bool:
    """At most `n` malloc arenas from now on; False where that cannot be set."""
    if n < 1:
        raise ValueError(f"the number of malloc arenas must be >= 1, got {n}")
    libc = _libc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, n) == 1


def trim() -> bool:
    """Return free heap memory to the OS; True if some was released."""
    libc = _libc()
    return libc is not None and libc.malloc_trim(0) == 1


async def trim_every(interval_s: float) -> None:
    """`trim()` every `interval_s` seconds, on a worker thread (it walks the heaps), until
    cancelled."""
    if not interval_s > 0:
        raise ValueError(f"the trim interval must be > 0, got {interval_s}")
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)
