"""The linear layers: y = x W^T (+ b), in the weight format the runner chose.

- float weights on CPU in bfloat16: packed once for oneDNN (unpacked, every call re-lays the
  weight out, which dominates small decode batches); other dtypes and devices: F.linear.
- quantization "int8": weight-only int8, one float scale per output row (symmetric,
  round-to-nearest), computed by torch's `_weight_int8pack_mm`. Its float32-activation path
  is many times slower than its bf16 one (docs/BENCHMARKS.md, "Number format"), so a float32
  model hands it bf16 activations and takes the result back as float32 (everything else stays
  float32); bf16 and fp16 models use their own dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QUANTIZATIONS = ("none", "int8")


class Linear:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 quantization: str = "none") -> None:
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got "
                             f"{quantization!r}")
        self.quantization = quantization
        self.bias = bias
        self._shape = weight.shape
        self.packed: torch.Tensor | None = None
        self.scales: torch.Tensor | None = None
        self.compute_dtype = weight.dtype
        if quantization == "int8":
            if weight.dtype == torch.float32:
                self.compute_dtype = torch.bfloat16
            self.weight, self.scales = quantize_int8(weight, self.compute_dtype)
        else:
            self.weight = weight
            self.packed = _pack(weight, bias)

    @property
    def shape(self) -> torch.Size:
        return self._shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scales is not None:
            y = torch.ops.aten._weight_int8pack_mm(x.to(self.compute_dtype), self.weight,
                                                   self.scales).to(x.dtype)
            return y if self.bias is None else y + self.bias
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [N, K], scales [N] in `scale_dtype`, default the weight's): weight ~ int8 * scale
    per row, the scale the row's largest magnitude / 127 (a zero row gets scale 1)."""
    w = weight.float()
    scales = w.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
    return q, scales.to(scale_dtype or weight.dtype).contiguous()


def _pack(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16:
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        probe = torch.ones(2, weight.shape[1], dtype=weight.dtype)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")
    except (AttributeError, RuntimeError):
        return None  # a torch without oneDNN's packed linear: plain F.linear is fine
    if not torch.allclose(got, F.linear(probe, weight, bias)):
        return None
    return packed
