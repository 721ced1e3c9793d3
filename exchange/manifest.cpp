#include "exchange/manifest.h"

#include <cstring>

#include "exchange/weights.h"

namespace cohort::exchange {

wire::WeightManifest build_manifest(const std::string& round_id, uint64_t version,
                                    int64_t created_unix_ms, wire::DType dtype,
                                    std::span<const NamedBytes> tensors,
                                    std::vector<protocol::Digest>* digests) {
  wire::WeightManifest m;
  m.set_round_id(round_id);
  m.set_policy_version(version);
  m.set_created_unix_ms(static_cast<uint64_t>(created_unix_ms));
  for (const NamedBytes& t : tensors) {
    const protocol::Digest d = protocol::blake2b_256(protocol::as_bytes(t.bytes));
    auto* e = m.add_tensors();
    e->set_name(t.name);
    e->set_dtype(dtype);
    for (int64_t s : t.shape) e->add_shape(static_cast<uint64_t>(s));
    e->set_blake2b(d.data(), d.size());
    e->set_size_bytes(t.bytes.size());
    if (digests) digests->push_back(d);
  }
  return m;
}

std::optional<std::string> manifest_mismatch(const wire::WeightManifest& m,
                                             const ParamLayout& layout, wire::DType dtype) {
  const uint32_t eb = element_bytes(dtype);
  if (static_cast<size_t>(m.tensors_size()) != layout.slots.size())
    return "manifest names " + std::to_string(m.tensors_size()) + " tensors, the model has " +
           std::to_string(layout.slots.size());
  for (size_t i = 0; i < layout.slots.size(); ++i) {
    const auto& e = m.tensors(static_cast<int>(i));
    const auto& slot = layout.slots[i];
    const std::vector<int64_t> shape(e.shape().begin(), e.shape().end());
    if (e.name() != slot.name || e.dtype() != dtype || shape != slot.shape ||
        e.size_bytes() != slot.numel * eb || e.blake2b().size() != protocol::kDigestLen)
      return "manifest entry " + std::to_string(i) + " does not match the model's parameter " +
             slot.name;
  }
  return std::nullopt;
}

namespace {

bool digest_matches(std::string_view raw_digest, std::string_view bytes) {
  const protocol::Digest d = protocol::blake2b_256(protocol::as_bytes(bytes));
  return raw_digest.size() == d.size() && std::memcmp(d.data(), raw_digest.data(), d.size()) == 0;
}

}  // namespace

bool bytes_match(const wire::ManifestEntry& e, std::string_view bytes) {
  return bytes.size() == e.size_bytes() && digest_matches(e.blake2b(), bytes);
}

bool bytes_match(const wire::BlobRef& b, std::string_view bytes) {
  return bytes.size() == b.size_bytes() && digest_matches(b.blake2b(), bytes);
}

}  // namespace cohort::exchange
