#include "coordinator/update_checks.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "exchange/rewards.h"
#include "exchange/seeds.h"
#include "exchange/sketch.h"
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
  f.units = grpo::loss_units(ctx_.grpo.loss.loss, double(f.sequences), f.loss_tokens);
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

double norm_ratio(double reported_norm, double recomputed_norm) {
  return recomputed_norm > 0 ? reported_norm / recomputed_norm : (reported_norm == 0 ? 1.0 : 1e300);
}

AuditFindings dense_findings(const exchange::LeaseRecomputation& r, std::span<const float> reported) {
  double b2 = 0, a2 = 0;
  for (float x : reported) b2 += double(x) * x;
  for (float x : r.gradient) a2 += double(x) * x;
  return {.completions = r.completions,
          .resampled = r.resampled,
          .resampled_same = r.resampled_same,
          .logprob_sums = r.logprob_sums,
          .typicality_z = r.typicality_z,
          .outside_support = r.outside_support,
          .tokens = r.tokens,
          .kl_sum = r.kl_sum,
          .cosine = exchange::cosine(r.gradient, reported),
          .norm_ratio = norm_ratio(std::sqrt(b2), std::sqrt(a2))};
}

double logprob_tolerance(const std::string& compute_precision) {
  if (compute_precision.empty() || compute_precision == "fp32") return 2e-3;
  return compute_precision == "bf16" ? 0.05 : 0.1;
}

std::optional<Refusal> judge_audit(const AuditFindings& f, const wire::GradientUpdate& u,
                                   std::span<const uint64_t> lease_prompts, int group_size,
                                   const AuditLimits& lim) {
  const auto not_sampled = [&](std::string why) {
    return Refusal{wire::ACK_NOT_SAMPLED, std::move(why)};
  };
  // All of them, for an honest CPU peer; a margin for a near-tie that another CPU's rounding tips
  // the other way.
  if (f.resampled > 0 && uint64_t{f.resampled_same} * 10 < uint64_t{f.resampled} * 9)
    return not_sampled(fmt::format(
        "{} of {} completions are not what the lease's seeds sample from version {}",
        f.resampled - f.resampled_same, f.resampled, u.policy_version()));
  // The log-probabilities the peer's loss used as π_old must be those of the version it names: a
  // peer sampling on other weights (a lazy one) reports its own.
  const size_t n = lease_prompts.size() * static_cast<size_t>(group_size);
  if (f.logprob_sums.size() != n || static_cast<size_t>(u.completions_size()) != n)
    return Refusal{wire::ACK_INTERNAL, "audit findings do not cover the lease"};
  std::map<std::pair<uint64_t, uint32_t>, float> reported;
  for (const auto& c : u.completions()) reported[{c.prompt_index(), c.completion()}] = c.logprob_sum();
  double diff = 0;
  size_t i = 0;
  for (uint64_t idx : lease_prompts)
    for (int c = 0; c < group_size; ++c, ++i)
      diff += std::abs(double(reported[{idx, static_cast<uint32_t>(c)}]) - f.logprob_sums[i]);
  const double per_token = diff / std::max(1.0, f.tokens);
  if (!(per_token <= logprob_tolerance(u.compute_precision())))
    return not_sampled(fmt::format(
        "the completions' log-probabilities differ from version {}'s by {:.3g} per token (at most "
        "{:.3g} for {})",
        u.policy_version(), per_token, logprob_tolerance(u.compute_precision()),
        u.compute_precision().empty() ? "fp32" : u.compute_precision()));
  // Samples of the policy are typical of it: their surprisal sums to about their entropy.
  // A token at the edge of top-k / top-p may fall on the other side under other rounding: a few
  // in a hundred are tolerated, a fabricated completion has many more.
  if (f.outside_support > 0.01 * f.tokens)
    return not_sampled(fmt::format(
        "{} of {} completion tokens have probability 0 under the round's sampling (at most 1 %)",
        f.outside_support, f.tokens));
  if (std::isfinite(f.typicality_z) ? std::abs(f.typicality_z) > lim.typicality_z_max
                                    : !std::isnan(f.typicality_z))
    return not_sampled(fmt::format(
        "the completions are not typical of version {}: typicality z = {:.1f} (|z| at most {:g}; "
        "{} for samples of the policy's own)",
        u.policy_version(), f.typicality_z, lim.typicality_z_max,
        f.typicality_z > 0 ? "less likely than" : "likelier than"));
  // The norm must agree too: a scaled honest gradient has cosine 1.
  if (!(f.cosine >= lim.min_cosine) || !(f.norm_ratio <= 1.5 && f.norm_ratio >= 1 / 1.5))
    return Refusal{wire::ACK_RECOMPUTE_MISMATCH,
                   fmt::format("recomputed gradient differs: cosine {:.4f} (min {:.2f}), norm "
                               "ratio {:.3f}",
                               f.cosine, lim.min_cosine, f.norm_ratio)};
  // The KL the peer reports feeds the step's statistics: it must be the one its completions give
  // (5 %, and a little per token for FP8/BF16 arithmetic).
  if (lim.kl_term &&
      !(std::abs(u.kl_sum() - f.kl_sum) <= 0.05 * std::abs(f.kl_sum) + 1e-3 * (f.tokens + 1)))
    return Refusal{wire::ACK_RECOMPUTE_MISMATCH,
                   fmt::format("reported KL sum {:.6g} differs from the recomputed {:.6g}",
                               u.kl_sum(), f.kl_sum)};
  return std::nullopt;
}

double audit_probability(int64_t streak, bool adaptive, int trust_after, double recompute_fraction) {
  if (!adaptive) return recompute_fraction;
  if (streak < trust_after) return 1.0;
  return std::max(recompute_fraction, static_cast<double>(trust_after) / static_cast<double>(streak));
}

}  // namespace cohort::coordinator
