#include "exchange/sketch.h"

#include <cmath>

#include "common/check.h"

namespace cohort::exchange {
namespace {

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<float> count_sketch(std::span<const float> x, uint64_t key, uint32_t k) {
  COHORT_CHECK(k >= 1, "a sketch needs at least one bucket");
  // Accumulated in double: the buckets of a model-sized vector sum a few hundred thousand terms.
  std::vector<double> acc(k, 0.0);
  for (size_t i = 0; i < x.size(); ++i) {
    const uint64_t h = splitmix64(key + i);
    const auto bucket = static_cast<uint32_t>(((h >> 32) * uint64_t{k}) >> 32);
    acc[bucket] += (h & 1) ? -double(x[i]) : double(x[i]);
  }
  return {acc.begin(), acc.end()};
}

double cosine(std::span<const float> a, std::span<const float> b) {
  COHORT_CHECK(a.size() == b.size(), "cosine of vectors of different lengths");
  double dot = 0, a2 = 0, b2 = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += double(a[i]) * b[i];
    a2 += double(a[i]) * a[i];
    b2 += double(b[i]) * b[i];
  }
  if (a2 == 0 && b2 == 0) return 1.0;
  if (a2 == 0 || b2 == 0) return 0.0;
  return dot / std::sqrt(a2 * b2);
}

}  // namespace cohort::exchange
