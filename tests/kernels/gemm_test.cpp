// CPU FP8 GEMM emulation against an FP64 product of the unquantized operands, within a bound
// derived from the E4M3 rounding bound and the FP32 accumulation error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/fp8.h"
#include "kernels/fp8_gemm.h"
#include "kernels/quantize.h"

namespace cohort::kernels {
namespace {

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct GemmShape {
  int64_t m, n, k;
};

TEST(Fp8Gemm, EmulatedGemmWithinFormatBoundOfExactProduct) {
  for (auto [m, n, k] : {GemmShape{5, 130, 200}, GemmShape{64, 96, 384}, GemmShape{1, 1, 1}}) {
    auto x = gaussian(m * k, 1, 1.0f), w = gaussian(n * k, 2, 0.02f);
    x[0] = 40.0f;  // an outlier: its tile's small entries fall into E4M3's subnormal range
    std::vector<float> y(m * n), y32(m * n);
    gemm_e4m3_emulated_xwt(x.data(), w.data(), m, n, k, y.data());
    gemm_f32_xwt(x.data(), w.data(), m, n, k, y32.data());

    // Per-element operand bounds |x - x^| <= u|x| + a_x with u = 2^-4 and a_x = 2^-10 s_x
    // (plus the FP32 slack of quantize.h), same for w; then
    // |x^ w^ - x w| <= (u|x| + a_x)((1+u)|w| + a_w) + |x|(u|w| + a_w), summed over k, plus the
    // FP32 accumulation bound gamma_k sum |x^||w^| with gamma_k = k 2^-24 / (1 - k 2^-24).
    const double u = kE4M3RelativeBound * (1 + 0x1p-20) + 0x1p-21;
    std::vector<float> sx(tile128_scale_count(m, k)), sw(block128_scale_count(n, k));
    std::vector<uint8_t> qx(m * k), qw(n * k);
    quantize_e4m3_tile128(x.data(), m, k, qx.data(), sx.data());
    quantize_e4m3_block128(w.data(), n, k, qw.data(), sw.data());
    const double gamma = k * 0x1p-24 / (1 - k * 0x1p-24);
    double max_err = 0;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double exact = 0, bound = 0, mag = 0;
        for (int64_t p = 0; p < k; ++p) {
          const double xv = x[i * k + p], wv = w[j * k + p];
          const double ax = kE4M3SubnormalBound * sx[tile128_scale_index(i, p / 128, m)] * (1 + 0x1p-20);
          const double aw = kE4M3SubnormalBound * sw[block128_scale_index(j / 128, p / 128, k)] * (1 + 0x1p-20);
          exact += xv * wv;
          bound += (u * std::fabs(xv) + ax) * ((1 + u) * std::fabs(wv) + aw) +
                   std::fabs(xv) * (u * std::fabs(wv) + aw);
          mag += (std::fabs(xv) * (1 + u) + ax) * (std::fabs(wv) * (1 + u) + aw);
        }
        const double err = std::fabs(y[i * n + j] - exact);
        ASSERT_LE(err, bound + gamma * mag) << "(" << i << "," << j << ") of " << m << "x" << n << "x" << k;
        max_err = std::max(max_err, std::fabs(double(y[i * n + j]) - y32[i * n + j]));
      }
    }
    if (k > 1) {
      EXPECT_GT(max_err, 0.0) << "the emulation must differ from FP32 (it quantizes)";
    }
  }
}

TEST(Fp8Gemm, ReferenceFromQuantizedOperandsEqualsEmulation) {
  const int64_t m = 33, n = 257, k = 300;
  const auto x = gaussian(m * k, 3, 1.0f), w = gaussian(n * k, 4, 0.05f);
  std::vector<float> sx(tile128_scale_count(m, k)), sw(block128_scale_count(n, k));
  std::vector<uint8_t> qx(m * k), qw(n * k);
  quantize_e4m3_tile128(x.data(), m, k, qx.data(), sx.data());
  quantize_e4m3_block128(w.data(), n, k, qw.data(), sw.data());
  std::vector<float> a(m * n), b(m * n);
  gemm_e4m3_reference_xwt(qx.data(), sx.data(), qw.data(), sw.data(), m, n, k, a.data());
  gemm_e4m3_emulated_xwt(x.data(), w.data(), m, n, k, b.data());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), 4 * a.size()));
}

TEST(Fp8Gemm, F32GemmMatchesDoubleProduct) {
  const int64_t m = 7, n = 9, k = 130;
  const auto x = gaussian(m * k, 5, 1.0f), w = gaussian(n * k, 6, 1.0f);
  std::vector<float> y(m * n);
  gemm_f32_xwt(x.data(), w.data(), m, n, k, y.data());
  const double gamma = k * 0x1p-24 / (1 - k * 0x1p-24);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double exact = 0, mag = 0;
      for (int64_t p = 0; p < k; ++p) {
        exact += double(x[i * k + p]) * w[j * k + p];
        mag += std::fabs(double(x[i * k + p]) * w[j * k + p]);
      }
      ASSERT_LE(std::fabs(y[i * n + j] - exact), gamma * mag);
    }
}

}  // namespace
}  // namespace cohort::kernels
