// The CUDA path against the CPU path: the device conversion against the hardware instruction on
// all 2^32 inputs, quantize/dequantize kernels bit for bit against the CPU, and the cuBLASLt
// block-scaled GEMM against the CPU reference from the same quantized operands. Each test skips
// with the reason where no capable GPU is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/check.h"
#include "kernels/fp8_cuda.h"
#include "kernels/fp8_gemm.h"
#include "kernels/quantize.h"

namespace cohort::kernels {
namespace {

#define REQUIRE_FP8_DEVICE()                                                          \
  do {                                                                                \
    if (!fp8_device().available) GTEST_SKIP() << "no FP8 GPU: " << fp8_device().reason; \
  } while (0)

template <class T>
struct DeviceBuffer {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
  }
  DeviceBuffer(const std::vector<T>& h) : DeviceBuffer(h.size()) {
    EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(p); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

std::vector<float> wide_random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> expo(-12.0f, 6.0f);
  std::bernoulli_distribution neg(0.5);
  std::vector<float> v(n);
  for (auto& x : v) x = (neg(rng) ? -1.0f : 1.0f) * std::exp2(expo(rng));
  return v;
}

TEST(Fp8Cuda, BackendIsCpuExactlyWhenNoCapableDevice) {
  EXPECT_EQ(select_fp8_backend() == Fp8Backend::cuda, fp8_device().available);
  if (!fp8_device().available) {
    EXPECT_FALSE(fp8_device().reason.empty());
  }
}

TEST(Fp8Cuda, GemmRefusesUnalignedShapesWithAClearError) {
  // Argument checks come before any device work, so this runs everywhere.
  try {
    cuda::gemm_e4m3_xwt(nullptr, nullptr, nullptr, nullptr, 4, 16, 100, nullptr, GemmOutput::f32);
    FAIL() << "k = 100 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 16"), std::string::npos) << e.what();
  }
}

TEST(Fp8Cuda, DeviceConversionMatchesHardwareOnAll2To32Inputs) {
  REQUIRE_FP8_DEVICE();
  EXPECT_EQ(cuda::count_e4m3_mismatches_vs_hardware(0, uint64_t{1} << 32), 0u);
}

TEST(Fp8Cuda, TileQuantizeMatchesCpuBitForBit) {
  REQUIRE_FP8_DEVICE();
  // cols 512: 16-byte path; 300 and 129: scalar path with ragged tiles.
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{33, 512}, {7, 300}, {130, 129}}) {
    auto x = wide_random(rows * cols, 1);
    x[3] = std::numeric_limits<float>::quiet_NaN();
    std::vector<uint8_t> q(x.size());
    std::vector<float> s(tile128_scale_count(rows, cols)), d(x.size());
    quantize_e4m3_tile128(x.data(), rows, cols, q.data(), s.data());
    dequantize_e4m3_tile128(q.data(), s.data(), rows, cols, d.data());
    DeviceBuffer<float> dx(x), ds(s.size()), dd(x.size());
    DeviceBuffer<uint8_t> dq(x.size());
    cuda::quantize_e4m3_tile128(dx.p, rows, cols, dq.p, ds.p);
    cuda::dequantize_e4m3_tile128(dq.p, ds.p, rows, cols, dd.p);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(dq.host(), q) << rows << "x" << cols;
    const auto hs = ds.host(), hd = dd.host();
    EXPECT_EQ(0, std::memcmp(hs.data(), s.data(), 4 * s.size())) << rows << "x" << cols;
    EXPECT_EQ(0, std::memcmp(hd.data(), d.data(), 4 * d.size())) << rows << "x" << cols;
  }
}

TEST(Fp8Cuda, BlockQuantizeMatchesCpuBitForBit) {
  REQUIRE_FP8_DEVICE();
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{256, 384}, {200, 300}, {5, 129}}) {
    const auto w = wide_random(rows * cols, 2);
    std::vector<uint8_t> q(w.size());
    std::vector<float> s(block128_scale_count(rows, cols)), d(w.size());
    quantize_e4m3_block128(w.data(), rows, cols, q.data(), s.data());
    dequantize_e4m3_block128(q.data(), s.data(), rows, cols, d.data());
    DeviceBuffer<float> dw(w), ds(s.size()), dd(w.size());
    DeviceBuffer<uint8_t> dq(w.size());
    cuda::quantize_e4m3_block128(dw.p, rows, cols, dq.p, ds.p);
    cuda::dequantize_e4m3_block128(dq.p, ds.p, rows, cols, dd.p);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(dq.host(), q) << rows << "x" << cols;
    const auto hs = ds.host(), hd = dd.host();
    EXPECT_EQ(0, std::memcmp(hs.data(), s.data(), 4 * s.size())) << rows << "x" << cols;
    EXPECT_EQ(0, std::memcmp(hd.data(), d.data(), 4 * d.size())) << rows << "x" << cols;
  }
}

// cuBLASLt against gemm_e4m3_reference_xwt on the same quantized operands: only the summation
// order differs, so |Y_gpu - Y_cpu| <= 2 gamma_k sum |x^||w^| (+ BF16 output rounding 2^-8 |Y|).
TEST(Fp8Cuda, CublasLtBlockScaledGemmMatchesCpuReference) {
  REQUIRE_FP8_DEVICE();
  if (!fp8_device().block_scaled_gemm) {
    GTEST_SKIP() << fp8_device().name << ": cuBLASLt block-scaled FP8 GEMM needs sm_90";
  }
  const int64_t m = 200, n = 384, k = 640;  // ragged m; (k / 128) % 4 != 0 exercises the padded ld
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(m * k), w(n * k);
  for (auto& v : x) v = nd(rng);
  for (auto& v : w) v = 0.05f * nd(rng);
  std::vector<uint8_t> qx(x.size()), qw(w.size());
  std::vector<float> sx(tile128_scale_count(m, k)), sw(block128_scale_count(n, k));
  quantize_e4m3_tile128(x.data(), m, k, qx.data(), sx.data());
  quantize_e4m3_block128(w.data(), n, k, qw.data(), sw.data());
  std::vector<float> ref(m * n), xd(x.size()), wd(w.size());
  gemm_e4m3_reference_xwt(qx.data(), sx.data(), qw.data(), sw.data(), m, n, k, ref.data());
  dequantize_e4m3_tile128(qx.data(), sx.data(), m, k, xd.data());
  dequantize_e4m3_block128(qw.data(), sw.data(), n, k, wd.data());

  DeviceBuffer<uint8_t> dqx(qx), dqw(qw);
  DeviceBuffer<float> dsx(sx), dsw(sw), dy(m * n);
  DeviceBuffer<uint16_t> dyb(m * n);
  cuda::gemm_e4m3_xwt(dqx.p, dsx.p, dqw.p, dsw.p, m, n, k, dy.p, GemmOutput::f32);
  cuda::gemm_e4m3_xwt(dqx.p, dsx.p, dqw.p, dsw.p, m, n, k, dyb.p, GemmOutput::bf16);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto y = dy.host();
  const auto yb = dyb.host();
  const double gamma = k * 0x1p-24 / (1 - k * 0x1p-24);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double mag = 0;
      for (int64_t p = 0; p < k; ++p) mag += std::fabs(double(xd[i * k + p]) * wd[j * k + p]);
      const double r = ref[i * n + j];
      ASSERT_LE(std::fabs(y[i * n + j] - r), 2 * gamma * mag) << "f32 (" << i << "," << j << ")";
      const uint32_t bits = uint32_t{yb[i * n + j]} << 16;
      float vb;
      std::memcpy(&vb, &bits, 4);
      ASSERT_LE(std::fabs(vb - r), 2 * gamma * mag + 0x1p-8 * std::fabs(r)) << "bf16 (" << i << "," << j << ")";
    }
  }
}

}  // namespace
}  // namespace cohort::kernels
