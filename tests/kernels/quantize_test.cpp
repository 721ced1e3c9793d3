// Fine-grained quantization: error per element within the E4M3 rounding bound times the tile
// scale (a property of the format), scale rule and layout, ragged sizes, non-finite tiles,
// fake quantization equal to quantize+dequantize, and the SIMD path equal to the scalar one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/fp8.h"
#include "kernels/quantize.h"

namespace cohort::kernels {
namespace {

// Values spanning many binades, so tiles mix large and tiny entries (exercising the subnormal
// branch after scaling) and signs.
std::vector<float> wide_random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> expo(-12.0f, 6.0f);
  std::bernoulli_distribution neg(0.5), zero(0.02);
  std::vector<float> v(n);
  for (auto& x : v) x = zero(rng) ? 0.0f : (neg(rng) ? -1.0f : 1.0f) * std::exp2(expo(rng));
  return v;
}

// |x - x^| bound for one element quantized with scale s (see quantize.h): the E4M3 rounding
// bound max(2^-4 |x|, 2^-10 s), with slack for the FP32 division by s (rel. 2^-24) and the
// multiplication by s (rel. 2^-24).
double element_bound(double x, double s) {
  return std::max(kE4M3RelativeBound * std::fabs(x), kE4M3SubnormalBound * s) * (1 + 0x1p-20) +
         0x1p-21 * std::fabs(x);
}

float reference_amax(const float* x, int64_t n, int64_t stride = 1) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i * stride]));
  return m;
}

struct Shape {
  int64_t rows, cols;
};
const Shape kShapes[] = {{1, 1}, {3, 128}, {7, 300}, {130, 129}, {2, 1000}, {64, 256}, {3, 4500}};

TEST(Quantize, TileErrorWithinE4M3BoundTimesTileScale) {
  for (auto [rows, cols] : kShapes) {
    const auto x = wide_random(rows * cols, 7 + rows);
    std::vector<uint8_t> q(x.size());
    std::vector<float> s(tile128_scale_count(rows, cols)), y(x.size());
    quantize_e4m3_tile128(x.data(), rows, cols, q.data(), s.data());
    dequantize_e4m3_tile128(q.data(), s.data(), rows, cols, y.data());
    double worst_rel = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < tile128_count_per_row(cols); ++t) {
        const int64_t c0 = t * 128, n = std::min<int64_t>(128, cols - c0);
        const float scale = s[tile128_scale_index(r, t, rows)];
        // Scale rule, computed here independently of the kernels.
        const float amax = reference_amax(&x[r * cols + c0], n);
        ASSERT_EQ(scale, std::max(amax / 448.0f, std::ldexp(1.0f, -126)))
            << "row " << r << " tile " << t << " of " << rows << "x" << cols;
        for (int64_t c = c0; c < c0 + n; ++c) {
          const double xi = x[r * cols + c], err = std::fabs(xi - y[r * cols + c]);
          ASSERT_LE(err, element_bound(xi, scale)) << "(" << r << "," << c << ") x=" << xi;
          if (std::fabs(xi) == amax && amax > 0) {  // the amax element lands on +-448
            EXPECT_EQ(q[r * cols + c] & 0x7F, 0x7E);
          }
          if (std::fabs(xi) > 16 * scale) worst_rel = std::max(worst_rel, err / std::fabs(xi));
        }
      }
    }
    // The bound is reached up to a small factor: quantization really happened at 3 bits.
    if (rows * cols >= 1000) {
      EXPECT_GT(worst_rel, 0.03) << rows << "x" << cols;
    }
  }
}

TEST(Quantize, BlockErrorWithinE4M3BoundTimesBlockScale) {
  for (auto [rows, cols] : kShapes) {
    const auto w = wide_random(rows * cols, 99 + cols);
    std::vector<uint8_t> q(w.size());
    std::vector<float> s(block128_scale_count(rows, cols), -1.0f), y(w.size());
    quantize_e4m3_block128(w.data(), rows, cols, q.data(), s.data());
    dequantize_e4m3_block128(q.data(), s.data(), rows, cols, y.data());
    const int64_t br = ceil_div(rows, 128), bc = ceil_div(cols, 128);
    for (int64_t i = 0; i < br; ++i) {
      for (int64_t j = 0; j < block128_scale_ld(cols); ++j) {
        const float scale = s[i * block128_scale_ld(cols) + j];
        if (j >= bc) {
          EXPECT_EQ(scale, 1.0f) << "padding entry";
          continue;
        }
        const int64_t r1 = std::min(rows, i * 128 + 128), c1 = std::min(cols, j * 128 + 128);
        float amax = 0;
        for (int64_t r = i * 128; r < r1; ++r) {
          amax = std::max(amax, reference_amax(&w[r * cols + j * 128], c1 - j * 128));
        }
        ASSERT_EQ(scale, std::max(amax / 448.0f, std::ldexp(1.0f, -126)));
        for (int64_t r = i * 128; r < r1; ++r) {
          for (int64_t c = j * 128; c < c1; ++c) {
            ASSERT_LE(std::fabs(w[r * cols + c] - y[r * cols + c]),
                      element_bound(w[r * cols + c], scale))
                << "(" << r << "," << c << ") of " << rows << "x" << cols;
          }
        }
      }
    }
  }
}

TEST(Quantize, ZeroTileHasMinimalScaleAndZeroCodes) {
  std::vector<float> x(256, 0.0f), y(256, 1.0f), s(2);
  std::vector<uint8_t> q(256, 0xAA);
  quantize_e4m3_tile128(x.data(), 1, 256, q.data(), s.data());
  dequantize_e4m3_tile128(q.data(), s.data(), 1, 256, y.data());
  EXPECT_EQ(s[0], std::ldexp(1.0f, -126));
  for (int i = 0; i < 256; ++i) {
    EXPECT_EQ(q[i], 0);
    EXPECT_EQ(y[i], 0.0f);
  }
}

TEST(Quantize, NonFiniteTileDequantizesToNaNAndLeavesOtherTilesExact) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto x = wide_random(2 * 256, 3);
    x[130] = bad;  // row 0, tile 1
    std::vector<float> y(x.size());
    fake_quantize_e4m3_tile128(x.data(), 2, 256, y.data());
    for (int64_t i = 0; i < 512; ++i) {
      const bool in_bad_tile = i >= 128 && i < 256;
      EXPECT_EQ(std::isnan(y[i]), in_bad_tile) << "element " << i;
    }
  }
}

TEST(Quantize, FakeQuantizeEqualsQuantizeThenDequantize) {
  for (auto [rows, cols] : kShapes) {
    const auto x = wide_random(rows * cols, 11);
    std::vector<uint8_t> q(x.size());
    std::vector<float> st(tile128_scale_count(rows, cols)), sb(block128_scale_count(rows, cols));
    std::vector<float> two_step(x.size()), fused(x.size());
    quantize_e4m3_tile128(x.data(), rows, cols, q.data(), st.data());
    dequantize_e4m3_tile128(q.data(), st.data(), rows, cols, two_step.data());
    fake_quantize_e4m3_tile128(x.data(), rows, cols, fused.data());
    EXPECT_EQ(0, std::memcmp(two_step.data(), fused.data(), 4 * x.size())) << rows << "x" << cols;

    quantize_e4m3_block128(x.data(), rows, cols, q.data(), sb.data());
    dequantize_e4m3_block128(q.data(), sb.data(), rows, cols, two_step.data());
    auto in_place = x;
    fake_quantize_e4m3_block128(in_place.data(), rows, cols, in_place.data());
    EXPECT_EQ(0, std::memcmp(two_step.data(), in_place.data(), 4 * x.size())) << rows << "x" << cols;
  }
}

TEST(Quantize, ColumnTilesEqualRowTilesOfTheTranspose) {
  for (auto [rows, cols] : kShapes) {
    const auto x = wide_random(rows * cols, 5);
    std::vector<float> xt(x.size()), yt(x.size()), y(x.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) xt[c * rows + r] = x[r * cols + c];
    fake_quantize_e4m3_tile128(xt.data(), cols, rows, yt.data());
    fake_quantize_e4m3_tile128_cols(x.data(), rows, cols, y.data());
    size_t bad = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) bad += y[r * cols + c] != yt[c * rows + r];
    EXPECT_EQ(bad, 0u) << rows << "x" << cols;
  }
}

TEST(Quantize, Avx2PathMatchesScalarPathBitForBit) {
  if (!cpu_isa_supported(CpuIsa::avx2)) GTEST_SKIP() << "this CPU or build has no AVX2 path";
  const CpuIsa saved = active_cpu_isa();
  const int64_t rows = 67, cols = 1000;  // big enough for the threaded split, ragged tiles
  auto x = wide_random(rows * cols, 21);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  x[3000] = -std::numeric_limits<float>::infinity();
  x[4000] = std::ldexp(1.0f, -140);  // float subnormal
  struct Out {
    std::vector<uint8_t> qt, qb;
    std::vector<float> st, sb, dt, db, ft, fb, fc;
  };
  auto run = [&](CpuIsa isa) {
    set_cpu_isa(isa);
    Out o{std::vector<uint8_t>(x.size()), std::vector<uint8_t>(x.size()),
          std::vector<float>(tile128_scale_count(rows, cols)),
          std::vector<float>(block128_scale_count(rows, cols)), std::vector<float>(x.size()),
          std::vector<float>(x.size()), std::vector<float>(x.size()), std::vector<float>(x.size()),
          std::vector<float>(x.size())};
    quantize_e4m3_tile128(x.data(), rows, cols, o.qt.data(), o.st.data());
    quantize_e4m3_block128(x.data(), rows, cols, o.qb.data(), o.sb.data());
    dequantize_e4m3_tile128(o.qt.data(), o.st.data(), rows, cols, o.dt.data());
    dequantize_e4m3_block128(o.qb.data(), o.sb.data(), rows, cols, o.db.data());
    fake_quantize_e4m3_tile128(x.data(), rows, cols, o.ft.data());
    fake_quantize_e4m3_block128(x.data(), rows, cols, o.fb.data());
    fake_quantize_e4m3_tile128_cols(x.data(), rows, cols, o.fc.data());
    return o;
  };
  const Out a = run(CpuIsa::scalar), b = run(CpuIsa::avx2);
  set_cpu_isa(saved);
  auto same = [](const auto& u, const auto& v) {
    return u.size() == v.size() && std::memcmp(u.data(), v.data(), u.size() * sizeof(u[0])) == 0;
  };
  EXPECT_TRUE(same(a.qt, b.qt));
  EXPECT_TRUE(same(a.qb, b.qb));
  EXPECT_TRUE(same(a.st, b.st));
  EXPECT_TRUE(same(a.sb, b.sb));
  EXPECT_TRUE(same(a.dt, b.dt));
  EXPECT_TRUE(same(a.db, b.db));
  EXPECT_TRUE(same(a.ft, b.ft));
  EXPECT_TRUE(same(a.fb, b.fb));
  EXPECT_TRUE(same(a.fc, b.fc));
}

}  // namespace
}  // namespace cohort::kernels
