"""Prompt texts of an exact token count, for a live benchmark of any server.

A workload fixes only how many tokens each prompt has. A server takes text, so the client
makes text that the model's tokenizer encodes to exactly that many tokens: a run of whole
words, each a single vocabulary token with its leading space (" robot", " left"), which a
byte-level BPE encodes one pre-token at a time, so n words are n tokens. Every text is checked
by encoding it. The words are drawn from a seeded stream keyed by the run's `salt`: a fresh
salt gives every run fresh prompts (servers that cache prompt prefixes, as vLLM and llama.cpp
do, then find nothing to reuse) with the very same lengths.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

_WORD = re.compile(r" [a-z]{3,10}")
MIN_WORDS = 16


class PromptMaker:
    """Texts of exactly n tokens (as `tokenizer` counts them, special tokens excluded)."""

    def __init__(self, tokenizer: Tokenizer, name: str = "") -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.words = single_token_words(tokenizer)
        if len(self.words) < MIN_WORDS:
            raise ValueError(f"tokenizer {name or ''}: only {len(self.words)} single-token "
                             f"words found (need {MIN_WORDS}); is it a byte-level BPE?")

    @property
    def special_ids(self) -> tuple[int, ...]:
        """The ids of the tokenizer's special tokens (EOS and the like), in id order."""
        added = self.tokenizer.get_added_tokens_decoder()
        return tuple(sorted(i for i, token in added.items() if token.special))

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def text(self, num_tokens: int, seed: int, salt: int, index: int) -> str:
        """A text of exactly `num_tokens` tokens, the same for the same (seed, salt, index)."""
        if num_tokens < 1:
            raise ValueError(f"a prompt needs at least one token, got {num_tokens}")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, salt, index])))
        for _ in range(8):
            picks = rng.integers(len(self.words), size=num_tokens)
            text = "".join(self.words[i] for i in picks)
            if self.count(text) == num_tokens:
                return text
        raise ValueError(f"could not make a prompt of exactly {num_tokens} tokens with "
                         f"tokenizer {self.name}")

    def texts(self, counts: Sequence[int], seed: int, salt: int) -> list[str]:
        return [self.text(n, seed, salt, i) for i, n in enumerate(counts)]


def single_token_words(tokenizer: Tokenizer) -> list[str]:
    """Lower-case words with a leading space that encode to one token, in id order."""
    return list(_words(tokenizer))


@functools.lru_cache(maxsize=4)
def _words(tokenizer: Tokenizer) -> tuple[str, ...]:
    words = []
    for token_id in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([token_id], skip_special_tokens=True)
        if _WORD.fullmatch(text) and tokenizer.encode(text, add_special_tokens=False).ids == [
                token_id]:
            words.append(text)
    return tuple(words)


def load_tokenizer_file(path: str | Path) -> Tokenizer:
    """A `tokenizers` tokenizer from a tokenizer.json file or a folder holding one."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no tokenizer.json at {path} (give a model folder or the file)")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises its own exception type for a bad file
        raise ValueError(f"cannot load the tokenizer {file}: {e}") from e


def default_tokenizer_path(model: str | None = None) -> Path:
    """The tokenizer of sliceserve's model `model` (default: the embedded SmolLM2), converting
    the embedded GGUF once if needed (that needs the `model` extra)."""
    from sliceserve.model.loader import resolve_model

    return resolve_model(model)
