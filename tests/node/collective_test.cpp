// The CPU twin of the in-node collective: its sums equal an independent left-to-right fold bit
// for bit, whatever the threads and chunking, and a double-precision sum to float tolerance.
#include "node/collective.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace cohort::node {
namespace {

std::vector<std::vector<float>> random_shards(int workers, size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<std::vector<float>> g(workers, std::vector<float>(count));
  for (auto& v : g)
    for (auto& x : v)
      x = d(rng) * (rng() % 8 == 0 ? 1e4f : 1.0f);  // mixed magnitudes: order matters
  return g;
}

// shards[0] + shards[1] + ... in that order, one element at a time: the twin's contract.
std::vector<float> fold(const std::vector<std::vector<float>>& g) {
  std::vector<float> out(g[0]);
  for (size_t s = 1; s < g.size(); ++s)
    for (size_t i = 0; i < out.size(); ++i) out[i] = out[i] + g[s][i];
  return out;
}

std::vector<GradientShard> shards_of(std::vector<std::vector<float>>& g,
                                     std::vector<std::vector<double>>& c) {
  std::vector<GradientShard> s(g.size());
  for (size_t w = 0; w < g.size(); ++w) s[w] = {g[w].data(), c[w]};
  return s;
}

TEST(CpuCollective, SumEqualsLeftToRightFoldBitForBitForAnyThreadsAndChunks) {
  const size_t count = (size_t{1} << 20) + 37;  // several threads' ranges, ragged tail
  for (int workers : {1, 2, 3, 5}) {
    const auto original = random_shards(workers, count, 11 + workers);
    const std::vector<float> expected = fold(original);
    for (int threads : {1, 3, 8})
      for (size_t chunk : {size_t{1}, size_t{7}, size_t{1} << 14}) {
        auto g = original;
        std::vector<std::vector<double>> c(workers);
        for (int w = 0; w < workers; ++w) c[w] = {double(w + 1), 10.0 * w, 0.5};
        auto shards = shards_of(g, c);
        make_cpu_collective(workers, threads, chunk)->reduce_sum(shards, count);
        ASSERT_EQ(0, std::memcmp(g[0].data(), expected.data(), count * sizeof(float)))
            << workers << " workers, " << threads << " threads, chunk " << chunk;
        EXPECT_DOUBLE_EQ(c[0][0], workers * (workers + 1) / 2.0);
        EXPECT_DOUBLE_EQ(c[0][1], 10.0 * workers * (workers - 1) / 2.0);
        EXPECT_DOUBLE_EQ(c[0][2], 0.5 * workers);
        for (int w = 1; w < workers; ++w)  // worker0 mode leaves the others' buffers alone
          ASSERT_EQ(0, std::memcmp(g[w].data(), original[w].data(), count * sizeof(float)));
      }
  }
}

TEST(CpuCollective, SumMatchesDoublePrecisionReference) {
  const size_t count = 100003;
  auto g = random_shards(4, count, 5);
  std::vector<double> ref(count, 0.0), magnitude(count, 0.0);
  for (const auto& v : g)
    for (size_t i = 0; i < count; ++i) {
      ref[i] += v[i];
      magnitude[i] += std::abs(v[i]);
    }
  std::vector<std::vector<double>> c(4);
  auto shards = shards_of(g, c);
  make_cpu_collective(4)->reduce_sum(shards, count);
  // Three float additions: each rounds by at most half an ulp of a partial sum.
  for (size_t i = 0; i < count; ++i)
    ASSERT_NEAR(g[0][i], ref[i], 4 * 6e-8 * magnitude[i] + 1e-30) << i;
}

TEST(CpuCollective, OrderIsShardOrder) {
  // 1e8 + 1 rounds back to 1e8 in float, so the fold order is visible in the result.
  std::vector<std::vector<float>> g = {{1e8f}, {1.0f}, {-1e8f}};
  std::vector<std::vector<double>> c(3);
  auto shards = shards_of(g, c);
  make_cpu_collective(3)->reduce_sum(shards, 1);
  EXPECT_EQ(g[0][0], 0.0f);  // (1e8 + 1) - 1e8; another order would give 1
}

TEST(CpuCollective, AllReduceLeavesTheSumInEveryShard) {
  const size_t count = (size_t{1} << 19) + 5;
  const auto original = random_shards(3, count, 3);
  const auto expected = fold(original);
  auto g = original;
  std::vector<std::vector<double>> c = {{1, 2}, {3, 4}, {5, 6}};
  auto shards = shards_of(g, c);
  make_cpu_collective(3, 4)->reduce_sum(shards, count, ReduceTo::all);
  for (int w = 0; w < 3; ++w) {
    ASSERT_EQ(0, std::memcmp(g[w].data(), expected.data(), count * sizeof(float))) << w;
    EXPECT_EQ(c[w], (std::vector<double>{9, 12})) << w;
  }
}

TEST(CpuCollective, BroadcastCopiesWorkerZero) {
  const size_t count = (size_t{1} << 19) + 3;
  auto g = random_shards(3, count, 9);
  std::vector<float*> ptrs = {g[0].data(), g[1].data(), g[2].data()};
  make_cpu_collective(3, 2)->broadcast(ptrs, count);
  EXPECT_EQ(g[1], g[0]);
  EXPECT_EQ(g[2], g[0]);
}

}  // namespace
}  // namespace cohort::node
