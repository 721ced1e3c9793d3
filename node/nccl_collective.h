// The NCCL implementation of node::Collective for a peer with several GPUs (one worker each).
// Communicators are created once per node with ncclCommInitAll in this process, and one host
// thread enqueues every GPU's operation inside one ncclGroupStart/End per bucket (NCCL's
// single-thread, multi-device mode): the node reduces after its worker threads have joined, so
// no extra thread per GPU is needed and no rank can wait on a thread that died.
//
//   NcclOptions o{.devices = {0, 1}};
//   auto c = make_nccl_collective(o);          // CollectiveError when not built with NCCL
//   c->reduce_sum(shards, count);              // device buffers, the workers' streams
//
// Gradients are reduced in buckets of `bucket_bytes` (one NCCL group each, so a later change can
// start a bucket as soon as its part of the backward pass is done); the counts ride in the last
// bucket's group as a small ncclDouble reduction. Completion is polled (cudaStreamQuery +
// ncclCommGetAsyncError) until `timeout_s`; on an error or a timeout every communicator is
// aborted (ncclCommAbort), a CollectiveError says why, and the next call creates new ones.
// Weights are broadcast from device 0 (ncclBroadcast, in place), once per policy version.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "node/collective.h"

namespace cohort::node {

struct NcclOptions {
  std::vector<int> devices;                // CUDA ordinals, one worker each, distinct
  size_t bucket_bytes = size_t{64} << 20;  // gradient bytes per NCCL group
  double timeout_s = 300;                  // longest wait for one reduce or broadcast
};

// True when this build has the NCCL collective (CUDA toolkit and NCCL found at build time).
bool nccl_built();

// Visible CUDA devices; 0 with `why` set when there is no driver, no device or no CUDA build.
int cuda_device_count(std::string* why = nullptr);

// What a GPU worker advertises: name, memory, compute capability (FP8 GEMMs need 8.9+).
struct CudaDeviceInfo {
  std::string name;
  size_t memory_bytes = 0;
  int major = 0, minor = 0;
};
// Throws CollectiveError (no_device or cuda) when the device cannot be queried.
CudaDeviceInfo cuda_device_info(int device);

// Throws CollectiveError (no_device, cuda or nccl) with a reason when it cannot start.
std::unique_ptr<Collective> make_nccl_collective(const NcclOptions& options);

// For `cohort bench devices` on a GPU machine: median seconds of reduce_sum of `count` floats per
// device (worker0 and all), and of broadcast, over `reps` runs after a warm-up, on device
// buffers it allocates. Throws CollectiveError where make_nccl_collective would.
struct NcclTiming {
  double reduce_s = 0, all_reduce_s = 0, broadcast_s = 0;
};
NcclTiming time_nccl_collective(const NcclOptions& options, size_t count, int reps);

}  // namespace cohort::node
