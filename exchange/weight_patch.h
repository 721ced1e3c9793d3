// Lossless sparse weight patches (docs/PROTOCOL.md, "Weight patches"): version v → w of a
// published policy as, per tensor, the positions of the elements whose published bits changed
// and their new values (values, not deltas), positions delta-coded as LEB128 varints, the whole
// zstd-compressed. At BF16 and RL learning rates most elements keep their bits from one version
// to the next, so a patch is a small fraction of a snapshot; applying it gives the target bytes
// bit for bit (the caller checks every tensor against the signed manifest afterwards).
//
// Not yet served: the coordinator still publishes full tensors (issue: policy weights at real
// sizes). This is the format and its checked decoder.
//
//   std::string p = encode_patch(3, 4, changes);                 // coordinator
//   if (auto err = apply_patch(p, held, 1 << 30)) refuse(*err);  // node: `held` now is v4
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace cohort::exchange {

// One tensor's published bytes before and after (same size; element_bytes 2 for BF16, 4 for F32).
struct TensorChange {
  std::string name;
  uint32_t element_bytes = 4;
  std::string_view base, target;
};

struct PatchStats {
  uint64_t elements = 0;                     // in the tensors given
  uint64_t changed = 0;                      // whose bits differ
  uint64_t body_bytes = 0, patch_bytes = 0;  // before and after zstd
};

// Tensors whose bytes did not change are left out. Throws cohort::Error on sizes that disagree.
[[nodiscard]] std::string encode_patch(uint64_t from_version, uint64_t to_version,
                                       std::span<const TensorChange> tensors,
                                       PatchStats* stats = nullptr, int zstd_level = 3);

// The versions a patch goes between, or nullopt when it is not one.
[[nodiscard]] std::optional<std::pair<uint64_t, uint64_t>> patch_versions(std::string_view patch,
                                                                          uint64_t max_body_bytes);

// Applies a patch to `held` (tensor name → its published bytes, all at from_version) in place.
// Every rule of the format is checked before anything is written: the zstd frame (its stated
// size at most max_body_bytes), magic, the versions (`from` must be `expect_from`), each named
// tensor held with that element size and count, positions in range and strictly increasing, no
// tensor twice, no byte left over. On a refusal `held` is unchanged and the sentence says why.
[[nodiscard]] std::optional<std::string> apply_patch(std::string_view patch, uint64_t expect_from,
                                                     std::map<std::string, std::string>& held,
                                                     uint64_t max_body_bytes);

}  // namespace cohort::exchange
