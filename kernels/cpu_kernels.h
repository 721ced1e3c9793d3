// Internal to kernels/: the innermost CPU loops of quantization, one table per instruction set
// (scalar in quantize.cpp, AVX2 in quantize_avx2.cpp). Both tables produce identical bits.
#pragma once

#include <cstdint>

namespace cohort::kernels::detail {

struct CpuKernels {
  // max |x_i| over n floats; NaN if any x_i is NaN, else inf if any is inf.
  float (*amax)(const float* x, int64_t n);
  // q_i = e4m3(x_i / scale)
  void (*quantize)(const float* x, int64_t n, float scale, uint8_t* q);
  // x_i = e4m3_to_float(q_i) * scale
  void (*dequantize)(const uint8_t* q, int64_t n, float scale, float* x);
  // out_i = e4m3_to_float(e4m3(x_i / scale)) * scale   (out may equal x)
  void (*fake_quantize)(const float* x, int64_t n, float scale, float* out);
  // out_i = fake quantization of x_i with its own scale s_i (out may equal x)
  void (*fake_quantize_scales)(const float* x, int64_t n, const float* scales, float* out);
  // acc_i = max(acc_i, |x_i|) with the NaN rule of amax
  void (*amax_accumulate)(const float* x, int64_t n, float* acc);
};

const CpuKernels& scalar_kernels();
const CpuKernels* avx2_kernels();  // nullptr when not compiled in
const CpuKernels& active_kernels();

// |x| as an ordered integer: NaN > inf > finite, so max over these bits is an amax that keeps
// NaN and inf (a float max would drop a NaN depending on operand order).
inline uint32_t abs_bits(uint32_t u) { return u & 0x7FFFFFFFu; }

}  // namespace cohort::kernels::detail
