#include "node/lease_split.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/check.h"

namespace cohort::node {

std::vector<GroupRange> split_lease(int groups, std::span<const double> weights) {
  COHORT_CHECK(groups >= 0);
  COHORT_CHECK(!weights.empty());
  const size_t n = weights.size();
  double total = 0;
  for (double w : weights) {
    COHORT_CHECK(std::isfinite(w) && w >= 0, "worker weights must be finite and >= 0");
    total += w;
  }
  std::vector<long long> share(n, 0);
  std::vector<double> remainder(n, 0);
  long long given = 0;
  for (size_t w = 0; w < n; ++w) {
    const double quota =
        total > 0 ? double(groups) * weights[w] / total : double(groups) / double(n);
    share[w] = static_cast<long long>(std::floor(quota));
    remainder[w] = quota - double(share[w]);
    given += share[w];
  }
  // Floating-point quotas can sum a hair above `groups`; take back from the smallest remainders.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  while (given > groups) {
    size_t pick = n;
    for (size_t w = 0; w < n; ++w)
      if (share[w] > 0 && (pick == n || remainder[w] < remainder[pick])) pick = w;
    --share[pick];
    remainder[pick] += 1;
    --given;
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return remainder[a] > remainder[b]; });
  for (size_t i = 0; given < groups; ++i) {
    const size_t w = order[i % n];
    if (total > 0 && weights[w] == 0) continue;  // a zero-weight worker gets nothing
    ++share[w];
    ++given;
  }
  std::vector<GroupRange> out(n);
  int at = 0;
  for (size_t w = 0; w < n; ++w) {
    out[w] = {at, at + static_cast<int>(share[w])};
    at = out[w].end;
  }
  COHORT_CHECK(at == groups);
  return out;
}

WorkerThroughput::WorkerThroughput(std::vector<double> initial)
    : initial_(std::move(initial)), measured_(initial_.size(), -1.0) {
  COHORT_CHECK(!initial_.empty());
  for (double& w : initial_)
    if (!std::isfinite(w) || w < 0) w = 0;
}

void WorkerThroughput::record(int worker, double tokens, double seconds) {
  COHORT_CHECK(worker >= 0 && worker < size());
  if (!(seconds > 0) || !(tokens >= 0) || !std::isfinite(tokens / seconds)) return;
  const double rate = tokens / seconds;
  double& m = measured_[static_cast<size_t>(worker)];
  m = m < 0 ? rate : 0.5 * m + 0.5 * rate;
}

std::vector<double> WorkerThroughput::weights() const {
  double sum = 0;
  int known = 0;
  for (double m : measured_)
    if (m >= 0) {
      sum += m;
      ++known;
    }
  if (known == 0) return initial_;
  std::vector<double> w(measured_);
  for (double& x : w)
    if (x < 0) x = sum / known;
  return w;
}

}  // namespace cohort::node
