// Content-addressed blobs in a folder, one file per blob named by the lowercase hex BLAKE2b-256 of
// its bytes (docs/PROTOCOL.md, "Weights"): the coordinator writes snapshot shards and patches here
// and serves them from here over its channel and at GET /blobs/<hex>; any static web server
// given a copy of the folder serves them the same way, which is what makes a round mirror-able.
// A blob is written to a temporary name and renamed, so a reader never sees a partial file, and
// never changes once written: readers on other threads need no lock.
//
//   BlobStore store(data_dir / "blobs");
//   protocol::Digest d = store.put(bytes);           // no-op when the blob is already there
//   std::string part = store.read(d, offset, 4 << 20);
//   store.keep_only(still_listed);                   // removes every other blob
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "protocol/digest.h"

namespace cohort::exchange {

class BlobStore {
 public:
  // Creates the folder if needed; leftover temporary files of an interrupted write are removed.
  explicit BlobStore(std::filesystem::path dir);

  protocol::Digest put(std::string_view bytes);
  // The blob's size, or nullopt when the store does not hold it.
  [[nodiscard]] std::optional<uint64_t> size(const protocol::Digest& d) const;
  // Up to `max_bytes` bytes of the blob from `offset` (fewer at its end). Throws cohort::Error
  // when the blob is not held or offset is past its end.
  [[nodiscard]] std::string read(const protocol::Digest& d, uint64_t offset,
                                 uint64_t max_bytes) const;
  // Removes every blob not in `keep`.
  void keep_only(const std::set<protocol::Digest>& keep);

  [[nodiscard]] std::filesystem::path path(const protocol::Digest& d) const;
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

// "<64 lowercase hex>" → the digest, or nullopt for anything else.
[[nodiscard]] std::optional<protocol::Digest> parse_digest_hex(std::string_view hex);
// The digest as 64 lowercase hex digits (blob names, round settings, round cards).
[[nodiscard]] std::string digest_hex(const protocol::Digest& d);

}  // namespace cohort::exchange
