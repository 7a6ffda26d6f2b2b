// Decode attention straight from the paged KV cache, on CPU.
//
// One task per (row, kv head): the row's history is read once, block by block through its
// block table, for all the query heads that share that kv head (grouped-query attention).
// Within a block the slots are contiguous, so keys and values are streamed in tiles of up to
// 16 tokens: the tile's scores, then an online softmax (running max and sum, float32), then
// the tile's values into float32 accumulators. No gathered copy of the history is made.
//
// The tile loops are written over simd.h's `Vec` (AVX-512, AVX2, ATen's portable vectors or
// one scalar lane, chosen at build time), with its vectorized exp.
// (simd.h comes first in the compiled unit.)

namespace sliceserve_attention {

constexpr int kTile = 16;
constexpr int kMaxGroup = 8;

using namespace sliceserve_simd;

struct Task {
  const int64_t* table;  // the row's block table
  int64_t length;        // context length, new token included
  int64_t block_size;
  float scale;
};

// The tile of up to kTile tokens from token `start`: within one block, so its slots are
// consecutive. Returns (tokens, first slot).
inline std::pair<int, int64_t> tile_at(const Task& task, int64_t start) {
  const int64_t in_block = start % task.block_size;
  const int n = static_cast<int>(std::min<int64_t>(
      {static_cast<int64_t>(kTile), task.length - start, task.block_size - in_block}));
  return {n, task.table[start / task.block_size] * task.block_size + in_block};
}

template <typename T, int D, int G>
void decode_task(const T* q, const T* keys, const T* values, const Task& task, T* out) {
  // q, out: [G, D] contiguous (this kv head's query heads); keys/values: [slots, D].
  constexpr int V = D / kLanes;  // vectors per head (kLanes divides 64)
  constexpr int S = kTile / kLanes;  // vectors per tile of scores
  static_assert(D % kLanes == 0 && kTile % kLanes == 0, "lanes must divide D and the tile");
  Vec qv[G][V], acc[G][V];
  float m[G], l[G];
  const Vec scale = Vec::broadcast(task.scale);
  for (int g = 0; g < G; ++g) {
    for (int v = 0; v < V; ++v) {
      qv[g][v] = Vec::load(q + g * D + kLanes * v) * scale;
      acc[g][v] = Vec::zero();
    }
    m[g] = -std::numeric_limits<float>::infinity();
    l[g] = 0.f;
  }
  alignas(64) float s[G][kTile];
  for (int64_t start = 0; start < task.length; start += kTile) {
    const auto [n, slot] = tile_at(task, start);
    const T* k = keys + slot * D;
    const T* val = values + slot * D;
    for (int i = 0; i < n; ++i) {
      Vec kv[V];
      for (int v = 0; v < V; ++v) kv[v] = Vec::load(k + i * D + kLanes * v);
      for (int g = 0; g < G; ++g) {
        Vec a = qv[g][0] * kv[0];
        for (int v = 1; v < V; ++v) a = Vec::fma(qv[g][v], kv[v], a);
        s[g][i] = a.sum();
      }
    }
    for (int g = 0; g < G; ++g) {
      // Online softmax over the tile; slots past n hold no token (-inf before exp, 0 after).
      for (int i = n; i < kTile; ++i) s[g][i] = -std::numeric_limits<float>::infinity();
      Vec top = Vec::load(s[g]);
      for (int j = 1; j < S; ++j) top = Vec::max(top, Vec::load(s[g] + j * kLanes));
      const float new_max = std::max(m[g], top.max_lane());
      const Vec shift = Vec::broadcast(new_max);
      for (int j = 0; j < S; ++j) {
        float* tile = s[g] + j * kLanes;
        (Vec::load(tile) - shift).exp().store(tile);
      }
      for (int i = n; i < kTile; ++i) s[g][i] = 0.f;
      Vec total = Vec::load(s[g]);
      for (int j = 1; j < S; ++j) total = total + Vec::load(s[g] + j * kLanes);
      const float correction = std::exp(m[g] - new_max);  // 0 on the first tile
      l[g] = l[g] * correction + total.sum();
      m[g] = new_max;
      const Vec c = Vec::broadcast(correction);
      for (int v = 0; v < V; ++v) acc[g][v] = acc[g][v] * c;
    }
    for (int i = 0; i < n; ++i) {
      Vec vv[V];
      for (int v = 0; v < V; ++v) vv[v] = Vec::load(val + i * D + kLanes * v);
      for (int g = 0; g < G; ++g) {
        const Vec p = Vec::broadcast(s[g][i]);
        for (int v = 0; v < V; ++v) acc[g][v] = Vec::fma(p, vv[v], acc[g][v]);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    const Vec inv = Vec::broadcast(1.f / l[g]);
    for (int v = 0; v < V; ++v) (acc[g][v] * inv).store(out + g * D + kLanes * v);
  }
}

template <typename T, int D, int G>
void run(const at::Tensor& q, const at::Tensor& key_cache, const at::Tensor& value_cache,
         const at::Tensor& tables, const at::Tensor& lengths, int64_t block_size,
         double scale, at::Tensor& out) {
  const int64_t rows = q.size(0), heads = q.size(1);
  const int64_t kv_heads = key_cache.size(0), slots = key_cache.size(1);
  const int64_t max_blocks = tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = key_cache.data_ptr<T>();
  const T* vp = value_cache.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const int64_t q_row_stride = q.stride(0);
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / kv_heads, h = t % kv_heads;
      const Task task{tp + r * max_blocks, lp[r], block_size, static_cast<float>(scale)};
      decode_task<T, D, G>(qp + r * q_row_stride + h * G * D, kp + h * slots * D,
                           vp + h * slots * D, task, op + (r * heads + h * G) * D);
    }
  });
}

template <typename T, int D>
void run_group(int64_t group, const at::Tensor& q, const at::Tensor& kc,
               const at::Tensor& vc, const at::Tensor& tables, const at::Tensor& lengths,
               int64_t block_size, double scale, at::Tensor& out) {
  switch (group) {
    case 1: return run<T, D, 1>(q, kc, vc, tables, lengths, block_size, scale, out);
    case 2: return run<T, D, 2>(q, kc, vc, tables, lengths, block_size, scale, out);
    case 3: return run<T, D, 3>(q, kc, vc, tables, lengths, block_size, scale, out);
    case 4: return run<T, D, 4>(q, kc, vc, tables, lengths, block_size, scale, out);
    case 5: return run<T, D, 5>(q, kc, vc, tables, lengths, block_size, scale, out);
    case 6: return run<T, D, 6>(q, kc, vc, tables, lengths, block_size, scale, out);
    case 7: return run<T, D, 7>(q, kc, vc, tables, lengths, block_size, scale, out);
    default: return run<T, D, 8>(q, kc, vc, tables, lengths, block_size, scale, out);
  }
}

}  // namespace sliceserve_attention

using namespace sliceserve_attention;

// q: [rows, heads, D], each row's heads contiguous (rows may be strided); caches: [kv_heads, slots, D] contiguous; tables: [rows,
// max_blocks] int64; lengths: [rows] int64 (context length including the new token, >= 1).
at::Tensor paged_decode_attention(at::Tensor q, at::Tensor key_cache,
                                     at::Tensor value_cache, at::Tensor tables,
                                     at::Tensor lengths, int64_t block_size, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2) &&
                  key_cache.is_contiguous() && value_cache.is_contiguous() &&
                  tables.is_contiguous() && lengths.is_contiguous(),
              "paged_decode_attention: contiguous caches, tables and lengths, and rows of q expected");
  TORCH_CHECK(tables.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong,
              "paged_decode_attention: int64 tables and lengths expected");
  TORCH_CHECK(key_cache.scalar_type() == q.scalar_type() &&
                  value_cache.scalar_type() == q.scalar_type(),
              "paged_decode_attention: q and the caches must share a dtype");
  const int64_t group = q.size(1) / key_cache.size(0);
  TORCH_CHECK(q.size(1) % key_cache.size(0) == 0 && group >= 1 && group <= kMaxGroup,
              "paged_decode_attention: 1 to 8 query heads per kv head");
  auto out = empty_rows({q.size(0), q.size(1), q.size(2)}, q.scalar_type());
  const int64_t d = q.size(2);
  TORCH_CHECK(d == 64 || d == 128, "paged_decode_attention: head_dim 64 or 128");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "paged_decode_attention: float32, bfloat16 or float16 expected");
  auto dispatch = [&](auto tag) {
    using T = decltype(tag);
    if (d == 64)
      run_group<T, 64>(group, q, key_cache, value_cache, tables, lengths, block_size, scale, out);
    else
      run_group<T, 128>(group, q, key_cache, value_cache, tables, lengths, block_size, scale, out);
  };
  if (dtype == at::kFloat) dispatch(float{});
  else if (dtype == at::kBFloat16) dispatch(c10::BFloat16{});
  else dispatch(c10::Half{});
  return out;
}
