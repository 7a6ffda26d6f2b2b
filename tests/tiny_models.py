"""Tiny random Llama-family models with a real tokenizer, built offline in well under a second.

`make_tiny_model(path, "llama" | "qwen2" | "mistral")` writes a Hugging Face folder (config.json,
model.safetensors, tokenizer files with a chat template) that transformers' `from_pretrained` and
`AutoTokenizer.from_pretrained` read back, so tests can compare our engine against transformers
on the very same weights without a model hub.

The tokenizer is a byte-level BPE trained on a small built-in English corpus; training happens
once per process and vocab size (cached), every later call only writes files.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

ARCHITECTURES = ("llama", "qwen2", "mistral")

# Ids of the special tokens, shared by the tokenizer and config.json (as in SmolLM2's ChatML).
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID = 0, 1, 2
_SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model runs on a small device at the edge of
the network, and every request that arrives has a deadline. The scheduler decides which requests
compute in each iteration: some prefill their prompts, others decode one token at a time. When
the batch grows, each iteration takes longer, so the time per output token rises for everyone.
Hello, world! How are you today? I am fine, thank you. What is the capital of France? Paris is
the capital of France, and Berlin is the capital of Germany. Water boils at one hundred degrees.
Once upon a time there was a little robot who wanted to learn how to write poems about the sea,
the mountains, the rivers and the stars. It read many books in the library every single night.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 1024 2048 3.14 2.71 -1 +1 = * / % ( ) [ ] { }.
The weather is nice; the sun is shining and the birds are singing in the green trees outside.
Please write a short story about a cat, a dog and a bird who become the best of friends.
Machine learning models predict the next token from the tokens that came before it. Serving
them well means keeping the processor busy while meeting each user's latency objective.
Questions and answers, lists and tables, code and prose: def main(): print("hello") return 0
"""


def make_tiny_model(
    path: Path,
    arch: str = "llama",
    *,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    rope_scaling: dict[str, Any] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
) -> Path:
    """Write a random float32 `arch` model with a matching tokenizer into `path`; return it.

    `rope_scaling` is passed as the config's RoPE parameters (transformers 5 writes it as
    `rope_parameters`), e.g. Llama 3's {"rope_type": "llama3", "factor": 8.0, ...}.
    """
    import torch

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHITECTURES}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = _make_config(arch, tie_word_embeddings=tie_word_embeddings,
                          rope_scaling=rope_scaling, vocab_size=vocab_size,
                          hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                          num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
                          max_position_embeddings=max_position_embeddings)
    model_class = _model_class(arch)
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    model.save_pretrained(path)
    make_tiny_tokenizer(vocab_size).save_pretrained(path)
    return path


def make_tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A fresh PreTrainedTokenizerFast (byte-level BPE, ChatML template) of exactly `vocab_size`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab_size)),
        bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=PAD_TOKEN,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(vocab_size: int) -> str:
    """Train once per process and size; the JSON string is immutable, so sharing it is safe."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(_SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet plus specials "
                         f"({len(alphabet) + len(_SPECIAL_TOKENS)})")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL_TOKENS,
                                  initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    # The corpus allows only so many merges: fill up with unused special tokens so that the
    # tokenizer's size equals the model's vocab (every id decodes to something).
    missing = vocab_size - tokenizer.get_vocab_size()
    if missing > 0:
        tokenizer.add_special_tokens([f"<|extra_{i}|>" for i in range(missing)])
    assert tokenizer.get_vocab_size() == vocab_size
    return tokenizer.to_str()


def _make_config(arch: str, *, rope_scaling: dict[str, Any] | None, **shape: Any) -> Any:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    rope = {"rope_type": "default", "rope_theta": 10000.0, **(rope_scaling or {})}
    common = dict(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
        max_position_embeddings=shape["max_position_embeddings"],
        tie_word_embeddings=shape["tie_word_embeddings"], rope_parameters=rope,
        bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID,
        rms_norm_eps=1e-5,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":
        # Full attention: the tiny contexts never reach a window anyway.
        return MistralConfig(sliding_window=None, **common)
    return Qwen2Config(use_sliding_window=False, **common)


def _model_class(arch: str) -> Any:
    from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

    return {"llama": LlamaForCausalLM, "mistral": MistralForCausalLM,
            "qwen2": Qwen2ForCausalLM}[arch]
