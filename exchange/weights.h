// Published weights, as both roles see them (docs/PROTOCOL.md, "Weights"): the policy dtype and
// its conversions, the snapshot (every tensor's published bytes in manifest order, concatenated,
// cut into shards), the checks a node makes on a manifest's blob lists, and which blobs a node
// holding one version fetches to reach another: the chain of patches or the snapshot, whichever
// is fewer bytes.
//
//   std::string bf16 = to_published(wire::DTYPE_BF16, values);       // coordinator
//   FetchPlan plan = plan_fetch(manifest, held_version);              // node
//   for (const auto* p : plan.patches) ... else for (const auto& s : manifest.snapshot()) ...
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/messages.pb.h"

namespace cohort::exchange {

// Snapshot shards: big enough that a 0.5 B model is ~120 blobs, small enough that a shard is
// quick to re-fetch from another source and to serve in one HTTP response.
inline constexpr uint64_t kShardBytes = 8ull << 20;
// What a node accepts: shards up to 64 MiB, a manifest listing up to 64 mirrors.
inline constexpr uint64_t kMaxShardBytes = 64ull << 20;
inline constexpr int kMaxMirrors = 64;
inline constexpr size_t kMaxMirrorUrl = 512;

// Bytes per element of a policy dtype (DTYPE_F32: 4, DTYPE_BF16: 2); throws cohort::Error for any
// other dtype. DTYPE_UNSPECIFIED reads as DTYPE_F32 (older settings).
[[nodiscard]] uint32_t element_bytes(wire::DType dtype);
[[nodiscard]] std::string_view dtype_name(wire::DType dtype);  // "fp32" | "bf16"
// "fp32" | "bf16" → the dtype; throws cohort::Error naming the accepted values.
[[nodiscard]] wire::DType parse_policy_dtype(std::string_view name);

// F32 values → published little-endian bytes. BF16 rounds to nearest, ties to even (as PyTorch
// and CUDA's __float2bfloat16 do); a NaN becomes the quiet NaN 0x7FC0 with its sign.
void to_published(wire::DType dtype, std::span<const float> values, char* out);
[[nodiscard]] std::string to_published(wire::DType dtype, std::span<const float> values);
// Published bytes → F32 values (exact: every BF16 value is an F32 value).
void from_published(wire::DType dtype, std::string_view bytes, std::span<float> out);

// [begin, end) byte ranges of the shards of a snapshot of `total` bytes.
[[nodiscard]] std::vector<std::pair<uint64_t, uint64_t>> shard_ranges(uint64_t total,
                                                                      uint64_t shard_bytes);

// Why the manifest's blob lists cannot be right (the snapshot's shard sizes against its tensors,
// digest lengths, the patch chain's versions, mirror URLs), or nullopt. manifest_mismatch checks
// the tensors against the model; this checks the rest.
[[nodiscard]] std::optional<std::string> blob_list_mismatch(const wire::WeightManifest& m);

// What a node holding version `held` (nullopt: nothing) fetches to reach m's version.
struct FetchPlan {
  bool nothing = false;                        // it already holds it
  std::vector<const wire::PatchRef*> patches;  // oldest first; empty: fetch the snapshot
  uint64_t bytes = 0;                          // what the chosen blobs weigh
  uint64_t snapshot_bytes = 0;                 // what the snapshot would weigh
};
[[nodiscard]] FetchPlan plan_fetch(const wire::WeightManifest& m, std::optional<uint64_t> held);

}  // namespace cohort::exchange
