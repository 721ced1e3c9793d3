// One lease on the compute thread: its groups split across the local workers by measured
// throughput (lease_split.h), rolled out, scored and reduced (lease_work.h), then built into a
// signed update (update_builder.h).
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "common/check.h"
#include "common/clock.h"
#include "exchange/lease_audit.h"
#include "exchange/sketch.h"
#include "node/lease_work.h"
#include "node/node_impl.h"
#include "node/update_builder.h"

namespace cohort::node {

// Fault tests (--collude-dir): a colluder leaves the gradient of its last lease in the shared
// folder; a copycat sends the one it finds there (when its length fits) in place of its own.
void Node::share_with_colluders(std::vector<float>& grad) const {
  namespace fs = std::filesystem;
  const fs::path file = fs::path(opt_.collude_dir) / "gradient.f32";
  if (opt_.fault == Fault::copycat) {
    std::ifstream in(file, std::ios::binary);
    std::vector<float> theirs(grad.size());
    if (in.read(reinterpret_cast<char*>(theirs.data()),
                static_cast<std::streamsize>(theirs.size() * sizeof(float))) &&
        in.peek() == EOF) {
      spdlog::warn("node {}: [fault copycat] sending a colluder's gradient as its own", opt_.name);
      grad = std::move(theirs);
    }
    return;
  }
  const fs::path tmp = file.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(grad.data()),
              static_cast<std::streamsize>(grad.size() * sizeof(float)));
  }
  std::error_code ec;
  fs::rename(tmp, file, ec);
}

wire::AuditReport Node::validate(const wire::WorkLease& lease) {
  const double t0 = mono_s();
  const wire::AuditTask& t = lease.audit();
  const int n = lease.prompt_indices_size();
  if (n == 0 || lease.seeds_size() != n || lease.group_size() != static_cast<uint32_t>(cfg_.group_size) ||
      t.completions_size() != n * cfg_.group_size || t.sketch_size() == 0 ||
      t.sketch_size() > exchange::kMaxSketchSize)
    throw Error("malformed audit lease");
  const std::string& precision = t.compute_precision().empty() ? std::string("fp32") : t.compute_precision();
  const grpo::Precision p = grpo::parse_precision(precision);  // throws on an unknown name
  // Re-sampling reproduces CPU FP32 sampling only on a CPU worker.
  const bool resample = exchange::sampling_reproducible(t.sampling_device(), precision) &&
                        !devices_->replica(0).device().is_cuda();
  wire::AuditReport rep;
  rep.set_lease_id(lease.lease_id());
  rep.set_completions(static_cast<uint32_t>(t.completions_size()));
  if (opt_.fault == Fault::rubber_stamp) {
    // Vouches without recomputing: every completion "re-sampled the same", log-probabilities and
    // gradient made up.
    spdlog::warn("node {}: [fault rubber-stamp] reporting on {} without recomputing", opt_.name,
                 lease.lease_id());
    if (resample) {
      rep.set_resampled(rep.completions());
      rep.set_resampled_same(rep.completions());
    }
    std::mt19937 rng(static_cast<uint32_t>(t.sketch_seed()));
    std::normal_distribution<float> n01(0.0f, 1.0f);
    for (int i = 0; i < t.completions_size(); ++i) rep.add_logprob_sums(-1.0f);
    for (uint32_t i = 0; i < t.sketch_size(); ++i) rep.add_sketch(n01(rng));
    rep.set_norm(1.0);
    rep.set_typicality_z(0);
    rep.set_seconds(mono_s() - t0);
    return rep;
  }
  const std::span<const uint64_t> prompts(lease.prompt_indices().data(), static_cast<size_t>(n));
  const exchange::AuditContext ctx{
      .task = *task_,
      .tok = *tok_,
      .cfg = cfg_,
      .layout = layout_,
      .codec = encoder_->codec() == wire::CODEC_TOPK_Q4 ? wire::CODEC_TOPK_Q4 : wire::CODEC_RAW};
  exchange::LeaseRecomputation r;
  devices_->run([&](int w, grpo::Model& model) {
    if (w != 0) return;
    // The author's arithmetic for the audit, this node's own again after.
    const grpo::Precision mine = model.precision();
    model.set_precision(p);
    try {
      r = exchange::recompute_lease(model, devices_->reference(0), ctx, prompts,
                                    {lease.seeds().data(), static_cast<size_t>(lease.seeds_size())},
                                    t.completions(), resample);
    } catch (...) {
      model.set_precision(mine);
      throw;
    }
    model.set_precision(mine);
  });
  rep.set_resampled(r.resampled);
  rep.set_resampled_same(r.resampled_same);
  rep.set_kl_sum(r.kl_sum);
  rep.set_tokens(r.tokens);
  for (float x : r.logprob_sums) rep.add_logprob_sums(x);
  rep.set_typicality_z(r.typicality_z);
  rep.set_outside_support(r.outside_support);
  double ss = 0;
  for (float x : r.gradient) ss += double(x) * x;
  rep.set_norm(std::sqrt(ss));
  for (float x : exchange::count_sketch(r.gradient, t.sketch_seed(), t.sketch_size()))
    rep.add_sketch(x);
  rep.set_seconds(mono_s() - t0);
  compute_s_ += rep.seconds();
  spdlog::info("node {}: audit {} on v{}: {} completions, re-sampled {}/{}, typicality z {:.2f} "
               "({:.2f} s)",
               opt_.name, lease.lease_id(), lease.policy_version(), rep.completions(),
               r.resampled_same, r.resampled, r.typicality_z, rep.seconds());
  return rep;
}

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
  if (!opt_.collude_dir.empty()) share_with_colluders(g.grad);
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
