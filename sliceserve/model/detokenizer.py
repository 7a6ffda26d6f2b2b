"""Streaming detokenization and stop strings.

`IncrementalDetokenizer` turns one output token at a time into text deltas that are always
valid UTF-8: a byte-level token may carry half of a character (an emoji is often 2-4 byte
tokens), and decoding such a tail gives U+FFFD, so the delta is held back until the character
is complete. Only a short window of ids is decoded per token (the ids since the last emitted
text plus the ids of the text before it, for context), never the whole sequence.

Joined, the deltas (plus `flush()` at the end) equal `tokenizer.decode(output_ids)` for the
byte-level BPE tokenizers of the Llama 3 / Qwen2 / SmolLM2 families. The window starts in the
prompt's tail, as vLLM's does, so a SentencePiece tokenizer (Llama 2, Mistral) keeps the
leading space of the first output word, which a plain `decode` of the output ids strips.

`StopChecker` finds stop strings in the text (vLLM semantics: the output is cut before the
earliest match and the stop string itself is not returned) and says how much of the text's
tail could still become a stop string, so a stream never shows text it may have to take back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"
# Prompt ids decoded in front of the first output ids: enough for the tokenizer to see the
# word boundary, few enough to stay cheap.
PROMPT_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    """Decode output tokens one by one into valid-UTF-8 text deltas."""

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int] = (),
                 skip_special_tokens: bool = True) -> None:
        self._decode = _decoder(tokenizer, skip_special_tokens)
        context = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        context_text = self._decode(context) if context else ""
        if context_text.endswith(REPLACEMENT_CHAR):
            # The prompt ends inside a character (a token-id prompt can): decode the output
            # on its own rather than glue its first bytes to the prompt's.
            context, context_text = [], ""
        self._ids: list[int] = context
        self._prefix_offset = 0  # window start: ids decoded for context only
        self._read_offset = len(context)  # ids before this are already in the text
        self._prefix_text = context_text  # decode(ids[prefix_offset:read_offset])
        self.text = ""  # everything emitted so far
        self.num_output_tokens = 0

    def add(self, token_id: int) -> str:
        """Take one output token; return the text it completes ("" while held back)."""
        self._ids.append(token_id)
        self.num_output_tokens += 1
        window_text = self._decode(self._ids[self._prefix_offset:])
        if len(window_text) <= len(self._prefix_text) or window_text.endswith(REPLACEMENT_CHAR):
            return ""  # a special token (skipped), or an incomplete character: wait
        return self._emit(window_text)

    def flush(self) -> str:
        """At the end of the output: whatever is still held back, as `decode` would show it."""
        if self._read_offset == len(self._ids):
            return ""
        window_text = self._decode(self._ids[self._prefix_offset:])
        if len(window_text) <= len(self._prefix_text):
            return ""
        return self._emit(window_text)

    def _emit(self, window_text: str) -> str:
        delta = window_text[len(self._prefix_text):]
        # The next window starts at the ids of this delta: they give the next token context.
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix_offset:])
        # The ids before the window are never read again.
        if self._prefix_offset > 64:
            del self._ids[:self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        self.text += delta
        return delta


def _decoder(tokenizer: Any, skip_special_tokens: bool) -> Any:
    """A function ids -> text. Goes straight to the Rust tokenizer when there is one (a few
    microseconds instead of tens: it runs for every token of every request)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        def decode_fast(ids: list[int]) -> str:
            return backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return decode_fast

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    return decode


class StopChecker:
    """Finds stop strings in a growing text (vLLM semantics)."""

    def __init__(self, stop: Sequence[str]) -> None:
        bad = [s for s in stop if not isinstance(s, str) or not s]
        if bad:
            raise ValueError(f"stop strings must be non-empty strings, got {bad!r}")
        self.stop = tuple(stop)
        self._max_len = max((len(s) for s in self.stop), default=0)

    def __bool__(self) -> bool:
        return bool(self.stop)

    def find(self, text: str, num_new_chars: int) -> int | None:
        """Index in `text` where the earliest stop string starts, looking only at matches that
        end in the last `num_new_chars` characters (older text was checked before); None if
        there is none."""
        if not self.stop or num_new_chars <= 0:
            return None
        start = max(0, len(text) - num_new_chars - self._max_len + 1)
        found = [i for s in self.stop if (i := text.find(s, start)) != -1]
        return min(found) if found else None

    def partial_len(self, text: str) -> int:
        """Length of the longest tail of `text` that is the start of some stop string, i.e.
        what a stream must hold back because the next tokens may complete a stop string."""
        for n in range(min(self._max_len - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0


class TextStream:
    """One request's output text: detokenize, apply stop strings, hand out stream deltas."""

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int],
                 stop: Sequence[str] = (), skip_special_tokens: bool = True,
                 min_tokens: int = 0) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids,
                                                   skip_special_tokens)
        self._stop = StopChecker(stop)
        self._min_tokens = min_tokens  # stop strings count from the token after these (vLLM)
        self.text = ""  # the output text, cut before a matched stop string
        self.stopped = False  # a stop string matched
        self._sent = 0  # characters of `text` already handed out as deltas

    def add(self, token_id: int) -> bool:
        """Take one output token; True when it completed a stop string (the text is cut)."""
        if self.stopped:
            return True
        return self._append(self._detokenizer.add(token_id))

    def finish(self) -> None:
        """The output ended: take in any text the detokenizer still held back."""
        if not self.stopped:
            self._append(self._detokenizer.flush())

    def _append(self, delta: str) -> bool:
        if not delta:
            return False
        self.text += delta
        if self._detokenizer.num_output_tokens <= self._min_tokens:
            return False
        cut = self._stop.find(self.text, len(delta))
        if cut is not None:
            self.text = self.text[:cut]
            self.stopped = True
        return self.stopped

    def take_delta(self, final: bool = False) -> str:
        """Text not handed out yet. Until the end, a tail that may become a stop string is
        held back (it would have to be taken back if it did)."""
        end = len(self.text)
        if not final and not self.stopped and self._stop:
            end -= self._stop.partial_len(self.text)
        if end <= self._sent:
            return ""
        delta = self.text[self._sent:end]
        self._sent = end
        return delta
