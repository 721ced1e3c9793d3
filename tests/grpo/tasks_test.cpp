// Built-in tasks: rule-based rewards on correct, wrong, malformed, empty and overlong
// completions; the countdown verifier; held-out prompts never appear in training.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "common/check.h"
#include "grpo/tasks.h"
#include "grpo/tokenizer.h"

namespace cohort::grpo {
namespace {

TEST(Arith, RewardsCorrectWrongMalformed) {
  TaskSpec spec;
  spec.format_weight = 0.5;
  auto task = make_task(spec);
  Prompt p{"12+34=", "46", {}};
  EXPECT_EQ(task->score(p, "<answer>46</answer>").total, 1.5);
  EXPECT_EQ(task->score(p, "<think>6+2</think><answer>46</answer>").accuracy, 1.0);
  EXPECT_EQ(task->score(p, "<answer>47</answer>").accuracy, 0.0);
  EXPECT_EQ(task->score(p, "<answer>47</answer>").format, 1.0);
  EXPECT_EQ(task->score(p, "46").total, 0.0);                          // no tags
  EXPECT_EQ(task->score(p, "").total, 0.0);                            // empty
  EXPECT_EQ(task->score(p, "<answer>").total, 0.0);                    // unterminated
  EXPECT_EQ(task->score(p, "<answer></answer>").total, 0.0);           // empty answer
  EXPECT_EQ(task->score(p, "<answer>46</answer>1+1=2").format, 0.0);   // trailing junk
  EXPECT_EQ(task->score(p, "<answer>46</answer>1+1=2").accuracy, 1.0); // answer still right
  std::string overlong = "<answer>" + std::string(5000, '4') + "</answer>";
  EXPECT_EQ(task->score(p, overlong).accuracy, 0.0);
}

// Benchmarks only: + length / 64, at most 1, on top of the verifier's reward.
TEST(Arith, BenchmarkRewardAddsTheCompletionLength) {
  TaskSpec spec;
  spec.reward = "bench-length";
  auto task = make_task(spec);
  Prompt p{"12+34=", "46", {}};
  EXPECT_EQ(task->score(p, "7").total, 1.0 / 64);
  EXPECT_EQ(task->score(p, std::string(32, 'x')).total, 0.5);
  EXPECT_EQ(task->score(p, std::string(500, 'x')).total, 1.0);
  EXPECT_EQ(task->score(p, "<answer>46</answer>").total, 1.0 + 19.0 / 64);
}

TEST(Arith, GeneratesConsistentProblems) {
  TaskSpec spec;
  spec.digits = 3;
  spec.ops = "+-*";
  auto task = make_task(spec);
  for (uint64_t i = 0; i < 200; ++i) {
    Prompt p = task->train_prompt(i);
    long long a, b;
    char op;
    ASSERT_EQ(std::sscanf(p.text.c_str(), "%lld%c%lld=", &a, &op, &b), 3) << p.text;
    EXPECT_LE(a, 999);
    const long long r = op == '+' ? a + b : op == '-' ? a - b : a * b;
    EXPECT_EQ(std::to_string(r), p.answer);
    EXPECT_EQ(task->score(p, task->reference_completion(p)).accuracy, 1.0);
  }
}

TEST(Tasks, HeldOutSplitIsDisjointAndFixed) {
  for (const char* name : {"arith", "countdown"}) {
    TaskSpec spec;
    spec.name = name;
    auto task = make_task(spec);
    auto eval = task->eval_prompts(200);
    std::set<std::string> held;
    for (const auto& p : eval) held.insert(p.text);
    EXPECT_EQ(held.size(), 200u) << "eval prompts are distinct";
    for (uint64_t i = 0; i < 5000; ++i) EXPECT_FALSE(held.count(task->train_prompt(i).text));
    auto again = make_task(spec)->eval_prompts(200);
    EXPECT_EQ(again.front().text, eval.front().text);
    EXPECT_EQ(again.back().text, eval.back().text);
  }
}

TEST(Countdown, VerifierEvaluatesExactly) {
  std::vector<int64_t> n{3, 5, 7, 2};
  EXPECT_TRUE(countdown_reaches("(3+5)*2", n, 16));
  EXPECT_TRUE(countdown_reaches("7*2+5-3", n, 16));
  EXPECT_TRUE(countdown_reaches("(7+5)/(3)*2", n, 8));
  EXPECT_TRUE(countdown_reaches("7/2*(5-3)", n, 7));   // exact rationals: 3.5 * 2
  EXPECT_FALSE(countdown_reaches("3+3", n, 6));        // 3 used twice
  EXPECT_FALSE(countdown_reaches("8*2", n, 16));       // 8 not given
  EXPECT_FALSE(countdown_reaches("7/(5-5)", n, 0));    // 5 twice, and a division by zero
  EXPECT_FALSE(countdown_reaches("3/(5-5)", {3, 5, 5}, 0));  // division by zero
  EXPECT_FALSE(countdown_reaches("(3+5", n, 8));       // unbalanced
  EXPECT_FALSE(countdown_reaches("3++5", n, 8));
  EXPECT_FALSE(countdown_reaches("", n, 0));
  EXPECT_FALSE(countdown_reaches("-3+5", n, 2));       // no unary minus
  EXPECT_FALSE(countdown_reaches(std::string(200, '(') + "3" + std::string(200, ')'), n, 3));
  EXPECT_FALSE(countdown_reaches("99999999999999999999", n, 0));
}

TEST(Countdown, RewardsCorrectWrongMalformed) {
  TaskSpec spec;
  spec.name = "countdown";
  spec.format_weight = 0.5;
  auto task = make_task(spec);
  Prompt p{"3,5,7:16=", "16", {3, 5, 7}};
  EXPECT_EQ(task->score(p, "<answer>(3+5)*2</answer>").total, 0.5);      // 2 is not given
  EXPECT_EQ(task->score(p, "<answer>7+3+5+1</answer>").accuracy, 0.0);   // 1 is not given
  EXPECT_EQ(task->score(p, "<answer>3*7-5</answer>").total, 1.5);        // 21 - 5 = 16
  EXPECT_EQ(task->score(p, "<think>7*3=21</think><answer>7*3-5</answer>").total, 1.5);
  EXPECT_EQ(task->score(p, "<answer>3*7-5=16</answer>").accuracy, 0.0);  // not an expression
  EXPECT_EQ(task->score(p, "3*7-5").total, 0.0);
  EXPECT_EQ(task->score(p, "").total, 0.0);
  EXPECT_EQ(task->score(p, "<answer>" + std::string(3000, '(') + "</answer>").total, 0.5);
}

TEST(Countdown, GeneratedProblemsAreSolvable) {
  TaskSpec spec;
  spec.name = "countdown";
  spec.numbers = 4;
  auto task = make_task(spec);
  for (uint64_t i = 0; i < 100; ++i) {
    Prompt p = task->train_prompt(i);
    ASSERT_EQ(p.numbers.size(), 4u);
    const std::string ref = task->reference_completion(p);
    EXPECT_EQ(task->score(p, ref).accuracy, 1.0) << p.text << " " << ref;
    EXPECT_EQ(task->score(p, "<answer>1+</answer>").total, 0.0);
  }
}

TEST(CharTokenizer, RoundTripsAndRejectsUnknown) {
  CharTokenizer tok;
  const std::string s = "<think>12+3</think><answer>(3+5)*2</answer>";
  auto ids = tok.encode(s);
  EXPECT_EQ(tok.decode(ids), s);
  EXPECT_EQ(ids.front(), 3);  // <think> is one token
  EXPECT_THROW(tok.encode("abc"), Error);
  for (int64_t id : tok.encode("0123456789+-*/()=,: ")) EXPECT_LT(id, tok.vocab_size());
}

TEST(Tasks, RejectsBadSettings) {
  TaskSpec spec;
  spec.name = "chess";
  EXPECT_THROW(make_task(spec), Error);
  spec = {};
  spec.ops = "^";
  EXPECT_THROW(make_task(spec), Error);
  spec = {};
  spec.digits = 1;
  EXPECT_THROW(make_task(spec)->eval_prompts(500), Error);  // only 100 problems exist
}

}  // namespace
}  // namespace cohort::grpo
