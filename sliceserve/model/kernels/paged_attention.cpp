// Decode attention straight from the paged KV cache, on CPU.
//
// One task per (row, kv head): the row's keys are read once, block by block through its block
// table, for all the query heads that share that kv head (grouped-query attention), with a
// float32 softmax; values are accumulated in float32. No gathered copy of the history is made.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float to_float(c10::Half x) { return static_cast<float>(x); }

template <typename T, int D>
void decode_task(const T* q, const T* keys, const T* values, const int64_t* table,
                 int64_t length, int64_t block_size, int64_t group, float scale, T* out,
                 int64_t q_head_stride, std::vector<float>& scores, std::vector<float>& acc) {
  // q: [group, D] rows of this kv head's query heads (stride q_head_stride); keys/values: this
  // kv head's [slots, D].
  float qf[8][D];
  for (int64_t g = 0; g < group; ++g)
    for (int d = 0; d < D; ++d) qf[g][d] = to_float(q[g * q_head_stride + d]) * scale;
  scores.assign(group * length, 0.f);
  for (int64_t t = 0; t < length; ++t) {
    const int64_t slot = table[t / block_size] * block_size + t % block_size;
    const T* k = keys + slot * D;
    float kf[D];
    for (int d = 0; d < D; ++d) kf[d] = to_float(k[d]);
    for (int64_t g = 0; g < group; ++g) {
      float s = 0.f;
      for (int d = 0; d < D; ++d) s += qf[g][d] * kf[d];
      scores[g * length + t] = s;
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    float* sg = scores.data() + g * length;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < length; ++t) m = sg[t] > m ? sg[t] : m;
    float sum = 0.f;
    for (int64_t t = 0; t < length; ++t) { sg[t] = std::exp(sg[t] - m); sum += sg[t]; }
    const float inv = 1.f / sum;
    for (int64_t t = 0; t < length; ++t) sg[t] *= inv;
  }
  acc.assign(group * D, 0.f);
  for (int64_t t = 0; t < length; ++t) {
    const int64_t slot = table[t / block_size] * block_size + t % block_size;
    const T* v = values + slot * D;
    float vf[D];
    for (int d = 0; d < D; ++d) vf[d] = to_float(v[d]);
    for (int64_t g = 0; g < group; ++g) {
      const float p = scores[g * length + t];
      float* a = acc.data() + g * D;
      for (int d = 0; d < D; ++d) a[d] += p * vf[d];
    }
  }
  for (int64_t g = 0; g < group; ++g)
    for (int d = 0; d < D; ++d) out[g * q_head_stride + d] = static_cast<T>(acc[g * D + d]);
}

template <typename T, int D>
void run(const torch::Tensor& q, const torch::Tensor& key_cache, const torch::Tensor& value_cache,
         const torch::Tensor& tables, const torch::Tensor& lengths, int64_t block_size,
         double scale, torch::Tensor& out) {
  const int64_t rows = q.size(0), heads = q.size(1);
  const int64_t kv_heads = key_cache.size(0), slots = key_cache.size(1);
  const int64_t group = heads / kv_heads;
  const int64_t max_blocks = tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = key_cache.data_ptr<T>();
  const T* vp = value_cache.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / kv_heads, h = task % kv_heads;
      const int64_t offset = (r * heads + h * group) * D;
      decode_task<T, D>(qp + offset, kp + h * slots * D, vp + h * slots * D,
                        tp + r * max_blocks, lp[r], block_size, group,
                        static_cast<float>(scale), op + offset, D, scores, acc);
    }
  });
}

}  // namespace

// q: [rows, heads, D] contiguous; caches: [kv_heads, slots, D] contiguous; tables: [rows,
// max_blocks] int64; lengths: [rows] int64 (context length including the new token).
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor key_cache,
                                     torch::Tensor value_cache, torch::Tensor tables,
                                     torch::Tensor lengths, int64_t block_size, double scale) {
  TORCH_CHECK(q.is_contiguous() && key_cache.is_contiguous() && value_cache.is_contiguous(),
              "paged_decode_attention: contiguous tensors expected");
  TORCH_CHECK(q.size(1) % key_cache.size(0) == 0 && q.size(1) / key_cache.size(0) <= 8,
              "paged_decode_attention: at most 8 query heads per kv head");
  auto out = torch::empty_like(q);
  const int64_t d = q.size(2);
  TORCH_CHECK(d == 64 || d == 128, "paged_decode_attention: head_dim 64 or 128");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode", [&] {
    if (d == 64) run<scalar_t, 64>(q, key_cache, value_cache, tables, lengths, block_size, scale, out);
    else run<scalar_t, 128>(q, key_cache, value_cache, tables, lengths, block_size, scale, out);
  });
  return out;
}
