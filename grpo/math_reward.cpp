#include "grpo/math_reward.h"

#include <numeric>
#include <vector>

namespace cohort::grpo {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size()))
    s.replace(p, from.size(), to);
}

// The braced group starting at s[open] == '{', without the braces; npos-safe.
std::optional<std::string_view> braced(std::string_view s, size_t open, size_t* end = nullptr) {
  if (open >= s.size() || s[open] != '{') return std::nullopt;
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) {
      if (end) *end = i + 1;
      return s.substr(open + 1, i - open - 1);
    }
  }
  return std::nullopt;
}

std::optional<std::string> last_boxed(std::string_view s) {
  for (size_t p = s.rfind("\\boxed"); p != std::string_view::npos;
       p = p == 0 ? std::string_view::npos : s.rfind("\\boxed", p - 1)) {
    size_t q = p + 6;
    while (q < s.size() && s[q] == ' ') ++q;
    if (auto body = braced(s, q)) return std::string(trim(*body));
  }
  return std::nullopt;
}


// "1,234.50", "-.5", "+3": a decimal with optional well-formed thousands separators.
std::optional<MathNumber> parse_decimal(std::string_view s) {
  bool neg = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    neg = s[0] == '-';
    s.remove_prefix(1);
  }
  const size_t dot = s.find('.');
  std::string_view int_part = s.substr(0, dot), frac = dot == std::string_view::npos ? "" : s.substr(dot + 1);
  if (int_part.empty() && frac.empty()) return std::nullopt;
  std::string digits;
  if (int_part.find(',') != std::string_view::npos) {
    // Thousands separators must group by three: 1,234,567 (never 12,34).
    size_t since_comma = 0;
    bool seen_comma = false;
    for (size_t i = 0; i < int_part.size(); ++i) {
      char c = int_part[i];
      if (c == ',') {
        if ((!seen_comma && (since_comma == 0 || since_comma > 3)) || (seen_comma && since_comma != 3))
          return std::nullopt;
        seen_comma = true;
        since_comma = 0;
        continue;
      }
      if (!is_digit(c)) return std::nullopt;
      digits += c;
      ++since_comma;
    }
    if (since_comma != 3) return std::nullopt;
  } else {
    for (char c : int_part) {
      if (!is_digit(c)) return std::nullopt;
      digits += c;
    }
  }
  __int128 den = 1;
  for (char c : frac) {
    if (!is_digit(c)) return std::nullopt;
    digits += c;
    den *= 10;
    if (den > static_cast<__int128>(1e18)) return std::nullopt;
  }
  if (digits.empty() || digits.size() > 36) return std::nullopt;
  __int128 num = 0;
  for (char c : digits) num = num * 10 + (c - '0');  // ≤ 36 digits fit in 128 bits
  return make_rational(neg ? -num : num, den);
}

std::optional<MathNumber> divide(std::optional<MathNumber> a, std::optional<MathNumber> b) {
  if (!a || !b) return std::nullopt;
  return rational_op('/', *a, *b);
}

}  // namespace

std::optional<std::string> extract_math_answer(std::string_view c) {
  const size_t open = c.rfind("<answer>");
  if (open != std::string_view::npos) {
    const size_t close = c.find("</answer>", open + 8);
    if (close != std::string_view::npos) {
      std::string_view inner = c.substr(open + 8, close - open - 8);
      if (auto b = last_boxed(inner)) return b;
      if (const size_t h = inner.rfind("####"); h != std::string_view::npos) inner = inner.substr(h + 4);
      inner = trim(inner);
      if (inner.empty()) return std::nullopt;
      return std::string(inner);
    }
  }
  if (auto b = last_boxed(c)) return b;
  const size_t h = c.rfind("####");
  if (h != std::string_view::npos) {
    std::string_view rest = c.substr(h + 4);
    rest = rest.substr(0, rest.find('\n'));
    rest = trim(rest);
    if (!rest.empty()) return std::string(rest);
  }
  return std::nullopt;
}

std::string gsm8k_reference_answer(std::string_view solution) {
  const size_t h = solution.rfind("####");
  return std::string(trim(h == std::string_view::npos ? solution : solution.substr(h + 4)));
}

std::optional<MathNumber> parse_math_number(std::string_view text) {
  std::string s(trim(text));
  if (s.size() > 200) return std::nullopt;
  // Units and decoration that do not change the value.
  for (const char* cmd : {"\\text", "\\mathrm", "\\textbf", "\\mbox"}) {
    for (size_t p = s.find(cmd); p != std::string::npos; p = s.find(cmd)) {
      size_t end = 0;
      size_t q = p + std::char_traits<char>::length(cmd);
      while (q < s.size() && s[q] == ' ') ++q;
      if (!braced(s, q, &end)) break;
      s.erase(p, end - p);
    }
  }
  for (const char* junk : {"\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "\\$", "$", "\\%", "%",
                           "\\(", "\\)", "\\[", "\\]", "^\\circ", "^{\\circ}"})
    replace_all(s, junk, "");
  replace_all(s, "{,}", ",");
  replace_all(s, "\xE2\x88\x92", "-");  // U+2212 minus sign
  // "x = 5" states the value after the last '='.
  if (const size_t eq = s.rfind('='); eq != std::string::npos) s.erase(0, eq + 1);
  std::string t;
  for (char c : s)
    if (!is_space(c)) t += c;
  while (!t.empty() && t.back() == '.') t.pop_back();
  while (t.size() >= 2 && t.front() == '{' && t.back() == '}') t = t.substr(1, t.size() - 2);
  if (t.empty()) return std::nullopt;

  bool neg = false;
  std::string_view v = t;
  if (v[0] == '-' || v[0] == '+') {
    neg = v[0] == '-';
    v.remove_prefix(1);
    if (v.empty() || v[0] == '-' || v[0] == '+') return std::nullopt;
  }
  std::optional<MathNumber> r;
  for (const char* frac : {"\\frac", "\\dfrac", "\\tfrac"}) {
    const std::string_view f = frac;
    if (v.substr(0, f.size()) != f) continue;
    std::string_view rest = v.substr(f.size());
    if (rest.size() == 2 && is_digit(rest[0]) && is_digit(rest[1])) {  // \frac34
      r = divide(parse_decimal(rest.substr(0, 1)), parse_decimal(rest.substr(1, 1)));
    } else {
      size_t end1 = 0, end2 = 0;
      auto a = braced(rest, 0, &end1);
      auto b = a ? braced(rest, end1, &end2) : std::nullopt;
      if (!a || !b || end2 != rest.size()) return std::nullopt;
      r = divide(parse_decimal(*a), parse_decimal(*b));
    }
    if (!r) return std::nullopt;
    return neg ? MathNumber{-r->num, r->den} : *r;
  }
  if (const size_t slash = v.find('/'); slash != std::string_view::npos) {
    r = divide(parse_decimal(v.substr(0, slash)), parse_decimal(v.substr(slash + 1)));
  } else {
    r = parse_decimal(v);
  }
  if (!r) return std::nullopt;
  return neg ? MathNumber{-r->num, r->den} : *r;
}

bool math_answers_equal(std::string_view predicted, std::string_view reference) {
  auto a = parse_math_number(predicted), b = parse_math_number(reference);
  if (a && b) return *a == *b;
  if (a || b) return false;
  auto strip = [](std::string_view s) {
    std::string o;
    for (char c : s)
      if (!is_space(c) && c != '$') o += c;
    return o;
  };
  const std::string x = strip(predicted);
  return !x.empty() && x == strip(reference);
}

double r1_format_reward(std::string_view c) {
  auto count = [&](std::string_view tag) {
    size_t n = 0;
    for (size_t p = c.find(tag); p != std::string_view::npos; p = c.find(tag, p + 1)) ++n;
    return n;
  };
  if (count("<think>") != 1 || count("</think>") != 1 || count("<answer>") != 1 ||
      count("</answer>") != 1)
    return 0.0;
  std::string_view s = trim(c);
  auto consume = [&](std::string_view tag) {
    if (s.substr(0, tag.size()) != tag) return false;
    s.remove_prefix(tag.size());
    return true;
  };
  if (!consume("<think>")) return 0.0;
  const size_t close = s.find("</think>");
  if (close == std::string_view::npos) return 0.0;  // "</think>" came before "<think>"
  s.remove_prefix(close);
  consume("</think>");
  s = trim(s);
  if (!consume("<answer>")) return 0.0;
  const size_t end = s.find("</answer>");
  if (end == std::string_view::npos) return 0.0;  // "</answer>" came before "<answer>"
  if (trim(s.substr(0, end)).empty()) return 0.0;
  s.remove_prefix(end);
  consume("</answer>");
  return trim(s).empty() ? 1.0 : 0.0;
}

}  // namespace cohort::grpo
