// FP8 number formats: E4M3 (values) and E5M2 (wider range), encode and decode.
// The conversions here are the single source of truth for both the CPU and the CUDA paths
// (`COHORT_HD` = `__host__ __device__` under nvcc), and agree bit for bit with cuda_fp8.h's
// `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, fmt)` (tests/kernels/fp8_cuda_reference_test.cpp).
//
//   uint8_t q = cohort::kernels::e4m3_from_float(0.3f);   // round to nearest even, saturating
//   float v = cohort::kernels::e4m3_to_float(q);          // exact
//
// E4M3 (OCP "e4m3fn"): bias 7, no infinities, NaN = S.1111.111, max finite ±448, min subnormal
// 2^-9. E5M2: bias 15, IEEE-like (inf = S.11111.00, NaN = S.11111.xx), max finite ±57344,
// min subnormal 2^-16. Encoding semantics (those of __NV_SATFINITE):
//   - NaN of either sign encodes to 0x7F (the positive NaN code; the sign is not kept);
//   - ±inf and finite values beyond the format's range saturate to ±max;
//   - values that round to zero keep their sign (-1e-30f -> 0x80);
//   - otherwise round to nearest, ties to even, subnormals included.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define COHORT_HD __host__ __device__ __forceinline__
#else
#define COHORT_HD inline
#endif

#if !defined(__CUDA_ARCH__)
#include <bit>
#endif

namespace cohort::kernels {

inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kE5M2Max = 57344.0f;
inline constexpr uint8_t kE4M3NaN = 0x7F;
inline constexpr uint8_t kE5M2NaN = 0x7F;
// Relative rounding bound of a normal E4M3 value: half an ulp of a 3-bit mantissa, 2^-4.
inline constexpr float kE4M3RelativeBound = 0.0625f;
// Absolute rounding bound in E4M3's subnormal range: half the smallest subnormal, 2^-10.
inline constexpr float kE4M3SubnormalBound = 0.0009765625f;

namespace detail {

COHORT_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  return std::bit_cast<uint32_t>(x);
#endif
}

COHORT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}

}  // namespace detail

// float -> E4M3, round to nearest even, saturating (see the header comment).
// Branch-free so the compiler can vectorize loops over it; the AVX2 path in
// quantize_avx2.cpp is the same sequence written with intrinsics.
COHORT_HD uint8_t e4m3_from_float(float x) {
  const uint32_t u = detail::float_bits(x);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normal range [2^-6, 448]: round the float mantissa to 3 bits (ties to even) in the integer
  // domain, then rebias the exponent (127 -> 7). Clamping at 448 first is exact saturation:
  // everything in (448, 464] rounds to 448 anyway and everything above saturates to it.
  const uint32_t c = a < 0x43E00000u ? a : 0x43E00000u;
  const uint32_t rounded = c + 0x7FFFFu + ((c >> 20) & 1u);
  const uint32_t normal = (rounded >> 20) - (120u << 3);
  // Subnormal range [0, 2^-6): adding 2^14 leaves an ulp of 2^-9 (E4M3's subnormal step), so
  // the hardware's RNE add performs the rounding; the low bits are then the code. 2^-6 itself
  // comes out as code 8, the first normal, as it should.
  const uint32_t sub = detail::float_bits(detail::bits_float(a) + 16384.0f) - 0x46800000u;
  uint32_t code = a < 0x3C800000u ? sub : normal;
  code = a > 0x7F800000u ? uint32_t{kE4M3NaN} : (code | sign);
  return static_cast<uint8_t>(code);
}

// E4M3 -> float, exact. NaN codes (0x7F, 0xFF) decode to a quiet NaN.
COHORT_HD float e4m3_to_float(uint8_t q) {
  const uint32_t sign = static_cast<uint32_t>(q & 0x80u) << 24;
  const uint32_t mag = q & 0x7Fu;
  if (mag == 0x7Fu) return detail::bits_float(0x7FC00000u);
  float v;
  if (mag < 8u) {  // subnormal: m * 2^-9
    v = static_cast<float>(mag) * 0.001953125f;
  } else {
    v = detail::bits_float((mag << 20) + (120u << 23));
  }
  return detail::bits_float(detail::float_bits(v) | sign);
}

// float -> E5M2, round to nearest even, saturating to ±57344 (see the header comment).
COHORT_HD uint8_t e5m2_from_float(float x) {
  const uint32_t u = detail::float_bits(x);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normal range [2^-14, 57344]; values at or above 61440 (max + half ulp) saturate, and so
  // does everything clamped to 57344 (values in (57344, 61440) round down to it).
  const uint32_t c = a < 0x47600000u ? a : 0x47600000u;
  const uint32_t rounded = c + 0xFFFFFu + ((c >> 21) & 1u);
  const uint32_t normal = (rounded >> 21) - (112u << 2);
  // Subnormal range [0, 2^-14): the ulp of 2^7 is 2^-16, E5M2's subnormal step.
  const uint32_t sub = detail::float_bits(detail::bits_float(a) + 128.0f) - 0x43000000u;
  uint32_t code = a < 0x38800000u ? sub : normal;
  code = a > 0x7F800000u ? uint32_t{kE5M2NaN} : (code | sign);
  return static_cast<uint8_t>(code);
}

// E5M2 -> float, exact (E5M2 is the top byte of an IEEE half). ±inf and NaN decode as such.
COHORT_HD float e5m2_to_float(uint8_t q) {
  const uint32_t sign = static_cast<uint32_t>(q & 0x80u) << 24;
  const uint32_t mag = q & 0x7Fu;
  if (mag > 0x7Cu) return detail::bits_float(0x7FC00000u);
  float v;
  if (mag == 0x7Cu) {
    v = detail::bits_float(0x7F800000u);
  } else if (mag < 4u) {  // subnormal: m * 2^-16
    v = static_cast<float>(mag) * 0.0000152587890625f;
  } else {
    v = detail::bits_float((mag << 21) + (112u << 23));
  }
  return detail::bits_float(detail::float_bits(v) | sign);
}

// Smallest scale a tile may get: the least normal float, so x / scale never divides by zero
// or by a subnormal (whose lost precision would break the rounding bound).
inline constexpr float kE4M3MinScale = 1.17549435e-38f;  // 2^-126

// Scale of one quantization tile/block from its amax: max(amax / 448, 2^-126). A non-finite
// amax passes through (inf or NaN), which makes the whole tile dequantize to NaN.
COHORT_HD float e4m3_scale_from_amax(float amax) {
  const float s = amax / kE4M3Max;
  return (s >= kE4M3MinScale || s != s) ? s : kE4M3MinScale;
}

}  // namespace cohort::kernels
