// What the coordinator checks in an update's body before it trusts any of it, without LibTorch:
// every completion of the lease exactly once, in range, with the digest of its token ids and the
// reward the coordinator's own verifier gives it; the unit, sequence and token counts; the reward
// statistics; a finite loss. Each refusal is a typed value (exchange::Refusal) carrying the Ack
// reason docs/OPERATOR.md lists. Signature, staleness, replay and lease ownership are checked
// before (protocol/signed_update.h, the scheduler); the gradient itself after
// (exchange::decode_gradient, check_norm, the audit).
//
//   UpdateChecker checker({task, tokenizer, cfg.grpo, vocab_size});
//   CheckedBody c = checker.check(update, lease.rec.prompts);
//   if (c.refusal) return refuse(*c.refusal);
//   c.facts.reward_mean; c.facts.units;
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "exchange/lease_audit.h"
#include "exchange/refusal.h"
#include "grpo/grpo_config.h"
#include "grpo/tasks.h"
#include "grpo/tokenizer.h"
#include "protocol/messages.pb.h"

namespace cohort::coordinator {

using exchange::Refusal;

// What the coordinator recomputed from an accepted body (never the peer's own claims).
struct UpdateFacts {
  double reward_mean = 0, accuracy = 0;
  double tokens = 0;  // completion tokens
  double loss_tokens =
      0;             // completion tokens that carry loss (mask_truncated drops truncated ones)
  double units = 0;  // what the loss aggregation divides by
  int64_t sequences = 0;
};

struct CheckedBody {
  std::optional<Refusal> refusal;
  UpdateFacts facts;
};

class UpdateChecker {
 public:
  struct Context {
    const grpo::Task& task;
    const grpo::Tokenizer& tokenizer;
    const grpo::GrpoConfig& grpo;
    int64_t vocab_size = 0;
  };
  explicit UpdateChecker(Context ctx) : ctx_(ctx) {}

  // Completions, counts, reward statistics and loss of `u` against the lease's prompt indices.
  // Thread-safe (reads only): runs on the coordinator's compute executor.
  [[nodiscard]] CheckedBody check(const wire::GradientUpdate& u,
                                  std::span<const uint64_t> lease_prompts) const;

 private:
  Context ctx_;
};

// The update's mean gradient (sum / units) must have a norm of at most max_norm (0: no bound).
[[nodiscard]] std::optional<Refusal> check_norm(std::span<const float> gradient_sum, double units,
                                                double max_norm);

// What an audit's recomputation found, compared with the update (whoever recomputed it: the
// coordinator from the dense gradients, a validator through a count sketch).
struct AuditFindings {
  uint32_t completions = 0;
  uint32_t resampled = 0, resampled_same = 0;  // resampled = 0: not re-sampled
  std::span<const float> logprob_sums;         // recomputed, in the lease's order
  double typicality_z = 0;                     // NaN: not computed (greedy sampling)
  uint32_t outside_support = 0;
  double tokens = 0;  // completion tokens the log-probabilities cover
  double kl_sum = 0;
  double cosine = 1, norm_ratio = 1;  // reported vs recomputed gradient
};

// ‖reported‖ / ‖recomputed‖: 1 when both are 0, huge when only the recomputed one is.
[[nodiscard]] double norm_ratio(double reported_norm, double recomputed_norm);

// The findings of a recomputation done here (dense gradients) against the reported gradient.
[[nodiscard]] AuditFindings dense_findings(const exchange::LeaseRecomputation& r,
                                           std::span<const float> reported);

struct AuditLimits {
  double min_cosine = 0.9;
  double typicality_z_max = 8;
  bool kl_term = false;  // the round has a KL term: the reported kl_sum is compared
};

// Mean |reported − recomputed| log-probability per completion token an honest peer stays within,
// for the arithmetic it computed in: the sampler's incremental forward against the audit's whole
// forward (FP32), and the rounding of BF16 / FP8 GEMMs on another device.
[[nodiscard]] double logprob_tolerance(const std::string& compute_precision);

// The verdict of an audit on update `u` (its completions in the lease's order `lease_prompts`):
// not sampled from the policy (re-sampling, log-probabilities, typicality) or a gradient or KL
// that differs. nullopt: the update is what its completions give.
[[nodiscard]] std::optional<Refusal> judge_audit(const AuditFindings& f,
                                                 const wire::GradientUpdate& u,
                                                 std::span<const uint64_t> lease_prompts,
                                                 int group_size, const AuditLimits& lim);

// The probability that a peer's next update is audited. Fixed: recompute_fraction. Adaptive:
// 1 while `streak` (its accepted updates since its last refusal for misbehaviour) is below
// trust_after, then trust_after / streak, never below recompute_fraction: a new or just-caught
// key is checked on every update, a long honest record on a shrinking share (about trust_after ×
// (1 + ln(n / trust_after)) audits over its first n updates).
[[nodiscard]] double audit_probability(int64_t streak, bool adaptive, int trust_after,
                                       double recompute_fraction);

}  // namespace cohort::coordinator
