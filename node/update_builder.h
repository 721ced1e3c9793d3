// A node's update from a computed lease: every completion with its token ids, their digest and
// its reward; the unit, sequence and token counts and the reward statistics exactly as the
// coordinator recomputes them (coordinator/update_checks.h); the encoded gradient sum; sealed
// (a signed header binding the stream that carries completions and tensors).
// Test faults (node.h, Fault) are applied here, where a real adversary would apply them.
//
//   UpdateBuilder b{.round_id = id, .identity = key, .coordinator = coord, .group_size = G};
//   protocol::SealedUpdate su = b.build(lease, version, sequence, gradient, encoder);
#pragma once

#include <cstdint>
#include <string>

#include "exchange/gradient_wire.h"
#include "node/lease_work.h"
#include "node/node.h"
#include "protocol/identity.h"
#include "protocol/signed_update.h"

namespace cohort::node {

struct UpdateBuilder {
  std::string round_id;
  const protocol::Identity& identity;
  protocol::PeerId coordinator;
  int group_size = 0;
  Fault fault = Fault::none;
  std::string compute_precision = "fp32";  // how the linear layers computed (audits match it)
  std::string sampling_device = "cpu";     // where completions were sampled (audits re-sample CPU ones)

  // `g.grad` is consumed (encoded, and changed in place by the gradient faults). Throws
  // cohort::Error when the gradient holds NaN or Inf (nothing is sent; Fault::nan writes its NaN
  // into the encoded bytes, past that check).
  [[nodiscard]] protocol::SealedUpdate build(const wire::WorkLease& lease, uint64_t policy_version,
                                         uint64_t sequence, LeaseGradient& g,
                                         exchange::GradientEncoder& encoder,
                                         double compute_seconds = 0) const;
};

}  // namespace cohort::node
