#include "exchange/publisher.h"

#include <cstring>
#include <utility>

#include "common/check.h"
#include "exchange/manifest.h"

namespace cohort::exchange {

Publisher::Publisher(std::shared_ptr<BlobStore> store, wire::DType dtype,
                     std::vector<TensorInfo> tensors, std::vector<std::string> mirrors,
                     size_t versions_served, uint64_t shard_bytes)
    : store_(std::move(store)),
      dtype_(dtype),
      tensors_(std::move(tensors)),
      mirrors_(std::move(mirrors)),
      versions_served_(std::max<size_t>(1, versions_served)),
      shard_bytes_(shard_bytes) {
  uint64_t at = 0;
  for (const auto& t : tensors_) {
    offsets_.push_back(at);
    at += t.numel * element_bytes(dtype_);
  }
  offsets_.push_back(at);
}

PublishedVersion Publisher::publish(const std::string& round_id, uint64_t version,
                                    int64_t created_unix_ms, std::string bytes) {
  if (bytes.size() != offsets_.back())
    throw Error("published bytes: " + std::to_string(bytes.size()) + " given, the tensors take " +
                std::to_string(offsets_.back()));
  PublishedVersion out;
  std::vector<NamedBytes> named;
  for (size_t i = 0; i < tensors_.size(); ++i)
    named.push_back({tensors_[i].name, tensors_[i].shape,
                     std::string_view(bytes).substr(offsets_[i], offsets_[i + 1] - offsets_[i])});
  out.manifest = build_manifest(round_id, version, created_unix_ms, dtype_, named);
  out.snapshot_bytes = bytes.size();

  // The patch from the previous version: values, not deltas, so it rebuilds the bytes exactly.
  if (current_version_ && *current_version_ + 1 == version) {
    std::vector<TensorChange> changes;
    for (size_t i = 0; i < named.size(); ++i)
      changes.push_back({named[i].name, element_bytes(dtype_),
                         std::string_view(current_).substr(offsets_[i], named[i].bytes.size()),
                         named[i].bytes});
    const std::string patch = encode_patch(*current_version_, version, changes, &out.patch);
    if (patch.size() < bytes.size()) {
      wire::PatchRef ref;
      ref.set_from_version(*current_version_);
      ref.set_to_version(version);
      const protocol::Digest d = store_->put(patch);
      ref.mutable_blob()->set_blake2b(d.data(), d.size());
      ref.mutable_blob()->set_size_bytes(patch.size());
      chain_.push_front(std::move(ref));
      out.patch_kept = true;
    } else {
      chain_.clear();  // every element changed: a patch weighs more than the snapshot
    }
  } else {
    chain_.clear();
  }
  uint64_t chain_bytes = 0;
  for (size_t i = 0; i < chain_.size(); ++i) {
    chain_bytes += chain_[i].blob().size_bytes();
    if (chain_bytes >= bytes.size()) {
      chain_.resize(i);
      break;
    }
  }

  out.manifest.set_shard_bytes(shard_bytes_);
  for (const auto& [b, e] : shard_ranges(bytes.size(), shard_bytes_)) {
    const protocol::Digest d = store_->put(std::string_view(bytes).substr(b, e - b));
    auto* ref = out.manifest.add_snapshot();
    ref->set_blake2b(d.data(), d.size());
    ref->set_size_bytes(e - b);
    out.shards.push_back(d);
    out.blobs.insert(d);
  }
  for (const auto& ref : chain_) {
    *out.manifest.add_patches() = ref;
    protocol::Digest d{};
    std::memcpy(d.data(), ref.blob().blake2b().data(), d.size());
    out.blobs.insert(d);
  }
  for (const auto& url : mirrors_) out.manifest.add_mirrors(url);
  spare_ = std::exchange(current_, std::move(bytes));
  current_version_ = version;

  served_.push_back(out.blobs);
  while (served_.size() > versions_served_) served_.pop_front();
  std::set<protocol::Digest> keep = pinned_;
  for (const auto& s : served_) keep.insert(s.begin(), s.end());
  store_->keep_only(keep);
  return out;
}

std::string Publisher::buffer() {
  std::string b = std::exchange(spare_, {});
  b.resize(offsets_.back());
  return b;
}

PublishedVersion Publisher::publish_reference(const std::string& round_id, int64_t created_unix_ms,
                                              std::string_view bytes) {
  if (bytes.size() != offsets_.back())
    throw Error("reference bytes: " + std::to_string(bytes.size()) + " given, the tensors take " +
                std::to_string(offsets_.back()));
  PublishedVersion out;
  std::vector<NamedBytes> named;
  for (size_t i = 0; i < tensors_.size(); ++i)
    named.push_back({tensors_[i].name, tensors_[i].shape,
                     bytes.substr(offsets_[i], offsets_[i + 1] - offsets_[i])});
  out.manifest = build_manifest(round_id, 0, created_unix_ms, dtype_, named);
  out.snapshot_bytes = bytes.size();
  out.manifest.set_shard_bytes(shard_bytes_);
  for (const auto& [b, e] : shard_ranges(bytes.size(), shard_bytes_)) {
    const protocol::Digest d = put_pinned(bytes.substr(b, e - b));
    auto* ref = out.manifest.add_snapshot();
    ref->set_blake2b(d.data(), d.size());
    ref->set_size_bytes(e - b);
    out.shards.push_back(d);
    out.blobs.insert(d);
  }
  for (const auto& url : mirrors_) out.manifest.add_mirrors(url);
  return out;
}

protocol::Digest Publisher::put_pinned(std::string_view bytes) {
  const protocol::Digest d = store_->put(bytes);
  pinned_.insert(d);
  return d;
}

}  // namespace cohort::exchange
