// BLAKE2b-256 digests: content addresses of tensors and completions, and the domain-separated
// digest that identity keys sign (docs/PROTOCOL.md, "Signatures").
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/bytes.h"

namespace cohort::protocol {

inline constexpr std::size_t kDigestLen = 32;
using Digest = std::array<std::uint8_t, kDigestLen>;

// Domains of everything an identity key signs through signing_digest.
inline constexpr std::string_view kUpdateDomain = "cohort/signed-update/v1";
inline constexpr std::string_view kManifestDomain = "cohort/weight-manifest/v1";

[[nodiscard]] Digest blake2b_256(ByteView data);
// BLAKE2b-256 of a file's bytes, read in blocks; throws cohort::Error when it cannot be read.
// Peers compare the files a round names (datasets, tokenizers) by it.
[[nodiscard]] Digest blake2b_256_file(const std::string& path);
// BLAKE2b-256(domain || 0x00 || body): what a detached signature covers.
[[nodiscard]] Digest signing_digest(std::string_view domain, ByteView body);

struct DigestHash {
  std::size_t operator()(const Digest& d) const noexcept {
    std::size_t h = 0;
    for (int i = 0; i < 8; ++i) h = (h << 8) | d[i];
    return h;
  }
};

}  // namespace cohort::protocol
