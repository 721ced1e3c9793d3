// Test inputs for the FP8 conversion tests: a stratified sample of the 2^32 float bit patterns
// that covers every sign and exponent, every rounding position's ties and near-ties, and the
// special values; plus an independent (search-based) E4M3/E5M2 reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace cohort::kernels::testing {

// Every (sign, exponent) x every value of the top 10 mantissa bits x low-13-bit patterns that
// sit on, just below and just above each rounding position; then a prime-stride sweep of the
// whole space. The top 10 mantissa bits include every bit E4M3/E5M2 rounding looks at
// (rounding positions 20..24), so exact ties are in the sample.
inline std::vector<uint32_t> stratified_float_bits() {
  std::vector<uint32_t> v;
  v.reserve(9'000'000);
  std::mt19937 rng(12345);
  const uint32_t low_patterns[] = {0u, 1u, 0x0FFFu, 0x1000u, 0x1001u, 0x1FFFu};
  for (uint32_t se = 0; se < 512; ++se) {
    for (uint32_t top = 0; top < 1024; ++top) {
      const uint32_t base = (se << 23) | (top << 13);
      for (uint32_t low : low_patterns) v.push_back(base | low);
      v.push_back(base | (rng() & 0x1FFFu));
    }
  }
  const uint64_t stride = 1009;  // prime: the sweep hits every residue class of small moduli
  for (uint64_t u = rng() % stride; u < (uint64_t{1} << 32); u += stride) {
    v.push_back(static_cast<uint32_t>(u));
  }
  return v;
}

inline float as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Independent reference encoder: the finite non-negative values of the format, decoded with
// ldexp from the field definitions, searched for the nearest to |x| in double; a tie goes to
// the even code; beyond the largest value the largest is the nearest (saturation); NaN maps
// to the format's positive NaN code; the sign is attached to every non-NaN result.
class NearestReference {
 public:
  // mantissa_bits 3, bias 7, max code 0x7E -> E4M3; 2, 15, 0x7B -> E5M2.
  NearestReference(int mantissa_bits, int bias, uint8_t max_code, uint8_t nan_code)
      : nan_code_(nan_code) {
    for (uint32_t c = 0; c <= max_code; ++c) {
      const int e = static_cast<int>(c >> mantissa_bits);
      const int m = static_cast<int>(c & ((1u << mantissa_bits) - 1));
      const double v = e == 0 ? std::ldexp(m, 1 - bias - mantissa_bits)
                              : std::ldexp((1 << mantissa_bits) + m, e - bias - mantissa_bits);
      values_.push_back(v);
    }
  }

  double decode_magnitude(uint8_t code) const { return values_[code]; }

  uint8_t encode(float x) const {
    if (std::isnan(x)) return nan_code_;
    const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
    const double a = std::fabs(static_cast<double>(x));
    const auto it = std::lower_bound(values_.begin(), values_.end(), a);
    size_t code;
    if (it == values_.end()) {
      code = values_.size() - 1;
    } else if (*it == a || it == values_.begin()) {
      code = static_cast<size_t>(it - values_.begin());
    } else {
      const size_t hi = static_cast<size_t>(it - values_.begin()), lo = hi - 1;
      const double dlo = a - values_[lo], dhi = values_[hi] - a;
      code = dlo < dhi ? lo : (dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi));
    }
    return static_cast<uint8_t>(code) | sign;
  }

 private:
  std::vector<double> values_;
  uint8_t nan_code_;
};

inline const NearestReference& e4m3_reference() {
  static const NearestReference r(3, 7, 0x7E, 0x7F);
  return r;
}
inline const NearestReference& e5m2_reference() {
  static const NearestReference r(2, 15, 0x7B, 0x7F);
  return r;
}

}  // namespace cohort::kernels::testing
