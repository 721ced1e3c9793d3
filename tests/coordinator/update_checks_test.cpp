// The coordinator's checks of an update body (coordinator/update_checks.h), every refusal reason
// they can give, without LibTorch, processes or sockets. Rewards are known in closed form: the
// task's reference answer scores 1, a wrong number 0 (format_weight 0).
#include "coordinator/update_checks.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "exchange/refusal.h"
#include "exchange/seeds.h"

namespace cohort::coordinator {
namespace {

class UpdateChecks : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg.group_size = 2;
    cfg.sampling.max_new_tokens = 16;
    cfg.loss.loss = grpo::LossType::grpo;
    task = grpo::make_task(cfg.task);
    tok = grpo::make_tokenizer("chars");
  }

  // A body an honest node would send for prompts {0, 1}: completion 0 right, completion 1 wrong.
  wire::GradientUpdate honest() const {
    wire::GradientUpdate u;
    double sum = 0, sq = 0;
    uint64_t tokens = 0;
    for (uint64_t p : prompts) {
      for (uint32_t c = 0; c < 2; ++c) {
        const grpo::Prompt prompt = task->train_prompt(p);
        const std::string text =
            c == 0 ? task->reference_completion(prompt) : "<answer>99999</answer>";
        std::vector<int64_t> ids = tok->encode(text);
        ids.push_back(tok->eos_id());
        auto* d = u.add_completions();
        d->set_prompt_index(p);
        d->set_completion(c);
        for (int64_t t : ids) d->add_token_ids(static_cast<uint32_t>(t));
        const protocol::Digest h = exchange::completion_digest(std::span<const int64_t>(ids));
        d->set_blake2b(h.data(), h.size());
        const float r = c == 0 ? 1.0f : 0.0f;
        d->set_reward(r);
        sum += r;
        sq += r * r;
        tokens += ids.size();
      }
    }
    u.set_units(4);  // grpo: one unit per completion
    u.set_sequences(4);
    u.set_tokens(tokens);
    u.mutable_rewards()->set_count(4);
    u.mutable_rewards()->set_mean(sum / 4);
    u.mutable_rewards()->set_std(std::sqrt(sq / 4 - (sum / 4) * (sum / 4)));
    u.mutable_rewards()->set_min(0);
    u.mutable_rewards()->set_max(1);
    u.set_loss(0.25);
    return u;
  }

  CheckedBody check(const wire::GradientUpdate& u) const {
    UpdateChecker checker({*task, *tok, cfg, tok->vocab_size()});
    return checker.check(u, prompts);
  }

  static wire::AckReason reason(const CheckedBody& c) {
    return c.refusal ? c.refusal->reason : wire::ACK_OK;
  }

  grpo::GrpoConfig cfg;
  std::unique_ptr<grpo::Task> task;
  std::unique_ptr<grpo::Tokenizer> tok;
  std::vector<uint64_t> prompts{0, 1};
};

TEST_F(UpdateChecks, HonestBodyPassesWithTheCoordinatorsOwnFigures) {
  const CheckedBody c = check(honest());
  ASSERT_FALSE(c.refusal) << c.refusal->detail;
  EXPECT_DOUBLE_EQ(c.facts.reward_mean, 0.5);
  EXPECT_DOUBLE_EQ(c.facts.accuracy, 0.5);
  EXPECT_EQ(c.facts.sequences, 4);
  EXPECT_DOUBLE_EQ(c.facts.units, 4);
}

TEST_F(UpdateChecks, ClaimedRewardThatTheVerifierDoesNotGiveIsBadReward) {
  auto u = honest();
  u.mutable_completions(1)->set_reward(1.0f);
  EXPECT_EQ(reason(check(u)), wire::ACK_BAD_REWARD);
}

TEST_F(UpdateChecks, RewardStatisticsThatContradictTheCompletionsAreBadReward) {
  for (int field = 0; field < 5; ++field) {
    auto u = honest();
    auto* rs = u.mutable_rewards();
    switch (field) {
      case 0:
        rs->set_mean(0.9);
        break;
      case 1:
        rs->set_std(0.0);
        break;
      case 2:
        rs->set_min(0.5);
        break;
      case 3:
        rs->set_max(2.0);
        break;
      case 4:
        rs->set_count(5);
        break;
    }
    EXPECT_EQ(reason(check(u)), wire::ACK_BAD_REWARD) << "field " << field;
  }
  auto u = honest();
  u.mutable_rewards()->set_mean(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(reason(check(u)), wire::ACK_BAD_REWARD);
}

TEST_F(UpdateChecks, NonFiniteLossIsMalformed) {
  for (double bad :
       {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    auto u = honest();
    u.set_loss(bad);
    const CheckedBody c = check(u);
    EXPECT_EQ(reason(c), wire::ACK_MALFORMED);
    ASSERT_TRUE(c.refusal);
    EXPECT_NE(c.refusal->detail.find("loss"), std::string::npos);
  }
}

TEST_F(UpdateChecks, CountsThatDoNotMatchTheCompletionsAreMalformed) {
  auto units = honest();
  units.set_units(7);
  EXPECT_EQ(reason(check(units)), wire::ACK_MALFORMED);
  auto sequences = honest();
  sequences.set_sequences(3);
  EXPECT_EQ(reason(check(sequences)), wire::ACK_MALFORMED);
  auto tokens = honest();
  tokens.set_tokens(tokens.tokens() + 5);
  EXPECT_EQ(reason(check(tokens)), wire::ACK_MALFORMED);
}

TEST_F(UpdateChecks, CompletionsMustCoverTheLeaseExactlyOnce) {
  auto missing = honest();
  missing.mutable_completions()->RemoveLast();
  EXPECT_EQ(reason(check(missing)), wire::ACK_MALFORMED);
  auto repeated = honest();
  repeated.mutable_completions(3)->set_completion(0);
  EXPECT_EQ(reason(check(repeated)), wire::ACK_MALFORMED);
  auto foreign = honest();
  foreign.mutable_completions(0)->set_prompt_index(9);
  EXPECT_EQ(reason(check(foreign)), wire::ACK_MALFORMED);
  auto beyond_group = honest();
  beyond_group.mutable_completions(0)->set_completion(2);
  EXPECT_EQ(reason(check(beyond_group)), wire::ACK_MALFORMED);
}

TEST_F(UpdateChecks, TokenIdsOutOfRangeTooLongOrNotMatchingTheirDigestAreMalformed) {
  auto vocab = honest();
  vocab.mutable_completions(0)->set_token_ids(0, 32);
  EXPECT_EQ(reason(check(vocab)), wire::ACK_MALFORMED);
  auto empty = honest();
  empty.mutable_completions(0)->clear_token_ids();
  EXPECT_EQ(reason(check(empty)), wire::ACK_MALFORMED);
  auto longer = honest();
  for (int i = 0; i < 20; ++i) longer.mutable_completions(0)->add_token_ids(5);
  EXPECT_EQ(reason(check(longer)), wire::ACK_MALFORMED);
  auto digest = honest();
  digest.mutable_completions(0)->set_token_ids(0, digest.completions(0).token_ids(0) ^ 1);
  EXPECT_EQ(reason(check(digest)), wire::ACK_MALFORMED);
  auto after_stop = honest();
  after_stop.mutable_completions(0)->add_token_ids(5);  // after its EOS
  EXPECT_EQ(reason(check(after_stop)), wire::ACK_MALFORMED);
}

TEST_F(UpdateChecks, TokenLevelAggregationCountsOnlyLossCarryingTokens) {
  cfg.loss.loss = grpo::LossType::dapo;
  auto u = honest();
  u.set_units(u.tokens());
  const CheckedBody c = check(u);
  ASSERT_FALSE(c.refusal) << c.refusal->detail;
  EXPECT_DOUBLE_EQ(c.facts.units, double(u.tokens()));
}

TEST(UpdateNorm, MeanGradientNormAboveTheBoundIsBadNorm) {
  const std::vector<float> g = {3.0f, 4.0f};  // |g| = 5; mean over 2 units: 2.5
  EXPECT_FALSE(check_norm(g, 2, 0));
  EXPECT_FALSE(check_norm(g, 2, 2.5));
  auto r = check_norm(g, 2, 2.4);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->reason, wire::ACK_BAD_NORM);
}

TEST(Misbehaviour, OneDefinitionForBansAndTheLedger) {
  for (auto r :
       {wire::ACK_BAD_REWARD, wire::ACK_BAD_NORM, wire::ACK_MALFORMED, wire::ACK_BAD_SIGNATURE,
        wire::ACK_SIGNER_MISMATCH, wire::ACK_RECOMPUTE_MISMATCH, wire::ACK_NOT_SAMPLED,
        wire::ACK_BAD_AUDIT}) {
    EXPECT_TRUE(exchange::is_misbehaviour(r)) << exchange::reason_name(r);
    EXPECT_TRUE(exchange::is_misbehaviour(exchange::reason_name(r)));
  }
  for (auto r : {wire::ACK_OK, wire::ACK_STALE, wire::ACK_REPLAYED, wire::ACK_UNKNOWN_LEASE,
                 wire::ACK_LEASE_EXPIRED, wire::ACK_OVERLOADED})
    EXPECT_FALSE(exchange::is_misbehaviour(r)) << exchange::reason_name(r);
  EXPECT_EQ(exchange::reason_name(wire::ACK_BAD_REWARD), "bad_reward");
}

// Adaptive trust: every update of a new (or just caught) key is audited; after trust_after
// accepted in a row the probability falls as trust_after / n, down to the floor; fixed mode is
// recompute_fraction whatever the record.
TEST(AuditProbability, FollowsTheRecordDownToTheFloor) {
  EXPECT_EQ(audit_probability(0, true, 10, 0.02), 1.0);
  EXPECT_EQ(audit_probability(9, true, 10, 0.02), 1.0);
  EXPECT_DOUBLE_EQ(audit_probability(10, true, 10, 0.02), 1.0);
  EXPECT_DOUBLE_EQ(audit_probability(40, true, 10, 0.02), 0.25);
  EXPECT_DOUBLE_EQ(audit_probability(1000, true, 10, 0.02), 0.02);  // the floor
  EXPECT_DOUBLE_EQ(audit_probability(1000, true, 10, 0.0), 0.01);
  EXPECT_DOUBLE_EQ(audit_probability(0, false, 10, 0.05), 0.05);
  // Expected audits over a peer's first n updates: about trust_after × (1 + ln(n / trust_after)).
  double expected = 0;
  for (int n = 0; n < 1000; ++n) expected += audit_probability(n, true, 10, 0.0);
  EXPECT_NEAR(expected, 10 * (1 + std::log(100.0)), 1.0);
}

// judge_audit's thresholds, on findings given directly (tests/node/lease_audit_test.cpp runs them
// on real recomputations): re-sampling at 90 %, log-probabilities per token by precision,
// typicality, support, cosine and norm ratio, and the KL sum.
TEST(JudgeAudit, EachThresholdRefusesWithItsReason) {
  const std::vector<uint64_t> prompts = {7, 9};
  wire::GradientUpdate u;
  u.set_policy_version(3);
  std::vector<float> sums;
  for (uint64_t p : prompts)
    for (uint32_t c = 0; c < 2; ++c) {
      auto* d = u.add_completions();
      d->set_prompt_index(p);
      d->set_completion(c);
      d->set_logprob_sum(-2.0f - float(c));
      sums.push_back(-2.0f - float(c));
    }
  const AuditFindings ok{.completions = 4, .resampled = 20, .resampled_same = 18, .logprob_sums = sums,
                         .typicality_z = 1.5, .tokens = 40, .kl_sum = 2.0, .cosine = 0.95, .norm_ratio = 1.2};
  const AuditLimits lim{.min_cosine = 0.9, .typicality_z_max = 8, .kl_term = true};
  u.set_kl_sum(2.05);
  EXPECT_FALSE(judge_audit(ok, u, prompts, 2, lim));
  auto reason = [&](AuditFindings f, const wire::GradientUpdate& v = {}) {
    const auto r = judge_audit(f, v.completions_size() ? v : u, prompts, 2, lim);
    return r ? r->reason : wire::ACK_OK;
  };
  AuditFindings f = ok;
  f.resampled_same = 17;  // 85 %
  EXPECT_EQ(reason(f), wire::ACK_NOT_SAMPLED);
  // 2e-3 per token in FP32: 40 tokens allow 0.08 in all.
  std::vector<float> off = sums;
  off[1] += 0.07f;
  f = ok;
  f.logprob_sums = off;
  EXPECT_EQ(reason(f), wire::ACK_OK);
  off[2] -= 0.02f;
  f.logprob_sums = off;
  EXPECT_EQ(reason(f), wire::ACK_NOT_SAMPLED);
  wire::GradientUpdate bf16 = u;
  bf16.set_compute_precision("bf16");
  EXPECT_EQ(reason(f, bf16), wire::ACK_OK);  // 0.05 per token
  EXPECT_DOUBLE_EQ(logprob_tolerance("fp8"), 0.1);
  f = ok;
  f.typicality_z = -8.5;
  EXPECT_EQ(reason(f), wire::ACK_NOT_SAMPLED);
  f.typicality_z = std::numeric_limits<double>::quiet_NaN();  // greedy rounds: not computed
  EXPECT_EQ(reason(f), wire::ACK_OK);
  f.typicality_z = std::numeric_limits<double>::infinity();
  EXPECT_EQ(reason(f), wire::ACK_NOT_SAMPLED);
  f = ok;
  f.outside_support = 1;  // 1 of 40 tokens: over 1 %
  EXPECT_EQ(reason(f), wire::ACK_NOT_SAMPLED);
  f.tokens = 400;
  EXPECT_EQ(reason(f), wire::ACK_OK);
  f = ok;
  f.cosine = 0.89;
  EXPECT_EQ(reason(f), wire::ACK_RECOMPUTE_MISMATCH);
  f = ok;
  f.norm_ratio = 1.6;
  EXPECT_EQ(reason(f), wire::ACK_RECOMPUTE_MISMATCH);
  f.norm_ratio = 0.6;
  EXPECT_EQ(reason(f), wire::ACK_RECOMPUTE_MISMATCH);
  f = ok;
  f.kl_sum = 1.5;  // 2.05 reported: off by more than 5 % + 1e-3 per token
  EXPECT_EQ(reason(f), wire::ACK_RECOMPUTE_MISMATCH);
  f.logprob_sums = std::span<const float>(sums).first(3);  // findings that miss a completion
  EXPECT_EQ(reason(f), wire::ACK_INTERNAL);
}

}  // namespace
}  // namespace cohort::coordinator
