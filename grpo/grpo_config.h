// The GRPO run's settings without LibTorch: the objective's variants, sampling parameters and
// the whole GrpoConfig, so that round configs, settings messages and their tests build without
// the heavy headers. The math that uses them is in grpo/loss.h, grpo/sampler.h, grpo/trainer.h.
//
//   GrpoConfig cfg;
//   cfg.loss.loss = parse_loss_type("dr_grpo");      // throws cohort::Error on an unknown name
//   cfg.sampling.max_new_tokens = 64;
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "grpo/tasks.h"

namespace cohort::grpo {

class Tokenizer;

enum class LossType { grpo, bnpo, dapo, dr_grpo };
enum class AdvantageScale { group, batch, none };
enum class ImportanceLevel { token, sequence };

LossType parse_loss_type(const std::string& s);              // throws cohort::Error
AdvantageScale parse_advantage_scale(const std::string& s);  // throws cohort::Error
ImportanceLevel parse_importance_level(const std::string& s);
const char* loss_type_name(LossType t);

// What a batch's loss sum is divided by, so that Σ sums / Σ units over any split of a batch into
// whole rows is the batch's loss (the coordinator's weighted mean of peers' sums): its completions
// for grpo and dr_grpo, its loss tokens (the tokens the loss counts) for bnpo and dapo. The loss
// (grpo/loss.h), the coordinator's check of an update's units and the swarm benchmark use it.
inline double loss_units(LossType t, double sequences, double loss_tokens) {
  return t == LossType::bnpo || t == LossType::dapo ? loss_tokens : sequences;
}

// Defaults follow current TRL: loss dapo, β = 0, ε = 0.2 on both sides.
struct LossConfig {
  LossType loss = LossType::dapo;
  double epsilon_low = 0.2;
  double epsilon_high = 0.2;
  double beta = 0.0;
  ImportanceLevel importance = ImportanceLevel::token;
  int64_t max_completion_length = 16;  // dr_grpo's constant L_max
};

struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy
  double top_p = 1.0;        // nucleus: keep the smallest set whose mass reaches top_p
  int top_k = 0;             // 0 = off
  int max_new_tokens = 16;
  std::vector<int64_t> stop_tokens;  // a completion ends after emitting one (it is kept)
  // A completion also ends with the token whose text completes one of these strings (the token
  // is kept); needs stop_decoder to turn ids into text.
  std::vector<std::string> stop_strings;
  const Tokenizer* stop_decoder = nullptr;
  uint64_t seed = 0;
  // Optional, one per prompt: group i samples from its own generator seeded with group_seeds[i]
  // (`seed` is then unused), so a group's completions do not depend on which other prompts share
  // the batch. A coordinator can split a step's prompts across peers in any way.
  std::vector<uint64_t> group_seeds;
  bool use_cache = true;  // false recomputes the whole prefix each step (benchmarks, tests)
};

struct GrpoConfig {
  TaskSpec task;
  SamplingParams sampling;  // stop_tokens default to the tokenizer's EOS
  LossConfig loss;
  AdvantageScale scale = AdvantageScale::group;
  int prompts_per_step = 32;
  int group_size = 8;
  double lr = 1e-4;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.99;
  double adam_eps = 1e-8;
  double max_grad_norm = 1.0;  // 0 disables clipping
  int micro_batch = 0;         // rows per forward/backward (0: the whole step at once)
  bool mask_truncated =
      false;  // completions cut at max_new_tokens add no loss (DAPO overlong filter)
  uint64_t seed = 1;
};

}  // namespace cohort::grpo
