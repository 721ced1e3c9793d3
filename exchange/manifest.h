// Signed weight manifests, as both roles use them: the coordinator describes a policy version
// (every parameter's name, shape, F32 dtype and BLAKE2b-256 of its bytes) and signs it; a node
// checks the manifest fits its model before it fetches a byte, and each tensor's bytes against
// the signed digest before it loads them.
//
//   wire::WeightManifest m = build_manifest(round_id, version, tensors);   // then sign_manifest
//   if (auto why = manifest_mismatch(m, layout)) throw Error(*why);
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

// One parameter's F32 values (little-endian bytes), in the layout's order.
struct NamedBytes {
  std::string name;
  std::vector<int64_t> shape;
  std::string_view bytes;
};

[[nodiscard]] wire::WeightManifest build_manifest(const std::string& round_id, uint64_t version,
                                                  int64_t created_unix_ms,
                                                  std::span<const NamedBytes> tensors,
                                                  std::vector<protocol::Digest>* digests = nullptr);

// Why the manifest cannot describe this model (entry count, names, order, shapes, dtype, sizes,
// digest lengths), or nullopt when it fits.
[[nodiscard]] std::optional<std::string> manifest_mismatch(const wire::WeightManifest& m,
                                                           const ParamLayout& layout);

// The bytes are the tensor the entry names (size and BLAKE2b-256).
[[nodiscard]] bool bytes_match(const wire::ManifestEntry& e, std::string_view bytes);

}  // namespace cohort::exchange
