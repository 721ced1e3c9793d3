#include "coordinator/update_checks.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "exchange/rewards.h"
#include "exchange/seeds.h"
#include "grpo/scoring.h"

namespace cohort::coordinator {
namespace {

Refusal malformed(std::string why) { return {wire::ACK_MALFORMED, std::move(why)}; }

// Reward statistics are recomputed from the same float rewards in the same order as an honest
// node sums them; the slack only absorbs a different summation order.
bool close_to(double claimed, double actual) {
  return std::isfinite(claimed) &&
         std::abs(claimed - actual) <= 1e-6 * std::max(1.0, std::abs(actual));
}

}  // namespace

CheckedBody UpdateChecker::check(const wire::GradientUpdate& u,
                                 std::span<const uint64_t> lease_prompts) const {
  CheckedBody out;
  auto refuse = [&](Refusal r) {
    out.refusal = std::move(r);
    return out;
  };
  if (const std::string& p = u.compute_precision();
      !p.empty() && p != "fp32" && p != "bf16" && p != "fp8")
    return refuse(malformed("compute_precision must be fp32, bf16 or fp8"));
  const int g = ctx_.grpo.group_size;
  const size_t expected = lease_prompts.size() * static_cast<size_t>(g);
  if (static_cast<size_t>(u.completions_size()) != expected)
    return refuse(
        malformed(fmt::format("expected {} completions, got {}", expected, u.completions_size())));
  std::map<uint64_t, std::vector<bool>> seen;
  for (uint64_t idx : lease_prompts) seen[idx].assign(static_cast<size_t>(g), false);
  std::map<uint64_t, grpo::Prompt> prompts;
  const std::vector<int64_t> stops = ctx_.tokenizer.stop_ids();
  const int max_new = ctx_.grpo.sampling.max_new_tokens;
  double asum = 0;
  std::vector<float> rewards;  // recomputed, in the order of the completions
  rewards.reserve(expected);
  UpdateFacts& f = out.facts;
  std::vector<int64_t> ids;
  for (const auto& c : u.completions()) {
    auto s = seen.find(c.prompt_index());
    if (s == seen.end() || c.completion() >= static_cast<uint32_t>(g) || s->second[c.completion()])
      return refuse(malformed(fmt::format("completion ({}, {}) is not in the lease or repeats",
                                          c.prompt_index(), c.completion())));
    s->second[c.completion()] = true;
    if (c.token_ids_size() == 0 || c.token_ids_size() > max_new)
      return refuse(
          malformed(fmt::format("completion ({}, {}) has {} tokens, outside 1..{}",
                                c.prompt_index(), c.completion(), c.token_ids_size(), max_new)));
    ids.clear();
    for (uint32_t t : c.token_ids()) {
      if (t >= static_cast<uint64_t>(ctx_.vocab_size))
        return refuse(malformed("token id out of vocabulary"));
      // A completion ends with its first stop token: nothing may follow it.
      if (!ids.empty() && std::find(stops.begin(), stops.end(), ids.back()) != stops.end())
        return refuse(malformed(fmt::format("completion ({}, {}) goes on after a stop token",
                                            c.prompt_index(), c.completion())));
      ids.push_back(t);
    }
    const protocol::Digest d = exchange::completion_digest(
        std::span<const uint32_t>(c.token_ids().data(), c.token_ids_size()));
    if (c.blake2b().size() != d.size() || std::memcmp(c.blake2b().data(), d.data(), d.size()) != 0)
      return refuse(malformed("completion digest does not match its token ids"));
    auto p = prompts.find(c.prompt_index());
    if (p == prompts.end())
      p = prompts.emplace(c.prompt_index(), ctx_.task.train_prompt(c.prompt_index())).first;
    const grpo::RewardBreakdown r =
        grpo::score_completion(ctx_.tokenizer, ctx_.task, p->second, ids);
    const auto reward = static_cast<float>(r.total);
    if (reward != c.reward())
      return refuse({wire::ACK_BAD_REWARD,
                     fmt::format("prompt {} completion {} claims reward {}, recomputed {}",
                                 c.prompt_index(), c.completion(), c.reward(), reward)});
    rewards.push_back(reward);
    asum += r.accuracy;
    f.tokens += double(ids.size());
    // The sampler flags a completion truncated when it reached max_new_tokens without a stop.
    const bool truncated = static_cast<int>(ids.size()) == max_new &&
                           std::find(stops.begin(), stops.end(), ids.back()) == stops.end();
    if (!(ctx_.grpo.mask_truncated && truncated)) f.loss_tokens += double(ids.size());
    ++f.sequences;
  }
  const wire::RewardStats ours = exchange::reward_stats(rewards);
  f.reward_mean = ours.mean();
  f.accuracy = asum / std::max<double>(1, static_cast<double>(f.sequences));
  switch (ctx_.grpo.loss.loss) {
    case grpo::LossType::grpo:
    case grpo::LossType::dr_grpo:
      f.units = double(f.sequences);
      break;
    case grpo::LossType::bnpo:
    case grpo::LossType::dapo:
      f.units = f.loss_tokens;
      break;
  }
  if (std::abs(double(u.units()) - f.units) > 0.5)
    return refuse(
        malformed(fmt::format("units {} do not match the completions ({})", u.units(), f.units)));
  if (u.sequences() != static_cast<uint64_t>(f.sequences))
    return refuse(malformed(
        fmt::format("sequences {} do not match the completions ({})", u.sequences(), f.sequences)));
  if (std::abs(double(u.tokens()) - f.loss_tokens) > 0.5)
    return refuse(malformed(fmt::format("tokens {} do not match the completions' loss tokens ({})",
                                        u.tokens(), f.loss_tokens)));
  // The reward statistics must be those of the completions: a peer cannot advertise better
  // rewards than it reports (they reach logs, the status page and the ledger).
  const wire::RewardStats& rs = u.rewards();
  if (rs.count() != ours.count() || !close_to(rs.mean(), ours.mean()) ||
      !close_to(rs.std(), ours.std()) || !close_to(rs.min(), ours.min()) ||
      !close_to(rs.max(), ours.max()))
    return refuse(
        {wire::ACK_BAD_REWARD,
         fmt::format("reward statistics (count {}, mean {}, std {}, min {}, max {}) contradict the "
                     "completions (count {}, mean {}, std {}, min {}, max {})",
                     rs.count(), rs.mean(), rs.std(), rs.min(), rs.max(), ours.count(), ours.mean(),
                     ours.std(), ours.min(), ours.max())});
  if (!std::isfinite(u.loss())) return refuse(malformed("loss is not finite"));
  // k3 KL is >= 0 per token (float rounding of exp(d) - d - 1 leaves at most a few ulps below);
  // with beta = 0 nothing is computed against a reference.
  if (!std::isfinite(u.kl_sum()) || u.kl_sum() < -1e-4 * (static_cast<double>(u.tokens()) + 1) ||
      (ctx_.grpo.loss.beta == 0 && u.kl_sum() != 0))
    return refuse(malformed("kl_sum must be finite, >= 0, and 0 when the round has no KL term"));
  return out;
}

std::optional<Refusal> check_norm(std::span<const float> grad, double units, double max_norm) {
  if (max_norm <= 0) return std::nullopt;
  double sq = 0;
  for (float x : grad) sq += double(x) * x;
  const double norm = std::sqrt(sq) / std::max(1.0, units);
  if (norm > max_norm)
    return Refusal{wire::ACK_BAD_NORM,
                   fmt::format("mean-gradient norm {:.6g} exceeds {:.6g}", norm, max_norm)};
  return std::nullopt;
}

double audit_probability(int64_t streak, bool adaptive, int trust_after, double recompute_fraction) {
  if (!adaptive) return recompute_fraction;
  if (streak < trust_after) return 1.0;
  return std::max(recompute_fraction, static_cast<double>(trust_after) / static_cast<double>(streak));
}

}  // namespace cohort::coordinator
