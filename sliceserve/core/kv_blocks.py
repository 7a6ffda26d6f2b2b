"""Paged KV-cache accounting: fixed-size blocks, a free list, a block table per request.

Invariant: every block is either free or in exactly one request's table.
"""

from __future__ import annotations

from sliceserve.config import blocks_for_tokens  # noqa: F401  (re-exported for callers)
from sliceserve.request import Request


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Pop from the end: low block ids are handed out first.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def num_held(self, request_id: str) -> int:
        table = self._tables.get(request_id)
        return len(table) if table else 0

    def block_table(self, request_id: str) -> list[int]:
        return self._tables.get(request_id, [])

    def num_needed(self, request: Request, num_new_tokens: int) -> int:
        """Blocks to add so that `request` can compute `num_new_tokens` more tokens."""
        # blocks_for_tokens, inlined: the hottest call of the scheduler and policies.
        total = -(-(request.num_computed_tokens + num_new_tokens) // self.block_size)
        table = self._tables.get(request.request_id)
        if table:
            total -= len(table)
        return total if total > 0 else 0

    def can_allocate(self, request: Request, num_new_tokens: int) -> bool:
        return self.num_needed(request, num_new_tokens) <= len(self._free)

    def allocate(self, request: Request, num_new_tokens: int) -> list[int]:
        """Extend the request's table to cover `num_new_tokens` more tokens; return the table.

        Raises MemoryError, changing nothing, when too few blocks are free.
        """
        needed = self.num_needed(request, num_new_tokens)
        free = self._free
        if needed > len(free):
            raise MemoryError(
                f"KV cache exhausted: {request.request_id} needs {needed} blocks, "
                f"{len(free)} free"
            )
        table = self._tables.setdefault(request.request_id, [])
        if needed:
            table.extend(free[-needed:][::-1])
            del free[-needed:]
        return table

    def free(self, request_id: str) -> None:
        table = self._tables.pop(request_id, None)
        if table:
            self._free.extend(reversed(table))

    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def check_conserved(self) -> None:
        """Raise if a block is lost or shared (for tests and debugging)."""
        held = [b for t in self._tables.values() for b in t]
        all_ids = held + self._free
        if len(all_ids) != self.num_blocks or len(set(all_ids)) != self.num_blocks:
            raise AssertionError(
                f"KV blocks not conserved: {len(held)} held + {len(self._free)} free "
                f"!= {self.num_blocks} (or a block is duplicated)"
            )
