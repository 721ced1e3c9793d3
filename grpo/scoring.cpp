#include "grpo/scoring.h"

#include <algorithm>

namespace cohort::grpo {

std::vector<int64_t> encode_prompt(const Tokenizer& tok, const Prompt& p) {
  return tok.encode_prompt(p.text);
}

RewardBreakdown score_completion(const Tokenizer& tok, const Task& task, const Prompt& prompt,
                                 std::span<const int64_t> completion) {
  const std::vector<int64_t> stops = tok.stop_ids();
  const auto end =
      std::find_first_of(completion.begin(), completion.end(), stops.begin(), stops.end());
  return task.score(prompt,
                    tok.decode(completion.first(static_cast<size_t>(end - completion.begin()))));
}

}  // namespace cohort::grpo
