"""Tokenizers through transformers: load one from a model folder, encode prompts and chats.

Chat messages are rendered with the model's own template to text and then tokenized without
adding special tokens, since the template already writes them (the same order transformers
and vLLM use), so a chat never starts with a doubled BOS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sliceserve.model.config import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ChatTemplateError(ValueError):
    """Chat messages that cannot be rendered: no template, or malformed messages."""


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a Hugging Face folder (AutoTokenizer), or a clear ModelLoadError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"tokenizer folder {folder} does not exist")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(f"no tokenizer in {folder}: expected one of "
                             f"{', '.join(_TOKENIZER_FILES)}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # transformers raises many types for a bad tokenizer; name the folder
        raise ModelLoadError(f"cannot load the tokenizer in {folder}: "
                             f"{type(e).__name__}: {e}") from e


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a plain prompt, with the special tokens the tokenizer adds (e.g. BOS)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    return list(tokenizer.encode(prompt, add_special_tokens=True))


def encode_chat(tokenizer: PreTrainedTokenizerBase,
                messages: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of `messages` rendered by the chat template, ending with the assistant prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("this model's tokenizer has no chat template; "
                                "send a plain prompt instead of chat messages")
    _check_messages(messages)
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                         tokenize=False)
    if not isinstance(text, str):  # a batch-shaped answer would mean malformed messages
        raise ChatTemplateError(f"chat template rendered {type(text).__name__}, not text")
    return list(tokenizer.encode(text, add_special_tokens=False))


def eos_token_ids(tokenizer: PreTrainedTokenizerBase, model_config: Any,
                  folder: str | Path | None = None) -> tuple[int, ...]:
    """Every id that ends generation: config.json's, the tokenizer's and, given the model
    folder, generation_config.json's (Llama 3 Instruct lists its end-of-turn ids only there)."""
    ids: list[int] = list(getattr(model_config, "eos_token_ids", ()) or ())
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if folder is not None:
        ids.extend(_generation_config_eos(Path(folder)))
    return tuple(dict.fromkeys(ids))  # union, first-seen order


def _generation_config_eos(folder: Path) -> Iterable[int]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return ()  # optional file: a bad one must not stop the model from loading
    if eos is None:
        return ()
    return [int(e) for e in eos] if isinstance(eos, list) else [int(eos)]


def _check_messages(messages: Sequence[dict[str, Any]]) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatTemplateError(f"message {i} must be a dict with a str 'role'")
        if not isinstance(message.get("content"), str):
            raise ChatTemplateError(f"message {i} must have str 'content'")
