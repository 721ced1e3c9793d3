// How a peer divides one lease among its local workers: whole prompt groups, contiguous ranges,
// in proportion to each worker's measured throughput (the first lease: its device memory).
//
//   WorkerThroughput speed({mem0, mem1});              // per-worker device memory
//   auto ranges = split_lease(lease_groups, speed.weights());
//   ... worker w works groups [ranges[w].begin, ranges[w].end) ...
//   speed.record(w, tokens, seconds);                   // feeds the next split
#pragma once

#include <span>
#include <vector>

namespace cohort::node {

struct GroupRange {
  int begin = 0, end = 0;  // [begin, end) in the lease's prompt order
  [[nodiscard]] int size() const { return end - begin; }
};

// Splits `groups` among weights.size() workers: worker w gets a share of weight w / Σ weights,
// rounded to whole groups by largest remainder (ties go to the lower worker), in worker order,
// so every group lands exactly once. A worker of weight 0 gets none; when every weight is 0 the
// split is equal. Weights must be finite and >= 0.
std::vector<GroupRange> split_lease(int groups, std::span<const double> weights);

// Per-worker throughput for split_lease. Before a worker has been measured its weight is the
// mean of the measured workers' (so it gets work and a measurement); before any is measured, the
// weights are the initial ones (device memory). Measurements are smoothed (half the old value,
// half the new) so that one odd lease does not swing the split.
class WorkerThroughput {
 public:
  explicit WorkerThroughput(std::vector<double> initial);
  // A worker finished `tokens` tokens in `seconds`; shares of zero groups are not recorded.
  void record(int worker, double tokens, double seconds);
  [[nodiscard]] std::vector<double> weights() const;
  [[nodiscard]] int size() const { return static_cast<int>(initial_.size()); }

 private:
  std::vector<double> initial_;
  std::vector<double> measured_;  // tokens/s, < 0 until measured
};

}  // namespace cohort::node
