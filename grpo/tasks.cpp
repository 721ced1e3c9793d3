#include "grpo/tasks.h"

#include <algorithm>
#include <numeric>
#include <optional>
#include <unordered_set>

#include "common/check.h"
#include "grpo/rational.h"
#include "grpo/dataset.h"

namespace cohort::grpo {
namespace {

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t mix(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  uint64_t s = a;
  s ^= splitmix(s) + b;
  s ^= splitmix(s) + c;
  s ^= splitmix(s) + d;
  return splitmix(s);
}

int64_t uniform(uint64_t& state, int64_t lo, int64_t hi) {  // inclusive
  return lo + static_cast<int64_t>(splitmix(state) % static_cast<uint64_t>(hi - lo + 1));
}

int64_t pow10(int d) {
  int64_t v = 1;
  while (d-- > 0) v *= 10;
  return v;
}

class Arith final : public Task {
 public:
  explicit Arith(TaskSpec s) : Task(std::move(s)) {
    if (spec_.digits < 1 || spec_.digits > 9) throw Error("arith: --digits must be in 1..9");
    if (spec_.ops.empty() || spec_.ops.find_first_not_of("+-*") != std::string::npos)
      throw Error("arith: --ops must be a non-empty subset of \"+-*\"");
  }

 protected:
  Prompt generate(uint64_t state) const override {
    const int64_t hi = pow10(spec_.digits) - 1;
    int64_t a = uniform(state, 0, hi), b = uniform(state, 0, hi);
    char op = spec_.ops[uniform(state, 0, static_cast<int64_t>(spec_.ops.size()) - 1)];
    if (op == '-' && a < b) std::swap(a, b);
    const int64_t r = op == '+' ? a + b : op == '-' ? a - b : a * b;
    return {std::to_string(a) + op + std::to_string(b) + "=", std::to_string(r), {}};
  }
  bool correct(const Prompt& p, std::string_view answer) const override {
    return answer == p.answer;
  }
  std::string solution(const Prompt& p) const override { return p.answer; }
};

class ExpressionParser {
 public:
  ExpressionParser(std::string_view text, std::vector<int64_t> available)
      : s_(text), available_(std::move(available)) {}

  std::optional<Rational> parse() {
    auto v = expr(0);
    skip();
    if (!v || pos_ != s_.size() || literals_ == 0) return std::nullopt;
    return v;
  }

 private:
  static constexpr int kMaxDepth = 64;

  void skip() {
    while (pos_ < s_.size() && s_[pos_] == ' ') ++pos_;
  }
  std::optional<Rational> expr(int depth) {
    auto lhs = term(depth);
    while (lhs) {
      skip();
      if (pos_ >= s_.size() || (s_[pos_] != '+' && s_[pos_] != '-')) break;
      char op = s_[pos_++];
      auto rhs = term(depth);
      if (!rhs) return std::nullopt;
      lhs = rational_op(op, *lhs, *rhs);
    }
    return lhs;
  }
  std::optional<Rational> term(int depth) {
    auto lhs = factor(depth);
    while (lhs) {
      skip();
      if (pos_ >= s_.size() || (s_[pos_] != '*' && s_[pos_] != '/')) break;
      char op = s_[pos_++];
      auto rhs = factor(depth);
      if (!rhs) return std::nullopt;
      lhs = rational_op(op, *lhs, *rhs);
    }
    return lhs;
  }
  std::optional<Rational> factor(int depth) {
    if (depth > kMaxDepth) return std::nullopt;
    skip();
    if (pos_ >= s_.size()) return std::nullopt;
    if (s_[pos_] == '(') {
      ++pos_;
      auto v = expr(depth + 1);
      skip();
      if (!v || pos_ >= s_.size() || s_[pos_] != ')') return std::nullopt;
      ++pos_;
      return v;
    }
    if (s_[pos_] < '0' || s_[pos_] > '9') return std::nullopt;
    int64_t value = 0;
    int digits = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      if (++digits > 12) return std::nullopt;
      value = value * 10 + (s_[pos_++] - '0');
    }
    auto it = std::find(available_.begin(), available_.end(), value);
    if (it == available_.end()) return std::nullopt;  // not given, or already used
    available_.erase(it);
    ++literals_;
    return Rational{value, 1};
  }

  std::string_view s_;
  size_t pos_ = 0;
  std::vector<int64_t> available_;
  int literals_ = 0;
};

class Countdown final : public Task {
 public:
  explicit Countdown(TaskSpec s) : Task(std::move(s)) {
    if (spec_.numbers < 2 || spec_.numbers > 6) throw Error("countdown: --numbers must be in 2..6");
    if (spec_.max_number < 2 || spec_.max_number > 999)
      throw Error("countdown: --max-number must be in 2..999");
  }

 protected:
  Prompt generate(uint64_t state) const override {
    for (;;) {
      std::vector<int64_t> nums(spec_.numbers);
      for (auto& n : nums) n = uniform(state, 1, spec_.max_number);
      // Build a solvable target: combine a shuffled subset left to right with integer-valid ops.
      std::vector<int64_t> order = nums;
      for (size_t i = order.size(); i > 1; --i)
        std::swap(order[i - 1], order[uniform(state, 0, static_cast<int64_t>(i) - 1)]);
      const int64_t used = uniform(state, 2, static_cast<int64_t>(order.size()));
      int64_t value = order[0];
      std::string expr = std::to_string(order[0]);
      bool additive = false;  // expr's top-level operator is + or −
      for (int64_t i = 1; i < used; ++i) {
        const int64_t n = order[i];
        char candidates[4];
        int count = 0;
        candidates[count++] = '+';
        if (value > n) candidates[count++] = '-';
        if (value * n <= 999) candidates[count++] = '*';
        if (n > 1 && value % n == 0) candidates[count++] = '/';
        const char op = candidates[uniform(state, 0, count - 1)];
        const bool mul = op == '*' || op == '/';
        if (mul && additive) expr = "(" + expr + ")";
        expr += op + std::to_string(n);
        value = op == '+' ? value + n : op == '-' ? value - n : op == '*' ? value * n : value / n;
        additive = !mul;
      }
      if (value < 1 || value > 999) continue;
      std::string text;
      for (size_t i = 0; i < nums.size(); ++i) text += (i ? "," : "") + std::to_string(nums[i]);
      text += ":" + std::to_string(value) + "=";
      Prompt p{text, std::to_string(value), nums};
      return p;
    }
  }
  bool correct(const Prompt& p, std::string_view answer) const override {
    return countdown_reaches(answer, p.numbers, std::stoll(p.answer));
  }
  std::string solution(const Prompt& p) const override {
    // Regenerating the construction would need the RNG state; a small search finds one instead.
    std::string found;
    std::vector<std::pair<Rational, std::string>> items;
    for (int64_t n : p.numbers) items.push_back({{n, 1}, std::to_string(n)});
    search(items, std::stoll(p.answer), found);
    return found;
  }

 private:
  static bool search(std::vector<std::pair<Rational, std::string>>& items, int64_t target,
                     std::string& found) {
    for (auto& [v, e] : items)
      if (v.den == 1 && v.num == target) {
        found = e;
        return true;
      }
    const size_t n = items.size();
    for (size_t i = 0; i < n; ++i)
      for (size_t j = 0; j < n; ++j) {
        if (i == j) continue;
        const auto a = items[i], b = items[j];
        for (char op : {'+', '-', '*', '/'}) {
          if ((op == '+' || op == '*') && i > j) continue;
          const std::optional<Rational> r = rational_op(op, a.first, b.first);
          if (!r) continue;
          std::vector<std::pair<Rational, std::string>> next;
          for (size_t k = 0; k < n; ++k)
            if (k != i && k != j) next.push_back(items[k]);
          next.push_back({*r, "(" + a.second + op + b.second + ")"});
          if (search(next, target, found)) return true;
        }
      }
    return false;
  }
};

uint64_t fnv1a(std::string_view s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

bool Task::held_out(const Prompt& p) const {
  return fnv1a(p.text, spec_.seed) % 100 < static_cast<uint64_t>(spec_.held_out_percent);
}

Prompt Task::train_prompt(uint64_t index) const {
  for (uint64_t attempt = 0;; ++attempt) {
    Prompt p = generate(mix(spec_.seed, index, attempt, 0));
    if (!held_out(p)) return p;
  }
}

std::vector<Prompt> Task::eval_prompts(int n) const {
  std::vector<Prompt> out;
  std::unordered_set<std::string> seen;
  const uint64_t limit = 1000ull * n + 100000;
  for (uint64_t i = 0; i < limit && static_cast<int>(out.size()) < n; ++i) {
    Prompt p = generate(mix(spec_.seed, i, 0, 1));
    if (held_out(p) && seen.insert(p.text).second) out.push_back(std::move(p));
  }
  if (static_cast<int>(out.size()) < n)
    throw Error("the held-out split of this task has only " + std::to_string(out.size()) +
                " distinct problems; ask for fewer or widen the task (e.g. more digits)");
  return out;
}

bool extract_answer(std::string_view c, std::string& answer) {
  const size_t open = c.rfind("<answer>");
  if (open == std::string_view::npos) return false;
  const size_t start = open + 8;
  const size_t close = c.find("</answer>", start);
  if (close == std::string_view::npos) return false;
  std::string_view a = c.substr(start, close - start);
  while (!a.empty() && a.front() == ' ') a.remove_prefix(1);
  while (!a.empty() && a.back() == ' ') a.remove_suffix(1);
  answer.assign(a);
  return !answer.empty();
}

bool well_formatted(std::string_view c) {
  auto consume = [&](std::string_view tag) {
    if (c.substr(0, tag.size()) != tag) return false;
    c.remove_prefix(tag.size());
    return true;
  };
  auto body = [&] {  // text without tags
    size_t n = c.find('<');
    if (n == std::string_view::npos) n = c.size();
    c.remove_prefix(n);
  };
  if (consume("<think>")) {
    body();
    if (!consume("</think>")) return false;
  }
  if (!consume("<answer>")) return false;
  const size_t before = c.size();
  body();
  if (c.size() == before) return false;  // empty answer
  if (!consume("</answer>")) return false;
  while (!c.empty() && c.front() == ' ') c.remove_prefix(1);
  return c.empty();
}

bool countdown_reaches(std::string_view expression, const std::vector<int64_t>& numbers,
                       int64_t target) {
  if (expression.size() > 256) return false;
  auto v = ExpressionParser(expression, numbers).parse();
  return v && v->den == 1 && v->num == target;
}

RewardBreakdown Task::score(const Prompt& prompt, std::string_view completion) const {
  RewardBreakdown r;
  std::string answer;
  if (extract_answer(completion, answer)) {
    try {
      r.accuracy = correct(prompt, answer) ? 1.0 : 0.0;
    } catch (...) {
      r.accuracy = 0.0;  // a verifier must never let a malformed completion escape
    }
  }
  r.format = well_formatted(completion) ? 1.0 : 0.0;
  r.total = r.accuracy + spec_.format_weight * r.format;
  if (spec_.dataset.empty() && spec_.reward == "bench-length")
    r.total += std::min(1.0, static_cast<double>(completion.size()) / 64.0);
  return r;
}

std::string Task::reference_completion(const Prompt& prompt) const {
  return "<answer>" + solution(prompt) + "</answer>";
}

std::unique_ptr<Task> make_task(const TaskSpec& spec) {
  if (spec.held_out_percent < 1 || spec.held_out_percent > 50)
    throw Error("held-out percent must be in 1..50");
  if (!spec.dataset.empty()) return make_dataset_task(spec);
  if (spec.name == "arith") return std::make_unique<Arith>(spec);
  if (spec.name == "countdown") return std::make_unique<Countdown>(spec);
  throw Error("unknown task '" + spec.name + "' (built-in: arith, countdown)");
}

}  // namespace cohort::grpo
