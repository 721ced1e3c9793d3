// The count sketch audits compare gradients through (exchange/sketch.h): deterministic per key,
// linear, the closed form for one bucket and for a vector without collisions, and the inner
// product estimate unbiased with the variance bound the validators' cosine threshold relies on.
#include "exchange/sketch.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace cohort::exchange {
namespace {

std::vector<float> normal(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(CountSketch, SameKeySameSketchOtherKeyOther) {
  const auto x = normal(5000, 1);
  EXPECT_EQ(count_sketch(x, 42, 256), count_sketch(x, 42, 256));
  EXPECT_NE(count_sketch(x, 42, 256), count_sketch(x, 43, 256));
}

TEST(CountSketch, OneBucketIsTheSignedSumAndSignsAreBalanced) {
  // With one bucket the sketch is Σ s_i x_i; on x = 1 it counts the signs.
  const std::vector<float> ones(20000, 1.0f);
  const auto s = count_sketch(ones, 7, 1);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_LT(std::abs(s[0]), 5 * std::sqrt(20000.0));  // a fair sign: |Σ s_i| ~ sqrt(n)
  EXPECT_EQ(std::fmod(std::abs(s[0]), 2.0f), 0.0f);   // n even: an even signed count
}

TEST(CountSketch, IsLinearAndPreservesTheNormOfASingleElement) {
  const auto a = normal(3000, 2), b = normal(3000, 3);
  std::vector<float> sum(a.size());
  for (size_t i = 0; i < a.size(); ++i) sum[i] = 2 * a[i] - b[i];
  const auto sa = count_sketch(a, 9, 512), sb = count_sketch(b, 9, 512), ss = count_sketch(sum, 9, 512);
  for (size_t j = 0; j < ss.size(); ++j) EXPECT_NEAR(ss[j], 2 * sa[j] - sb[j], 1e-3);
  std::vector<float> e(3000, 0.0f);
  e[1234] = -3.5f;
  const auto se = count_sketch(e, 9, 512);
  double norm2 = 0;
  for (float x : se) norm2 += double(x) * x;
  EXPECT_DOUBLE_EQ(norm2, 3.5 * 3.5);
}

TEST(CountSketch, CosineOfSketchesEstimatesTheCosine) {
  // b = a·c + noise·sqrt(1 − c²): cosine about c. Over 20 keys, the sketch's cosine stays within
  // a few times sqrt(2 / k) of the dense one.
  const size_t n = 200000;
  const uint32_t k = 4096;
  const auto a = normal(n, 4), z = normal(n, 5);
  for (double c : {1.0, 0.95, 0.5, 0.0, -1.0}) {
    std::vector<float> b(n);
    for (size_t i = 0; i < n; ++i)
      b[i] = static_cast<float>(c * a[i] + std::sqrt(std::max(0.0, 1 - c * c)) * z[i]);
    const double dense = cosine(a, b);
    for (uint64_t key = 0; key < 20; ++key) {
      const double est = cosine(count_sketch(a, key, k), count_sketch(b, key, k));
      EXPECT_NEAR(est, dense, 5 * std::sqrt(2.0 / k)) << "c " << c << " key " << key;
    }
  }
}

TEST(Cosine, ZeroVectors) {
  const std::vector<float> zero(10, 0.0f), one(10, 1.0f);
  EXPECT_EQ(cosine(zero, zero), 1.0);
  EXPECT_EQ(cosine(zero, one), 0.0);
  EXPECT_NEAR(cosine(one, one), 1.0, 1e-12);
}

}  // namespace
}  // namespace cohort::exchange
