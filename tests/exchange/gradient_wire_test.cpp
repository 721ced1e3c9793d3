// The gradient wire form (exchange/gradient_wire.h): what one role encodes the other decodes, for
// every codec, and every malformed tensor is a typed refusal. RAW round-trips bit for bit; FP8
// E4M3 blocks within the format's closed-form bound (3 mantissa bits: relative error <= 2^-4 of
// the value, plus the subnormal step of the block's scale).
#include "exchange/gradient_wire.h"
#include "exchange/topk_codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "common/check.h"

namespace cohort::exchange {
namespace {

ParamLayout two_params() {
  ParamLayout l;
  l.slots.push_back({"model.a.weight", {3, 100}, 0, 300});
  l.slots.push_back({"model.b.bias", {7}, 300, 7});
  l.total = 307;
  return l;
}

std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.01f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

wire::GradientUpdate encoded(const ParamLayout& l, wire::Codec codec, const std::vector<float>& v) {
  GradientEncoder enc(l, codec);
  wire::GradientUpdate u;
  enc.encode(v, *u.mutable_tensors());
  return u;
}

TEST(GradientWire, RawRoundTripsBitForBit) {
  const ParamLayout l = two_params();
  const auto v = random_values(l.total, 1);
  std::vector<float> out(l.total);
  ASSERT_FALSE(decode_gradient(encoded(l, wire::CODEC_RAW, v), l, out));
  EXPECT_EQ(out, v);
}

TEST(GradientWire, Fp8BlocksRoundTripWithinTheFormatsBound) {
  const ParamLayout l = two_params();
  const auto v = random_values(l.total, 2);
  std::vector<float> out(l.total);
  const wire::GradientUpdate u = encoded(l, wire::CODEC_FP8_E4M3_BLOCK, v);
  ASSERT_FALSE(decode_gradient(u, l, out));
  for (const auto& s : l.slots) {
    for (size_t b = 0; b < s.numel; b += 128) {
      const size_t e = std::min(s.numel, b + 128);
      float amax = 0;
      for (size_t i = b; i < e; ++i) amax = std::max(amax, std::abs(v[s.offset + i]));
      const float scale = amax / 448.0f;
      for (size_t i = b; i < e; ++i) {
        const float x = v[s.offset + i];
        EXPECT_LE(std::abs(out[s.offset + i] - x),
                  std::abs(x) / 16 + scale * std::ldexp(1.0f, -9) * 1.01f + 1e-12f)
            << s.name << "[" << i << "]";
      }
    }
  }
  // About one byte per value plus a scale per block of 128.
  EXPECT_LT(u.ByteSizeLong(), l.total * 1.2 + 200);
}

TEST(GradientWire, Fp8ErrorFeedbackCarriesTheResidualIntoTheNextUpdate) {
  const ParamLayout l = two_params();
  const auto v = random_values(l.total, 3);
  GradientEncoder enc(l, wire::CODEC_FP8_E4M3_BLOCK);
  std::vector<double> sum(l.total, 0.0);
  const int rounds = 20;
  for (int r = 0; r < rounds; ++r) {
    wire::GradientUpdate u;
    enc.encode(v, *u.mutable_tensors());
    std::vector<float> out(l.total);
    ASSERT_FALSE(decode_gradient(u, l, out));
    for (size_t i = 0; i < l.total; ++i) sum[i] += out[i];
  }
  // The decoded sum tracks the true sum to within one update's error, not twenty.
  for (size_t i = 0; i < l.total; ++i)
    EXPECT_NEAR(sum[i], rounds * double(v[i]), std::abs(v[i]) / 8 + 1e-5);
}

TEST(GradientWire, NonFiniteGradientIsNeverEncoded) {
  const ParamLayout l = two_params();
  auto v = random_values(l.total, 4);
  v[5] = std::numeric_limits<float>::quiet_NaN();
  GradientEncoder enc(l, wire::CODEC_RAW);
  wire::GradientUpdate u;
  EXPECT_THROW(enc.encode(v, *u.mutable_tensors()), Error);
}

TEST(GradientWire, MalformedTensorsAreRefusedWithTheirReason) {
  const ParamLayout l = two_params();
  const auto v = random_values(l.total, 5);
  const wire::GradientUpdate good = encoded(l, wire::CODEC_RAW, v);
  std::vector<float> out(l.total);
  auto reason = [&](const wire::GradientUpdate& u) {
    auto r = decode_gradient(u, l, out);
    return r ? r->reason : wire::ACK_OK;
  };
  auto missing = good;
  missing.mutable_tensors()->RemoveLast();
  EXPECT_EQ(reason(missing), wire::ACK_MALFORMED);
  auto renamed = good;
  renamed.mutable_tensors(1)->set_name("model.a.weight");  // repeated
  EXPECT_EQ(reason(renamed), wire::ACK_MALFORMED);
  auto reshaped = good;
  reshaped.mutable_tensors(0)->set_shape(0, 2);
  EXPECT_EQ(reason(reshaped), wire::ACK_MALFORMED);
  auto truncated = good;
  truncated.mutable_tensors(0)->mutable_payload()->resize(8);
  EXPECT_EQ(reason(truncated), wire::ACK_MALFORMED);
  auto nan = good;
  const float q = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(nan.mutable_tensors(1)->mutable_payload()->data(), &q, sizeof q);
  auto r = decode_gradient(nan, l, out);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->reason, wire::ACK_BAD_NORM);
}

// The coordinator folds top-k updates from their kept entries (mean rule): scattered into zeros
// they are the dense decode bit for bit, in a layout with a tensor over one chunk (4096) and one
// under; a tensor in another codec is refused.
TEST(GradientWire, SparseTopkDecodeScattersToTheDenseDecode) {
  ParamLayout l;
  l.slots.push_back({"model.a.weight", {3, 3000}, 0, 9000});
  l.slots.push_back({"model.b.bias", {7}, 9000, 7});
  l.total = 9007;
  const auto v = random_values(l.total, 5);
  const wire::GradientUpdate u = encoded(l, wire::CODEC_TOPK_Q4, v);
  std::vector<float> dense(l.total);
  ASSERT_FALSE(decode_gradient(u, l, dense));
  SparseGradient sparse;
  ASSERT_FALSE(decode_gradient_sparse(u, l, sparse));
  ASSERT_EQ(sparse.index.size(), sparse.value.size());
  EXPECT_EQ(sparse.index.size(), topk::max_kept(4096) * 2 + topk::max_kept(9000 - 8192) + topk::max_kept(7));
  std::vector<float> scattered(l.total, 0.0f);
  for (size_t k = 0; k < sparse.index.size(); ++k) {
    ASSERT_LT(sparse.index[k], l.total);
    scattered[sparse.index[k]] = sparse.value[k];
  }
  EXPECT_EQ(scattered, dense);
  wire::GradientUpdate mixed = u;
  *mixed.mutable_tensors(1) = encoded(l, wire::CODEC_RAW, v).tensors(1);
  const auto r = decode_gradient_sparse(mixed, l, sparse);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->reason, wire::ACK_MALFORMED);
}

}  // namespace
}  // namespace cohort::exchange
