// Latency quantiles for reports (bench swarm, node summaries): nearest rank on a sorted copy.
//
//   std::vector<double> rtt_ms = ...;
//   double p99 = quantile(rtt_ms, 0.99);   // 0 for an empty sample
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace cohort {

// The smallest sample with at least q of the samples at or below it (q in [0, 1]).
inline double quantile(std::vector<double> samples, double q) {
  if (samples.empty()) return 0;
  const auto n = samples.size();
  auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(n)));
  rank = std::clamp<size_t>(rank, 1, n) - 1;
  std::nth_element(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(rank), samples.end());
  return samples[rank];
}

}  // namespace cohort
