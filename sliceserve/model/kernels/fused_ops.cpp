// Element-wise steps of a layer fused into one pass each, on CPU (bfloat16, float16, float32).
//
// Eager PyTorch runs RMSNorm as six kernels, RoPE as seven and SiLU-and-multiply as two, each
// reading and writing the whole activation; here each is one loop over a token's row. They
// round to the storage dtype at the same points as the eager code they replace (transformers'
// order of operations), so results differ from eager only where float32 sums are ordered
// differently (RMSNorm's sum of squares) or exp and the reciprocal differ in their last bits
// (SiLU): a bfloat16 result then differs by one unit in the last place, rarely.
// The vector loops are written over simd.h's `Vec` (its lanes chosen at build time), each
// followed by a scalar loop over the tail.
// (simd.h comes first in the compiled unit.)

namespace sliceserve_fused {

using namespace sliceserve_simd;

// Tokens per parallel task: enough work per task to amortize the thread hand-off.
inline int64_t grain(int64_t row_elems) { return std::max<int64_t>(1, 16384 / row_elems); }

// One token's row: x = to_T(x + residual) in place (with a residual), then
// out = to_T(w * to_T(x * rsqrt(mean(x^2) + eps))) (transformers' LlamaRMSNorm).
template <typename T>
void rms_norm_row(T* x, const T* residual, const T* w, T* out, int64_t hidden, float eps) {
  // Four partial sums of squares: independent chains (the adds' latency), and a sum of
  // fewer terms each (in float32 a long single chain drifts by several ulps).
  int64_t i = 0;
  Vec acc[4] = {Vec::zero(), Vec::zero(), Vec::zero(), Vec::zero()};
  for (; i + kLanes <= hidden; i += kLanes) {
    Vec v = Vec::load(x + i);
    if (residual != nullptr) {
      v = (v + Vec::load(residual + i)).template rounded<T>();
      v.store(x + i);
    }
    Vec& a = acc[(i / kLanes) % 4];
    a = Vec::fma(v, v, a);
  }
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])).sum();
  for (int64_t j = i; j < hidden; ++j) {
    if (residual != nullptr) x[j] = static_cast<T>(to_float(x[j]) + to_float(residual[j]));
    const float v = to_float(x[j]);
    sum += v * v;
  }
  const float inv = 1.f / std::sqrt(sum / static_cast<float>(hidden) + eps);
  i = 0;
  const Vec vinv = Vec::broadcast(inv);
  for (; i + kLanes <= hidden; i += kLanes)
    (Vec::load(w + i) * (Vec::load(x + i) * vinv).template rounded<T>()).store(out + i);
  for (; i < hidden; ++i) out[i] = static_cast<T>(to_float(w[i]) * round_to<T>(to_float(x[i]) * inv));
}

template <typename T>
void rms_norm_rows(T* x, const T* residual, const T* w, T* out, int64_t tokens, int64_t hidden,
                   float eps) {
  at::parallel_for(0, tokens, grain(hidden), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      rms_norm_row<T>(x + t * hidden, residual ? residual + t * hidden : nullptr, w,
                      out + t * hidden, hidden, eps);
  });
}

// One head, rotate-half RoPE in place: x * cos + cat(-x2, x1) * sin, each product rounded,
// then the sum (the eager order).
template <typename T>
void rope_head(T* x, const T* c, const T* s, int64_t half) {
  int64_t i = 0;
  for (; i + kLanes <= half; i += kLanes) {
    const Vec a = Vec::load(x + i), b = Vec::load(x + half + i);
    const Vec lo = (a * Vec::load(c + i)).template rounded<T>() +
                   (b * (Vec::zero() - Vec::load(s + i))).template rounded<T>();
    const Vec hi = (b * Vec::load(c + half + i)).template rounded<T>() +
                   (a * Vec::load(s + half + i)).template rounded<T>();
    lo.store(x + i);
    hi.store(x + half + i);
  }
  for (; i < half; ++i) {
    const float a = to_float(x[i]), b = to_float(x[i + half]);
    const float lo = round_to<T>(a * to_float(c[i])) + round_to<T>(-b * to_float(s[i]));
    const float hi = round_to<T>(b * to_float(c[i + half])) + round_to<T>(a * to_float(s[i + half]));
    x[i] = static_cast<T>(lo);
    x[i + half] = static_cast<T>(hi);
  }
}

// RoPE on the q and k heads of the fused qkv rows [tokens, (H + 2 Hkv) D], in place; then
// each token's k and v into its cache slot.
template <typename T>
void rope_store_rows(T* qkv, const T* cos, const T* sin, const int64_t* slots, T* key_cache,
                     T* value_cache, int64_t tokens, int64_t heads, int64_t kv_heads,
                     int64_t dim, int64_t cache_slots) {
  const int64_t width = (heads + 2 * kv_heads) * dim;
  at::parallel_for(0, tokens, grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      T* row = qkv + t * width;
      for (int64_t h = 0; h < heads + kv_heads; ++h)
        rope_head<T>(row + h * dim, cos + t * dim, sin + t * dim, dim / 2);
      const int64_t slot = slots[t];
      for (int64_t h = 0; h < kv_heads; ++h) {
        std::memcpy(key_cache + (h * cache_slots + slot) * dim, row + (heads + h) * dim,
                    dim * sizeof(T));
        std::memcpy(value_cache + (h * cache_slots + slot) * dim,
                    row + (heads + kv_heads + h) * dim, dim * sizeof(T));
      }
    }
  });
}

// Below this, exp(-x) overflows float32 (-x > ln(FLT_MAX)) and silu(x) = x / inf = -0.
constexpr float kSiluZeroBelow = -88.7228394f;

// out = to_T(to_T(silu(gate)) * up), from the fused [tokens, 2 I] gate/up rows.
template <typename T>
void silu_mul_rows(const T* gate_up, T* out, int64_t tokens, int64_t inter) {
  at::parallel_for(0, tokens, grain(2 * inter), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* g = gate_up + t * 2 * inter;
      const T* u = g + inter;
      T* o = out + t * inter;
      int64_t i = 0;
      const Vec one = Vec::broadcast(1.f);
      for (; i + kLanes <= inter; i += kLanes) {
        const Vec x = Vec::load(g + i);
        // x / (1 + exp(-x)) as x * (1 / (1 + exp(-x))): Vec's reciprocal is an estimate
        // refined by a Newton step where the CPU has one, faster than a division.
        // Where exp(-x) overflows (x < kSiluZeroBelow) eager's x / inf is -0; the Newton
        // step would make inf * 0 = NaN there (and the vector exp saturates), so those
        // lanes are set to -0.
        const Vec silu = x.below(kSiluZeroBelow, Vec::broadcast(-0.f),
                                 x * (one + (Vec::zero() - x).exp()).reciprocal())
                             .template rounded<T>();
        (silu * Vec::load(u + i)).store(o + i);
      }
      for (; i < inter; ++i) {
        const float x = to_float(g[i]);
        const float silu = x < kSiluZeroBelow ? -0.f : x / (1.f + std::exp(-x));
        o[i] = static_cast<T>(round_to<T>(silu) * to_float(u[i]));
      }
    }
  });
}

// Index of the largest value of a row (the first one on ties; the first NaN if any, as
// torch.argmax).
template <typename T>
int64_t argmax_row(const T* x, int64_t n) {
  int64_t i = 0;
  float best = -std::numeric_limits<float>::infinity();
  Vec vbest = Vec::broadcast(best);
  Vec odd = Vec::zero();  // stays 0 unless some v - v is NaN: v is NaN (or inf)
  for (; i + kLanes <= n; i += kLanes) {
    const Vec v = Vec::load(x + i);
    odd = odd + (v - v);
    vbest = Vec::max(vbest, v);
  }
  if (odd.any_nan()) i = 0;  // let the scalar loop find the first NaN (or handle inf)
  else best = vbest.max_lane();
  for (int64_t j = i; j < n; ++j) {
    const float v = to_float(x[j]);
    if (std::isnan(v)) return j;
    best = v > best ? v : best;
  }
  for (int64_t j = 0; j < n; ++j)
    if (to_float(x[j]) == best) return j;
  return 0;
}

template <typename Fn>
void dispatch(at::ScalarType dtype, const char* name, Fn&& fn) {
  if (dtype == at::kBFloat16) fn(c10::BFloat16{});
  else if (dtype == at::kHalf) fn(c10::Half{});
  else if (dtype == at::kFloat) fn(float{});
  else TORCH_CHECK(false, name, ": float32, bfloat16 or float16 expected");
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), name, ": a contiguous [tokens, n] tensor expected");
}

void check_weight(const at::Tensor& x, const at::Tensor& w, const char* name) {
  TORCH_CHECK(w.is_contiguous() && w.numel() == x.size(1) && w.scalar_type() == x.scalar_type(),
              name, ": weight must be a contiguous [hidden] tensor of the input's dtype");
}

}  // namespace sliceserve_fused

using namespace sliceserve_fused;

// x: [T, hidden]; weight: [hidden]. Returns the normalized rows.
at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps) {
  check_rows(x, "rms_norm");
  check_weight(x, weight, "rms_norm");
  auto out = empty_rows(x.sizes(), x.scalar_type());
  dispatch(x.scalar_type(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    rms_norm_rows<T>(x.data_ptr<T>(), nullptr, weight.data_ptr<T>(), out.data_ptr<T>(),
                     x.size(0), x.size(1), static_cast<float>(eps));
  });
  return out;
}

// hidden += residual (in place, rounded as the eager add), then returns rms_norm(hidden).
at::Tensor add_rms_norm_(at::Tensor hidden, at::Tensor residual, at::Tensor weight,
                            double eps) {
  check_rows(hidden, "add_rms_norm_");
  check_rows(residual, "add_rms_norm_");
  check_weight(hidden, weight, "add_rms_norm_");
  TORCH_CHECK(residual.sizes() == hidden.sizes() && residual.scalar_type() == hidden.scalar_type(),
              "add_rms_norm_: residual must match hidden");
  auto out = empty_rows(hidden.sizes(), hidden.scalar_type());
  dispatch(hidden.scalar_type(), "add_rms_norm_", [&](auto tag) {
    using T = decltype(tag);
    rms_norm_rows<T>(hidden.data_ptr<T>(), residual.data_ptr<T>(), weight.data_ptr<T>(),
                     out.data_ptr<T>(), hidden.size(0), hidden.size(1), static_cast<float>(eps));
  });
  return out;
}

// qkv: [T, (H + 2 Hkv) D], RoPE applied in place to its q and k parts; cos, sin: [T, D];
// slots: [T] int64; caches: [Hkv, cache_slots, D], each token's k and v stored at its slot.
void rope_store_(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor slots,
                 at::Tensor key_cache, at::Tensor value_cache, int64_t heads) {
  check_rows(qkv, "rope_store_");
  check_rows(cos, "rope_store_");
  check_rows(sin, "rope_store_");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous() && slots.is_contiguous() &&
                  slots.scalar_type() == at::kLong,
              "rope_store_: contiguous caches and int64 slots expected");
  const int64_t kv_heads = key_cache.size(0), dim = key_cache.size(2);
  TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * dim && cos.size(1) == dim &&
                  cos.size(0) == qkv.size(0) && sin.sizes() == cos.sizes() &&
                  slots.size(0) == qkv.size(0) && dim % 2 == 0,
              "rope_store_: shapes do not match");
  TORCH_CHECK(cos.scalar_type() == qkv.scalar_type() && sin.scalar_type() == qkv.scalar_type() &&
                  key_cache.scalar_type() == qkv.scalar_type() &&
                  value_cache.scalar_type() == qkv.scalar_type(),
              "rope_store_: qkv, cos, sin and the caches must share a dtype");
  dispatch(qkv.scalar_type(), "rope_store_", [&](auto tag) {
    using T = decltype(tag);
    rope_store_rows<T>(qkv.data_ptr<T>(), cos.data_ptr<T>(), sin.data_ptr<T>(),
                       slots.data_ptr<int64_t>(), key_cache.data_ptr<T>(),
                       value_cache.data_ptr<T>(), qkv.size(0), heads, kv_heads, dim,
                       key_cache.size(1));
  });
}

// gate_up: [T, 2 I] -> silu(gate) * up: [T, I].
at::Tensor silu_mul(at::Tensor gate_up) {
  check_rows(gate_up, "silu_mul");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "silu_mul: an even number of columns expected");
  const int64_t inter = gate_up.size(1) / 2;
  auto out = empty_rows({gate_up.size(0), inter}, gate_up.scalar_type());
  dispatch(gate_up.scalar_type(), "silu_mul", [&](auto tag) {
    using T = decltype(tag);
    silu_mul_rows<T>(gate_up.data_ptr<T>(), out.data_ptr<T>(), gate_up.size(0), inter);
  });
  return out;
}

// logits: [S, vocab] -> [S] int64, the argmax of each row.
at::Tensor argmax_rows(at::Tensor logits) {
  check_rows(logits, "argmax_rows");
  auto out = empty_rows({logits.size(0)}, at::kLong);
  int64_t* op = out.data_ptr<int64_t>();
  const int64_t n = logits.size(1);
  dispatch(logits.scalar_type(), "argmax_rows", [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data_ptr<T>();
    at::parallel_for(0, logits.size(0), 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) op[r] = argmax_row<T>(x + r * n, n);
    });
  });
  return out;
}

// Which vector path this build took ("avx512/16": the path, then float lanes per vector).
std::string kernel_path() { return sliceserve_simd::simd_path(); }
