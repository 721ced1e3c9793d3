#include "node/weight_sync.h"

#include <spdlog/spdlog.h>

#include <cstring>

#include "common/check.h"
#include "exchange/manifest.h"
#include "protocol/signed_update.h"

namespace cohort::node {

asio::awaitable<StagedWeights> WeightSync::fetch(CoordinatorLink& link, uint64_t wanted) {
  wire::Envelope req;
  req.mutable_manifest_request()->set_policy_version(wanted);
  co_await link.send(req);
  const wire::Envelope env = co_await link.receive();
  if (!env.has_manifest()) throw Error("expected a manifest");
  const wire::WeightManifest m = protocol::verify_manifest(env.manifest(), coordinator_);
  if (m.round_id() != round_id_) throw Error("manifest of another round");
  if (auto why = exchange::manifest_mismatch(m, layout_)) throw Error(*why);
  std::map<std::string, std::vector<const wire::ManifestEntry*>> by_digest;
  for (const auto& e : m.tensors()) {
    auto held = held_.find(e.name());
    if (held == held_.end() || held->second != e.blake2b()) by_digest[e.blake2b()].push_back(&e);
  }
  StagedWeights out;
  out.version = m.policy_version();
  if (out.version != wanted)
    spdlog::info("node: lease asked for version {}, coordinator published {}", wanted, out.version);
  if (by_digest.empty()) co_return out;
  wire::Envelope treq;
  for (const auto& [d, es] : by_digest) treq.mutable_tensor_request()->add_blake2b(d);
  co_await link.send(treq);
  // Chunks come tensor by tensor in request order, each in offset order (docs/PROTOCOL.md).
  for (const auto& [d, es] : by_digest) {
    const uint64_t size = es.front()->size_bytes();
    std::vector<float> values(size / sizeof(float));
    uint64_t got = 0;
    while (got < size || (size == 0 && got == 0)) {
      const wire::Envelope c = co_await link.receive();
      if (c.has_error()) throw Error("coordinator: " + c.error().message());
      if (!c.has_tensor_chunk()) throw Error("expected a tensor chunk");
      const auto& chunk = c.tensor_chunk();
      if (chunk.blake2b() != d || chunk.total_bytes() != size || chunk.offset() != got ||
          chunk.data().size() > size - got)
        throw Error("tensor chunk out of order or out of bounds");
      std::memcpy(reinterpret_cast<char*>(values.data()) + got, chunk.data().data(),
                  chunk.data().size());
      got += chunk.data().size();
      if (size == 0) break;
    }
    if (!exchange::bytes_match(
            *es.front(), std::string_view(reinterpret_cast<const char*>(values.data()), size)))
      throw Error("tensor " + es.front()->name() + " does not match its signed digest");
    StagedWeights::Tensor t{.digest = d, .names = {}, .values = std::move(values)};
    for (const auto* e : es) t.names.push_back(e->name());
    out.tensors.push_back(std::move(t));
    fetched_bytes_ += static_cast<double>(size);
  }
  co_return out;
}

void WeightSync::load(
    const StagedWeights& w,
    const std::function<void(const std::string&, const std::vector<float>&)>& put) {
  for (const auto& t : w.tensors)
    for (const auto& name : t.names) {
      put(name, t.values);
      held_[name] = t.digest;
    }
  version_ = w.version;
  loaded_ = true;
}

}  // namespace cohort::node
