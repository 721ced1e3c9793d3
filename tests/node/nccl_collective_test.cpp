// The NCCL collective on every visible GPU against the CPU twin's sum (NCCL's order differs, so
// to float tolerance), counts and broadcast exactly; skipped with the reason where no GPU is
// visible. Its refusal to start without devices runs everywhere.
#include "node/nccl_collective.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "node/collective.h"

#if COHORT_NODE_HAVE_NCCL
#include <cuda_runtime.h>
#endif

namespace cohort::node {
namespace {

TEST(NcclCollective, RefusesToStartWithoutDevicesWithAReason) {
  std::string why;
  if (cuda_device_count(&why) > 0)
    GTEST_SKIP() << "GPUs are visible; this checks the no-device path";
  EXPECT_FALSE(why.empty());
  try {
    make_nccl_collective({.devices = {0}});
    FAIL() << "expected CollectiveError";
  } catch (const CollectiveError& e) {
    EXPECT_EQ(e.failure(), CollectiveFailure::no_device);
    EXPECT_FALSE(std::string(e.what()).empty());
  }
}

#if COHORT_NODE_HAVE_NCCL

void check(cudaError_t st) { ASSERT_EQ(st, cudaSuccess) << cudaGetErrorString(st); }

class NcclOnGpus : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    gpus_ = cuda_device_count(&why);
    if (gpus_ == 0)
      GTEST_SKIP() << "no CUDA device (" << why << "); the NCCL collective is not exercised";
    devices_.resize(gpus_);
    std::iota(devices_.begin(), devices_.end(), 0);
  }
  void TearDown() override { release(); }
  void release() {
    for (size_t r = 0; r < dev_.size(); ++r) {
      cudaSetDevice(devices_[r]);
      cudaFree(dev_[r]);
    }
    dev_.clear();
  }
  // Random host shards, copied to one buffer per GPU.
  void upload(size_t count, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d;
    host_.assign(gpus_, std::vector<float>(count));
    dev_.assign(gpus_, nullptr);
    for (int r = 0; r < gpus_; ++r) {
      for (auto& x : host_[r]) x = d(rng);
      check(cudaSetDevice(devices_[r]));
      check(cudaMalloc(reinterpret_cast<void**>(&dev_[r]), count * sizeof(float)));
      check(cudaMemcpy(dev_[r], host_[r].data(), count * sizeof(float), cudaMemcpyHostToDevice));
    }
  }
  std::vector<float> download(int r, size_t count) {
    std::vector<float> out(count);
    cudaSetDevice(devices_[r]);
    EXPECT_EQ(cudaMemcpy(out.data(), dev_[r], count * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }

  int gpus_ = 0;
  std::vector<int> devices_;
  std::vector<std::vector<float>> host_;
  std::vector<float*> dev_;
};

TEST_F(NcclOnGpus, ReduceMatchesCpuTwinSum) {
  const size_t count = (size_t{3} << 20) + 11;  // several 4 MiB buckets and a ragged last one
  for (ReduceTo to : {ReduceTo::worker0, ReduceTo::all}) {
    upload(count, 7);
    auto host = host_;
    std::vector<std::vector<double>> c(gpus_), hc(gpus_);
    std::vector<GradientShard> shards(gpus_), cpu(gpus_);
    for (int r = 0; r < gpus_; ++r) {
      c[r] = hc[r] = {double(r + 1), 3.0};
      shards[r] = {dev_[r], c[r], nullptr};
      cpu[r] = {host[r].data(), hc[r]};
    }
    make_cpu_collective(gpus_)->reduce_sum(cpu, count);
    make_nccl_collective({.devices = devices_, .bucket_bytes = size_t{4} << 20})
        ->reduce_sum(shards, count, to);
    for (int r = 0; r < (to == ReduceTo::all ? gpus_ : 1); ++r) {
      const auto got = download(r, count);
      for (size_t i = 0; i < count; ++i)
        ASSERT_NEAR(got[i], host[0][i], 1e-5 * gpus_ * (1 + std::abs(host[0][i])))
            << "rank " << r << " at " << i;
      EXPECT_EQ(c[r], hc[0]) << "counts on rank " << r;
    }
    release();
  }
}

TEST_F(NcclOnGpus, BroadcastCopiesDeviceZero) {
  const size_t count = (size_t{1} << 20) + 1;
  upload(count, 3);
  make_nccl_collective({.devices = devices_, .bucket_bytes = size_t{1} << 20})
      ->broadcast(dev_, count);
  for (int r = 0; r < gpus_; ++r) EXPECT_EQ(download(r, count), host_[0]) << "rank " << r;
}

#endif

}  // namespace
}  // namespace cohort::node
