// JSONL datasets of math problems as a Task: GSM8K's {"question", "answer": "… #### 72"} or the
// generic {"prompt", "answer"}. Examples are split into train and held-out parts by a seeded
// shuffle (or a separate eval file), so every peer of a round derives the same prompt for the
// same index; rewards are the math rewards of grpo/math_reward.h.
//
//   auto task = make_task({.dataset = "gsm8k/train.jsonl", .eval_dataset = "gsm8k/test.jsonl"});
//   Prompt p = task->train_prompt(17);         // p.text: the question, p.answer: "72"
//   RewardBreakdown r = task->score(p, "<think>…</think><answer>72</answer>");
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "grpo/tasks.h"

namespace cohort::grpo {

struct DatasetExample {
  std::string prompt;    // the question as given
  std::string answer;    // the final answer ("72"; GSM8K's text after "####")
  std::string solution;  // the worked solution when the dataset has one (GSM8K), else empty
};

// Throws cohort::Error naming the file and line of a malformed record.
std::vector<DatasetExample> read_jsonl_dataset(const std::string& path);

class DatasetTask final : public Task {
 public:
  DatasetTask(TaskSpec spec, std::vector<DatasetExample> train, std::vector<DatasetExample> eval);

  // Cycles through the training examples, reshuffled each epoch (seeded by spec.seed).
  Prompt train_prompt(uint64_t index) const override;
  // The first n held-out examples (throws cohort::Error when there are fewer).
  std::vector<Prompt> eval_prompts(int n) const override;
  // accuracy: extract_math_answer + math_answers_equal; format: r1_format_reward.
  RewardBreakdown score(const Prompt& prompt, std::string_view completion) const override;
  // <think>worked solution</think><answer>answer</answer> (GSM8K's <<…>> annotations removed).
  std::string reference_completion(const Prompt& prompt) const override;

  size_t train_size() const { return train_.size(); }
  size_t eval_size() const { return eval_.size(); }

 protected:
  Prompt generate(uint64_t rng_state) const override;
  bool correct(const Prompt& prompt, std::string_view answer) const override;
  std::string solution(const Prompt& prompt) const override;

 private:
  std::vector<DatasetExample> train_, eval_;
};

// Reads spec.dataset (and spec.eval_dataset) and builds the task; throws cohort::Error.
std::unique_ptr<Task> make_dataset_task(const TaskSpec& spec);

}  // namespace cohort::grpo
