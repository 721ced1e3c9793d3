#include "grpo/dataset.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "common/check.h"
#include "grpo/math_reward.h"

namespace cohort::grpo {
namespace {

using nlohmann::json;

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
void shuffle(std::vector<T>& v, uint64_t state) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[splitmix(state) % i]);
}

Prompt to_prompt(const DatasetExample& e) { return {e.prompt, e.answer, {}}; }

// GSM8K's calculator annotations "<<48/2=24>>" are tool traces, not text a model should copy.
std::string strip_annotations(std::string s) {
  for (size_t a = s.find("<<"); a != std::string::npos; a = s.find("<<", a)) {
    const size_t b = s.find(">>", a);
    if (b == std::string::npos) break;
    s.erase(a, b + 2 - a);
  }
  return s;
}

}  // namespace

std::vector<DatasetExample> read_jsonl_dataset(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot open dataset " + path);
  std::vector<DatasetExample> out;
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    auto fail = [&](const std::string& m) {
      return Error(path + ":" + std::to_string(number) + ": " + m);
    };
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      throw fail(std::string("not valid JSON: ") + e.what());
    }
    if (!j.is_object()) throw fail("a record must be a JSON object");
    DatasetExample e;
    const bool gsm8k = j.contains("question");
    const char* prompt_key = gsm8k ? "question" : "prompt";
    if (!j.contains(prompt_key) || !j[prompt_key].is_string())
      throw fail("needs a string \"question\" (GSM8K) or \"prompt\" field");
    if (!j.contains("answer") || !(j["answer"].is_string() || j["answer"].is_number()))
      throw fail("needs an \"answer\" field (string or number)");
    e.prompt = j[prompt_key].get<std::string>();
    const std::string answer = j["answer"].is_string() ? j["answer"].get<std::string>() : j["answer"].dump();
    if (answer.find("####") != std::string::npos) {
      e.solution = answer.substr(0, answer.rfind("####"));
      while (!e.solution.empty() && (e.solution.back() == '\n' || e.solution.back() == ' '))
        e.solution.pop_back();
      e.answer = gsm8k_reference_answer(answer);
    } else {
      e.answer = answer;
    }
    if (e.prompt.empty()) throw fail("empty prompt");
    if (e.answer.empty()) throw fail("empty answer");
    out.push_back(std::move(e));
  }
  if (out.empty()) throw Error("dataset " + path + " has no records");
  return out;
}

DatasetTask::DatasetTask(TaskSpec spec, std::vector<DatasetExample> train,
                         std::vector<DatasetExample> eval)
    : Task(std::move(spec)), train_(std::move(train)), eval_(std::move(eval)) {
  if (train_.empty()) throw Error("dataset task: no training examples");
}

Prompt DatasetTask::train_prompt(uint64_t index) const {
  const uint64_t n = train_.size(), epoch = index / n;
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  shuffle(order, spec_.seed * 0x9E3779B97F4A7C15ull + epoch + 1);
  return to_prompt(train_[order[index % n]]);
}

std::vector<Prompt> DatasetTask::eval_prompts(int n) const {
  if (n < 0 || static_cast<size_t>(n) > eval_.size())
    throw Error("the held-out split of this dataset has " + std::to_string(eval_.size()) +
                " examples; ask for at most that many (--eval-n)");
  std::vector<Prompt> out;
  for (int i = 0; i < n; ++i) out.push_back(to_prompt(eval_[i]));
  return out;
}

RewardBreakdown DatasetTask::score(const Prompt& prompt, std::string_view completion) const {
  RewardBreakdown r;
  try {
    if (auto a = extract_math_answer(completion)) r.accuracy = correct(prompt, *a) ? 1.0 : 0.0;
    r.format = r1_format_reward(completion);
  } catch (...) {
    r = {};  // a verifier must never let a malformed completion escape
  }
  r.total = r.accuracy + spec_.format_weight * r.format;
  return r;
}

std::string DatasetTask::reference_completion(const Prompt& p) const {
  for (const auto* set : {&train_, &eval_})
    for (const auto& e : *set)
      if (e.prompt == p.text && !e.solution.empty())
        return "<think>\n" + strip_annotations(e.solution) + "\n</think>\n<answer>" + e.answer + "</answer>";
  return "<answer>" + p.answer + "</answer>";
}

Prompt DatasetTask::generate(uint64_t rng_state) const {
  return to_prompt(train_[rng_state % train_.size()]);
}

bool DatasetTask::correct(const Prompt& p, std::string_view answer) const {
  return math_answers_equal(answer, p.answer);
}

std::string DatasetTask::solution(const Prompt& p) const { return p.answer; }

std::unique_ptr<Task> make_dataset_task(const TaskSpec& spec) {
  if (spec.reward != "math")
    throw Error("unknown dataset reward '" + spec.reward + "' (supported: math)");
  std::vector<DatasetExample> all = read_jsonl_dataset(spec.dataset);
  std::vector<DatasetExample> eval;
  if (!spec.eval_dataset.empty()) {
    if (spec.load_eval) eval = read_jsonl_dataset(spec.eval_dataset);
  } else {
    // The held-out part is a seeded sample of the file: the same for every peer of a round.
    shuffle(all, spec.seed);
    size_t n_eval = all.size() * static_cast<size_t>(spec.held_out_percent) / 100;
    if (n_eval == 0 && all.size() >= 2) n_eval = 1;
    eval.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n_eval));
    all.erase(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n_eval));
  }
  return std::make_unique<DatasetTask>(spec, std::move(all), std::move(eval));
}

}  // namespace cohort::grpo
