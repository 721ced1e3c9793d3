// How a gradient sum travels in a GradientUpdate, shared by the node (encode) and the
// coordinator (decode): one EncodedTensor per parameter, in the model's Hugging Face order,
// F32 values RAW, FP8 E4M3 blocks (kernels/grad_codec.h without its 16-byte header, which the
// receiver rebuilds from the tensor's own fields) or sparse top-k (exchange/topk_codec.h);
// docs/PROTOCOL.md, "Tensors".
//
//   ParamLayout layout(model);                       // offsets of each parameter in a flat buffer
//   GradientEncoder enc(layout, wire::CODEC_FP8_E4M3_BLOCK);
//   enc.encode(flat_grad, *update.mutable_tensors());
//   if (std::optional<Refusal> r = decode_gradient(update, layout, out)) ...  // a bad tensor
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "exchange/param_layout.h"
#include "exchange/refusal.h"
#include "kernels/grad_codec.h"
#include "protocol/messages.pb.h"

namespace cohort::grpo {
class Model;
}

namespace cohort::exchange {

// Copies every parameter's .grad (zeros where undefined) into `out` (size layout.total).
// With `release`, each parameter's gradient is dropped once copied, so the model's gradients and
// their flat copy are never both whole in memory.
void flatten_grads(const grpo::Model& model, const ParamLayout& layout, std::span<float> out,
                   bool release = false);

class GradientEncoder {
 public:
  GradientEncoder(const ParamLayout& layout, wire::Codec codec);
  // Appends one EncodedTensor per parameter. FP8 carries each tensor's quantization residual
  // into the next call (error feedback); top-k is a pure function of `flat` (its audit recomputes
  // it, exchange/topk_codec.h). Throws cohort::Error on NaN/Inf.
  void encode(std::span<const float> flat,
              google::protobuf::RepeatedPtrField<wire::EncodedTensor>& out);
  [[nodiscard]] wire::Codec codec() const { return codec_; }

 private:
  const ParamLayout& layout_;
  wire::Codec codec_;
  std::vector<kernels::Fp8GradEncoder> fp8_;
};

// What a receiver decodes when `flat` travels with a stateless codec (RAW: itself; top-k: the
// kept entries, quantized), in place: an audit compares a recomputed gradient in this form with
// the reported one. FP8 carries error feedback between updates and is not stateless.
void round_trip(const ParamLayout& layout, wire::Codec codec, std::span<float> flat);

// Decodes an update's tensors into `out` (size layout.total): exactly one tensor per parameter,
// F32, the parameter's shape, a supported codec, every value finite. A refusal says why:
// ACK_BAD_NORM for NaN/Inf values, ACK_MALFORMED for anything else.
[[nodiscard]] std::optional<Refusal> decode_gradient(const wire::GradientUpdate& update,
                                                     const ParamLayout& layout,
                                                     std::span<float> out);

// A top-k update's kept entries: positions in the flat layout (increasing within each tensor)
// and their values; every other element is zero.
struct SparseGradient {
  std::vector<uint64_t> index;
  std::vector<float> value;
};
// decode_gradient for an update whose tensors are all top-k, without a model-sized buffer: the
// same checks and refusals (a tensor in another codec is malformed here).
[[nodiscard]] std::optional<Refusal> decode_gradient_sparse(const wire::GradientUpdate& update,
                                                            const ParamLayout& layout,
                                                            SparseGradient& out);

}  // namespace cohort::exchange
