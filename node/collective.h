// Inside one peer: the reduction of the workers' gradient sums and unit counts, and the
// broadcast of a policy version's weights, on raw buffers (no LibTorch). Two implementations:
// the CPU twin below (host memory, fixed order, reproducible bit for bit) and NCCL
// (node/nccl_collective.h, one CUDA device per worker).
//
//   auto c = make_cpu_collective(/*workers=*/2);
//   double c0[2] = {units0, tokens0}, c1[2] = {units1, tokens1};
//   GradientShard shards[] = {{g0.data(), c0}, {g1.data(), c1}};
//   c->reduce_sum(shards, g0.size());   // g0 = g0 + g1, c0 = c0 + c1
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "common/check.h"

namespace cohort::node {

// Why a collective (or a worker) failed: the node logs it with the lease it gives back.
enum class CollectiveFailure {
  timeout,    // did not complete in time: communicators aborted, the node never hangs
  nccl,       // NCCL reported an error (synchronous or asynchronous)
  cuda,       // a CUDA runtime call failed
  no_device,  // no usable device, or a build without NCCL
};
const char* collective_failure_name(CollectiveFailure f);

class CollectiveError : public Error {
 public:
  CollectiveError(CollectiveFailure failure, const std::string& message)
      : Error(message), failure_(failure) {}
  [[nodiscard]] CollectiveFailure failure() const { return failure_; }

 private:
  CollectiveFailure failure_;
};

// One worker's share of a reduction: `grad` points at that worker's gradient sum (host memory
// for the CPU twin, that worker's device for NCCL); `counts` are small host-side sums reduced
// alongside (units, tokens, loss); `stream` is the cudaStream_t the gradient was produced on
// (nullptr: the device's default stream; ignored by the CPU twin).
struct GradientShard {
  float* grad = nullptr;
  std::span<double> counts;
  void* stream = nullptr;
};

// Where the sum lands. The node only needs worker 0's (one update leaves the node); `all` keeps
// every replica's buffer equal (all-reduce).
enum class ReduceTo { worker0, all };

class Collective {
 public:
  virtual ~Collective() = default;
  [[nodiscard]] virtual int size() const = 0;
  // Element-wise sums of every shard's `count` gradient floats and of its counts (all shards
  // have as many counts) into shards[0], or into every shard. Returns once the result is in
  // place (CUDA streams synchronized); throws CollectiveError on failure or timeout.
  virtual void reduce_sum(std::span<const GradientShard> shards, size_t count,
                          ReduceTo to = ReduceTo::worker0) = 0;
  // Copies buffers[0] (`count` floats) into every other worker's buffer: a policy version's
  // weights enter the node once and are spread from worker 0. streams: one per worker, or empty.
  virtual void broadcast(std::span<float* const> buffers, size_t count,
                         std::span<void* const> streams = {}) = 0;
};

// The CPU twin: shard 0 + shard 1 + ... + shard n-1 for every element, in that order, so the
// result does not depend on `threads` or chunking. Threads (0: hardware concurrency, at most 8)
// each take contiguous chunks of `chunk_floats` that stay in cache while every shard is added.
std::unique_ptr<Collective> make_cpu_collective(int workers, int threads = 0,
                                                size_t chunk_floats = size_t{1} << 14);

}  // namespace cohort::node
