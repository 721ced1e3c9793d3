// The node's copy of the policy weights (docs/PROTOCOL.md, "Weights"): the published bytes of one
// version, and how the next is brought in. The signed manifest (checked against the coordinator's
// pinned key, the round and the model) says which blobs rebuild it: from the version held, the
// chain of lossless patches, or the snapshot's shards, whichever is fewer bytes. Each blob comes
// from the first source that serves it right: the HTTP mirrors (the node's own --mirror URLs,
// then the manifest's), then the coordinator over the channel. A mirror that serves bytes that do
// not match the blob's digest, or fails, is skipped for the rest of the session and the log says
// so. Every rebuilt tensor is checked against its signed digest before it is staged; a patch that
// does not rebuild the signed bytes makes the node fetch the snapshot instead.
//
// Fetching stages the tensors that differ from what the replicas hold; loading them is a separate
// call, so a node can fetch the next version while its replicas still compute with the current.
//
//   WeightSync sync(layout, coordinator_key, round_id, wire::DTYPE_BF16, {"http://mirror:8080"});
//   StagedWeights w = co_await sync.fetch(link, version);     // nothing loaded yet
//   sync.load(w, [&](const std::string& name, const std::vector<float>& v) { devices.load(name, v);
//   });
#pragma once

#include <asio/thread_pool.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "exchange/param_layout.h"
#include "node/link.h"
#include "protocol/identity.h"

namespace cohort::node {

// The tensors of one policy version that differ from what the replicas hold, verified, not loaded:
// their published bytes (half the memory of F32 values in a BF16 round), converted one tensor at
// a time when they are loaded.
struct StagedWeights {
  uint64_t version = 0;
  wire::DType dtype = wire::DTYPE_F32;
  struct Tensor {
    std::string digest;              // raw 32 bytes
    std::vector<std::string> names;  // parameters with these bytes (tied weights share one)
    std::string bytes;               // published bytes, little-endian, in `dtype`
  };
  std::vector<Tensor> tensors;
};

// What fetching weights has cost so far (the node's summary reports it).
struct WeightStats {
  double patch_bytes = 0, snapshot_bytes = 0;  // by kind
  double mirror_bytes = 0, channel_bytes = 0;  // by source
  int64_t patches = 0, snapshots = 0;          // applied / fetched
  int64_t patch_fallbacks = 0;                 // patches that did not rebuild the signed bytes
  int64_t mirrors_skipped = 0;
};

class WeightSync {
 public:
  // `reference`: this instance fetches the round's reference policy (ManifestRequest.reference,
  // a manifest of version 0) instead of policy versions.
  WeightSync(const exchange::ParamLayout& layout, protocol::PeerId coordinator,
             std::string round_id, wire::DType dtype, std::vector<std::string> mirrors = {},
             bool reference = false);
  ~WeightSync();

  // Throws cohort::Error (or a protocol error) when the coordinator sends anything that does not
  // check out: a manifest not signed by it, of another round, not fitting the model; chunks out
  // of order or bounds; a snapshot not matching its signed digests.
  asio::awaitable<StagedWeights> fetch(CoordinatorLink& link, uint64_t wanted);
  // Hands each staged tensor to `put` (parameter name, F32 values) and records it as held.
  void load(const StagedWeights& w,
            const std::function<void(const std::string&, const std::vector<float>&)>& put);

  [[nodiscard]] bool holds(uint64_t version) const { return loaded_ && version_ == version; }
  [[nodiscard]] uint64_t version() const { return version_; }
  // Every blob byte received, all sources.
  [[nodiscard]] double fetched_bytes() const { return stats_.mirror_bytes + stats_.channel_bytes; }
  [[nodiscard]] const WeightStats& stats() const { return stats_; }

 private:
  // One blob, verified against its digest, from the first source that serves it right.
  asio::awaitable<std::string> fetch_blob(CoordinatorLink& link, const wire::BlobRef& ref,
                                          const std::vector<std::string>& mirrors);
  // Rebuilds the manifest's version into bytes_ from patches (true) or returns false when they
  // do not apply or do not rebuild the signed bytes (bytes_ is then not a version).
  asio::awaitable<bool> apply_patches(CoordinatorLink& link, const wire::WeightManifest& m,
                                      const std::vector<const wire::PatchRef*>& patches,
                                      const std::vector<std::string>& mirrors);
  asio::awaitable<void> fetch_snapshot(CoordinatorLink& link, const wire::WeightManifest& m,
                                       const std::vector<std::string>& mirrors);

  const exchange::ParamLayout& layout_;
  protocol::PeerId coordinator_;
  std::string round_id_;
  wire::DType dtype_;
  std::vector<std::string> own_mirrors_;
  bool reference_ = false;
  std::set<std::string> bad_mirrors_;
  asio::thread_pool http_{1};  // blocking HTTP requests, off the network thread
  // The published bytes of version bytes_version_ (nullopt: none whole), tensor name → bytes.
  std::map<std::string, std::string> bytes_;
  std::optional<uint64_t> bytes_version_;
  std::map<std::string, std::string> loaded_digests_;  // parameter → digest the replicas hold
  uint64_t version_ = 0;
  bool loaded_ = false;
  WeightStats stats_;
};

// One blob over the channel: a BlobRequest, then its BlobChunks, each checked to continue the
// blob in order and within its size. Throws cohort::Error on anything else; the bytes are not
// checked against the digest here (exchange::bytes_match).
asio::awaitable<std::string> fetch_blob_over_channel(CoordinatorLink& link, const wire::BlobRef& ref);

// What one HTTP Range request asks for: each answer is quick (0.3 s at 100 Mbit/s) and a failure
// costs at most this much again.
inline constexpr uint64_t kHttpRangeBytes = 4ull << 20;

// "http://host:port/some/path" → {"http://host:port", "/some/path"} (the path "" when none):
// what httplib's client takes apart.
std::pair<std::string, std::string> split_url(const std::string& url);

// GET <base>/blobs/<hex> for bytes [offset, offset + length) with a Range request (blocking).
// Throws cohort::Error with the reason when the mirror cannot be reached or answers anything but
// exactly those bytes.
std::string http_blob_range(const std::string& base, const std::string& hex, uint64_t offset,
                            uint64_t length);

}  // namespace cohort::node
