#include "node/update_builder.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "common/clock.h"
#include "exchange/rewards.h"
#include "exchange/seeds.h"
#include "protocol/signed_update.h"

namespace cohort::node {

protocol::SealedUpdate UpdateBuilder::build(const wire::WorkLease& lease, uint64_t policy_version,
                                        uint64_t sequence, LeaseGradient& g,
                                        exchange::GradientEncoder& encoder,
                                        double compute_seconds) const {
  wire::GradientUpdate u;
  u.set_round_id(round_id);
  u.set_lease_id(lease.lease_id());
  u.set_policy_version(policy_version);
  u.set_peer(identity.id().bytes().data(), identity.id().bytes().size());
  u.set_sequence(sequence);
  u.set_timestamp_unix_ms(static_cast<uint64_t>(unix_ms()));
  u.set_recipient(coordinator.bytes().data(), coordinator.bytes().size());
  std::vector<float> honest_rewards;
  int64_t rows = 0;
  for (const WorkerShare& share : g.shares) {
    const auto& b = share.batch;
    // Each completion's Σ log π_sample (what its loss took as π_old): the audits' sampling check.
    std::vector<float> logprob_sums(b.rewards.size(), 0.0f);
    if (b.rollout.logprobs.defined() && b.rollout.logprobs.size(0) == static_cast<int64_t>(b.rewards.size())) {
      const at::Tensor sums = b.rollout.logprobs.sum(1).to(at::kFloat).contiguous();
      std::copy(sums.data_ptr<float>(), sums.data_ptr<float>() + sums.numel(), logprob_sums.begin());
    }
    for (size_t r = 0; r < b.rewards.size(); ++r) {
      const int gi = static_cast<int>(r) / group_size;
      auto* c = u.add_completions();
      c->set_prompt_index(lease.prompt_indices(static_cast<int>(share.groups.begin) + gi));
      c->set_completion(static_cast<uint32_t>(r % static_cast<size_t>(group_size)));
      for (int64_t t : b.rollout.completions[r]) c->add_token_ids(static_cast<uint32_t>(t));
      const protocol::Digest d =
          exchange::completion_digest(std::span<const int64_t>(b.rollout.completions[r]));
      c->set_blake2b(d.data(), d.size());
      c->set_logprob_sum(logprob_sums[r]);
      const float honest = b.rewards[r];
      c->set_reward(fault == Fault::false_reward && rows == 0 ? honest + 1.0f
                                                              : honest);  // a lie to catch
      honest_rewards.push_back(honest);
      ++rows;
    }
  }
  u.set_units(static_cast<uint64_t>(std::llround(g.units)));
  u.set_sequences(static_cast<uint64_t>(rows));
  u.set_tokens(static_cast<uint64_t>(std::llround(g.tokens)));
  *u.mutable_rewards() = exchange::reward_stats(honest_rewards);
  u.set_loss(g.loss);
  u.set_kl_sum(g.kl_sum);
  u.set_compute_seconds(compute_seconds);  // diagnostic only
  u.set_compute_precision(compute_precision);
  u.set_sampling_device(sampling_device);
  if (fault ==
      Fault::poison) {  // honest rewards; the gradient reversed, scaled up and drowned in noise
    std::mt19937 rng(static_cast<uint32_t>(sequence));
    std::normal_distribution<float> noise(0.0f, 10.0f);
    for (float& x : g.grad) x = -20.0f * x + noise(rng);
  }
  switch (fault) {  // the adversaries of the fault tests (node.h); each keeps honest rewards
    case Fault::sign_flip:
    case Fault::sybil:
      for (float& x : g.grad) x = -x;
      break;
    case Fault::scaled:
      for (float& x : g.grad) x *= 10.0f;
      break;
    case Fault::noise: {
      double ss = 0;
      for (float x : g.grad) ss += double(x) * x;
      const double rms = std::sqrt(ss / std::max<size_t>(1, g.grad.size()));
      std::mt19937 rng(static_cast<uint32_t>(sequence));
      std::normal_distribution<float> noise(0.0f, static_cast<float>(3 * rms));
      for (float& x : g.grad) x += noise(rng);
      break;
    }
    case Fault::zero:
      std::fill(g.grad.begin(), g.grad.end(), 0.0f);
      break;
    case Fault::collude: {
      // One direction for every colluder (a fixed seed), at this update's own norm: they agree
      // with each other, which is what coordinate-wise robust rules count on not happening.
      double ss = 0;
      for (float x : g.grad) ss += double(x) * x;
      std::mt19937 rng(0xC011D);
      std::normal_distribution<float> n01(0.0f, 1.0f);
      double ps = 0;
      for (float& x : g.grad) {
        x = n01(rng);
        ps += double(x) * x;
      }
      const auto scale = static_cast<float>(ps > 0 ? std::sqrt(ss / ps) : 0.0);
      for (float& x : g.grad) x *= scale;
      break;
    }
    default:
      break;
  }
  encoder.encode(g.grad, *u.mutable_tensors());
  if (fault == Fault::nan && u.tensors_size() > 0 && u.tensors(0).payload().size() >= 4)
    u.mutable_tensors(0)->mutable_payload()->replace(0, 4, "\xff\xff\xff\xff", 4);  // NaN in raw and fp8
  return protocol::seal_update(std::move(u), identity);
}

}  // namespace cohort::node
