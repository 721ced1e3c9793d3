// The wire schema for tensors (wire::EncodedTensor) and its bounds-checked decoding. Peer bytes
// are never handed to a tensor library's deserializer: check_tensor proves shape × dtype × codec
// agree with the payload size before anyone reads the payload.
//
//   wire::EncodedTensor t = encode_raw("model.norm.weight", wire::DTYPE_F32, {{4096}}, bytes);
//   TensorView v = check_tensor(received);   // throws ProtocolError(malformed) on a lie
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/bytes.h"
#include "protocol/digest.h"
#include "protocol/messages.pb.h"

namespace cohort::protocol {

struct TensorLimits {
  std::uint32_t max_rank = 8;
  std::uint64_t max_elements = std::uint64_t{1} << 34;
  std::size_t max_name_len = 256;
};

// Bytes per element; 0 for DTYPE_UNSPECIFIED or a value this build does not know.
[[nodiscard]] std::size_t dtype_size(wire::DType dtype);
[[nodiscard]] std::string_view dtype_name(wire::DType dtype);

// Payload bytes the codec must produce for `numel` elements (for the variable-size
// CODEC_TOPK_Q4, the most it may produce); nullopt when the combination is invalid (unknown
// codec, FP8 block codec without a block size, top-k with another block size than 4096, overflow).
[[nodiscard]] std::optional<std::uint64_t> expected_payload_size(wire::DType dtype, std::uint64_t numel,
                                                                 wire::Codec codec,
                                                                 std::uint32_t block_size);

// A validated tensor; views into the EncodedTensor, which must outlive it.
struct TensorView {
  std::string_view name;
  wire::DType dtype = wire::DTYPE_UNSPECIFIED;
  std::vector<std::int64_t> shape;
  std::uint64_t numel = 0;
  wire::Codec codec = wire::CODEC_UNSPECIFIED;
  std::uint32_t block_size = 0;
  ByteView payload;
};

// Throws ProtocolError(malformed) naming the first rule broken: name (non-empty printable ASCII),
// dtype, rank, dimensions, element count, codec, payload size.
[[nodiscard]] TensorView check_tensor(const wire::EncodedTensor& tensor, const TensorLimits& limits = {});

// CODEC_RAW encoding of little-endian row-major `data`; COHORT_CHECKs that the size matches.
[[nodiscard]] wire::EncodedTensor encode_raw(std::string name, wire::DType dtype,
                                             std::span<const std::int64_t> shape, ByteView data);

}  // namespace cohort::protocol
