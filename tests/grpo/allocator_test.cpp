// The caching CPU allocator: freed large blocks are reused, contents written through one
// tensor never leak into correctness of another, and small blocks bypass the cache.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/cpu_allocator.h"

namespace cohort {
namespace {

TEST(CachingCpuAllocator, ReusesLargeBlocksAndKeepsResultsExact) {
  install_caching_cpu_allocator();
  auto before = caching_cpu_allocator_stats();
  for (int i = 0; i < 5; ++i) {
    auto a = torch::full({1024, 1024}, float(i));  // 4 MiB
    auto b = torch::full({1024, 1024}, 2.0f);
    auto c = a * b;
    EXPECT_EQ(c.sum().item<double>(), 2.0 * i * 1024 * 1024);
  }
  auto after = caching_cpu_allocator_stats();
  EXPECT_GT(after.hits, before.hits) << "the loop reuses freed 4 MiB blocks";
  EXPECT_GT(after.cached_bytes, 0u);
  auto small = torch::ones({16});  // below 1 MiB: plain malloc, still works
  EXPECT_EQ(small.sum().item<float>(), 16.0f);
  set_cpu_allocator_caching(false);
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 0u);
  { auto x = torch::ones({1024, 1024}); }
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 0u) << "disabled: nothing is held";
  set_cpu_allocator_caching(true);
}

}  // namespace
}  // namespace cohort
