"""The paged KV block manager: allocation, freeing, conservation, unique block ids."""

from __future__ import annotations

import pytest

from sliceserve.core.kv_blocks import BlockManager, KVCacheFull, blocks_for_tokens
from sliceserve.request import SLO, Request, SamplingParams


def make_request(rid: str, prompt: int = 10, max_tokens: int = 4) -> Request:
    return Request(rid, 0.0, prompt, SamplingParams(max_tokens=max_tokens), SLO(100.0, 50.0))


def held_ids(bm: BlockManager, *rids: str) -> list[int]:
    return [b for rid in rids for b in bm.block_table(rid)]


@pytest.mark.parametrize(("tokens", "block_size", "blocks"), [
    (0, 16, 0), (1, 16, 1), (15, 16, 1), (16, 16, 1), (17, 16, 2), (32, 16, 2), (33, 16, 3),
    (5, 1, 5),
])
def test_blocks_for_tokens_is_ceiling(tokens: int, block_size: int, blocks: int) -> None:
    assert blocks_for_tokens(tokens, block_size) == blocks


def test_fresh_manager_has_all_blocks_free() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    assert bm.num_free_blocks == 8
    assert bm.num_used_blocks() == 0
    assert bm.num_held("x") == 0
    assert bm.block_table("x") == []
    bm.check_conserved()


def test_allocate_counts_blocks_for_computed_plus_new_tokens() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    r = make_request("a", prompt=10)
    assert bm.num_needed(r, 10) == 3
    table = bm.allocate(r, 10)
    assert len(table) == 3 and bm.num_held("a") == 3
    assert bm.num_free_blocks == 5
    r.num_computed_tokens = 10
    # Tokens 11 and 12 still fit in the third block; the 13th needs a fourth.
    assert bm.num_needed(r, 1) == 0
    assert bm.num_needed(r, 2) == 0
    assert bm.num_needed(r, 3) == 1
    assert bm.allocate(r, 2) == table  # nothing new
    assert bm.num_held("a") == 3
    bm.allocate(r, 3)
    assert bm.num_held("a") == 4
    bm.check_conserved()


def test_block_ids_are_unique_across_requests() -> None:
    bm = BlockManager(num_blocks=12, block_size=2)
    requests = [make_request(f"r{i}", prompt=5) for i in range(4)]
    for r in requests:
        bm.allocate(r, 5)  # 3 blocks each
    ids = held_ids(bm, *(r.request_id for r in requests))
    assert len(ids) == 12 and len(set(ids)) == 12
    assert set(ids) == set(range(12))
    assert bm.num_free_blocks == 0
    bm.check_conserved()


def test_allocation_beyond_capacity_raises_and_changes_nothing() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    a, b = make_request("a"), make_request("b")
    bm.allocate(a, 12)  # 3 blocks
    assert not bm.can_allocate(b, 8)
    assert bm.can_allocate(b, 4)
    with pytest.raises(KVCacheFull, match="KV cache exhausted"):
        bm.allocate(b, 8)
    assert bm.num_held("b") == 0 and bm.num_free_blocks == 1
    bm.check_conserved()


def test_free_returns_every_block_and_is_idempotent() -> None:
    bm = BlockManager(num_blocks=6, block_size=4)
    a, b = make_request("a"), make_request("b")
    bm.allocate(a, 8)
    bm.allocate(b, 12)
    a_ids = set(bm.block_table("a"))
    bm.free("a")
    assert bm.num_held("a") == 0 and bm.block_table("a") == []
    assert bm.num_free_blocks == 3
    bm.free("a")  # a second free is harmless
    bm.free("never-allocated")
    assert bm.num_free_blocks == 3
    bm.check_conserved()
    # Freed blocks are reused, and never handed to two requests.
    c = make_request("c")
    bm.allocate(c, 12)
    assert set(bm.block_table("c")) & set(bm.block_table("b")) == set()
    assert set(bm.block_table("c")) <= a_ids | set(range(6))
    bm.free("b")
    bm.free("c")
    assert bm.num_free_blocks == 6 and bm.num_used_blocks() == 0
    bm.check_conserved()


def test_conservation_under_random_allocate_free_sequence() -> None:
    import random

    rng = random.Random(7)
    bm = BlockManager(num_blocks=32, block_size=4)
    live: dict[str, Request] = {}
    for step in range(2000):
        if live and rng.random() < 0.3:
            rid = rng.choice(sorted(live))
            bm.free(rid)
            del live[rid]
        else:
            rid = f"r{step}" if not live or rng.random() < 0.5 else rng.choice(sorted(live))
            r = live.setdefault(rid, make_request(rid))
            n = rng.randint(1, 9)
            if bm.can_allocate(r, n):
                bm.allocate(r, n)
                r.num_computed_tokens += n
            else:
                with pytest.raises(KVCacheFull):
                    bm.allocate(r, n)
        bm.check_conserved()
        held = sum(bm.num_held(rid) for rid in live)
        assert held + bm.num_free_blocks == 32
        for r in live.values():
            assert bm.num_held(r.request_id) * 4 >= r.num_computed_tokens


def test_check_conserved_detects_lost_and_shared_blocks() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.allocate(make_request("a"), 4)
    lost = bm._is_free.find(1)
    bm._is_free[lost] = 0  # a block vanishes: neither free nor held
    bm._num_free -= 1
    with pytest.raises(AssertionError, match="not conserved"):
        bm.check_conserved()
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.allocate(make_request("a"), 4)
    bm._is_free[bm.block_table("a")[0]] = 1  # a block both held and free
    bm._num_free += 1
    with pytest.raises(AssertionError, match="not conserved"):
        bm.check_conserved()


def test_requests_get_consecutive_blocks_with_room_to_grow() -> None:
    """Placement: a new request starts where its prompt plus max_tokens fit in one run, so
    decode-time growth stays consecutive even when requests grow in turn."""
    bm = BlockManager(num_blocks=64, block_size=4)
    reqs = [make_request(f"r{i}", prompt=8, max_tokens=16) for i in range(3)]
    for r in reqs:
        bm.allocate(r, 8)  # the prompt: 2 blocks
        r.num_computed_tokens = 8
    for _ in range(4):  # they decode in turn, a block every 4 tokens
        for r in reqs:
            bm.allocate(r, 4)
            r.num_computed_tokens += 4
    for r in reqs:
        table = bm.block_table(r.request_id)
        assert table == list(range(table[0], table[0] + len(table)))
    bm.check_conserved()


def test_placement_falls_back_to_any_free_blocks() -> None:
    """With the pool fragmented, an allocation that fits in total still succeeds."""
    bm = BlockManager(num_blocks=8, block_size=4)
    reqs = [make_request(f"r{i}") for i in range(8)]
    for r in reqs:
        bm.allocate(r, 4)
    for r in reqs[::2]:
        bm.free(r.request_id)  # every other block free: no two in a row
    big = make_request("big")
    bm.allocate(big, 16)
    assert sorted(bm.block_table("big")) == [0, 2, 4, 6]
    assert bm.num_free_blocks == 0
    bm.check_conserved()
