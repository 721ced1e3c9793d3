// An audit's recomputation (exchange/lease_audit.h), the code the coordinator and validator peers
// both run, against the node's own lease work (node/lease_work.h) on the same weights: an honest
// lease re-samples token for token, its log-probability sums and gradient come out the same, its
// completions are typical of the policy, and judge_audit (coordinator/update_checks.h) passes
// it. Greedy, stop-token-only and cherry-picked completions, and completions sampled on other
// weights (a lazy peer), are each refused as not sampled, for their own reason.
#include "exchange/lease_audit.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "coordinator/update_checks.h"
#include "exchange/seeds.h"
#include "exchange/sketch.h"
#include "grpo/scoring.h"
#include "node/lease_work.h"
#include "tests/support/tiny_base.h"

namespace cohort::node {
namespace {

using test::one_digit_addition;
using test::tiny_model_config;

class LeaseAudit : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    base_ = new grpo::Model(tiny_model_config(), 7);
    test::warm_up_tiny_base(*base_);
  }
  static void TearDownTestSuite() { delete base_; }
  static inline grpo::Model* base_ = nullptr;

  void SetUp() override {
    cfg.task = one_digit_addition();
    cfg.group_size = 4;
    cfg.sampling.max_new_tokens = 8;
    devices = make_cpu_device_group(tiny_model_config(), 1);
    for (const auto& p : base_->named_parameters()) {
      const at::Tensor t = p.tensor.detach().contiguous();
      devices->load(p.name, {t.data_ptr<float>(), static_cast<size_t>(t.numel())});
    }
    layout = std::make_unique<exchange::ParamLayout>(devices->replica(0));
    for (int i = 0; i < 6; ++i) {
      indices.push_back(5 + 13 * i);
      seeds.push_back(exchange_seed(indices.back()));
    }
  }

  // The seeds the coordinator derives for the lease: audits re-sample with them.
  uint64_t exchange_seed(uint64_t idx) const { return exchange::prompt_seed(cfg.seed, idx); }

  // The update's completions as a node reports them (token ids, reward, Σ log π_sample).
  wire::GradientUpdate reported(const grpo::ScoredBatch& b) const {
    wire::GradientUpdate u;
    u.set_policy_version(1);
    u.set_compute_precision("fp32");
    u.set_sampling_device("cpu");
    const at::Tensor sums = b.rollout.logprobs.defined() ? b.rollout.logprobs.sum(1).contiguous() : at::Tensor();
    for (size_t r = 0; r < b.rollout.completions.size(); ++r) {
      auto* c = u.add_completions();
      c->set_prompt_index(indices[r / cfg.group_size]);
      c->set_completion(static_cast<uint32_t>(r % cfg.group_size));
      for (int64_t t : b.rollout.completions[r]) c->add_token_ids(static_cast<uint32_t>(t));
      c->set_reward(b.rewards[r]);
      c->set_logprob_sum(sums.defined() ? sums[static_cast<int64_t>(r)].item<float>() : 0.0f);
    }
    return u;
  }

  exchange::LeaseRecomputation recompute(const wire::GradientUpdate& u, bool resample,
                                         grpo::Model* on = nullptr) const {
    const exchange::AuditContext ctx{.task = *task, .tok = tok, .cfg = cfg, .layout = *layout};
    return exchange::recompute_lease(on ? *on : devices->replica(0), nullptr, ctx, indices, seeds,
                                     u.completions(), resample);
  }

  std::optional<exchange::Refusal> judge(const exchange::LeaseRecomputation& r,
                                         const wire::GradientUpdate& u,
                                         std::span<const float> reported_grad) const {
    return coordinator::judge_audit(coordinator::dense_findings(r, reported_grad), u, indices,
                                    cfg.group_size, {});
  }

  // The lease as an honest node works it.
  LeaseGradient honest() const {
    LeaseContext ctx{*task, tok, cfg, *layout};
    return compute_lease(*devices, ctx, indices, seeds, std::vector<GroupRange>{{0, 6}});
  }

  // Completions of the lease's prompts, scored, laid out like the sampler's.
  grpo::ScoredBatch scored(const std::vector<std::vector<int64_t>>& completions) const {
    grpo::ScoredBatch b;
    std::vector<std::vector<int64_t>> prompt_ids;
    for (uint64_t idx : indices) {
      b.prompts.push_back(task->train_prompt(idx));
      prompt_ids.push_back(grpo::encode_prompt(tok, b.prompts.back()));
    }
    b.rollout = grpo::layout(prompt_ids, cfg.group_size, completions, cfg.sampling.max_new_tokens,
                             tok.pad_id());
    grpo::score_rollout(tok, *task, b);
    {
      at::NoGradGuard no_grad;
      b.rollout.logprobs = grpo::completion_logprobs(devices->replica(0), b.rollout, 1.0) *
                           b.rollout.completion_mask;
    }
    return b;
  }

  grpo::CharTokenizer tok;
  std::unique_ptr<grpo::Task> task = grpo::make_task(one_digit_addition());
  grpo::GrpoConfig cfg;
  std::unique_ptr<DeviceGroup> devices;
  std::unique_ptr<exchange::ParamLayout> layout;
  std::vector<uint64_t> indices, seeds;
};

TEST_F(LeaseAudit, AnHonestLeaseRecomputesToTheSameCompletionsLogProbsAndGradient) {
  LeaseGradient g = honest();
  const wire::GradientUpdate u = reported(g.shares[0].batch);
  const exchange::LeaseRecomputation r = recompute(u, /*resample=*/true);
  EXPECT_EQ(r.completions, 24u);
  EXPECT_EQ(r.resampled, 24u);
  EXPECT_EQ(r.resampled_same, 24u);
  ASSERT_EQ(r.logprob_sums.size(), 24u);
  double diff = 0;
  for (int i = 0; i < 24; ++i) diff += std::abs(u.completions(i).logprob_sum() - r.logprob_sums[i]);
  EXPECT_LT(diff / r.tokens, 1e-4) << "sampler vs whole-sequence log-probabilities";
  EXPECT_LT(std::abs(r.typicality_z), 4.0) << r.typicality_z;
  RecordProperty("honest_typicality_z", std::to_string(r.typicality_z));
  RecordProperty("logprob_diff_per_token", std::to_string(diff / r.tokens));
  EXPECT_EQ(r.outside_support, 0u);
  ASSERT_EQ(r.gradient.size(), g.grad.size());
  EXPECT_GT(exchange::cosine(r.gradient, g.grad), 0.99999);
  double a = 0, b = 0;
  for (size_t i = 0; i < g.grad.size(); ++i) {
    a += double(r.gradient[i]) * r.gradient[i];
    b += double(g.grad[i]) * g.grad[i];
  }
  EXPECT_GT(b, 0) << "a zero lease gradient proves nothing";
  EXPECT_NEAR(std::sqrt(a / b), 1.0, 1e-4);
  EXPECT_FALSE(judge(r, u, g.grad)) << judge(r, u, g.grad)->detail;
  // The honest gradient reversed: a gradient mismatch, not a sampling one.
  std::vector<float> flipped = g.grad;
  for (float& x : flipped) x = -x;
  const auto v = judge(r, u, flipped);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->reason, wire::ACK_RECOMPUTE_MISMATCH);
}

TEST_F(LeaseAudit, GreedyAndStopOnlyCompletionsAreNotTypicalOfThePolicy) {
  // A lease of 32 prompts: z grows as the square root of the tokens when completions are not
  // samples (this small base is confident: at 6 prompts greedy completions give z ≈ −2.8).
  indices.clear();
  for (int i = 0; i < 32; ++i) indices.push_back(5 + 13 * i);
  // Greedy decoding: every token the likeliest, far less surprising than samples.
  grpo::SamplingParams sp = cfg.sampling;
  sp.temperature = 0;
  sp.stop_tokens = tok.stop_ids();
  std::vector<std::vector<int64_t>> prompt_ids;
  for (uint64_t idx : indices) prompt_ids.push_back(grpo::encode_prompt(tok, task->train_prompt(idx)));
  grpo::Rollout greedy_rollout;
  {
    at::NoGradGuard no_grad;
    greedy_rollout = grpo::generate(devices->replica(0), prompt_ids, cfg.group_size, sp, tok.pad_id());
  }
  const grpo::ScoredBatch greedy = scored(greedy_rollout.completions);
  const exchange::LeaseRecomputation rg = recompute(reported(greedy), /*resample=*/false);
  EXPECT_LT(rg.typicality_z, -4.0) << rg.typicality_z;
  RecordProperty("greedy_typicality_z", std::to_string(rg.typicality_z));
  // Every completion the stop token alone (the free-rider an independent client built).
  std::vector<std::vector<int64_t>> stops(indices.size() * 4, std::vector<int64_t>{tok.stop_ids().front()});
  const grpo::ScoredBatch stop_only = scored(stops);
  const exchange::LeaseRecomputation rs = recompute(reported(stop_only), /*resample=*/false);
  EXPECT_GT(rs.typicality_z, 4.0) << rs.typicality_z;
  RecordProperty("stop_only_typicality_z", std::to_string(rs.typicality_z));
  for (const auto* r : {&rg, &rs}) {
    const wire::GradientUpdate u = reported(r == &rg ? greedy : stop_only);
    const auto v = coordinator::judge_audit(
        {.completions = r->completions,
         .logprob_sums = r->logprob_sums,
         .typicality_z = r->typicality_z,
         .tokens = r->tokens},
        u, indices, cfg.group_size, {.typicality_z_max = 4});
    ASSERT_TRUE(v);
    EXPECT_EQ(v->reason, wire::ACK_NOT_SAMPLED);
    EXPECT_NE(v->detail.find("typical"), std::string::npos) << v->detail;
  }
}

TEST_F(LeaseAudit, CompletionsFromOtherWeightsOrOtherSeedsAreNotSampledFromTheVersion) {
  LeaseGradient g = honest();
  const wire::GradientUpdate u = reported(g.shares[0].batch);
  // The auditor holds other weights than the ones sampled with (a lazy peer's claim of a newer
  // version): the log-probabilities differ.
  grpo::Model newer(tiny_model_config(), 7);
  {
    at::NoGradGuard no_grad;
    auto mine = newer.parameters();
    auto theirs = base_->parameters();
    for (size_t i = 0; i < mine.size(); ++i)
      mine[i].copy_(theirs[i] + 0.02 * at::randn_like(theirs[i]));
  }
  const exchange::LeaseRecomputation lazy = recompute(u, /*resample=*/false, &newer);
  double lazy_diff = 0;
  for (int i = 0; i < 24; ++i) lazy_diff += std::abs(u.completions(i).logprob_sum() - lazy.logprob_sums[i]);
  RecordProperty("other_weights_logprob_diff_per_token", std::to_string(lazy_diff / lazy.tokens));
  const auto v = judge(lazy, u, g.grad);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->reason, wire::ACK_NOT_SAMPLED);
  EXPECT_NE(v->detail.find("log-probabilities"), std::string::npos) << v->detail;
  // Completions sampled with other seeds (a cherry-picker's second draw): re-sampling tells.
  std::vector<uint64_t> other = seeds;
  for (auto& s : other) s ^= 0x9e3779b97f4a7c15ull;
  LeaseContext ctx{*task, tok, cfg, *layout};
  LeaseGradient drawn = compute_lease(*devices, ctx, indices, other, std::vector<GroupRange>{{0, 6}});
  const wire::GradientUpdate picked = reported(drawn.shares[0].batch);
  const exchange::LeaseRecomputation rp = recompute(picked, /*resample=*/true);
  EXPECT_LT(rp.resampled_same * 10, rp.resampled * 9);
  const auto vp = judge(rp, picked, drawn.grad);
  ASSERT_TRUE(vp);
  EXPECT_EQ(vp->reason, wire::ACK_NOT_SAMPLED);
}

}  // namespace
}  // namespace cohort::node
