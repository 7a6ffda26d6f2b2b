"""Paged KV-cache accounting: fixed-size blocks, a free list, a block table per request.

Invariant: every block is either free or in exactly one request's table.
"""

from __future__ import annotations

from typing import Protocol

from sliceserve.config import blocks_for_tokens  # noqa: F401  (re-exported for callers)
from sliceserve.request import Request


class Computed(Protocol):
    """What `num_needed` reads of a request: a Request, or the RequestView a policy holds."""

    @property
    def request_id(self) -> str: ...
    @property
    def num_computed_tokens(self) -> int: ...


class KVCacheFull(RuntimeError):
    """Too few free KV blocks for an allocation (nothing was changed)."""


class BlockManager:
    """Block placement keeps each request's blocks consecutive where it can: a new request
    starts at the first free run long enough for its prompt plus max_tokens (next-fit, from
    where the previous one's room ends), and a table grows into the block after its last one
    while that is free; otherwise the lowest free blocks are taken. Only placement differs
    from a plain free list: capacity and accounting are the same. On a CPU, decode attention
    that reads each row's history in long consecutive runs is faster end to end than over
    interleaved blocks (measured: docs/BENCHMARKS.md, "Figures behind the code")."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._is_free = bytearray(b"\x01") * num_blocks  # 1 = free
        self._num_free = num_blocks
        self._cursor = 0  # where the next new request's search for room starts
        self._tables: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return self._num_free

    def num_held(self, request_id: str) -> int:
        table = self._tables.get(request_id)
        return len(table) if table else 0

    def block_table(self, request_id: str) -> list[int]:
        return self._tables.get(request_id, [])

    def num_needed(self, request: Computed, num_new_tokens: int) -> int:
        """Blocks to add so that `request` can compute `num_new_tokens` more tokens."""
        # blocks_for_tokens, inlined: the hottest call of the scheduler and policies.
        total = -(-(request.num_computed_tokens + num_new_tokens) // self.block_size)
        table = self._tables.get(request.request_id)
        if table:
            total -= len(table)
        return total if total > 0 else 0

    def can_allocate(self, request: Request, num_new_tokens: int) -> bool:
        return self.num_needed(request, num_new_tokens) <= self._num_free

    def allocate(self, request: Request, num_new_tokens: int) -> list[int]:
        """Extend the request's table to cover `num_new_tokens` more tokens; return the table.

        Raises KVCacheFull, changing nothing, when too few blocks are free.
        """
        needed = self.num_needed(request, num_new_tokens)
        if needed > self._num_free:
            raise KVCacheFull(
                f"KV cache exhausted: {request.request_id} needs {needed} blocks, "
                f"{self._num_free} free"
            )
        table = self._tables.setdefault(request.request_id, [])
        if needed:
            self._take(table, needed, request)
        return table

    def _take(self, table: list[int], needed: int, request: Request) -> None:
        is_free = self._is_free
        if table:  # grow in place while the next blocks are free
            nxt = table[-1] + 1
            while needed and nxt < self.num_blocks and is_free[nxt]:
                is_free[nxt] = 0
                table.append(nxt)
                nxt += 1
                needed -= 1
                self._num_free -= 1
        else:  # room for the whole request, if there is a run that long
            room = -(-(request.num_prompt_tokens + request.max_tokens) // self.block_size)
            room = min(max(room, needed), max(needed, self.num_blocks // 8))
            start = self._find_run(room)
            if start < 0 and room > needed:
                room = needed
                start = self._find_run(room)
            if start >= 0:
                is_free[start:start + needed] = bytes(needed)
                table.extend(range(start, start + needed))
                self._cursor = start + room
                self._num_free -= needed
                return
        self._num_free -= needed
        pos = 0
        while needed:  # the lowest free blocks
            pos = is_free.find(1, pos)
            is_free[pos] = 0
            table.append(pos)
            needed -= 1

    def _find_run(self, length: int) -> int:
        """First block of `length` free blocks in a row, searching on from the cursor, then
        from the start; -1 if there is none."""
        run = b"\x01" * length
        start = self._is_free.find(run, self._cursor)
        if start < 0:
            start = self._is_free.find(run, 0)
        return start

    def free(self, request_id: str) -> None:
        table = self._tables.pop(request_id, None)
        if table:
            is_free = self._is_free
            for block in table:
                is_free[block] = 1
            self._num_free += len(table)

    def num_used_blocks(self) -> int:
        return self.num_blocks - self._num_free

    def check_conserved(self) -> None:
        """Raise if a block is lost or shared (for tests and debugging)."""
        held = [b for t in self._tables.values() for b in t]
        free = [b for b, flag in enumerate(self._is_free) if flag]
        all_ids = held + free
        if (len(all_ids) != self.num_blocks or len(set(all_ids)) != self.num_blocks
                or len(free) != self._num_free):
            raise AssertionError(
                f"KV blocks not conserved: {len(held)} held + {len(free)} free "
                f"!= {self.num_blocks} (or a block is duplicated)"
            )
