// Publishing a policy version as blobs (docs/PROTOCOL.md, "Weights"): given every tensor's
// published bytes, writes the snapshot's shards and the patch from the previous version into the
// blob store, keeps the patch chain while it weighs less than a snapshot (a node never gains from
// a longer one), builds the manifest (unsigned: the caller signs it) and removes the blobs of
// versions no longer served. What it holds in memory is the current version's bytes: patches
// are diffed against them.
//
//   Publisher pub(store, wire::DTYPE_BF16, tensors, mirrors, /*versions_served=*/3);
//   PublishedVersion v = pub.publish(round_id, version, unix_ms(), std::move(bytes));
//   wire::SignedManifest sm = protocol::sign_manifest(v.manifest, identity);
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "exchange/blob_store.h"
#include "exchange/weight_patch.h"
#include "exchange/weights.h"

namespace cohort::exchange {

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t numel = 0;
};

// The blobs of one version and what they weigh.
struct VersionBlobs {
  std::vector<protocol::Digest> shards;  // the snapshot, in order
  std::set<protocol::Digest> blobs;      // every blob the manifest lists
  uint64_t snapshot_bytes = 0;
  PatchStats patch;  // from the previous version (all zero when there is none)
  bool patch_kept = false;  // false: none, or heavier than the snapshot (not listed)
};

struct PublishedVersion : VersionBlobs {
  wire::WeightManifest manifest;  // unsigned
};

class Publisher {
 public:
  // `versions_served`: how many of the latest versions keep their blobs (at least 1).
  Publisher(std::shared_ptr<BlobStore> store, wire::DType dtype, std::vector<TensorInfo> tensors,
            std::vector<std::string> mirrors, size_t versions_served,
            uint64_t shard_bytes = kShardBytes);

  // `bytes`: every tensor's published bytes, concatenated in order (offsets()). A version that
  // does not follow the current one by exactly 1 (the first, or after a resume) starts a new
  // chain. Throws cohort::Error when the bytes do not fit the tensors or a blob cannot be written.
  PublishedVersion publish(const std::string& round_id, uint64_t version, int64_t created_unix_ms,
                           std::string bytes);

  // The round's reference policy (rounds with a KL term): `bytes` as snapshot shards of version 0
  // whose blobs stay for the whole round, outside the chain of versions (the current version and
  // its patches are untouched). The manifest is unsigned: the caller signs it.
  PublishedVersion publish_reference(const std::string& round_id, int64_t created_unix_ms,
                                     std::string_view bytes);

  // Stores `bytes` as a blob that stays whatever versions are served (the round's files: a
  // dataset, tokenizer files), so it is fetched like a weight blob, at GET /blobs/<hex> and from
  // mirrors holding a copy of the folder. Returns its digest.
  protocol::Digest put_pinned(std::string_view bytes);

  // A buffer of offsets().back() bytes for the next publish(), contents unspecified: the
  // replaced version's bytes when there are, so that a step does not page-fault in a new
  // model-sized buffer (at 7 B parameters in BF16, 14 GB).
  std::string buffer();

  [[nodiscard]] std::string_view current() const { return current_; }
  [[nodiscard]] std::optional<uint64_t> current_version() const { return current_version_; }
  // Where tensor i starts in the concatenation; offsets().back() is its size.
  [[nodiscard]] const std::vector<uint64_t>& offsets() const { return offsets_; }
  [[nodiscard]] wire::DType dtype() const { return dtype_; }
  [[nodiscard]] const std::shared_ptr<BlobStore>& store() const { return store_; }

 private:
  std::shared_ptr<BlobStore> store_;
  wire::DType dtype_;
  std::vector<TensorInfo> tensors_;
  std::vector<std::string> mirrors_;
  size_t versions_served_;
  uint64_t shard_bytes_;
  std::vector<uint64_t> offsets_;
  std::string current_;
  std::string spare_;  // the bytes current_ replaced, for buffer()
  std::optional<uint64_t> current_version_;
  std::deque<wire::PatchRef> chain_;               // newest first
  std::deque<std::set<protocol::Digest>> served_;  // blobs of the versions still served
  std::set<protocol::Digest> pinned_;              // put_pinned
};

}  // namespace cohort::exchange
