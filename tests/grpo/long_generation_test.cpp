// Generation features for long completions: stop strings end a completion at the token that
// completes them, truncated completions are flagged and can be masked out of the loss, and the
// per-step length statistics operators watch are what the completions say.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/check.h"
#include "grpo/trainer.h"

namespace cohort::grpo {
namespace {

ModelConfig tiny() {
  ModelConfig c;
  CharTokenizer tok;
  c.vocab_size = tok.vocab_size();
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  return c;
}

TEST(LongGeneration, StopStringEndsCompletionAtTheCompletingToken) {
  CharTokenizer tok;
  Model m(tiny(), 3);
  const std::vector<std::vector<int64_t>> prompts = {tok.encode_prompt("12+34="), tok.encode_prompt("7*8=")};
  SamplingParams sp;
  sp.temperature = 0.0;  // greedy: the same tokens with and without the stop string
  sp.max_new_tokens = 12;
  sp.stop_tokens = {};   // random weights: only the limit or the stop string ends a row
  Rollout free = generate(m, prompts, 1, sp, tok.pad_id());
  for (size_t row = 0; row < 2; ++row) {
    const auto& full = free.completions[row];
    ASSERT_EQ(full.size(), 12u);
    // Stop on the text of tokens 2..3 of this row: the row must end where that text first
    // appears in its decoded prefix (a reference computed by scanning prefixes).
    const std::string stop = tok.decode(std::vector<int64_t>(full.begin() + 2, full.begin() + 4));
    if (stop.empty()) continue;  // special tokens render empty: nothing to stop on
    size_t want = 0;
    for (size_t k = 1; k <= full.size(); ++k)
      if (tok.decode(std::vector<int64_t>(full.begin(), full.begin() + k)).find(stop) != std::string::npos) {
        want = k;
        break;
      }
    SamplingParams with = sp;
    with.stop_strings = {stop};
    with.stop_decoder = &tok;
    Rollout r = generate(m, {prompts[row]}, 1, with, tok.pad_id());
    EXPECT_EQ(r.completions[0], std::vector<int64_t>(full.begin(), full.begin() + want)) << stop;
    EXPECT_FALSE(r.truncated[0]);  // ended by the stop string (want <= 4 by construction)
    EXPECT_EQ(r.completion_mask.sum().item<float>(), float(want));
  }
  SamplingParams no_decoder = sp;
  no_decoder.stop_strings = {"x"};
  EXPECT_THROW(generate(m, prompts, 1, no_decoder, tok.pad_id()), Error);
}

TEST(LongGeneration, TruncatedCompletionsAreFlaggedAndMaskedOutOfTheLoss) {
  CharTokenizer tok;
  Model m(tiny(), 5);
  auto task = make_task({});
  GrpoConfig cfg;
  cfg.group_size = 4;
  cfg.sampling.max_new_tokens = 3;
  cfg.sampling.temperature = 1.0;
  std::vector<Prompt> prompts = {task->train_prompt(0), task->train_prompt(1)};
  ScoredBatch plain = rollout_and_score(m, tok, *task, prompts, cfg, 42);
  cfg.mask_truncated = true;
  ScoredBatch masked = rollout_and_score(m, tok, *task, prompts, cfg, 42);
  ASSERT_EQ(plain.rollout.completions, masked.rollout.completions);  // same seed, same samples
  int truncated = 0;
  for (size_t i = 0; i < plain.rollout.completions.size(); ++i) {
    const auto& c = plain.rollout.completions[i];
    const bool hit_limit = c.size() == 3 && c.back() != tok.eos_id();
    EXPECT_EQ(plain.rollout.truncated[i], hit_limit) << i;
    const float kept = masked.rollout.completion_mask[i].sum().item<float>();
    EXPECT_EQ(kept, hit_limit ? 0.0f : float(c.size())) << i;
    EXPECT_EQ(plain.rollout.completion_mask[i].sum().item<float>(), float(c.size())) << i;
    truncated += hit_limit;
  }
  ASSERT_GT(truncated, 0) << "random weights should rarely emit EOS within 3 tokens";

  // A masked row adds no gradient: the loss of the masked batch equals the loss of the batch
  // whose truncated rows have zero advantage (both leave those rows without a loss term).
  cfg.loss.loss = LossType::grpo;
  for (auto& p : m.parameters()) p.mutable_grad() = at::Tensor();
  accumulate_gradient(m, nullptr, masked.rollout, masked.advantages, cfg);
  std::vector<at::Tensor> g_masked;
  for (auto& p : m.parameters()) g_masked.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
  for (auto& p : m.parameters()) p.mutable_grad() = at::Tensor();
  auto adv = plain.advantages;
  for (size_t i = 0; i < adv.size(); ++i)
    if (plain.rollout.truncated[i]) adv[i] = 0.0f;
  accumulate_gradient(m, nullptr, plain.rollout, adv, cfg);
  auto params = m.parameters();
  for (size_t k = 0; k < params.size(); ++k) {
    at::Tensor g = params[k].grad().defined() ? params[k].grad() : at::zeros_like(params[k]);
    EXPECT_TRUE(at::allclose(g, g_masked[k], 1e-5, 1e-6)) << k;
  }
}

TEST(LongGeneration, LengthStatisticsPerStep) {
  ScoredBatch b;
  b.rollout.completions = {{1, 2, 3}, {1}, {1, 2, 3, 4, 5, 6}, {1, 2}};
  b.rollout.truncated = {false, false, true, false};
  b.rewards = {1, 0, 0, 1};
  b.parts = {{1, 0, 1}, {0, 0, 0}, {0, 0, 0}, {1, 1, 1}};
  StepStats s;
  reward_statistics(b, 2, s);
  EXPECT_DOUBLE_EQ(s.completion_len, 3.0);
  EXPECT_DOUBLE_EQ(s.completion_len_min, 1.0);
  EXPECT_DOUBLE_EQ(s.completion_len_max, 6.0);
  EXPECT_NEAR(s.completion_len_std, std::sqrt((0.0 + 4 + 9 + 1) / 4), 1e-12);  // population std
  EXPECT_DOUBLE_EQ(s.completion_len_correct, 2.5);  // rows 0 and 3
  EXPECT_DOUBLE_EQ(s.truncated_frac, 0.25);
}

}  // namespace
}  // namespace cohort::grpo
