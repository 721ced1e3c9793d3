// Math answer extraction, numeric normalization and the R1 format reward, checked against a
// table of GSM8K-style completions (the way Qwen2.5/Llama 3 instruct models and R1-style
// policies actually write their answers) with the answer a person reads off each one.
#include <gtest/gtest.h>

#include "grpo/math_reward.h"

namespace cohort::grpo {
namespace {

struct Case {
  const char* completion;
  const char* extracted;  // nullptr: no final answer stated
  const char* reference;  // the GSM8K reference answer
  bool correct;
};

const Case kCases[] = {
    // R1 format.
    {"<think>\nNatalia sold 48/2 = 24 clips in May.\n48 + 24 = 72\n</think>\n<answer>72</answer>",
     "72", "72", true},
    {"<think>She earns 12/60 = $0.2 per minute, so 0.2 * 50 = $10.</think> <answer>$10</answer>",
     "$10", "10", true},
    {"<think>1000 - 100 = 900</think><answer> 1,000 </answer>", "1,000", "900", false},
    // \boxed, last one wins, nested braces kept.
    {"Betty has 100 / 2 = 50 dollars. She still needs 100 - 50 - 15 - 30 = 5. "
     "The answer is \\boxed{5}.", "5", "5", true},
    {"First guess \\boxed{12}, but re-checking: 3 * 4 + 6 = 18, so \\boxed{18}", "18", "18", true},
    {"The fraction is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}", "0.75", true},
    {"So the answer is $\\boxed{1{,}200}$ pages.", "1{,}200", "1200", true},
    {"Thus \\boxed{\\text{\\$}42.00}", "\\text{\\$}42.00", "42", true},
    {"\\boxed {7}", "7", "7", true},
    // GSM8K's own "#### n".
    {"James writes 3*2*2 = 12 pages a week.\nSo he writes 12*52 = 624 pages a year.\n#### 624",
     "624", "624", true},
    {"She makes 18 * 2 = $36 every day.\n#### 36\nI hope this helps!", "36", "36", true},
    {"#### 18.0", "18.0", "18", true},
    {"#### 25%", "25%", "25", true},
    {"#### -3", "-3", "-3", true},
    {"#### 5/2", "5/2", "2.5", true},
    // <answer> takes precedence and may contain \boxed or a sentence.
    {"\\boxed{3} <answer>\\boxed{4}</answer>", "4", "4", true},
    {"<answer>x = 12</answer>", "x = 12", "12", true},
    {"<answer>12 apples</answer>", "12 apples", "12", false},
    // No committed final answer: a bare last number earns nothing.
    {"Weng earns 12/60 = 0.2 per minute, so she earned 0.2 * 50 = 10.", nullptr, "10", false},
    {"<answer></answer>", nullptr, "10", false},
    {"\\boxed{unclosed", nullptr, "10", false},
    {"", nullptr, "0", false},
};

TEST(MathReward, ExtractionAndCorrectnessOnGsm8kStyleCompletions) {
  for (const Case& c : kCases) {
    auto got = extract_math_answer(c.completion);
    if (c.extracted == nullptr) {
      EXPECT_FALSE(got.has_value()) << c.completion << " → " << got.value_or("");
    } else {
      ASSERT_TRUE(got.has_value()) << c.completion;
      EXPECT_EQ(*got, c.extracted) << c.completion;
    }
    EXPECT_EQ(got && math_answers_equal(*got, c.reference), c.correct) << c.completion;
  }
}

TEST(MathReward, NumericNormalization) {
  struct N {
    const char* text;
    int64_t num, den;
  };
  const N ok[] = {{"72", 72, 1},        {"1,000", 1000, 1},     {"1,234,567", 1234567, 1},
                  {"$1,000.00", 1000, 1}, {"\\$5", 5, 1},      {"18.0", 18, 1},
                  {"2.50", 5, 2},        {".5", 1, 2},          {"-0.25", -1, 4},
                  {"3/4", 3, 4},         {"6/8", 3, 4},         {"\\frac{3}{4}", 3, 4},
                  {"\\dfrac{10}{4}", 5, 2}, {"\\frac34", 3, 4}, {"-\\frac{1}{2}", -1, 2},
                  {"25%", 25, 1},        {"25\\%", 25, 1},      {"42.", 42, 1},
                  {"x = 12", 12, 1},     {"90^\\circ", 90, 1},  {"15 \\text{ dollars}", 15, 1},
                  {"\xE2\x88\x92" "7", -7, 1},  {" 3 ", 3, 1},  {"{5}", 5, 1}};
  for (const N& n : ok) {
    auto v = parse_math_number(n.text);
    ASSERT_TRUE(v.has_value()) << n.text;
    EXPECT_EQ(*v, (MathNumber{n.num, n.den})) << n.text;
  }
  for (const char* bad : {"", "abc", "12,34", "1,2345", "3/0", "1..2", "12 apples", "\\frac{1}",
                          "1e5", "--3", "99999999999999999999999999999"})
    EXPECT_FALSE(parse_math_number(bad).has_value()) << bad;
}

TEST(MathReward, NonNumericAnswersCompareAsText) {
  EXPECT_TRUE(math_answers_equal("x^2 + 1", "x^2+1"));
  EXPECT_FALSE(math_answers_equal("x^2", "x^3"));
  EXPECT_FALSE(math_answers_equal("", ""));
  EXPECT_FALSE(math_answers_equal("12", "twelve"));
}

TEST(MathReward, Gsm8kReferenceAnswer) {
  EXPECT_EQ(gsm8k_reference_answer("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                                   "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"),
            "72");
  EXPECT_EQ(gsm8k_reference_answer("#### 1,000"), "1,000");
  EXPECT_EQ(gsm8k_reference_answer(" 5 "), "5");
}

TEST(MathReward, R1Format) {
  EXPECT_EQ(r1_format_reward("<think>reason</think><answer>42</answer>"), 1.0);
  EXPECT_EQ(r1_format_reward("\n<think>\nreason\n</think>\n\n<answer>\n42\n</answer>\n"), 1.0);
  EXPECT_EQ(r1_format_reward("<answer>42</answer>"), 0.0);                       // no think
  EXPECT_EQ(r1_format_reward("<think></answer>x</think><answer>42"), 0.0);  // closing tag first: no read past the end
  EXPECT_EQ(r1_format_reward("<think>r</think>"), 0.0);                          // no answer
  EXPECT_EQ(r1_format_reward("<think>r</think><answer> </answer>"), 0.0);        // empty answer
  EXPECT_EQ(r1_format_reward("<think>r</think>text<answer>4</answer>"), 0.0);    // text between
  EXPECT_EQ(r1_format_reward("<think>r</think><answer>4</answer> more"), 0.0);   // text after
  EXPECT_EQ(r1_format_reward("Sure! <think>r</think><answer>4</answer>"), 0.0);  // text before
  EXPECT_EQ(r1_format_reward("<think>a</think><think>b</think><answer>4</answer>"), 0.0);
  EXPECT_EQ(r1_format_reward("<answer>4</answer><think>r</think>"), 0.0);        // wrong order
}

}  // namespace
}  // namespace cohort::grpo
