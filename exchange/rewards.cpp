#include "exchange/rewards.h"

#include <algorithm>
#include <cmath>

namespace cohort::exchange {

wire::RewardStats reward_stats(std::span<const float> rewards) {
  wire::RewardStats s;
  if (rewards.empty()) return s;
  double sum = 0, sq = 0, lo = rewards[0], hi = rewards[0];
  for (float r : rewards) {
    sum += r;
    sq += double(r) * r;
    lo = std::min<double>(lo, r);
    hi = std::max<double>(hi, r);
  }
  const double n = double(rewards.size());
  s.set_count(rewards.size());
  s.set_mean(sum / n);
  s.set_std(std::sqrt(std::max(0.0, sq / n - (sum / n) * (sum / n))));
  s.set_min(lo);
  s.set_max(hi);
  return s;
}

}  // namespace cohort::exchange
