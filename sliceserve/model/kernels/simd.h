// Shared by the CPU kernels (compiled as one unit, this file first): scalar conversions and
// `Vec`, a vector of float32 lanes with the few operations the kernels need. The kernels are
// written once over `Vec`; which implementation it has is chosen at build time from the
// compiler's target flags (kernels/__init__.py picks them per build variant):
//   avx512    AVX-512 F+BW intrinsics, 16 lanes
//   avx2      AVX2 + FMA + F16C intrinsics, 8 lanes (the same arithmetic as avx512)
//   portable  ATen's at::vec::Vectorized<float>: NEON on Arm, AVX2/AVX-512 on x86, an array
//             the compiler vectorizes elsewhere; the default where neither of the above fits
//   scalar    one lane of plain float (forced with -DSLICESERVE_SIMD_SCALAR)
// -DSLICESERVE_SIMD_PORTABLE forces the portable path on any CPU.
#if defined(SLICESERVE_SIMD_SCALAR)
#define SLICESERVE_SCALAR 1
#define SLICESERVE_PATH "scalar"
#elif !defined(SLICESERVE_SIMD_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BW__)
#define SLICESERVE_AVX512 1
#define SLICESERVE_PATH "avx512"
#elif !defined(SLICESERVE_SIMD_PORTABLE) && defined(__AVX2__) && defined(__FMA__) && \
    defined(__F16C__)
#define SLICESERVE_AVX2 1
#define SLICESERVE_PATH "avx2"
#else
#define SLICESERVE_PORTABLE 1
#define SLICESERVE_PATH "portable"
// ATen's vectors map to the target's registers only when told which: its own build defines
// these per dispatch variant; aarch64 gets NEON without them.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && !defined(CPU_CAPABILITY_AVX512)
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && \
    !defined(CPU_CAPABILITY_AVX512) && !defined(CPU_CAPABILITY_AVX2)
#define CPU_CAPABILITY_AVX2
#endif
#endif

// ATen's core alone (no torch/extension.h: it doubles the build time); the Python bindings
// are kernels/bindings.cpp.
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#if defined(SLICESERVE_AVX512) || defined(SLICESERVE_AVX2)
#include <immintrin.h>
#endif
#ifdef SLICESERVE_PORTABLE
#include <ATen/cpu/vec/vec.h>
#endif

namespace sliceserve_simd {

// A new contiguous CPU tensor.
inline at::Tensor empty_rows(c10::IntArrayRef sizes, c10::ScalarType dtype) {
  return at::Tensor(at::detail::empty_cpu(sizes, dtype, false, std::nullopt));
}

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float to_float(c10::Half x) { return static_cast<float>(x); }

// float -> storage dtype -> float: the rounding an eager op's output goes through.
template <typename T>
inline float round_to(float x) { return to_float(static_cast<T>(x)); }

// exp(x) for every path but scalar: 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, about 1 ulp;
// 0 (a subnormal at most) below -87.3. The constants are shared by all vector paths.
constexpr float kExpLow = -87.3f;
constexpr float kExpHigh = 88.7f;  // avx2/portable: 2^n stays a normal float (n <= 127)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

#if defined(SLICESERVE_AVX512)

struct Vec {
  static constexpr int kLanes = 16;
  __m512 v;

  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const c10::BFloat16* p) {
    __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))};
  }
  static Vec load(const c10::Half* p) {
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  static Vec broadcast(float x) { return {_mm512_set1_ps(x)}; }
  static Vec zero() { return {_mm512_setzero_ps()}; }

  // Round to nearest even, as c10::BFloat16(float) does (NaN stays NaN).
  __m512i bf16_bits() const {
    __m512i bits = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc00000));
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(c10::BFloat16* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_bits(), 16)));
  }
  void store(c10::Half* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // The lanes rounded to T and back (round_to<T> of each).
  template <typename T> Vec rounded() const;

  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  float sum() const { return _mm512_reduce_add_ps(v); }
  float max_lane() const { return _mm512_reduce_max_ps(v); }
  bool any_nan() const { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0; }
  // Per lane: `then` where this < threshold, else `otherwise`.
  Vec below(float threshold, Vec then, Vec otherwise) const {
    const __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(threshold), _CMP_LT_OQ);
    return {_mm512_mask_mov_ps(otherwise.v, m, then.v)};
  }
  // 1 / x: the 14-bit estimate and one Newton step (about 23 bits), several times faster
  // than a division.
  Vec reciprocal() const {
    const __m512 r = _mm512_rcp14_ps(v);
    return {_mm512_mul_ps(r, _mm512_fnmadd_ps(v, r, _mm512_set1_ps(2.f)))};
  }
  Vec exp() const {
    const __m512 x = _mm512_max_ps(v, _mm512_set1_ps(kExpLow));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return {_mm512_scalef_ps(poly(x, n), n)};
  }
  static __m512 poly(__m512 x, __m512 n) {
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    __m512 p = _mm512_set1_ps(kExpPoly[0]);
    for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
    return _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  }
};
template <> inline Vec Vec::rounded<float>() const { return *this; }
template <> inline Vec Vec::rounded<c10::BFloat16>() const {
  return {_mm512_castsi512_ps(_mm512_and_si512(bf16_bits(), _mm512_set1_epi32(~0xffff)))};
}
template <> inline Vec Vec::rounded<c10::Half>() const {
  return {_mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))};
}

#elif defined(SLICESERVE_AVX2)

struct Vec {
  static constexpr int kLanes = 8;
  __m256 v;

  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const c10::BFloat16* p) {
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))};
  }
  static Vec load(const c10::Half* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  static Vec broadcast(float x) { return {_mm256_set1_ps(x)}; }
  static Vec zero() { return {_mm256_setzero_ps()}; }

  // Round to nearest even, as c10::BFloat16(float) does (NaN stays NaN).
  __m256i bf16_bits() const {
    __m256i bits = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    return _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(rounded), _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)), nan));
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store(c10::BFloat16* p) const {
    // The high halves, packed to 16 bits (packus works per 128-bit lane: reorder after).
    const __m256i high = _mm256_srli_epi32(bf16_bits(), 16);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(high, high), 0xd8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  void store(c10::Half* p) const {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  template <typename T> Vec rounded() const;

  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
  float sum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  float max_lane() const {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  bool any_nan() const { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }
  Vec below(float threshold, Vec then, Vec otherwise) const {
    const __m256 m = _mm256_cmp_ps(v, _mm256_set1_ps(threshold), _CMP_LT_OQ);
    return {_mm256_blendv_ps(otherwise.v, then.v, m)};
  }
  // The 12-bit estimate and one Newton step (about 22 bits).
  Vec reciprocal() const {
    const __m256 r = _mm256_rcp_ps(v);
    return {_mm256_mul_ps(r, _mm256_fnmadd_ps(v, r, _mm256_set1_ps(2.f)))};
  }
  Vec exp() const {
    const __m256 x = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(kExpLow)),
                                   _mm256_set1_ps(kExpHigh));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    n = _mm256_min_ps(n, _mm256_set1_ps(127.f));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
    __m256 p = _mm256_set1_ps(kExpPoly[0]);
    for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[i]));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i scale = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return {_mm256_mul_ps(p, _mm256_castsi256_ps(scale))};
  }
};
template <> inline Vec Vec::rounded<float>() const { return *this; }
template <> inline Vec Vec::rounded<c10::BFloat16>() const {
  return {_mm256_castsi256_ps(_mm256_and_si256(bf16_bits(), _mm256_set1_epi32(~0xffff)))};
}
template <> inline Vec Vec::rounded<c10::Half>() const {
  return {_mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))};
}

#elif defined(SLICESERVE_PORTABLE)

struct Vec {
  using F = at::vec::Vectorized<float>;
  using I = at::vec::Vectorized<int32_t>;
  static constexpr int kLanes = F::size();
  F v;

  static Vec load(const float* p) { return {F::loadu(p)}; }
  template <typename T> static Vec load(const T* p) {
    alignas(64) float lanes[kLanes];
    for (int i = 0; i < kLanes; ++i) lanes[i] = to_float(p[i]);
    return {F::loadu(lanes)};
  }
  static Vec broadcast(float x) { return {F(x)}; }
  static Vec zero() { return {F(0.f)}; }
  void store(float* p) const { v.store(p); }
  template <typename T> void store(T* p) const {
    alignas(64) float lanes[kLanes];
    v.store(lanes);
    for (int i = 0; i < kLanes; ++i) p[i] = static_cast<T>(lanes[i]);
  }
  template <typename T> Vec rounded() const {
    if constexpr (std::is_same_v<T, float>) {
      return *this;
    } else {
      alignas(64) float lanes[kLanes];
      v.store(lanes);
      for (int i = 0; i < kLanes; ++i) lanes[i] = round_to<T>(lanes[i]);
      return {F::loadu(lanes)};
    }
  }

  friend Vec operator+(Vec a, Vec b) { return {a.v + b.v}; }
  friend Vec operator-(Vec a, Vec b) { return {a.v - b.v}; }
  friend Vec operator*(Vec a, Vec b) { return {a.v * b.v}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {at::vec::fmadd(a.v, b.v, c.v)}; }
  static Vec max(Vec a, Vec b) { return {at::vec::maximum(a.v, b.v)}; }
  float sum() const {
    alignas(64) float lanes[kLanes];
    v.store(lanes);
    float s = 0.f;
    for (int i = 0; i < kLanes; ++i) s += lanes[i];
    return s;
  }
  float max_lane() const {
    alignas(64) float lanes[kLanes];
    v.store(lanes);
    float m = lanes[0];
    for (int i = 1; i < kLanes; ++i) m = std::max(m, lanes[i]);
    return m;
  }
  bool any_nan() const {
    alignas(64) float lanes[kLanes];
    v.store(lanes);
    for (int i = 0; i < kLanes; ++i)
      if (std::isnan(lanes[i])) return true;
    return false;
  }
  Vec below(float threshold, Vec then, Vec otherwise) const {
    return {F::blendv(otherwise.v, then.v, v < F(threshold))};
  }
  Vec reciprocal() const { return {F(1.f) / v}; }
  Vec exp() const {
    const F x = at::vec::minimum(at::vec::maximum(v, F(kExpLow)), F(kExpHigh));
    const F n = at::vec::minimum((x * F(kLog2e)).round(), F(127.f));
    F r = at::vec::fmadd(n, F(-kLn2Hi), x);
    r = at::vec::fmadd(n, F(-kLn2Lo), r);
    F p(kExpPoly[0]);
    for (int i = 1; i < 6; ++i) p = at::vec::fmadd(p, r, F(kExpPoly[i]));
    p = at::vec::fmadd(p, r * r, r + F(1.f));
    const I e = (at::vec::convert_to_int_of_same_size(n) + I(127)) * I(1 << 23);
    return {p * at::vec::cast<float>(e)};
  }
};

#else  // scalar

struct Vec {
  static constexpr int kLanes = 1;
  float v;

  template <typename T> static Vec load(const T* p) { return {to_float(*p)}; }
  static Vec broadcast(float x) { return {x}; }
  static Vec zero() { return {0.f}; }
  template <typename T> void store(T* p) const { *p = static_cast<T>(v); }
  template <typename T> Vec rounded() const { return {round_to<T>(v)}; }
  friend Vec operator+(Vec a, Vec b) { return {a.v + b.v}; }
  friend Vec operator-(Vec a, Vec b) { return {a.v - b.v}; }
  friend Vec operator*(Vec a, Vec b) { return {a.v * b.v}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {a.v * b.v + c.v}; }
  static Vec max(Vec a, Vec b) { return {std::max(a.v, b.v)}; }
  float sum() const { return v; }
  float max_lane() const { return v; }
  bool any_nan() const { return std::isnan(v); }
  Vec below(float threshold, Vec then, Vec otherwise) const {
    return v < threshold ? then : otherwise;
  }
  Vec reciprocal() const { return {1.f / v}; }
  Vec exp() const { return {std::exp(v)}; }
};

#endif

constexpr int kLanes = Vec::kLanes;

// Which of the paths above this build took, and its lanes: recorded by the Python side.
inline std::string simd_path() { return std::string(SLICESERVE_PATH) + "/" +
                                        std::to_string(kLanes); }

}  // namespace sliceserve_simd
