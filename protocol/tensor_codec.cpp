#include "protocol/tensor_codec.h"

#include <limits>

#include "protocol/error.h"

namespace cohort::protocol {
namespace {

[[noreturn]] void malformed(std::string_view name, const std::string& what) {
  throw ProtocolError(ErrorCode::malformed,
                      "tensor '" + std::string(name.substr(0, 64)) + "': " + what);
}

bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  return __builtin_mul_overflow(a, b, &out);
}

}  // namespace

std::size_t dtype_size(wire::DType dtype) {
  switch (dtype) {
    case wire::DTYPE_F32: return 4;
    case wire::DTYPE_F16: return 2;
    case wire::DTYPE_BF16: return 2;
    case wire::DTYPE_F64: return 8;
    case wire::DTYPE_F8_E4M3: return 1;
    case wire::DTYPE_F8_E5M2: return 1;
    case wire::DTYPE_I8: return 1;
    case wire::DTYPE_U8: return 1;
    case wire::DTYPE_I32: return 4;
    case wire::DTYPE_I64: return 8;
    default: return 0;
  }
}

std::string_view dtype_name(wire::DType dtype) {
  switch (dtype) {
    case wire::DTYPE_F32: return "F32";
    case wire::DTYPE_F16: return "F16";
    case wire::DTYPE_BF16: return "BF16";
    case wire::DTYPE_F64: return "F64";
    case wire::DTYPE_F8_E4M3: return "F8_E4M3";
    case wire::DTYPE_F8_E5M2: return "F8_E5M2";
    case wire::DTYPE_I8: return "I8";
    case wire::DTYPE_U8: return "U8";
    case wire::DTYPE_I32: return "I32";
    case wire::DTYPE_I64: return "I64";
    default: return "unknown";
  }
}

std::optional<std::uint64_t> expected_payload_size(wire::DType dtype, std::uint64_t numel,
                                                   wire::Codec codec, std::uint32_t block_size) {
  const std::size_t elem = dtype_size(dtype);
  if (elem == 0) return std::nullopt;
  std::uint64_t out = 0;
  switch (codec) {
    case wire::CODEC_RAW:
      if (block_size != 0 || mul_overflows(numel, elem, out)) return std::nullopt;
      return out;
    case wire::CODEC_FP8_E4M3_BLOCK: {
      // Floating-point values only: the codec carries a float approximation plus scales.
      if (dtype != wire::DTYPE_F32 && dtype != wire::DTYPE_F16 && dtype != wire::DTYPE_BF16) {
        return std::nullopt;
      }
      if (block_size == 0) return std::nullopt;
      const std::uint64_t blocks = numel / block_size + (numel % block_size != 0);
      std::uint64_t scales = 0;
      if (mul_overflows(blocks, 4, scales) || __builtin_add_overflow(numel, scales, &out)) {
        return std::nullopt;
      }
      return out;
    }
    case wire::CODEC_TOPK_Q4:
      // Variable size: this is the bound; the codec's decoder checks the payload to the byte.
      if (dtype != wire::DTYPE_F32 || block_size != 4096 || mul_overflows(numel, 4, out))
        return std::nullopt;
      return out;
    default:
      return std::nullopt;
  }
}

TensorView check_tensor(const wire::EncodedTensor& tensor, const TensorLimits& limits) {
  const std::string& name = tensor.name();
  if (name.empty()) malformed(name, "empty name");
  if (name.size() > limits.max_name_len) malformed(name, "name longer than " + std::to_string(limits.max_name_len));
  for (char c : name) {
    if (c < 0x21 || c > 0x7e) malformed(name, "name has a non-printable or non-ASCII character");
  }
  if (dtype_size(tensor.dtype()) == 0) {
    malformed(name, "unknown dtype " + std::to_string(static_cast<int>(tensor.dtype())));
  }
  if (static_cast<std::uint32_t>(tensor.shape_size()) > limits.max_rank) {
    malformed(name, "rank " + std::to_string(tensor.shape_size()) + " over the limit " +
                        std::to_string(limits.max_rank));
  }
  TensorView v;
  v.name = name;
  v.dtype = tensor.dtype();
  v.codec = tensor.codec();
  v.block_size = tensor.block_size();
  std::uint64_t numel = 1;
  v.shape.reserve(tensor.shape_size());
  for (std::uint64_t d : tensor.shape()) {
    if (d > limits.max_elements) malformed(name, "dimension " + std::to_string(d) + " too large");
    if (mul_overflows(numel, d, numel) || numel > limits.max_elements) {
      malformed(name, "more than " + std::to_string(limits.max_elements) + " elements");
    }
    v.shape.push_back(static_cast<std::int64_t>(d));
  }
  v.numel = numel;
  const auto expected = expected_payload_size(v.dtype, numel, v.codec, v.block_size);
  if (!expected) {
    malformed(name, "codec " + std::to_string(static_cast<int>(v.codec)) + " with dtype " +
                        std::string(dtype_name(v.dtype)) + " and block size " +
                        std::to_string(v.block_size) + " is not a valid combination");
  }
  if (v.codec == wire::CODEC_TOPK_Q4 ? tensor.payload().size() > *expected
                                     : tensor.payload().size() != *expected) {
    malformed(name, "payload is " + std::to_string(tensor.payload().size()) + " bytes, shape and " +
                        "dtype need " + std::to_string(*expected));
  }
  v.payload = as_bytes(tensor.payload());
  return v;
}

wire::EncodedTensor encode_raw(std::string name, wire::DType dtype, std::span<const std::int64_t> shape,
                               ByteView data) {
  wire::EncodedTensor t;
  std::uint64_t numel = 1;
  for (std::int64_t d : shape) {
    COHORT_CHECK(d >= 0, "negative dimension");
    t.add_shape(static_cast<std::uint64_t>(d));
    numel *= static_cast<std::uint64_t>(d);
  }
  COHORT_CHECK(numel * dtype_size(dtype) == data.size(), "data size does not match shape and dtype");
  t.set_name(std::move(name));
  t.set_dtype(dtype);
  t.set_codec(wire::CODEC_RAW);
  t.set_payload(data.data(), data.size());
  return t;
}

}  // namespace cohort::protocol
