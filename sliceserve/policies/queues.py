"""Queue structures that policies share."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Generic, TypeVar

from sliceserve.policies.base import RequestView

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

K = TypeVar("K", bound="SupportsRichComparison")  # a key of one totally ordered kind


class RequestHeap(Generic[K]):
    """Requests in key order: O(log n) push and pop, instead of sorting a queue per iteration.

    Keys are any totally ordered values (ties are broken by push order). Pushing a request
    again replaces its entry; `discard` forgets one. Both are lazy: the old
    entry stays in the list and is skipped when it reaches the top. `len` counts live entries.
    """

    __slots__ = ("_entries", "_live", "_next_seq")

    def __init__(self) -> None:
        self._entries: list[tuple[K, int, RequestView]] = []
        self._live: dict[str, int] = {}  # request id -> seq of its live entry
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._live

    def push(self, request: RequestView, key: K) -> None:
        seq = self._next_seq
        self._next_seq += 1
        self._live[request.request_id] = seq
        heapq.heappush(self._entries, (key, seq, request))
        if len(self._entries) > 2 * len(self._live) + 64:
            self._compact()

    def pop(self) -> RequestView | None:
        """Remove and return the request with the smallest key (None when empty)."""
        entries, live = self._entries, self._live
        while entries:
            _, seq, request = heapq.heappop(entries)
            if live.get(request.request_id) == seq:
                del live[request.request_id]
                return request
        return None

    def peek(self) -> tuple[K, RequestView] | None:
        """The smallest key and its request, left in place (None when empty)."""
        entries, live = self._entries, self._live
        while entries:
            key, seq, request = entries[0]
            if live.get(request.request_id) == seq:
                return key, request
            heapq.heappop(entries)
        return None

    def discard(self, request_id: str) -> None:
        self._live.pop(request_id, None)

    def clear(self) -> None:
        self._entries.clear()
        self._live.clear()

    def _compact(self) -> None:
        live = self._live
        self._entries = [e for e in self._entries if live.get(e[2].request_id) == e[1]]
        heapq.heapify(self._entries)
