// The FP8 gradient codec: wire layout per the documented format, round-trip bound, error
// feedback (sum of decoded updates tracks the sum of gradients, bounded residual) and refusal
// of malformed payloads with a reason.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/check.h"
#include "kernels/fp8.h"
#include "kernels/grad_codec.h"

namespace cohort::kernels {
namespace {

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

float scale_of_block(const std::vector<uint8_t>& p, size_t b) {
  float s;
  std::memcpy(&s, p.data() + 16 + 4 * b, 4);
  return s;
}

double element_bound(double x, double s) {
  return std::max(kE4M3RelativeBound * std::fabs(x), kE4M3SubnormalBound * s) * (1 + 0x1p-20) +
         0x1p-21 * std::fabs(x);
}

TEST(GradCodec, PayloadFollowsDocumentedLayoutAndSize) {
  const size_t n = 1000;  // 8 blocks, the last ragged (104 elements)
  const auto g = gaussian(n, 1, 1e-3f);
  const auto p = encode_fp8_e4m3_block(g);
  ASSERT_EQ(p.size(), 16 + 4 * 8 + n);
  EXPECT_EQ(0, std::memcmp(p.data(), "CF8B", 4));
  EXPECT_EQ(p[4], 1);
  EXPECT_EQ(p[5], 1);
  EXPECT_EQ(p[6] | (p[7] << 8), 128);
  uint64_t numel = 0;
  for (int i = 0; i < 8; ++i) numel |= uint64_t{p[8 + i]} << (8 * i);
  EXPECT_EQ(numel, n);
  // Element i decodes to e4m3_to_float(code[i]) * scale[i / 128], as documented.
  std::vector<float> out(n);
  ASSERT_TRUE(decode_fp8_e4m3_block(p, out).ok());
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(out[i], e4m3_to_float(p[16 + 32 + i]) * scale_of_block(p, i / 128)) << i;
  }
}

TEST(GradCodec, AtMost1Point05BytesPerParameter) {
  for (uint64_t n : {uint64_t{128} * 1024, uint64_t{1} << 20, uint64_t{7'000'001}}) {
    const double per_param = double(fp8_e4m3_block_payload_size(n)) / double(n);
    EXPECT_LE(per_param, 1.05) << n;
  }
  EXPECT_EQ(fp8_e4m3_block_payload_size(0), 16u);
}

TEST(GradCodec, RoundTripWithinE4M3BoundPerBlock) {
  auto g = gaussian(5000, 2, 1e-2f);
  g[17] = 3.0f;  // outlier: small entries of block 0 go subnormal
  const auto p = encode_fp8_e4m3_block(g);
  std::vector<float> out(g.size());
  ASSERT_TRUE(decode_fp8_e4m3_block(p, out).ok());
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_LE(std::fabs(g[i] - out[i]), element_bound(g[i], scale_of_block(p, i / 128))) << i;
  }
}

TEST(GradCodec, ErrorFeedbackSumOfDecodedTracksSumOfGradients) {
  const size_t n = 4096;
  const int steps = 200;
  Fp8GradEncoder enc(n);
  std::vector<double> sum_g(n, 0), sum_dec(n, 0), sum_dec_plain(n, 0);
  std::vector<float> dec(n), plain(n);
  std::vector<uint8_t> last;
  for (int t = 0; t < steps; ++t) {
    auto g = gaussian(n, 100 + t, 1e-3f);
    // One large entry per block, and a small steady drift: each step the drift is far below
    // the block's subnormal step, so without feedback it is lost every single time.
    for (size_t b = 0; b < n / 128; ++b) g[b * 128] = 0.5f;
    for (size_t i = 0; i < n; ++i)
      if (i % 128 != 0) g[i] = g[i] * 1e-4f + 2e-7f;
    last = enc.encode(g);
    ASSERT_TRUE(decode_fp8_e4m3_block(last, dec).ok());
    ASSERT_TRUE(decode_fp8_e4m3_block(encode_fp8_e4m3_block(g), plain).ok());
    for (size_t i = 0; i < n; ++i) {
      sum_g[i] += g[i];
      sum_dec[i] += dec[i];
      sum_dec_plain[i] += plain[i];
    }
  }
  const auto r = enc.residual();
  double worst_plain_drift = 0;
  for (size_t i = 0; i < n; ++i) {
    // Telescoping: sum decoded = sum g - residual_T, up to the FP32 rounding of e = g + r at
    // each step (2^-24 |e|; |e| <= 0.6 for the large entries, <= 1e-5 for the others).
    const double e_mag = std::fabs(double(r[i]) + dec[i]);  // |e_T|, the last quantized value
    const double e_max = i % 128 == 0 ? 0.6 : 1e-5;
    ASSERT_NEAR(sum_dec[i] + r[i], sum_g[i], steps * 0x1p-24 * e_max) << i;
    // The carried residual is one step's rounding error, not an accumulation.
    ASSERT_LE(std::fabs(r[i]), element_bound(e_mag, scale_of_block(last, i / 128))) << i;
    if (i % 128 != 0) worst_plain_drift = std::max(worst_plain_drift, std::fabs(sum_dec_plain[i] - sum_g[i]));
  }
  // Without feedback the drift is lost: the test distinguishes the two encoders.
  EXPECT_GT(worst_plain_drift, 0.5 * steps * 2e-7);
}

TEST(GradCodec, EncoderRefusesNonFiniteGradientAndKeepsState) {
  Fp8GradEncoder enc(300);
  auto g = gaussian(300, 3, 1.0f);
  (void)enc.encode(g);
  const std::vector<float> before(enc.residual().begin(), enc.residual().end());
  g[299] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW((void)enc.encode(g), Error);
  g[299] = std::numeric_limits<float>::infinity();
  EXPECT_THROW((void)enc.encode(g), Error);
  EXPECT_THROW((void)enc.encode(std::vector<float>(299)), Error);
  EXPECT_TRUE(std::equal(before.begin(), before.end(), enc.residual().begin()));
  EXPECT_THROW((void)encode_fp8_e4m3_block(g), Error);
}

class MalformedPayload : public ::testing::Test {
 protected:
  void SetUp() override {
    g = gaussian(300, 4, 1.0f);
    good = encode_fp8_e4m3_block(g);  // 3 blocks: scales at 16..27, codes from 28
  }
  // Decoding must fail with `want` and leave the output untouched.
  void expect_refused(const std::vector<uint8_t>& p, CodecStatus want, size_t out_size = 300) {
    std::vector<float> out(out_size, 12345.0f);
    const CodecResult r = decode_fp8_e4m3_block(p, out);
    EXPECT_EQ(r.status, want) << "got " << codec_status_name(r.status) << ": " << r.detail;
    EXPECT_FALSE(r.detail.empty());
    for (float v : out) ASSERT_EQ(v, 12345.0f);
  }
  std::vector<float> g;
  std::vector<uint8_t> good;
};

TEST_F(MalformedPayload, GoodPayloadDecodes) {
  std::vector<float> out(300);
  EXPECT_TRUE(decode_fp8_e4m3_block(good, out).ok());
  EXPECT_EQ(inspect_fp8_e4m3_block(good).numel, 300u);
}

TEST_F(MalformedPayload, ShortHeaderIsTruncated) {
  expect_refused({}, CodecStatus::truncated);
  expect_refused(std::vector<uint8_t>(good.begin(), good.begin() + 15), CodecStatus::truncated);
}

TEST_F(MalformedPayload, WrongMagicVersionFormatBlock) {
  auto p = good;
  p[0] = 'X';
  expect_refused(p, CodecStatus::bad_magic);
  p = good;
  p[4] = 2;
  expect_refused(p, CodecStatus::unsupported_version);
  p = good;
  p[5] = 2;
  expect_refused(p, CodecStatus::unsupported_format);
  p = good;
  p[6] = 64;
  expect_refused(p, CodecStatus::bad_block_size);
}

TEST_F(MalformedPayload, SizeDisagreeingWithElementCount) {
  expect_refused(std::vector<uint8_t>(good.begin(), good.end() - 1), CodecStatus::truncated);
  auto p = good;
  p.push_back(0);
  expect_refused(p, CodecStatus::trailing_bytes);
  p = good;
  p[15] = 0x80;  // numel = 2^63 + 300: refused before any allocation or overflow
  expect_refused(p, CodecStatus::truncated);
  p = good;
  p[8] = 0x20;  // numel 300 (0x12C) -> 288: still 3 blocks, 12 bytes too many
  expect_refused(p, CodecStatus::trailing_bytes);
}

TEST_F(MalformedPayload, ElementCountDifferentFromTensor) {
  expect_refused(good, CodecStatus::numel_mismatch, 299);
}

TEST_F(MalformedPayload, BadScales) {
  for (float s : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity()}) {
    auto p = good;
    std::memcpy(p.data() + 16 + 4, &s, 4);
    expect_refused(p, CodecStatus::non_finite_scale);
  }
  auto p = good;
  const float neg = -0.5f;
  std::memcpy(p.data() + 16 + 8, &neg, 4);
  expect_refused(p, CodecStatus::negative_scale);
}

TEST_F(MalformedPayload, NaNCodes) {
  for (uint8_t code : {uint8_t{0x7F}, uint8_t{0xFF}}) {
    auto p = good;
    p[28 + 250] = code;
    expect_refused(p, CodecStatus::nan_code);
  }
}

}  // namespace
}  // namespace cohort::kernels
