// Built-in tasks with verifiable, rule-based rewards (the R1-Zero recipe). Each task generates
// an unlimited stream of fresh training prompts and a fixed, disjoint held-out split, both
// deterministic functions of (task settings, seed, index) so that every peer of a round
// regenerates exactly the prompts a lease names.
//
//   auto task = make_task({.name = "arith", .digits = 2});
//   Prompt p = task->train_prompt(17);
//   RewardBreakdown r = task->score(p, "<answer>46</answer>");
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace cohort::grpo {

struct TaskSpec {
  std::string name = "arith";   // "arith" | "countdown"; ignored when dataset is set
  int digits = 2;               // arith: operands have up to this many digits
  std::string ops = "+";        // arith: operators drawn from this set ("+-*")
  int numbers = 3;              // countdown: how many numbers are given
  int max_number = 20;          // countdown: numbers are drawn from 1..max_number
  double format_weight = 0.0;   // reward = accuracy + format_weight * format
  uint64_t seed = 1234;         // fixes the prompt stream and the held-out split
  int held_out_percent = 10;    // share of the problem space reserved for evaluation
  // JSONL dataset task (grpo/dataset.h): train on `dataset`; evaluate on `eval_dataset` when
  // given, else on a held-out share of `dataset` (held_out_percent, after a seeded shuffle).
  std::string dataset, eval_dataset;
  std::string reward = "math";  // dataset reward: "math" (grpo/math_reward.h)
  // Built-in tasks: "math" (the task's own verifier) or "bench-length", a BENCHMARK-ONLY reward
  // that adds the completion's length / 64 (at most 1) so that an untrained model's groups get
  // non-zero advantages and real-size runs move real gradients (never for training).
  // false: do not read eval_dataset (peers of a round only draw training prompts; the training
  // split does not depend on the eval file's content).
  bool load_eval = true;
};

struct Prompt {
  std::string text;    // what the model sees, e.g. "12+34="
  std::string answer;  // the reference: "46" (arith) or the target (countdown)
  std::vector<int64_t> numbers;  // countdown: the numbers available
};

struct RewardBreakdown {
  double accuracy = 0.0;  // 1 when the extracted answer is correct
  double format = 0.0;    // 1 when the completion is (<think>…</think>)?<answer>…</answer>
  double total = 0.0;
};

class Task {
 public:
  virtual ~Task() = default;
  explicit Task(TaskSpec spec) : spec_(std::move(spec)) {}
  const TaskSpec& spec() const { return spec_; }

  // The index-th training prompt; never a held-out problem.
  virtual Prompt train_prompt(uint64_t index) const;
  // The first n distinct held-out problems (throws cohort::Error if the space is too small).
  virtual std::vector<Prompt> eval_prompts(int n) const;

  // Malformed, empty or overlong completions score 0; never throws.
  virtual RewardBreakdown score(const Prompt& prompt, std::string_view completion) const;
  // The reference completion used by supervised warm-up.
  virtual std::string reference_completion(const Prompt& prompt) const;

 protected:
  virtual Prompt generate(uint64_t rng_state) const = 0;
  virtual bool correct(const Prompt& prompt, std::string_view answer) const = 0;
  virtual std::string solution(const Prompt& prompt) const = 0;
  bool held_out(const Prompt& p) const;

  TaskSpec spec_;
};

// Throws cohort::Error for an unknown task or invalid settings. A spec with a dataset gives
// the JSONL dataset task (grpo/dataset.h).
std::unique_ptr<Task> make_task(const TaskSpec& spec);

// The text inside the last <answer>…</answer>, or nullopt-equivalent empty flag.
bool extract_answer(std::string_view completion, std::string& answer);
bool well_formatted(std::string_view completion);

// Countdown verifier: parses + − × ÷ and parentheses over integers, evaluates exactly with
// rationals, and checks each given number is used at most once. False on any malformed input.
bool countdown_reaches(std::string_view expression, const std::vector<int64_t>& numbers,
                       int64_t target);

}  // namespace cohort::grpo
