// Verifiable rewards for math word problems (GSM8K, MATH-style): final-answer extraction from a
// completion, numeric normalization so that "$1,000.00", "1000" and "\frac{2000}{2}" agree, and
// the R1 format reward for <think>…</think><answer>…</answer>.
//
//   std::optional<std::string> a = extract_math_answer("… so she sold \\boxed{72} clips.");
//   bool ok = a && math_answers_equal(*a, "72");
//   double f = r1_format_reward("<think>48/2 = 24</think><answer>72</answer>");
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "grpo/rational.h"

namespace cohort::grpo {

// The final answer of a completion, by precedence: inside the last <answer>…</answer> when there
// is one (narrowed to its last \boxed{} if it has one); else the last \boxed{…} (braces
// balanced); else what follows the last "####" up to the end of its line. nullopt when the
// completion states no final answer (a bare last number does not count: the reward must not
// pay for an answer the model never committed to).
std::optional<std::string> extract_math_answer(std::string_view completion);

// The final answer of a GSM8K reference solution ("… #### 1,000" → "1,000"); the whole text
// when it has no "####".
std::string gsm8k_reference_answer(std::string_view solution);

// An exact rational value: num/den in lowest terms, den > 0.
using MathNumber = Rational;

// Parses a numeric answer after normalization: surrounding spaces, "$" and "\$", thousands
// separators ("1,234"), a trailing "." , "%" or "\%", trailing zeros of decimals ("18.0",
// "2.50"), \text{…}/\mathrm{…} units, fractions "3/4", "\frac{3}{4}", "\dfrac34". nullopt for
// anything that is not a single number.
std::optional<MathNumber> parse_math_number(std::string_view text);

// Numeric equality when both sides parse as numbers; otherwise equality of the texts with
// spaces and "$" removed.
bool math_answers_equal(std::string_view predicted, std::string_view reference);

// 1 when the completion is <think>…</think> then <answer>…</answer> (whitespace allowed around
// and between the blocks, nothing else, exactly one of each, answer not empty); else 0.
double r1_format_reward(std::string_view completion);

}  // namespace cohort::grpo
