// AVX2 versions of the quantization inner loops (compiled with -mavx2; chosen at run time).
// Each function is e4m3_from_float / e4m3_to_float from fp8.h written with intrinsics, lane by
// lane the same integer and float operations, so the bits match the scalar path exactly.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu_kernels.h"
#include "kernels/fp8.h"

namespace cohort::kernels::detail {
namespace {

// e4m3_from_float on 8 lanes; result codes in the low byte of each 32-bit lane.
inline __m256i e4m3_encode8(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i a = _mm256_and_si256(u, abs_mask);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
  // normal range (a and the clamp are non-negative, so signed min is fine)
  const __m256i c = _mm256_min_epi32(a, _mm256_set1_epi32(0x43E00000));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(c, 20), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(c, _mm256_set1_epi32(0x7FFFF)), odd);
  const __m256i normal = _mm256_sub_epi32(_mm256_srli_epi32(rounded, 20), _mm256_set1_epi32(960));
  // subnormal range: the RNE add does the rounding
  const __m256 biased = _mm256_add_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(16384.0f));
  const __m256i sub = _mm256_sub_epi32(_mm256_castps_si256(biased), _mm256_set1_epi32(0x46800000));
  const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3C800000), a);
  __m256i code = _mm256_blendv_epi8(normal, sub, is_sub);
  code = _mm256_or_si256(code, sign);
  const __m256i is_nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7F800000));
  return _mm256_blendv_epi8(code, _mm256_set1_epi32(kE4M3NaN), is_nan);
}

// e4m3_to_float on 8 lanes of codes (one code per 32-bit lane).
inline __m256 e4m3_decode8(__m256i code) {
  const __m256i mag = _mm256_and_si256(code, _mm256_set1_epi32(0x7F));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(code, _mm256_set1_epi32(0x80)), 24);
  const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(mag, 20), _mm256_set1_epi32(120 << 23));
  const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(0.001953125f));
  const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(8), mag);
  __m256i v = _mm256_blendv_epi8(normal, _mm256_castps_si256(sub), is_sub);
  v = _mm256_or_si256(v, sign);
  const __m256i is_nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F));
  v = _mm256_blendv_epi8(v, _mm256_set1_epi32(0x7FC00000), is_nan);
  return _mm256_castsi256_ps(v);
}

// Packs 4 x 8 codes (low byte of each lane) into 32 bytes in order.
inline __m256i pack32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packus_epi32(a, b);
  const __m256i cd = _mm256_packus_epi32(c, d);
  const __m256i abcd = _mm256_packus_epi16(ab, cd);
  return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

inline __m256i abs_bits8(__m256 x) {
  return _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7FFFFFFF));
}

inline float hmax_bits(__m256i m) {
  __m128i v = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  v = _mm_max_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm_max_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtss_f32(_mm_castsi128_ps(v));
}

float amax_avx2(const float* x, int64_t n) {
  __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_epi32(m0, abs_bits8(_mm256_loadu_ps(x + i)));
    m1 = _mm256_max_epi32(m1, abs_bits8(_mm256_loadu_ps(x + i + 8)));
  }
  for (; i + 8 <= n; i += 8) m0 = _mm256_max_epi32(m0, abs_bits8(_mm256_loadu_ps(x + i)));
  float m = hmax_bits(_mm256_max_epi32(m0, m1));
  uint32_t mb = float_bits(m);
  for (; i < n; ++i) {
    const uint32_t b = abs_bits(float_bits(x[i]));
    mb = b > mb ? b : mb;
  }
  return bits_float(mb);
}

void amax_accumulate_avx2(const float* x, int64_t n, float* acc) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i a = _mm256_castps_si256(_mm256_loadu_ps(acc + i));
    _mm256_storeu_ps(acc + i, _mm256_castsi256_ps(
                                  _mm256_max_epi32(a, abs_bits8(_mm256_loadu_ps(x + i)))));
  }
  for (; i < n; ++i) {
    const uint32_t b = abs_bits(float_bits(x[i]));
    const uint32_t a = float_bits(acc[i]);
    acc[i] = bits_float(b > a ? b : a);
  }
}

void quantize_avx2(const float* x, int64_t n, float scale, uint8_t* q) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i a = e4m3_encode8(_mm256_div_ps(_mm256_loadu_ps(x + i), s));
    const __m256i b = e4m3_encode8(_mm256_div_ps(_mm256_loadu_ps(x + i + 8), s));
    const __m256i c = e4m3_encode8(_mm256_div_ps(_mm256_loadu_ps(x + i + 16), s));
    const __m256i d = e4m3_encode8(_mm256_div_ps(_mm256_loadu_ps(x + i + 24), s));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), pack32(a, b, c, d));
  }
  for (; i < n; ++i) q[i] = e4m3_from_float(x[i] / scale);
}

void dequantize_avx2(const uint8_t* q, int64_t n, float scale, float* x) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i codes =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)));
    _mm256_storeu_ps(x + i, _mm256_mul_ps(e4m3_decode8(codes), s));
  }
  for (; i < n; ++i) x[i] = e4m3_to_float(q[i]) * scale;
}

void fake_quantize_avx2(const float* x, int64_t n, float scale, float* out) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {  // two independent chains per iteration
    const __m256i c0 = e4m3_encode8(_mm256_div_ps(_mm256_loadu_ps(x + i), s));
    const __m256i c1 = e4m3_encode8(_mm256_div_ps(_mm256_loadu_ps(x + i + 8), s));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(e4m3_decode8(c0), s));
    _mm256_storeu_ps(out + i + 8, _mm256_mul_ps(e4m3_decode8(c1), s));
  }
  for (; i + 8 <= n; i += 8) {
    const __m256i code = e4m3_encode8(_mm256_div_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(e4m3_decode8(code), s));
  }
  for (; i < n; ++i) out[i] = e4m3_to_float(e4m3_from_float(x[i] / scale)) * scale;
}

void fake_quantize_scales_avx2(const float* x, int64_t n, const float* scales, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 s = _mm256_loadu_ps(scales + i);
    const __m256i code = e4m3_encode8(_mm256_div_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(e4m3_decode8(code), s));
  }
  for (; i < n; ++i) out[i] = e4m3_to_float(e4m3_from_float(x[i] / scales[i])) * scales[i];
}

}  // namespace

const CpuKernels* avx2_kernels() {
  static const CpuKernels k{amax_avx2,          quantize_avx2,
                            dequantize_avx2,    fake_quantize_avx2,
                            fake_quantize_scales_avx2, amax_accumulate_avx2};
  return &k;
}

}  // namespace cohort::kernels::detail
