// E4M3 / E5M2 conversions against an independent nearest-value reference (fp8_samples.h) and
// named cases from the format definitions; the bulk (SIMD) path against the scalar function.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/fp8.h"
#include "kernels/quantize.h"
#include "tests/kernels/fp8_samples.h"

namespace cohort::kernels {
namespace {

using testing::as_float;

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(Fp8Format, E4M3DecodesAll256CodesPerFieldDefinition) {
  for (uint32_t c = 0; c < 256; ++c) {
    const float v = e4m3_to_float(static_cast<uint8_t>(c));
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << "code " << c;
      continue;
    }
    const double mag = testing::e4m3_reference().decode_magnitude(c & 0x7F);
    const double expect = (c & 0x80) ? -mag : mag;
    EXPECT_EQ(bits_of(v), bits_of(static_cast<float>(expect))) << "code " << c;
  }
  EXPECT_EQ(e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::signbit(e4m3_to_float(0x80)));
}

TEST(Fp8Format, E5M2DecodesAll256CodesPerFieldDefinition) {
  for (uint32_t c = 0; c < 256; ++c) {
    const float v = e5m2_to_float(static_cast<uint8_t>(c));
    const uint32_t mag = c & 0x7F;
    if (mag > 0x7C) {
      EXPECT_TRUE(std::isnan(v)) << "code " << c;
    } else if (mag == 0x7C) {
      EXPECT_TRUE(std::isinf(v) && (std::signbit(v) == ((c & 0x80) != 0))) << "code " << c;
    } else {
      const double m = testing::e5m2_reference().decode_magnitude(static_cast<uint8_t>(mag));
      EXPECT_EQ(bits_of(v), bits_of(static_cast<float>((c & 0x80) ? -m : m))) << "code " << c;
    }
  }
  EXPECT_EQ(e5m2_to_float(0x7B), 57344.0f);
  EXPECT_EQ(e5m2_to_float(0x3C), 1.0f);
}

TEST(Fp8Format, E4M3RoundsTiesToEven) {
  EXPECT_EQ(e4m3_from_float(1.0625f), 0x38);  // between 1.0 (0x38) and 1.125 (0x39)
  EXPECT_EQ(e4m3_from_float(1.1875f), 0x3A);  // between 1.125 (0x39) and 1.25 (0x3A)
  EXPECT_EQ(e4m3_from_float(std::nextafter(1.0625f, 2.0f)), 0x39);
  EXPECT_EQ(e4m3_from_float(-1.0625f), 0xB8);
  EXPECT_EQ(e4m3_from_float(3 * std::ldexp(1.0f, -10)), 0x02);  // 1.5 subnormal steps -> 2
  EXPECT_EQ(e4m3_from_float(5 * std::ldexp(1.0f, -10)), 0x02);  // 2.5 steps -> 2
  EXPECT_EQ(e4m3_from_float(std::ldexp(1.0f, -10)), 0x00);      // half the least subnormal -> 0
  EXPECT_EQ(e4m3_from_float(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(e4m3_from_float(15 * std::ldexp(1.0f, -10)), 0x08);  // 7.5 steps -> 2^-6, first normal
}

TEST(Fp8Format, E4M3SaturatesAndKeepsNaN) {
  EXPECT_EQ(e4m3_from_float(448.0f), 0x7E);
  EXPECT_EQ(e4m3_from_float(463.99f), 0x7E);
  EXPECT_EQ(e4m3_from_float(464.0f), 0x7E);
  EXPECT_EQ(e4m3_from_float(465.0f), 0x7E);
  EXPECT_EQ(e4m3_from_float(1e30f), 0x7E);
  EXPECT_EQ(e4m3_from_float(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(e4m3_from_float(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(e4m3_from_float(-500.0f), 0xFE);
  EXPECT_EQ(e4m3_from_float(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(e4m3_from_float(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(e4m3_from_float(as_float(0x7F800001u)), 0x7F);  // signalling NaN
  EXPECT_EQ(e4m3_from_float(0.0f), 0x00);
  EXPECT_EQ(e4m3_from_float(-0.0f), 0x80);
  EXPECT_EQ(e4m3_from_float(-1e-30f), 0x80);
  EXPECT_EQ(e4m3_from_float(as_float(0x00000001u)), 0x00);  // float subnormal
}

TEST(Fp8Format, E5M2SaturatesRoundsAndKeepsNaN) {
  EXPECT_EQ(e5m2_from_float(1.0f), 0x3C);
  EXPECT_EQ(e5m2_from_float(57344.0f), 0x7B);
  EXPECT_EQ(e5m2_from_float(61439.0f), 0x7B);
  EXPECT_EQ(e5m2_from_float(61440.0f), 0x7B);
  EXPECT_EQ(e5m2_from_float(std::numeric_limits<float>::infinity()), 0x7B);
  EXPECT_EQ(e5m2_from_float(-std::numeric_limits<float>::infinity()), 0xFB);
  EXPECT_EQ(e5m2_from_float(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(e5m2_from_float(std::ldexp(1.0f, -16)), 0x01);
  EXPECT_EQ(e5m2_from_float(std::ldexp(1.0f, -17)), 0x00);
  EXPECT_EQ(e5m2_from_float(1.125f), 0x3C);  // tie between 1.0 and 1.25 -> even
  EXPECT_EQ(e5m2_from_float(1.375f), 0x3E);  // tie between 1.25 and 1.5 -> even
}

TEST(Fp8Format, E4M3EncodeMatchesNearestReferenceOnStratifiedSample) {
  const auto sample = testing::stratified_float_bits();
  const auto& ref = testing::e4m3_reference();
  size_t mismatches = 0;
  for (uint32_t u : sample) {
    const float x = as_float(u);
    const uint8_t got = e4m3_from_float(x), want = ref.encode(x);
    if (got != want && ++mismatches <= 10) {
      ADD_FAILURE() << std::hex << "x bits 0x" << u << ": got 0x" << int(got) << ", want 0x"
                    << int(want);
    }
  }
  EXPECT_EQ(mismatches, 0u) << "of " << sample.size() << " inputs";
}

TEST(Fp8Format, E5M2EncodeMatchesNearestReferenceOnStratifiedSample) {
  const auto sample = testing::stratified_float_bits();
  const auto& ref = testing::e5m2_reference();
  size_t mismatches = 0;
  for (uint32_t u : sample) {
    const float x = as_float(u);
    const uint8_t got = e5m2_from_float(x), want = ref.encode(x);
    if (got != want && ++mismatches <= 10) {
      ADD_FAILURE() << std::hex << "x bits 0x" << u << ": got 0x" << int(got) << ", want 0x"
                    << int(want);
    }
  }
  EXPECT_EQ(mismatches, 0u) << "of " << sample.size() << " inputs";
}

// The bulk path (AVX2 when available) must give the scalar function's bits on every input.
TEST(Fp8Format, BulkEncodeDecodeMatchScalarOnEveryIsa) {
  const auto sample = testing::stratified_float_bits();
  std::vector<float> x(sample.size());
  for (size_t i = 0; i < sample.size(); ++i) x[i] = as_float(sample[i]);
  const CpuIsa saved = active_cpu_isa();
  for (CpuIsa isa : {CpuIsa::scalar, CpuIsa::avx2}) {
    if (!cpu_isa_supported(isa)) continue;
    set_cpu_isa(isa);
    std::vector<uint8_t> q(x.size());
    encode_e4m3(x, q);
    size_t bad = 0;
    for (size_t i = 0; i < x.size(); ++i) bad += q[i] != e4m3_from_float(x[i]);
    EXPECT_EQ(bad, 0u) << cpu_isa_name(isa);
    std::vector<uint8_t> codes(256 * 64);
    for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>(i * 37 + i / 256);
    std::vector<float> d(codes.size());
    decode_e4m3(codes, d);
    bad = 0;
    for (size_t i = 0; i < codes.size(); ++i) {
      const float want = e4m3_to_float(codes[i]);
      bad += !(bits_of(d[i]) == bits_of(want) || (std::isnan(d[i]) && std::isnan(want)));
    }
    EXPECT_EQ(bad, 0u) << cpu_isa_name(isa);
  }
  set_cpu_isa(saved);
}

}  // namespace
}  // namespace cohort::kernels
