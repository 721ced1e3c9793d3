// Signed weight manifests, as both roles use them: the coordinator describes a policy version
// (every parameter's name, shape, published dtype and BLAKE2b-256 of its bytes; the blobs that
// carry them are listed by the caller, exchange/weights.h) and signs it; a node
// checks the manifest fits its model before it fetches a byte, and each tensor's bytes against
// the signed digest before it loads them.
//
//   wire::WeightManifest m = build_manifest(round_id, version, ms, wire::DTYPE_BF16, tensors);
//   if (auto why = manifest_mismatch(m, layout, wire::DTYPE_BF16)) throw Error(*why);
//   if (!bytes_match(entry, bytes)) ...                                    // fetched tensor
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "exchange/param_layout.h"
#include "protocol/digest.h"
#include "protocol/messages.pb.h"

namespace cohort::exchange {

// One parameter's published bytes (little-endian, in the manifest's dtype), in the layout's order.
struct NamedBytes {
  std::string name;
  std::vector<int64_t> shape;
  std::string_view bytes;
};

[[nodiscard]] wire::WeightManifest build_manifest(const std::string& round_id, uint64_t version,
                                                  int64_t created_unix_ms, wire::DType dtype,
                                                  std::span<const NamedBytes> tensors,
                                                  std::vector<protocol::Digest>* digests = nullptr);

// Why the manifest cannot describe this model published in `dtype` (entry count, names, order,
// shapes, dtype, sizes, digest lengths), or nullopt when it fits.
[[nodiscard]] std::optional<std::string> manifest_mismatch(const wire::WeightManifest& m,
                                                           const ParamLayout& layout,
                                                           wire::DType dtype);

// The bytes are the tensor the entry names, or the blob the reference names (size and
// BLAKE2b-256).
[[nodiscard]] bool bytes_match(const wire::ManifestEntry& e, std::string_view bytes);
[[nodiscard]] bool bytes_match(const wire::BlobRef& b, std::string_view bytes);

}  // namespace cohort::exchange
