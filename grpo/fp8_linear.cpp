#include "grpo/fp8_linear.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/torch.h>

#include <string>

#include "common/check.h"
#include "kernels/fp8_cuda.h"
#include "kernels/quantize.h"

namespace cohort::grpo {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// How an operand is tiled for quantization: along rows (1x128, the reduction runs along each
// row), along columns (128x1, the reduction runs down the columns), or in 128x128 blocks.
enum class Tiling { rows, cols, blocks };

// Device path: kernels' CUDA quantize + dequantize on the tensor's storage, on the tensor's
// GPU (the guard makes it current: kernels launch on the current device). Streams: the kernels
// run on the legacy default stream (nullptr), which is LibTorch's default stream too; a caller
// that made another stream current would race with them, so that is refused.
Tensor fake_quantize_cuda(const Tensor& t, Tiling tiling) {
  namespace kc = kernels::cuda;
  const c10::DeviceGuard guard(t.device());
  if (c10::impl::VirtualGuardImpl(t.device().type()).getStream(t.device()).id() != 0)
    throw Error(
        "fp8_linear: the FP8 CUDA kernels run on the default stream; a non-default "
        "current CUDA stream is not supported");
  // Column tiles of t are row tiles of tᵀ: quantize the contiguous transpose, hand back a view.
  const Tensor src = (tiling == Tiling::cols ? t.t() : t).contiguous();
  const int64_t rows = src.size(0), cols = src.size(1);
  const bool blocks = tiling == Tiling::blocks;
  auto q = at::empty({rows, cols}, src.options().dtype(at::kByte));
  auto s = at::empty({blocks ? kernels::block128_scale_count(rows, cols)
                             : kernels::tile128_scale_count(rows, cols)},
                     src.options());
  auto out = at::empty_like(src);
  const float* x = src.data_ptr<float>();
  if (blocks) {
    kc::quantize_e4m3_block128(x, rows, cols, q.data_ptr<uint8_t>(), s.data_ptr<float>());
    kc::dequantize_e4m3_block128(q.data_ptr<uint8_t>(), s.data_ptr<float>(), rows, cols,
                                 out.data_ptr<float>());
  } else {
    kc::quantize_e4m3_tile128(x, rows, cols, q.data_ptr<uint8_t>(), s.data_ptr<float>());
    kc::dequantize_e4m3_tile128(q.data_ptr<uint8_t>(), s.data_ptr<float>(), rows, cols,
                                out.data_ptr<float>());
  }
  return tiling == Tiling::cols ? out.t() : out;
}

// Quantize -> dequantize a 2-D float tensor with E4M3 and the given tiling; returns FP32.
Tensor fake_quantize(const Tensor& t, Tiling tiling) {
  if (t.is_cuda()) {
    if (kernels::select_fp8_backend() == kernels::Fp8Backend::cuda)
      return fake_quantize_cuda(t, tiling);
    // No capable device (or a CPU-only kernels build): the CPU emulation gives the same bits.
    return fake_quantize(t.cpu(), tiling).to(t.device());
  }
  const Tensor src = t.contiguous();
  const int64_t rows = src.size(0), cols = src.size(1);
  auto out = at::empty_like(src);
  const float* x = src.data_ptr<float>();
  float* y = out.data_ptr<float>();
  switch (tiling) {
    case Tiling::rows: kernels::fake_quantize_e4m3_tile128(x, rows, cols, y); break;
    case Tiling::cols: kernels::fake_quantize_e4m3_tile128_cols(x, rows, cols, y); break;
    case Tiling::blocks: kernels::fake_quantize_e4m3_block128(x, rows, cols, y); break;
  }
  return out;
}

// x2: [M, K], w: [N, K] -> [M, N]
Tensor forward_2d(const Tensor& x2, const Tensor& w, const Tensor& b) {
  auto y = at::mm(fake_quantize(x2, Tiling::rows), fake_quantize(w, Tiling::blocks).t());
  if (b.defined()) y.add_(b);  // the bias is not a GEMM operand: FP32
  return y;
}

struct FP8LinearFunction : public torch::autograd::Function<FP8LinearFunction> {
  // The bias is optional rather than an undefined tensor: autograd's custom functions take an
  // absent optional as a non-differentiable input but reject an undefined tensor.
  static Tensor forward(AutogradContext* ctx, const Tensor& x2, const Tensor& w,
                        const c10::optional<Tensor>& b) {
    // The FP32 operands are saved, not their quantized copies: the weight gradient needs X
    // tiled along M, not along K, and W's blocks are cheap to recompute (same bits).
    ctx->save_for_backward({x2, w});
    ctx->saved_data["has_bias"] = b.has_value();
    return forward_2d(x2, w, b.has_value() ? *b : Tensor());
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& x2 = saved[0];
    const Tensor& w = saved[1];
    const Tensor dy = grads[0].contiguous();  // [M, N]
    Tensor dx, dw, db;
    if (ctx->needs_input_grad(0))  // reduction over N: dY along its rows, W in its blocks
      dx = at::mm(fake_quantize(dy, Tiling::rows), fake_quantize(w, Tiling::blocks));
    if (ctx->needs_input_grad(1))  // reduction over tokens M: both operands tiled down columns
      dw = at::mm(fake_quantize(dy, Tiling::cols).t(), fake_quantize(x2, Tiling::cols));
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) db = dy.sum(0);
    return {dx, dw, db};
  }
};

void check_operands(const Tensor& x, const Tensor& w, const Tensor& b) {
  auto shape = [](const Tensor& t) { return t.defined() ? t.sizes().vec() : std::vector<int64_t>{}; };
  auto str = [&](const Tensor& t) {
    std::string s = "[";
    for (int64_t d : shape(t)) s += (s.size() > 1 ? ", " : "") + std::to_string(d);
    return s + "]";
  };
  if (x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat ||
      (b.defined() && b.scalar_type() != at::kFloat))
    throw Error("fp8_linear: operands must be float32");
  if (x.dim() < 1 || w.dim() != 2 || x.size(-1) != w.size(1) ||
      (b.defined() && (b.dim() != 1 || b.size(0) != w.size(0))))
    throw Error("fp8_linear: shapes do not match: x " + str(x) + ", w " + str(w) + ", b " +
                str(b) + " (expected x [..., K], w [N, K], b [N])");
}

}  // namespace

Tensor fp8_linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_operands(x, w, b);
  const int64_t k = w.size(1), n = w.size(0);
  auto out_shape = x.sizes().vec();
  out_shape.back() = n;
  const Tensor x2 = x.reshape({-1, k});
  const bool needs_graph =
      at::GradMode::is_enabled() &&
      (x.requires_grad() || w.requires_grad() || (b.defined() && b.requires_grad()));
  Tensor y = needs_graph ? FP8LinearFunction::apply(x2, w, b.defined() ? c10::optional<Tensor>(b) : c10::nullopt) : forward_2d(x2, w, b);
  return y.view(out_shape);
}

}  // namespace cohort::grpo
