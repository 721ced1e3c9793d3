// A completion's reward without LibTorch: the prompt's token ids and the verifier's score of one
// completion, as the sampler's rows are scored. The coordinator re-scores every completion a peer
// reports with exactly this, so the two can never disagree by construction.
//
//   std::vector<int64_t> ids = encode_prompt(tok, task.train_prompt(7));
//   RewardBreakdown r = score_completion(tok, task, prompt, completion_ids);   // r.total
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "grpo/tasks.h"
#include "grpo/tokenizer.h"

namespace cohort::grpo {

// Token ids of a prompt as the model sees it: Tokenizer::encode_prompt (<bos> + text, or the
// chat template of a chat model).
std::vector<int64_t> encode_prompt(const Tokenizer& tok, const Prompt& p);

// The completion is cut at its first stop token (the stop token and anything after it are not
// part of the answer), decoded, and scored by the task's verifier.
RewardBreakdown score_completion(const Tokenizer& tok, const Task& task, const Prompt& prompt,
                                 std::span<const int64_t> completion);

}  // namespace cohort::grpo
