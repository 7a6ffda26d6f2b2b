"""Streaming detokenization (valid UTF-8 deltas, equal to a full decode) and stop strings."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sliceserve.model.detokenizer import (
    REPLACEMENT_CHAR,
    IncrementalDetokenizer,
    StopChecker,
    TextStream,
)
from tests.tiny_models import EOS_TOKEN_ID, make_tiny_tokenizer

MULTIBYTE = "Héllo wörld 👋🏽 日本語, naïve café 🎉!"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tiny_tokenizer()


def stream(tokenizer: Any, ids: list[int], prompt: list[int] | None = None) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt if prompt is not None else [])
    return [detok.add(t) for t in ids] + [detok.flush()]


def test_multibyte_characters_split_over_byte_tokens_stream_whole(tokenizer: Any) -> None:
    ids = tokenizer.encode(MULTIBYTE)
    pieces = [tokenizer.decode([t]) for t in ids]
    assert sum(REPLACEMENT_CHAR in p for p in pieces) >= 8, "the text must split characters"
    deltas = stream(tokenizer, ids, tokenizer.encode("Say:"))
    assert "".join(deltas) == MULTIBYTE == tokenizer.decode(ids)
    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    assert "👋" in deltas and "日" in deltas  # each emoji / CJK character comes out in one piece
    assert all(d.encode("utf-8").decode("utf-8") == d for d in deltas)


@pytest.mark.parametrize("seed", range(6))
def test_random_ids_concatenate_to_the_full_decode(tokenizer: Any, seed: int) -> None:
    """Arbitrary ids (invalid byte sequences, special tokens) included: the deltas joined equal
    decode(output ids, skip_special_tokens=True), whatever the prompt's tail."""
    rng = random.Random(seed)
    vocab = len(tokenizer)
    prompt = [rng.randrange(vocab) for _ in range(rng.randrange(0, 6))]
    ids = [rng.randrange(vocab) for _ in range(200)]
    deltas = stream(tokenizer, ids, prompt)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    # Held-back text is released by the flush only; no delta ends inside a character.
    assert all(not d.endswith(REPLACEMENT_CHAR) for d in deltas[:-1])


def test_special_tokens_are_skipped_or_kept(tokenizer: Any) -> None:
    ids = tokenizer.encode("Hello") + [EOS_TOKEN_ID]
    assert "".join(stream(tokenizer, ids)) == "Hello"
    detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
    text = "".join(detok.add(t) for t in ids) + detok.flush()
    assert text == "Hello<|im_end|>"


def test_decodes_a_short_window_not_the_whole_sequence(tokenizer: Any) -> None:
    class Counting:  # a tokenizer without a Rust backend, to see every decode call
        def __init__(self) -> None:
            self.lengths: list[int] = []

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            self.lengths.append(len(ids))
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    counting = Counting()
    ids = tokenizer.encode(MULTIBYTE * 20)
    deltas = stream(counting, ids, tokenizer.encode("prompt"))
    assert "".join(deltas) == MULTIBYTE * 20
    assert len(ids) > 300 and max(counting.lengths) <= 12
    assert len(counting.lengths) <= 2 * len(ids) + 2


def test_stop_checker_finds_the_earliest_match_in_new_text() -> None:
    checker = StopChecker(["world", "lo w", "xyz"])
    assert checker.find("hello world", num_new_chars=5) == 3  # "lo w" starts before "world"
    assert checker.find("hello world", num_new_chars=3) == 6  # "lo w" ended before: seen
    assert checker.find("hello world", num_new_chars=0) is None
    assert checker.find("abc", num_new_chars=3) is None
    assert StopChecker([]).find("anything", 8) is None
    with pytest.raises(ValueError, match="non-empty"):
        StopChecker(["ok", ""])


def test_stop_checker_partial_match_length() -> None:
    checker = StopChecker(["STOP", "\n\n"])
    assert checker.partial_len("text ST") == 2
    assert checker.partial_len("text STO") == 3
    assert checker.partial_len("text\n") == 1
    assert checker.partial_len("text S T") == 0
    assert checker.partial_len("") == 0


def test_text_stream_cuts_before_a_stop_string_across_tokens(tokenizer: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text)
    stream_ = TextStream(tokenizer, [], stop=["fox jum"])
    deltas = []
    for n in range(1, len(ids) + 1):
        stopped = stream_.add(ids[n - 1])
        deltas.append(stream_.take_delta())
        assert "fox" not in "".join(deltas)  # a possible stop string is never shown early
        if stopped:
            break
    assert stream_.stopped and stream_.text == "The quick brown "
    assert "".join(deltas) + stream_.take_delta(final=True) == "The quick brown "
    # It stopped at the token that completed the stop string, not before, not after.
    assert "fox jum" in tokenizer.decode(ids[:n]) and "fox jum" not in tokenizer.decode(ids[:n - 1])


def test_text_stream_releases_a_partial_match_that_did_not_stop(tokenizer: Any) -> None:
    text = "the quick brown"
    stream_ = TextStream(tokenizer, [], stop=["quiet"])
    shown = ""
    for token in tokenizer.encode(text):
        assert not stream_.add(token)
        shown += stream_.take_delta()
        assert text.startswith(shown)
    stream_.finish()
    shown += stream_.take_delta(final=True)
    assert shown == text and not stream_.stopped


def test_text_stream_stop_string_inside_a_multibyte_tail(tokenizer: Any) -> None:
    ids = tokenizer.encode(MULTIBYTE)
    stream_ = TextStream(tokenizer, [], stop=["🏽 日"])
    for token in ids:
        if stream_.add(token):
            break
    assert stream_.text == "Héllo wörld 👋"
