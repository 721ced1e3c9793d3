#include "node/lease_work.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>

#include "common/check.h"
#include "common/clock.h"
#include "node/collective_torch.h"

namespace cohort::node {
namespace {

// A GPU replica's gradients in ParamLayout order as one float32 tensor on its device (zeros
// where a parameter has no gradient): what the NCCL collective reduces.
at::Tensor flat_gradient(const grpo::Model& model, const exchange::ParamLayout& layout) {
  const auto& ps = model.named_parameters();
  COHORT_CHECK(ps.size() == layout.slots.size());
  std::vector<at::Tensor> parts;
  for (size_t i = 0; i < ps.size(); ++i) {
    const auto& g = ps[i].tensor.grad();
    parts.push_back(g.defined() ? g.detach().to(at::kFloat).reshape({-1})
                                : at::zeros({static_cast<int64_t>(layout.slots[i].numel)},
                                            ps[i].tensor.options().dtype(at::kFloat)));
  }
  return at::cat(parts);
}

}  // namespace

LeaseGradient compute_lease(DeviceGroup& devices, const LeaseContext& ctx,
                            std::span<const uint64_t> prompt_indices,
                            std::span<const uint64_t> seeds, std::span<const GroupRange> split) {
  const int n = static_cast<int>(prompt_indices.size());
  const int workers = devices.size();
  COHORT_CHECK(seeds.size() == prompt_indices.size());
  COHORT_CHECK(static_cast<int>(split.size()) == workers, "one range per worker");
  for (int w = 0, at = 0; w < workers; ++w) {
    COHORT_CHECK(split[w].begin == at && split[w].end >= split[w].begin,
                 "ranges must tile the lease in order");
    at = split[w].end;
    if (w + 1 == workers) COHORT_CHECK(at == n, "ranges must cover the lease");
  }
  const int G = ctx.cfg.group_size;
  LeaseGradient out;
  out.shares.resize(workers);
  for (int w = 0; w < workers; ++w) out.shares[w].groups = split[w];

  // Phase 1: roll out and score each worker's groups.
  devices.run([&](int w, grpo::Model& model) {
    if (w == ctx.fail_worker) throw Error("injected fault (--fault worker-throw)");
    WorkerShare& share = out.shares[w];
    if (share.groups.size() == 0) return;
    const double t0 = mono_s();
    std::vector<std::vector<int64_t>> ids;
    grpo::SamplingParams sp = ctx.cfg.sampling;
    sp.stop_tokens = ctx.tok.stop_ids();
    for (int i = share.groups.begin; i < share.groups.end; ++i) {
      share.batch.prompts.push_back(ctx.task.train_prompt(prompt_indices[i]));
      ids.push_back(grpo::encode_prompt(ctx.tok, share.batch.prompts.back()));
      sp.group_seeds.push_back(seeds[i]);
    }
    share.batch.rollout = grpo::generate(model, ids, G, sp, ctx.tok.pad_id());
    grpo::score_rollout(ctx.tok, ctx.task, share.batch);
    if (ctx.cherry_pick) {
      grpo::ScoredBatch other;
      other.prompts = share.batch.prompts;
      grpo::SamplingParams sp2 = sp;
      for (auto& seed : sp2.group_seeds) seed ^= 0x9e3779b97f4a7c15ull;
      other.rollout = grpo::generate(model, ids, G, sp2, ctx.tok.pad_id());
      grpo::score_rollout(ctx.tok, ctx.task, other);
      std::vector<std::vector<int64_t>> chosen;
      for (size_t i = 0; i < share.batch.rewards.size(); ++i)
        chosen.push_back(share.batch.rewards[i] > other.rewards[i] ? share.batch.rollout.completions[i]
                                                                   : other.rollout.completions[i]);
      grpo::Rollout r = grpo::layout(ids, G, chosen, sp.max_new_tokens, ctx.tok.pad_id());
      const auto stops = ctx.tok.stop_ids();
      for (const auto& c : chosen) {
        r.generated_tokens += static_cast<int64_t>(c.size());
        r.truncated.push_back(static_cast<int64_t>(c.size()) == sp.max_new_tokens &&
                              std::find(stops.begin(), stops.end(), c.back()) == stops.end());
      }
      {
        at::NoGradGuard no_grad;
        r.logprobs = grpo::completion_logprobs(model, r, sp.temperature) * r.completion_mask;
      }
      share.batch.rollout = std::move(r);
      grpo::score_rollout(ctx.tok, ctx.task, share.batch);
    }
    share.seconds += mono_s() - t0;
  });

  // Advantages over the whole lease (identical to per-share ones for `group` scaling).
  std::vector<float> rewards;
  rewards.reserve(static_cast<size_t>(n) * G);
  for (const auto& s : out.shares)
    rewards.insert(rewards.end(), s.batch.rewards.begin(), s.batch.rewards.end());
  const std::vector<float> advantages = grpo::group_advantages(rewards, G, ctx.cfg.scale);

  // Phase 2: each worker's gradient sum, flattened in its worker's memory (host vectors for CPU
  // workers, a tensor on the worker's GPU otherwise); counts beside it.
  const bool on_gpu = devices.replica(0).device().is_cuda();
  std::vector<std::vector<float>> grads(workers);
  std::vector<at::Tensor> flats(workers);
  std::vector<std::array<double, 4>> counts(workers, {0.0, 0.0, 0.0, 0.0});  // units, tokens, loss, KL
  devices.run([&](int w, grpo::Model& model) {
    WorkerShare& share = out.shares[w];
    if (share.groups.size() == 0) {  // nothing to add, but the reduction takes its zeros
      if (on_gpu)
        flats[w] = at::zeros({static_cast<int64_t>(ctx.layout.total)}, model.parameters()[0].options());
      else
        grads[w].assign(ctx.layout.total, 0.0f);
      return;
    }
    const double t0 = mono_s();
    const size_t first = static_cast<size_t>(share.groups.begin) * G;
    share.batch.advantages.assign(advantages.begin() + first,
                                  advantages.begin() + first + share.batch.rewards.size());
    {
      at::NoGradGuard g;
      for (auto& p : model.parameters())
        if (p.grad().defined()) p.grad().zero_();
    }
    const grpo::Model* reference = devices.reference(w);
    if (ctx.cfg.loss.beta > 0 && !reference) throw Error("the round's KL term needs the reference policy, not loaded");
    const grpo::LossSums sums = grpo::accumulate_gradient(model, reference, share.batch.rollout,
                                                          share.batch.advantages, ctx.cfg);
    // The flat copy is what travels on: the parameters' own gradients (the model's size again)
    // are dropped, on the CPU each as soon as it is copied, and never held between leases.
    if (on_gpu) {
      flats[w] = flat_gradient(model, ctx.layout);
      for (auto& p : model.parameters()) p.mutable_grad().reset();
    } else {
      grads[w].resize(ctx.layout.total);
      exchange::flatten_grads(model, ctx.layout, grads[w], /*release=*/true);
    }
    counts[w] = {sums.units, sums.tokens, sums.loss_sum.item<double>(), sums.kl_sum};
    share.seconds += mono_s() - t0;
  });

  if (on_gpu) {
    std::vector<std::span<double>> cs;
    for (auto& c : counts) cs.push_back(c);
    reduce_tensors(devices.collective(), flats, cs);  // NCCL on the workers' streams
    const at::Tensor host = flats[0].to(at::kCPU).contiguous();
    out.grad.assign(host.data_ptr<float>(), host.data_ptr<float>() + ctx.layout.total);
  } else {
    std::vector<GradientShard> shards(workers);
    for (int w = 0; w < workers; ++w) shards[w] = {grads[w].data(), counts[w]};
    devices.collective().reduce_sum(shards, ctx.layout.total);
    out.grad = std::move(grads[0]);
  }
  out.units = counts[0][0];
  out.tokens = counts[0][1];
  out.loss = counts[0][2];
  out.kl_sum = counts[0][3];
  return out;
}

}  // namespace cohort::node
