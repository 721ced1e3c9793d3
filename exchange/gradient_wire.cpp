#include "exchange/gradient_wire.h"

#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <unordered_map>

#include "common/check.h"
#include "exchange/topk_codec.h"
#include "grpo/model.h"
#include "protocol/error.h"
#include "protocol/tensor_codec.h"

namespace cohort::exchange {

ParamLayout::ParamLayout(const grpo::Model& model) {
  for (const auto& nt : model.named_parameters()) {
    ParamSlot s;
    s.name = nt.name;
    s.shape = nt.tensor.sizes().vec();
    s.numel = static_cast<size_t>(nt.tensor.numel());
    s.offset = total;
    total += s.numel;
    slots.push_back(std::move(s));
  }
}

void flatten_grads(const grpo::Model& model, const ParamLayout& layout, std::span<float> out,
                   bool release) {
  COHORT_CHECK(out.size() == layout.total);
  const auto& ps = model.named_parameters();
  COHORT_CHECK(ps.size() == layout.slots.size());
  for (size_t i = 0; i < ps.size(); ++i) {
    const auto& slot = layout.slots[i];
    const auto& g = ps[i].tensor.grad();
    if (!g.defined()) {
      std::fill_n(out.data() + slot.offset, slot.numel, 0.0f);
      continue;
    }
    {
      auto c = g.detach().to(at::kFloat).contiguous();
      std::memcpy(out.data() + slot.offset, c.data_ptr<float>(), slot.numel * sizeof(float));
    }
    if (release) ps[i].tensor.mutable_grad().reset();
  }
}

GradientEncoder::GradientEncoder(const ParamLayout& layout, wire::Codec codec)
    : layout_(layout), codec_(codec) {
  COHORT_CHECK(codec == wire::CODEC_RAW || codec == wire::CODEC_FP8_E4M3_BLOCK ||
               codec == wire::CODEC_TOPK_Q4);
  if (codec == wire::CODEC_FP8_E4M3_BLOCK)
    for (const auto& s : layout.slots) fp8_.emplace_back(s.numel);
}

void GradientEncoder::encode(std::span<const float> flat,
                             google::protobuf::RepeatedPtrField<wire::EncodedTensor>& out) {
  COHORT_CHECK(flat.size() == layout_.total);
  for (size_t i = 0; i < layout_.slots.size(); ++i) {
    const auto& s = layout_.slots[i];
    auto values = flat.subspan(s.offset, s.numel);
    for (float v : values)
      if (!std::isfinite(v)) throw Error("gradient of " + s.name + " holds NaN or Inf");
    wire::EncodedTensor* t = out.Add();
    t->set_name(s.name);
    t->set_dtype(wire::DTYPE_F32);
    for (int64_t d : s.shape) t->add_shape(static_cast<uint64_t>(d));
    if (codec_ == wire::CODEC_RAW) {
      t->set_codec(wire::CODEC_RAW);
      t->set_payload(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
    } else if (codec_ == wire::CODEC_TOPK_Q4) {
      t->set_codec(wire::CODEC_TOPK_Q4);
      t->set_block_size(static_cast<uint32_t>(topk::kChunk));
      t->set_payload(topk::encode(values));
    } else {
      std::vector<uint8_t> p = fp8_[i].encode(values);
      t->set_codec(wire::CODEC_FP8_E4M3_BLOCK);
      t->set_block_size(static_cast<uint32_t>(kernels::kFp8BlockCodecBlock));
      // The wire carries scales + codes; the header is implied by the tensor's fields.
      t->set_payload(reinterpret_cast<const char*>(p.data()) + kernels::kFp8BlockCodecHeaderBytes,
                     p.size() - kernels::kFp8BlockCodecHeaderBytes);
    }
  }
}

void round_trip(const ParamLayout& layout, wire::Codec codec, std::span<float> flat) {
  COHORT_CHECK(flat.size() == layout.total);
  COHORT_CHECK(codec == wire::CODEC_RAW || codec == wire::CODEC_TOPK_Q4);
  if (codec == wire::CODEC_RAW) return;
  for (const auto& s : layout.slots) {
    std::span<float> values = flat.subspan(s.offset, s.numel);
    const std::string payload = topk::encode(values);
    const auto err = topk::decode(payload, values);
    COHORT_CHECK(!err, "top-k round trip");
  }
}

namespace {

// Every tensor of `update` checked against the layout (exactly one per parameter, F32, its
// shape), then handed to `decode(slot, view, tensor)`, which decodes it or says why not.
template <class Decode>
std::optional<Refusal> for_each_tensor(const wire::GradientUpdate& update, const ParamLayout& layout,
                                       Decode decode) {
  auto malformed = [](std::string why) { return Refusal{wire::ACK_MALFORMED, std::move(why)}; };
  if (static_cast<size_t>(update.tensors_size()) != layout.slots.size()) {
    return malformed("expected " + std::to_string(layout.slots.size()) + " tensors, got " +
                     std::to_string(update.tensors_size()));
  }
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < layout.slots.size(); ++i) index[layout.slots[i].name] = i;
  std::vector<bool> seen(layout.slots.size(), false);
  for (const auto& t : update.tensors()) {
    protocol::TensorView v;
    try {
      v = protocol::check_tensor(t);
    } catch (const protocol::ProtocolError& e) {
      return malformed(e.what());
    }
    auto it = index.find(std::string(v.name));
    if (it == index.end() || seen[it->second]) {
      return malformed("tensor " + std::string(v.name) + " is unknown or repeated");
    }
    seen[it->second] = true;
    const auto& slot = layout.slots[it->second];
    if (v.dtype != wire::DTYPE_F32 || v.shape != slot.shape) {
      return malformed("tensor " + slot.name + " has the wrong dtype or shape");
    }
    if (auto r = decode(slot, v, t)) return r;
  }
  return std::nullopt;
}

}  // namespace

std::optional<Refusal> decode_gradient(const wire::GradientUpdate& update,
                                       const ParamLayout& layout, std::span<float> out) {
  auto malformed = [](std::string why) { return Refusal{wire::ACK_MALFORMED, std::move(why)}; };
  COHORT_CHECK(out.size() == layout.total);
  std::vector<uint8_t> buf;
  return for_each_tensor(update, layout, [&](const ParamSlot& slot, const protocol::TensorView& v,
                                             const wire::EncodedTensor& t) -> std::optional<Refusal> {
    std::span<float> dst = out.subspan(slot.offset, slot.numel);
    if (v.codec == wire::CODEC_RAW) {
      std::memcpy(dst.data(), v.payload.data(), slot.numel * sizeof(float));
    } else if (v.codec == wire::CODEC_FP8_E4M3_BLOCK &&
               v.block_size == kernels::kFp8BlockCodecBlock) {
      buf.assign(kernels::kFp8BlockCodecHeaderBytes, 0);
      const uint8_t magic[4] = {'C', 'F', '8', 'B'};
      std::memcpy(buf.data(), magic, 4);
      buf[4] = kernels::kFp8BlockCodecVersion;
      buf[5] = 1;
      buf[6] = static_cast<uint8_t>(kernels::kFp8BlockCodecBlock & 0xff);
      buf[7] = static_cast<uint8_t>(kernels::kFp8BlockCodecBlock >> 8);
      const uint64_t n = slot.numel;
      for (int b = 0; b < 8; ++b) buf[8 + b] = static_cast<uint8_t>(n >> (8 * b));
      buf.insert(buf.end(), v.payload.begin(), v.payload.end());
      kernels::CodecResult r = kernels::decode_fp8_e4m3_block(buf, dst);
      if (!r.ok()) {
        return malformed("tensor " + slot.name + ": " + kernels::codec_status_name(r.status) + " " +
                         r.detail);
      }
    } else if (v.codec == wire::CODEC_TOPK_Q4) {
      if (auto err = topk::decode(t.payload(), dst)) return malformed("tensor " + slot.name + ": " + *err);
    } else {
      return malformed("tensor " + slot.name + " uses an unsupported codec");
    }
    for (float x : dst)
      if (!std::isfinite(x)) {
        return Refusal{wire::ACK_BAD_NORM, "non-finite value in " + slot.name};
      }
    return std::nullopt;
  });
}

std::optional<Refusal> decode_gradient_sparse(const wire::GradientUpdate& update,
                                              const ParamLayout& layout, SparseGradient& out) {
  out.index.clear();
  out.value.clear();
  return for_each_tensor(update, layout, [&](const ParamSlot& slot, const protocol::TensorView& v,
                                             const wire::EncodedTensor& t) -> std::optional<Refusal> {
    if (v.codec != wire::CODEC_TOPK_Q4)
      return Refusal{wire::ACK_MALFORMED, "tensor " + slot.name + " is not top-k like the round's"};
    if (auto err = topk::decode_entries(t.payload(), slot.numel, slot.offset, out.index, out.value))
      return Refusal{wire::ACK_MALFORMED, "tensor " + slot.name + ": " + *err};
    return std::nullopt;  // top-k values are finite by construction (a finite codebook)
  });
}

}  // namespace cohort::exchange
