// Batched generation of B prompts × G completions on the KV cache, returning what GRPO needs:
// the token matrix, completion masks and the sampling policy's per-token log-probabilities.
// Seeded: the same model, prompts, parameters and seed give the same completions.
//
//   SamplingParams sp{.temperature = 1.0, .max_new_tokens = 16, .stop_tokens = {eos}};
//   Rollout r = generate(model, prompt_ids, /*group_size=*/8, sp, tok.pad_id());
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "grpo/grpo_config.h"

namespace cohort::grpo {

class Model;
class Tokenizer;

// A batch of N = B·G sequences laid out as [left-padded prompt | right-padded completion].
// Row r holds completion r % G of prompt r / G. The tensors live on the CPU whatever the model's
// device (the host decodes and scores them); Model and the loss copy what they read.
struct Rollout {
  at::Tensor tokens;           // [N, P + C] int64
  at::Tensor positions;        // [N, P + C] int64 (RoPE positions; pads repeat 0)
  at::Tensor key_valid;        // [N, P + C] bool (false on padding)
  at::Tensor completion_mask;  // [N, C] float: 1 on generated tokens, stop token included
  at::Tensor logprobs;         // [N, C] float: log π_sample(token) under temperature, 0 on pads
  int64_t prompt_len = 0;      // P
  int group_size = 1;
  std::vector<std::vector<int64_t>> completions;  // generated ids per row, stop token included
  std::vector<bool> truncated;                    // hit max_new_tokens without a stop token
  int64_t generated_tokens = 0;                   // sum of completion lengths
};

Rollout generate(const Model& model, const std::vector<std::vector<int64_t>>& prompts,
                 int group_size, const SamplingParams& params, int64_t pad_id);

// Builds the padded layout for given prompts and completions (used to score completions that
// arrived from elsewhere, e.g. a peer's, with exactly the layout generate() produces).
Rollout layout(const std::vector<std::vector<int64_t>>& prompts, int group_size,
               const std::vector<std::vector<int64_t>>& completions, int64_t max_new_tokens,
               int64_t pad_id);

// Logits after temperature with top-k / top-p filtering applied as -inf: the distribution that
// is sampled. scaled: [N, V] = logits / temperature.
at::Tensor filter_logits(const at::Tensor& scaled, int top_k, double top_p);

}  // namespace cohort::grpo
