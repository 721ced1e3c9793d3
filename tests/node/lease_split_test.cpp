// Splitting a lease among local workers: whole groups, every group once, contiguous, in
// proportion to throughput with largest-remainder rounding; the throughput tracker's rules.
#include "node/lease_split.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

namespace cohort::node {
namespace {

std::vector<int> sizes(const std::vector<GroupRange>& r) {
  std::vector<int> s;
  for (const auto& g : r) s.push_back(g.size());
  return s;
}

void expect_tiles(const std::vector<GroupRange>& r, int groups) {
  int at = 0;
  for (const auto& g : r) {
    EXPECT_EQ(g.begin, at);
    EXPECT_GE(g.size(), 0);
    at = g.end;
  }
  EXPECT_EQ(at, groups);
}

TEST(SplitLease, LargestRemainderRounding) {
  EXPECT_EQ(sizes(split_lease(10, std::vector<double>{1, 1, 1})), (std::vector<int>{4, 3, 3}));
  EXPECT_EQ(sizes(split_lease(5, std::vector<double>{3, 1})),
            (std::vector<int>{4, 1}));  // 3.75 | 1.25
  EXPECT_EQ(sizes(split_lease(7, std::vector<double>{1, 2, 4})),
            (std::vector<int>{1, 2, 4}));  // exact
  EXPECT_EQ(sizes(split_lease(6, std::vector<double>{1, 1.5, 2.5})),
            (std::vector<int>{1, 2, 3}));  // 1.2 | 1.8 | 3
  // 2.6 | 2.6 | 2.8: floors 2+2+2; the two left over go to the largest remainders, the tie to
  // the lower worker.
  EXPECT_EQ(sizes(split_lease(8, std::vector<double>{2.6, 2.6, 2.8})), (std::vector<int>{3, 2, 3}));
}

TEST(SplitLease, WholeGroupsEveryGroupOnceProportional) {
  std::mt19937 rng(42);
  for (int trial = 0; trial < 2000; ++trial) {
    const int workers = 1 + int(rng() % 8), groups = int(rng() % 200);
    std::vector<double> w(workers);
    for (auto& x : w)
      x = (rng() % 5 == 0) ? 0.0 : std::exp(std::uniform_real_distribution<double>(-3, 3)(rng));
    const auto r = split_lease(groups, w);
    ASSERT_EQ(r.size(), size_t(workers));
    expect_tiles(r, groups);
    const double total = std::accumulate(w.begin(), w.end(), 0.0);
    for (int i = 0; i < workers; ++i) {
      const double quota = total > 0 ? groups * w[i] / total : double(groups) / workers;
      EXPECT_LT(std::abs(r[i].size() - quota), 1.0 + 1e-9) << "trial " << trial << " worker " << i;
      EXPECT_GE(r[i].size(), int(std::floor(quota + 1e-9)));
      if (total > 0 && w[i] == 0) {
        EXPECT_EQ(r[i].size(), 0);
      }
    }
  }
}

TEST(SplitLease, ZeroThroughputWorkersGetNothing) {
  EXPECT_EQ(sizes(split_lease(5, std::vector<double>{0, 1, 0})), (std::vector<int>{0, 5, 0}));
  EXPECT_EQ(sizes(split_lease(3, std::vector<double>{0, 0.001, 0})), (std::vector<int>{0, 3, 0}));
  // Nobody measured anything usable: equal shares.
  EXPECT_EQ(sizes(split_lease(5, std::vector<double>{0, 0})), (std::vector<int>{3, 2}));
}

TEST(SplitLease, MoreWorkersThanGroups) {
  const auto r = split_lease(2, std::vector<double>{1, 1, 1, 1});
  expect_tiles(r, 2);
  EXPECT_EQ(sizes(r), (std::vector<int>{1, 1, 0, 0}));
  expect_tiles(split_lease(0, std::vector<double>{1, 2}), 0);
  EXPECT_EQ(sizes(split_lease(1, std::vector<double>{1, 5, 1})), (std::vector<int>{0, 1, 0}));
}

TEST(WorkerThroughput, MemoryFirstThenMeasuredTokensPerSecond) {
  WorkerThroughput t({80e9, 24e9});
  EXPECT_EQ(t.weights(), (std::vector<double>{80e9, 24e9}));
  t.record(1, 1000, 2);  // 500 tok/s; worker 0 not measured yet: the mean of the measured
  EXPECT_EQ(t.weights(), (std::vector<double>{500, 500}));
  t.record(0, 3000, 1);
  EXPECT_EQ(t.weights(), (std::vector<double>{3000, 500}));
  t.record(0, 1000, 1);  // smoothed: half old, half new
  EXPECT_EQ(t.weights(), (std::vector<double>{2000, 500}));
  t.record(1, 10, 0);  // no time: ignored
  EXPECT_EQ(t.weights(), (std::vector<double>{2000, 500}));
  EXPECT_EQ(sizes(split_lease(10, t.weights())), (std::vector<int>{8, 2}));
}

}  // namespace
}  // namespace cohort::node
