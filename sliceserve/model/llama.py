"""The Llama-family transformer (Llama 1-3, SmolLM2, TinyLlama, Mistral, Qwen2), batched over
a flattened token stream with a paged KV cache.

Weights arrive with Hugging Face names and are fused at load: q/k/v into one projection,
gate/up into another, so a layer is a handful of large matmuls. Shapes in comments:
T tokens in the iteration, H query heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sliceserve.model.attention import BatchLayout, DecodeKernel, paged_attention, row_mask
from sliceserve.model.config import ModelConfig, ModelLoadError
from sliceserve.model.kv_cache import KVCache
from sliceserve.model.linear import Linear
from sliceserve.model.rope import apply_rope, cos_sin_table


@dataclass(frozen=True, slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Linear  # [(H + 2 Hkv) D, hidden]
    out: Linear  # [hidden, H D]
    post_norm: torch.Tensor
    gate_up: Linear  # [2 I, hidden]
    down: Linear  # [hidden, I]


class LlamaModel:
    def __init__(self, config: ModelConfig, weights: Mapping[str, torch.Tensor],
                 max_positions: int, dtype: torch.dtype, device: torch.device,
                 quantization: str = "none") -> None:
        """`quantization` "int8": the linear layers (the LM head included) hold int8 weights."""
        self.config = config
        self.quantization = quantization
        self.dtype = dtype
        self.device = device
        take = _Taker(weights, dtype, device)
        self.embed = take("model.embed_tokens.weight")
        self.layers = [self._layer(take, i) for i in range(config.num_layers)]
        self.norm = take("model.norm.weight")
        if config.tie_word_embeddings or "lm_head.weight" not in weights:
            self.lm_head = Linear(self.embed, quantization=quantization)
        else:
            self.lm_head = Linear(take("lm_head.weight"), quantization=quantization)
        self._check_shapes()
        self.cos, self.sin = cos_sin_table(config, max_positions, dtype, device)
        self.decode_kernel: DecodeKernel | None = None  # set by the runner where it helps
        # The compiled element-wise steps (kernels/fused_ops.cpp), set by the runner for
        # bfloat16/float16 on CPU; None runs them as eager PyTorch.
        self.fused_ops: Any | None = None
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim

    def _layer(self, take: _Taker, i: int) -> LayerWeights:
        p = f"model.layers.{i}."
        qkv_bias = None
        if self.config.qkv_bias:
            qkv_bias = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        q = self.quantization
        return LayerWeights(
            input_norm=take(p + "input_layernorm.weight"),
            qkv=Linear(torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"]),
                       qkv_bias, q),
            out=Linear(take(p + "self_attn.o_proj.weight"), quantization=q),
            post_norm=take(p + "post_attention_layernorm.weight"),
            gate_up=Linear(torch.cat([take(p + "mlp.gate_proj.weight"),
                                      take(p + "mlp.up_proj.weight")]), quantization=q),
            down=Linear(take(p + "mlp.down_proj.weight"), quantization=q),
        )

    def _check_shapes(self) -> None:
        c = self.config
        expected = (c.vocab_size, c.hidden_size)
        if tuple(self.embed.shape) != expected:
            raise ModelLoadError(f"embed_tokens has shape {tuple(self.embed.shape)}, config says "
                                 f"{expected}")
        qkv_rows = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        if tuple(self.layers[0].qkv.shape) != (qkv_rows, c.hidden_size):
            raise ModelLoadError("attention weights do not match the config's head counts")

    def forward(self, layout: BatchLayout, cache: KVCache) -> torch.Tensor:
        """Run all tokens; return the final hidden states of the sampling tokens [S, hidden]."""
        if self.fused_ops is not None:
            return self._forward_fused(layout, cache)
        c = self.config
        eps = c.rms_norm_eps
        hidden = F.embedding(layout.input_ids, self.embed)  # [T, hidden]
        cos = self.cos[layout.positions][:, None, :]  # [T, 1, D]
        sin = self.sin[layout.positions][:, None, :]
        num_tokens = hidden.shape[0]
        kernel = self.decode_kernel
        mask = None if kernel is not None else row_mask(layout, cache.block_size)
        for index, w in enumerate(self.layers):
            x = _rms_norm(hidden, w.input_norm, eps)
            qkv = w.qkv(x)
            q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
            q = apply_rope(q.view(num_tokens, c.num_heads, c.head_dim), cos, sin)
            k = apply_rope(k.view(num_tokens, c.num_kv_heads, c.head_dim), cos, sin)
            v = v.view(num_tokens, c.num_kv_heads, c.head_dim)
            key_cache, value_cache = cache.layer(index)
            att = paged_attention(q, k, v, key_cache, value_cache, layout, cache.block_size,
                                  mask, kernel)
            hidden = hidden + w.out(att.view(num_tokens, self.q_size))
            x = _rms_norm(hidden, w.post_norm, eps)
            gate, up = w.gate_up(x).chunk(2, dim=-1)
            hidden = hidden + w.down(F.silu(gate) * up)
        return hidden[layout.sample_index]

    def _forward_fused(self, layout: BatchLayout, cache: KVCache) -> torch.Tensor:
        """`forward` with each layer's element-wise steps as one compiled pass each: RMSNorm
        fused with the residual add before it, RoPE fused with the KV store, SiLU with the
        multiply. Rounds where the eager code does."""
        c = self.config
        ops = self.fused_ops
        eps = c.rms_norm_eps
        hidden = F.embedding(layout.input_ids, self.embed)  # [T, hidden]
        cos = self.cos.index_select(0, layout.positions)  # [T, D]
        sin = self.sin.index_select(0, layout.positions)
        num_tokens = hidden.shape[0]
        kernel = self.decode_kernel
        mask = None if kernel is not None else row_mask(layout, cache.block_size)
        x = ops.rms_norm(hidden, self.layers[0].input_norm, eps)
        for index, w in enumerate(self.layers):
            qkv = w.qkv(x)  # [T, (H + 2 Hkv) D]
            key_cache, value_cache = cache.layer(index)
            ops.rope_store_(qkv, cos, sin, layout.slots, key_cache, value_cache, c.num_heads)
            q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
            att = paged_attention(q.view(num_tokens, c.num_heads, c.head_dim),
                                  k.view(num_tokens, c.num_kv_heads, c.head_dim),
                                  v.view(num_tokens, c.num_kv_heads, c.head_dim),
                                  key_cache, value_cache, layout, cache.block_size, mask,
                                  kernel, kv_stored=True)
            x = ops.add_rms_norm_(hidden, w.out(att.view(num_tokens, self.q_size)),
                                  w.post_norm, eps)
            delta = w.down(ops.silu_mul(w.gate_up(x)))
            if index + 1 < len(self.layers):
                x = ops.add_rms_norm_(hidden, delta, self.layers[index + 1].input_norm, eps)
            else:
                hidden.add_(delta)
        return hidden[layout.sample_index]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[S, hidden] -> logits [S, vocab] in the model's dtype."""
        x = _rms_norm(hidden, self.norm, self.config.rms_norm_eps)
        return self.lm_head(x)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # As transformers does it: normalize in float32, cast back, then scale.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class _Taker:
    """Fetch a named weight, cast and placed, with a clear error when it is missing."""

    def __init__(self, weights: Mapping[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device) -> None:
        self.weights = weights
        self.dtype = dtype
        self.device = device

    def __call__(self, name: str) -> torch.Tensor:
        tensor = self.weights.get(name)
        if tensor is None:
            raise ModelLoadError(f"the checkpoint lacks the weight {name!r}")
        return tensor.to(device=self.device, dtype=self.dtype).contiguous()
