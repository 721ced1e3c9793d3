// Exact rationals over int64 with overflow detection, for the verifiers that must never be
// fooled by floating point: the countdown expression evaluator and math-answer comparison.
//
//   auto r = rational_op('/', {7, 1}, {2, 1});   // 7/2
//   if (r && r->den == 1) ...                     // an integer result
#pragma once

#include <cstdint>
#include <optional>

namespace cohort::grpo {

// num/den in lowest terms, den > 0.
struct Rational {
  int64_t num = 0, den = 1;
  bool operator==(const Rational&) const = default;
};

// n/d reduced; nullopt on a zero denominator or when the reduced value leaves int64.
inline std::optional<Rational> make_rational(__int128 n, __int128 d) {
  if (d == 0) return std::nullopt;
  if (d < 0) n = -n, d = -d;
  __int128 a = n < 0 ? -n : n, b = d;
  while (b != 0) {
    const __int128 t = a % b;
    a = b;
    b = t;
  }
  if (a > 1) n /= a, d /= a;
  constexpr __int128 lim = INT64_MAX;
  if (n > lim || n < -lim || d > lim) return std::nullopt;
  return Rational{static_cast<int64_t>(n), static_cast<int64_t>(d)};
}

// a op b for op in + − × ÷; nullopt on division by zero, overflow or an unknown operator.
inline std::optional<Rational> rational_op(char op, const Rational& a, const Rational& b) {
  const __int128 an = a.num, ad = a.den, bn = b.num, bd = b.den;
  switch (op) {
    case '+': return make_rational(an * bd + bn * ad, ad * bd);
    case '-': return make_rational(an * bd - bn * ad, ad * bd);
    case '*': return make_rational(an * bn, ad * bd);
    case '/': return make_rational(an * bd, ad * bn);
  }
  return std::nullopt;
}

}  // namespace cohort::grpo
