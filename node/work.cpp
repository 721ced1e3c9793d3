// One lease on the compute thread: its groups split across the local workers by measured
// throughput (lease_split.h), rolled out, scored and reduced (lease_work.h), then built into a
// signed update (update_builder.h).
#include <spdlog/spdlog.h>

#include "common/check.h"
#include "common/clock.h"
#include "node/lease_work.h"
#include "node/node_impl.h"
#include "node/update_builder.h"

namespace cohort::node {

// The lease's groups split across the local workers by measured throughput, rolled out,
// scored and reduced into one gradient sum. A failing worker (or reduction) gives the lease
// back: nullopt, and the coordinator re-issues it when this node asks for work again.
// Runs on the compute thread.
std::optional<protocol::SealedUpdate> Node::work(const wire::WorkLease& lease) {
  const double t0 = mono_s();
  const int n = lease.prompt_indices_size();
  if (n == 0 || lease.seeds_size() != n ||
      lease.group_size() != static_cast<uint32_t>(cfg_.group_size))
    throw Error("malformed lease");
  if (!speed_) {
    std::vector<double> memory;
    for (const auto& d : devices_->describe())
      memory.push_back(static_cast<double>(d.memory_bytes()));
    speed_ = std::make_unique<WorkerThroughput>(memory);
  }
  const std::vector<GroupRange> split = split_lease(n, speed_->weights());
  LeaseContext ctx{*task_, *tok_, cfg_, layout_};
  ctx.cherry_pick = opt_.fault == Fault::cherry_pick;
  if (opt_.fault == Fault::worker_throw && !fault_fired_) {
    ctx.fail_worker = devices_->size() - 1;
    fault_fired_ = true;
  }
  LeaseGradient g;
  try {
    g = compute_lease(*devices_, ctx, {lease.prompt_indices().data(), static_cast<size_t>(n)},
                      {lease.seeds().data(), static_cast<size_t>(n)}, split);
  } catch (const WorkerError& e) {
    spdlog::error("node {}: lease {} given back: {}", opt_.name, lease.lease_id(), e.what());
    ++leases_failed_;
    given_back_ = e.what();
    return std::nullopt;
  } catch (const CollectiveError& e) {
    const std::string why =
        std::string("reduction failed (") + collective_failure_name(e.failure()) + "): " + e.what();
    spdlog::error("node {}: lease {} given back: {}", opt_.name, lease.lease_id(), why);
    ++leases_failed_;
    given_back_ = why;
    return std::nullopt;
  }
  if (opt_.fault == Fault::stop_only) {
    // The free-rider an independent client built: every completion the stop token alone, scored
    // as the coordinator will score it, and no gradient; counts consistent with that.
    const int64_t stop = tok_->stop_ids().front();
    g.units = g.tokens = g.loss = g.kl_sum = 0;
    for (auto& share : g.shares) {
      for (auto& c : share.batch.rollout.completions) c = {stop};
      grpo::score_rollout(*tok_, *task_, share.batch);
      // One token each: units = sequences = tokens under every loss aggregation.
      const double n = static_cast<double>(share.batch.rollout.completions.size());
      g.tokens += n;
      g.units += n;
    }
    std::fill(g.grad.begin(), g.grad.end(), 0.0f);
  }
  int64_t rows = 0, generated = 0;
  double rsum = 0;
  for (int w = 0; w < devices_->size(); ++w) {
    const auto& share = g.shares[static_cast<size_t>(w)];
    if (share.groups.size() > 0)
      speed_->record(w, static_cast<double>(share.batch.rollout.generated_tokens), share.seconds);
    generated += share.batch.rollout.generated_tokens;
    rows += static_cast<int64_t>(share.batch.rewards.size());
    for (float r : share.batch.rewards) rsum += r;
  }
  sequence_ = std::max<uint64_t>(sequence_ + 1, static_cast<uint64_t>(unix_ms()) * 1000);
  const UpdateBuilder builder{.round_id = round_id_,
                              .identity = id_,
                              .coordinator = coordinator_,
                              .group_size = cfg_.group_size,
                              .fault = opt_.fault,
                              .compute_precision = grpo::precision_name(
                                  grpo::parse_precision(opt_.precision)),
                              .sampling_device = opt_.gpus.empty() ? "cpu" : "cuda"};
  // A lazy peer computes on the first weights it loaded and claims the lease's version.
  const uint64_t version = opt_.fault == Fault::lazy ? lease.policy_version() : sync_->version();
  protocol::SealedUpdate su = builder.build(lease, version, sequence_, g, *encoder_, mono_s() - t0);
  const double compute = mono_s() - t0;
  compute_s_ += compute;
  last_generated_ = static_cast<double>(generated);
  last_tokens_per_s_ = double(generated) / std::max(compute, 1e-9);
  samples_ += rows;
  groups_ += n;
  std::string shares;
  for (const WorkerShare& share : g.shares) {
    if (!shares.empty()) shares += '|';
    shares += std::to_string(share.groups.size());
  }
  spdlog::info("node {}: v{} lease {} {} groups{} {:.0f} tok/s reward {:.2f} ({:.2f} s)", opt_.name,
               sync_->version(), lease.lease_id(), n,
               g.shares.size() > 1 ? " (workers " + shares + ")" : std::string(),
               double(generated) / std::max(compute, 1e-9), rows ? rsum / double(rows) : 0.0,
               compute);
  return su;
}

}  // namespace cohort::node
