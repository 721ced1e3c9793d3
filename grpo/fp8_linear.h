// FP8Linear: the block projections' linear layer with FP8 (E4M3) operands in all three GEMMs,
// as in DeepSeek-V3. Model::linear uses it for Precision::fp8; embeddings, norms, attention and
// the output head stay in FP32 (grpo/model.h).
//
//   at::Tensor y = fp8_linear(x, w, b);   // x [..., K], w [N, K], b [N] or undefined -> [..., N]
//   y.backward(dy);                       // dX, dW in FP8 as well, db in FP32
//
// Scaling (kernels/quantize.h), always along each GEMM's reduction dimension:
//   forward  Y  = X · Wᵀ + b   X per 1x128 tile along K,   W per 128x128 block
//   backward dX = dY · W       dY per 1x128 tile along N,  W per 128x128 block (the same blocks)
//   backward dW = dYᵀ · X      dY and X per 128x1 tile along the tokens M
// All accumulation is FP32; db = Σ_tokens dY is an FP32 reduction, not a GEMM.
// CPU: quantize -> dequantize (kernels' fake_quantize_*) -> FP32 GEMM, a numerically faithful
// emulation of the FP8 GEMM with FP32 accumulation. CUDA tensors: the same emulation with
// kernels' device quantization kernels when the FP8 CUDA backend is available, else through
// the CPU. Sizes need not be multiples of 128 (ragged tiles). Under no-grad or inference mode
// only the forward runs and nothing is saved.
#pragma once

#include <ATen/Tensor.h>

namespace cohort::grpo {

// y = x·wᵀ + b on E4M3-quantized operands (see above). x: float [..., K]; w: float [N, K];
// b: float [N] or undefined. Throws cohort::Error on mismatched shapes or non-float input.
// Signature matches grpo::LinearFn; Model uses it for Precision::fp8.
at::Tensor fp8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

}  // namespace cohort::grpo
