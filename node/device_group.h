// The local devices of a peer node behind one interface: one worker per device, each with its
// own model replica, running a share of a lease (whole prompt groups) in parallel; their
// gradient sums are reduced inside the node in a fixed order so that one signed update leaves.
// CpuDeviceGroup (threads) now; an NCCL implementation (one CUDA device per worker, all-reduce
// over raw device buffers) fits the same calls.
//
//   auto devices = make_cpu_device_group(config, /*workers=*/2);
//   devices->load(name_to_bytes);                            // same weights on every replica
//   devices->run([&](int w, grpo::Model& m) { ... per-worker work ... });
//   devices->reduce_sum(buffers);                            // buffers[0] += buffers[1] + ...
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "grpo/model.h"
#include "protocol/messages.pb.h"

namespace cohort::node {

class DeviceGroup {
 public:
  virtual ~DeviceGroup() = default;
  [[nodiscard]] virtual int size() const = 0;
  // What the node advertises when it joins.
  [[nodiscard]] virtual std::vector<wire::Device> describe() const = 0;
  // Copies a tensor's little-endian F32 bytes into parameter `name` of every replica.
  virtual void load(const std::string& name, std::span<const float> values) = 0;
  // Runs fn(worker, replica) on every worker concurrently and returns when all are done;
  // rethrows the first worker's exception.
  virtual void run(const std::function<void(int, grpo::Model&)>& fn) = 0;
  // buffers[0] = buffers[0] + buffers[1] + ... + buffers[n-1], element-wise, in that order
  // (deterministic); one buffer of `count` floats per worker, each in its worker's memory.
  virtual void reduce_sum(std::span<float* const> buffers, size_t count) = 0;
  [[nodiscard]] virtual grpo::Model& replica(int worker) = 0;
};

// What `workers` CPU workers advertise (kind "cpu", a share of host memory, no FP8 GEMM).
std::vector<wire::Device> describe_cpu_devices(int workers);

// `workers` replicas of a model with `config`, each driven by its own thread.
// `precision` selects how the workers' linear layers compute (fp32 | bf16 | fp8, grpo/model.h).
std::unique_ptr<DeviceGroup> make_cpu_device_group(const grpo::ModelConfig& config, int workers,
                                                  grpo::Precision precision = grpo::Precision::fp32);

}  // namespace cohort::node
