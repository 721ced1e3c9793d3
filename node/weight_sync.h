// The node's copy of the policy weights: which bytes its replicas hold (by digest), and how the
// weights of a version are brought in: the signed manifest (checked against the coordinator's
// pinned key and against the model), then only the tensors whose digest differs from what is
// held, each checked against the signed digest before it is kept. Fetching stages the tensors;
// loading them is a separate call, so a node can fetch the next version while its replicas still
// compute with the current one.
//
//   WeightSync sync(layout, coordinator_key, round_id);
//   StagedWeights w = co_await sync.fetch(link, version);     // nothing loaded yet
//   sync.load(w, [&](const std::string& name, const std::vector<float>& v) { devices.load(name, v);
//   });
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "exchange/param_layout.h"
#include "node/link.h"
#include "protocol/identity.h"

namespace cohort::node {

// The tensors of one policy version that differ from what the replicas hold, verified, not loaded.
struct StagedWeights {
  uint64_t version = 0;
  struct Tensor {
    std::string digest;              // raw 32 bytes
    std::vector<std::string> names;  // parameters with these bytes (tied weights share one)
    std::vector<float> values;
  };
  std::vector<Tensor> tensors;
};

class WeightSync {
 public:
  WeightSync(const exchange::ParamLayout& layout, protocol::PeerId coordinator,
             std::string round_id)
      : layout_(layout), coordinator_(coordinator), round_id_(std::move(round_id)) {}

  // Throws cohort::Error (or a protocol error) when the coordinator sends anything that does not
  // check out: a manifest not signed by it, of another round, not fitting the model; chunks out
  // of order or bounds; bytes not matching their signed digest.
  asio::awaitable<StagedWeights> fetch(CoordinatorLink& link, uint64_t wanted);
  // Hands each staged tensor to `put` (parameter name, values) and records it as held.
  void load(const StagedWeights& w,
            const std::function<void(const std::string&, const std::vector<float>&)>& put);

  [[nodiscard]] bool holds(uint64_t version) const { return loaded_ && version_ == version; }
  [[nodiscard]] uint64_t version() const { return version_; }
  [[nodiscard]] double fetched_bytes() const { return fetched_bytes_; }

 private:
  const exchange::ParamLayout& layout_;
  protocol::PeerId coordinator_;
  std::string round_id_;
  std::map<std::string, std::string> held_;  // parameter → digest loaded
  uint64_t version_ = 0;
  bool loaded_ = false;
  double fetched_bytes_ = 0;
};

}  // namespace cohort::node
