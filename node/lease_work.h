// One lease on a DeviceGroup, shared by the node and its tests: the lease's groups are split
// among the workers (node/lease_split.h); each worker rolls out its groups with the lease's
// per-group seeds and scores them; advantages are computed over the whole lease (so `batch`
// scaling does not depend on the split); each worker accumulates its GRPO gradient sum; the
// group's collective sums gradients and counts into one result.
//
//   LeaseContext ctx{task, tokenizer, cfg, layout};
//   LeaseGradient g = compute_lease(devices, ctx, indices, seeds, split_lease(n, speed.weights()));
//   encoder.encode(g.grad, ...);   // g.units, g.tokens, g.loss: sums over the lease
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "exchange/gradient_wire.h"
#include "grpo/trainer.h"
#include "node/device_group.h"
#include "node/lease_split.h"

namespace cohort::node {

struct LeaseContext {
  const grpo::Task& task;
  const grpo::Tokenizer& tok;
  const grpo::GrpoConfig& cfg;
  const exchange::ParamLayout& layout;
  int fail_worker = -1;  // fault injection (`--fault worker-throw`): this worker throws
  // Fault injection (`--fault cherry-pick`): each group is also sampled with other seeds, and
  // every completion slot keeps the better-scored of the two (ties: the other seeds' one).
  bool cherry_pick = false;
};

struct WorkerShare {
  GroupRange groups;
  grpo::ScoredBatch batch;  // rows in group order; empty when the worker had no groups
  double seconds = 0;       // the worker's compute time on this lease
};

struct LeaseGradient {
  std::vector<WorkerShare> shares;         // one per worker, in worker (= lease) order
  std::vector<float> grad;                 // Σ of the workers' gradient sums, ParamLayout order
  double units = 0, tokens = 0, loss = 0;  // Σ over workers (grpo::LossSums)
  double kl_sum = 0;                       // Σ KL to the reference (0 without a KL term)
};

// `split` has one range per worker covering [0, prompt_indices.size()) in order (split_lease).
// Throws WorkerError (device_group.h) when a worker fails, CollectiveError when the reduction
// does; the device group stays usable for the next lease either way.
LeaseGradient compute_lease(DeviceGroup& devices, const LeaseContext& ctx,
                            std::span<const uint64_t> prompt_indices,
                            std::span<const uint64_t> seeds, std::span<const GroupRange> split);

}  // namespace cohort::node
