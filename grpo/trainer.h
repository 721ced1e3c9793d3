// One GRPO step and its parts, shared by `cohort train` and by the peer node: roll out groups,
// score them with the task's verifier, compute group advantages, and accumulate the summed
// (distributed-form) gradient; plus greedy evaluation and the supervised warm-up.
//
//   GrpoTrainer trainer(policy, tokenizer, task, cfg);
//   StepStats s = trainer.step();               // sample → reward → loss → AdamW
//   EvalResult e = evaluate(policy, tokenizer, task, 500, cfg.sampling.max_new_tokens);
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "grpo/grpo_config.h"
#include "grpo/loss.h"
#include "grpo/model.h"
#include "grpo/sampler.h"
#include "grpo/scoring.h"
#include "grpo/tasks.h"
#include "grpo/tokenizer.h"

namespace torch::optim { class AdamW; }

namespace cohort::grpo {

// The prompts of a step (or a lease), their completions and rewards.
struct ScoredBatch {
  std::vector<Prompt> prompts;
  Rollout rollout;
  std::vector<float> rewards;                 // one per row
  std::vector<RewardBreakdown> parts;         // one per row
  std::vector<float> advantages;              // one per row
};

ScoredBatch rollout_and_score(const Model& policy, const Tokenizer& tok, const Task& task,
                              const std::vector<Prompt>& prompts, const GrpoConfig& cfg,
                              uint64_t seed);

// Zeroes the completion mask of rows truncated at max_new_tokens: they still count as units
// (sequences) but contribute no loss or gradient.
void mask_truncated_rows(Rollout& r);

// Scores completions with the task's verifier (decoding up to the first stop token).
void score_rollout(const Tokenizer& tok, const Task& task, ScoredBatch& batch);

// log π(completion token) for every completion position: [N, C]. Differentiable when grad mode
// is on. temperature scales logits as during sampling (0 counts as 1).
at::Tensor completion_logprobs(const Model& model, const Rollout& rows, double temperature);

// Rows [begin, begin + count) of a rollout, sharing its layout.
Rollout slice_rows(const Rollout& r, int64_t begin, int64_t count);

// Adds the gradient of Σ-form loss over the batch to the parameters' .grad (without zeroing
// it first) and returns the sums. With cfg.mask_truncated, truncated rows add no loss (whether
// or not the rollout's mask was already zeroed by rollout_and_score). Dividing the accumulated gradient by Σ units over any set of
// shards gives the gradient of the loss of their union.
LossSums accumulate_gradient(const Model& policy, const Model* reference, const Rollout& rollout,
                             std::span<const float> advantages, const GrpoConfig& cfg);

struct StepStats {
  int64_t step = 0;
  double loss = 0, reward_mean = 0, reward_std = 0, accuracy = 0, format = 0;
  double completion_len = 0, truncated_frac = 0, kl = 0, clip_frac = 0, grad_norm = 0;
  // Completion lengths in tokens: growing length is the signal operators watch.
  double completion_len_min = 0, completion_len_max = 0, completion_len_std = 0;
  double completion_len_correct = 0;  // mean over completions with accuracy > 0
  double zero_std_frac = 0;  // groups whose rewards are all equal (no learning signal)
  double tokens_per_s = 0, gen_s = 0, train_s = 0, step_s = 0;
};

// Fills reward/accuracy/length/zero-variance statistics from a scored batch.
void reward_statistics(const ScoredBatch& b, int group_size, StepStats& s);

class GrpoTrainer {
 public:
  GrpoTrainer(Model& policy, const Tokenizer& tok, const Task& task, GrpoConfig cfg);
  ~GrpoTrainer();
  StepStats step();
  int64_t steps_done() const { return step_; }
  const GrpoConfig& config() const { return cfg_; }

 private:
  Model& policy_;
  const Tokenizer& tok_;
  const Task& task_;
  GrpoConfig cfg_;
  std::unique_ptr<Model> reference_;  // only when beta != 0
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t step_ = 0;
};

struct EvalResult {
  int n = 0;
  double accuracy = 0, format = 0, completion_len = 0;
  double seconds = 0;
};

// Greedy decoding on the first n held-out prompts.
EvalResult evaluate(const Model& model, const Tokenizer& tok, const Task& task, int n,
                    int max_new_tokens, int batch_size = 256);

struct PretrainConfig {
  TaskSpec task;
  ModelConfig model;
  int steps = 3000;
  int batch_size = 64;
  double lr = 1e-3;
  double label_noise = 0.0;        // share of examples whose answer is replaced by a wrong one
  double stop_at_accuracy = 0.0;   // stop once held-out greedy accuracy reaches this (0: off)
  int eval_every = 100;
  int eval_n = 200;
  int max_new_tokens = 16;
  uint64_t seed = 1;
};

struct PretrainResult {
  int steps = 0;
  double final_loss = 0;
  EvalResult eval;
};

// Supervised warm-up from random weights: teaches the answer format, not (yet) the answers.
PretrainResult pretrain(Model& model, const Tokenizer& tok, const Task& task,
                        const PretrainConfig& cfg, bool show_progress = true);

}  // namespace cohort::grpo
