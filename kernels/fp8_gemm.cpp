// CPU FP8 GEMM emulation: quantization from quantize.h, FP32 GEMM from OpenBLAS.
#include "kernels/fp8_gemm.h"

#include <cblas.h>

#include <algorithm>

#include <memory>

#include "common/check.h"
#include "kernels/quantize.h"

namespace cohort::kernels {

void gemm_f32_xwt(const float* x, const float* w, int64_t m, int64_t n, int64_t k, float* y) {
  COHORT_CHECK(m >= 0 && n >= 0 && k >= 0, "negative GEMM shape");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(y, y + m * n, 0.0f);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, x, static_cast<blasint>(k),
              w, static_cast<blasint>(k), 0.0f, y, static_cast<blasint>(n));
}

namespace {

// Per-thread scratch for the dequantized operands, reused across calls: allocating and
// zero-filling fresh buffers (page faults included) would cost as much as the quantization.
float* scratch(size_t floats) {
  thread_local std::unique_ptr<float[]> buf;
  thread_local size_t cap = 0;
  if (floats > cap) {
    buf.reset(new float[floats]);
    cap = floats;
  }
  return buf.get();
}

}  // namespace

void gemm_e4m3_emulated_xwt(const float* x, const float* w, int64_t m, int64_t n, int64_t k,
                            float* y) {
  float* xq = scratch(static_cast<size_t>(m * k + n * k));
  float* wq = xq + m * k;
  fake_quantize_e4m3_tile128(x, m, k, xq);
  fake_quantize_e4m3_block128(w, n, k, wq);
  gemm_f32_xwt(xq, wq, m, n, k, y);
}

void gemm_e4m3_reference_xwt(const uint8_t* xq, const float* x_scales, const uint8_t* wq,
                             const float* w_scales, int64_t m, int64_t n, int64_t k, float* y) {
  float* xd = scratch(static_cast<size_t>(m * k + n * k));
  float* wd = xd + m * k;
  dequantize_e4m3_tile128(xq, x_scales, m, k, xd);
  dequantize_e4m3_block128(wq, w_scales, n, k, wd);
  gemm_f32_xwt(xd, wd, m, n, k, y);
}

}  // namespace cohort::kernels
