// The node's update builder (node/update_builder.h) against the coordinator's own checks
// (coordinator/update_checks.h): what an honest node builds passes every check, with the same
// figures the coordinator recomputes; the test faults are caught with the reasons they should be.
#include "node/update_builder.h"

#include <gtest/gtest.h>

#include <cmath>

#include "coordinator/update_checks.h"
#include "exchange/gradient_wire.h"
#include "grpo/scoring.h"
#include "protocol/signed_update.h"

namespace cohort::node {
namespace {

class UpdateBuilderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg.group_size = 2;
    cfg.sampling.max_new_tokens = 16;
    cfg.loss.loss = grpo::LossType::grpo;
    task = grpo::make_task(cfg.task);
    tok = grpo::make_tokenizer("chars");
    layout.slots.push_back({"w", {4}, 0, 4});
    layout.total = 4;
    lease.set_lease_id("s1-x");
    lease.set_group_size(2);
    for (uint64_t p : {3u, 4u, 5u}) lease.add_prompt_indices(p);
  }

  // Two workers: the first computed prompts 3 and 4, the second prompt 5; one right and one
  // wrong completion per prompt, rewards from the task's verifier.
  LeaseGradient gradient() const {
    LeaseGradient g;
    const GroupRange ranges[2] = {{0, 2}, {2, 3}};
    for (const auto& r : ranges) {
      WorkerShare s;
      s.groups = r;
      for (size_t i = r.begin; i < r.end; ++i) {
        const grpo::Prompt p = task->train_prompt(lease.prompt_indices(static_cast<int>(i)));
        for (int c = 0; c < 2; ++c) {
          std::vector<int64_t> ids =
              tok->encode(c == 0 ? task->reference_completion(p) : "<answer>77777</answer>");
          ids.push_back(tok->eos_id());
          s.batch.rewards.push_back(
              static_cast<float>(grpo::score_completion(*tok, *task, p, ids).total));
          s.batch.rollout.completions.push_back(ids);
          g.tokens += double(ids.size());
        }
      }
      g.shares.push_back(std::move(s));
    }
    g.units = 6;
    g.loss = 0.125;
    g.grad = {0.5f, -0.25f, 0.0f, 1.0f};
    return g;
  }

  std::optional<exchange::Refusal> built_and_checked(Fault fault,
                                                     wire::GradientUpdate* out = nullptr) {
    UpdateBuilder b{.round_id = "r",
                    .identity = node,
                    .coordinator = coordinator.id(),
                    .group_size = 2,
                    .fault = fault};
    exchange::GradientEncoder enc(layout, wire::CODEC_RAW);
    LeaseGradient g = gradient();
    const protocol::SealedUpdate su = b.build(lease, 7, 1000, g, enc, 1.5);
    const protocol::VerifiedUpdate vr = protocol::verify_update(
        su.header, {.recipient = coordinator.id(), .current_version = 7, .staleness_bound = 1},
        std::nullopt, su.stream);
    EXPECT_TRUE(vr) << vr.detail;
    const wire::GradientUpdate u = protocol::decode_update(su.header, su.stream);
    if (out) *out = u;
    coordinator::UpdateChecker checker({*task, *tok, cfg, tok->vocab_size()});
    const std::vector<uint64_t> prompts(lease.prompt_indices().begin(),
                                        lease.prompt_indices().end());
    return checker.check(u, prompts).refusal;
  }

  grpo::GrpoConfig cfg;
  std::unique_ptr<grpo::Task> task;
  std::unique_ptr<grpo::Tokenizer> tok;
  exchange::ParamLayout layout;
  wire::WorkLease lease;
  protocol::Identity node = protocol::Identity::generate();
  protocol::Identity coordinator = protocol::Identity::generate();
};

TEST_F(UpdateBuilderTest, HonestUpdatePassesTheCoordinatorsChecks) {
  wire::GradientUpdate u;
  const auto r = built_and_checked(Fault::none, &u);
  EXPECT_FALSE(r) << r->detail;
  EXPECT_EQ(u.sequence(), 1000u);
  EXPECT_EQ(u.policy_version(), 7u);
  EXPECT_EQ(u.completions_size(), 6);
  EXPECT_EQ(u.completions(4).prompt_index(), 5u);  // the second worker's rows follow the first's
  EXPECT_DOUBLE_EQ(u.rewards().mean(), 0.5);
  std::vector<float> grad(4);
  ASSERT_FALSE(exchange::decode_gradient(u, layout, grad));
  EXPECT_EQ(grad, (std::vector<float>{0.5f, -0.25f, 0.0f, 1.0f}));
}

TEST_F(UpdateBuilderTest, FalseRewardFaultIsCaughtAsBadReward) {
  const auto r = built_and_checked(Fault::false_reward);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->reason, wire::ACK_BAD_REWARD);
}

TEST_F(UpdateBuilderTest, PoisonFaultKeepsHonestRewardsAndBlowsUpTheGradient) {
  wire::GradientUpdate u;
  EXPECT_FALSE(built_and_checked(Fault::poison, &u));  // only an audit or a robust rule catches it
  std::vector<float> grad(4);
  ASSERT_FALSE(exchange::decode_gradient(u, layout, grad));
  double norm = 0;
  for (float x : grad) norm += double(x) * x;
  EXPECT_GT(std::sqrt(norm), 5 * std::sqrt(0.25 + 0.0625 + 1.0));  // -20 x + N(0, 10²) noise
}

}  // namespace
}  // namespace cohort::node
