// GEMMs on FP8 (E4M3) operands with FP8 scaling as in DeepSeek-V3, CPU side: the FP32 baseline,
// the numerically faithful FP8 emulation (quantize -> dequantize -> FP32 GEMM, FP32
// accumulation) and a reference from already-quantized operands (what the CUDA GEMM must match).
// All use the forward layout of a linear layer, Y[m x n] = X[m x k] . W[n x k]^T, row-major.
//
//   gemm_e4m3_emulated_xwt(x, w, m, n, k, y);   // X per 1x128 tile along k, W per 128x128 block
//
// The CUDA path (cuBLASLt) is in fp8_cuda.h.
#pragma once

#include <cstdint>

namespace cohort::kernels {

// FP32 GEMM (OpenBLAS cblas_sgemm), the baseline the FP8 paths are measured against.
void gemm_f32_xwt(const float* x, const float* w, int64_t m, int64_t n, int64_t k, float* y);

// FP8 emulation from FP32 operands: fake_quantize_e4m3_tile128(X), fake_quantize_e4m3_block128(W),
// then gemm_f32_xwt. Error bound (tested): |Y - X W^T| <= ((1 + u)^2 - 1) |X| |W|^T elementwise,
// u = 2^-4 the E4M3 relative rounding bound, plus subnormal and FP32 accumulation terms.
void gemm_e4m3_emulated_xwt(const float* x, const float* w, int64_t m, int64_t n, int64_t k,
                            float* y);

// The same product from quantized operands in the layouts of quantize.h: xq/x_scales from
// quantize_e4m3_tile128(X [m x k]), wq/w_scales from quantize_e4m3_block128(W [n x k]).
void gemm_e4m3_reference_xwt(const uint8_t* xq, const float* x_scales, const uint8_t* wq,
                             const float* w_scales, int64_t m, int64_t n, int64_t k, float* y);

}  // namespace cohort::kernels
