// The local devices of a peer node behind one interface: one worker per device, each with its
// own model replica, running a share of a lease (whole prompt groups) in parallel; their
// gradient sums are reduced inside the node by the group's Collective (node/collective.h) so
// that one signed update leaves. CPU workers (threads + the CPU twin) or GPU workers (one CUDA
// device each, NCCL: node/nccl_collective.h; needs a CUDA build of LibTorch).
//
//   auto devices = make_cpu_device_group(config, /*workers=*/2);
//   devices->load(name, values);                             // same weights on every replica
//   devices->run([&](int w, grpo::Model& m) { ... per-worker work ... });
//   devices->collective().reduce_sum(shards, count);         // shards[0] = Σ shards
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "grpo/model.h"
#include "node/collective.h"
#include "protocol/messages.pb.h"

namespace cohort::node {

// A worker's failure: which worker and why (its exception's message). The node gives the lease
// back and carries on.
class WorkerError : public Error {
 public:
  WorkerError(int worker, const std::string& reason)
      : Error("worker " + std::to_string(worker) + " failed: " + reason), worker_(worker), reason_(reason) {}
  [[nodiscard]] int worker() const { return worker_; }
  [[nodiscard]] const std::string& reason() const { return reason_; }

 private:
  int worker_;
  std::string reason_;
};

class DeviceGroup {
 public:
  virtual ~DeviceGroup() = default;
  [[nodiscard]] virtual int size() const = 0;
  // What the node advertises when it joins.
  [[nodiscard]] virtual std::vector<wire::Device> describe() const = 0;
  // Copies a tensor's little-endian F32 bytes into parameter `name` of every replica.
  virtual void load(const std::string& name, std::span<const float> values) = 0;
  // Runs fn(worker, replica) on every worker concurrently and returns when all are done; when
  // any worker threw, throws WorkerError for the lowest such worker (after all have finished).
  virtual void run(const std::function<void(int, grpo::Model&)>& fn) = 0;
  // Reduction and broadcast between the workers' buffers (each in its worker's memory).
  [[nodiscard]] virtual Collective& collective() = 0;
  [[nodiscard]] virtual grpo::Model& replica(int worker) = 0;
  // Rounds with a KL term: a frozen reference replica beside each worker's policy (same device and
  // precision), created by the first load_reference. reference() is nullptr before that.
  virtual void load_reference(const std::string& name, std::span<const float> values) = 0;
  [[nodiscard]] virtual const grpo::Model* reference(int worker) const = 0;
};

// What `workers` CPU workers advertise (kind "cpu", a share of host memory, no FP8 GEMM).
std::vector<wire::Device> describe_cpu_devices(int workers);
// What GPU workers advertise (kind "cuda", name, device memory, FP8 from compute capability 8.9).
std::vector<wire::Device> describe_gpu_devices(const std::vector<int>& gpus);

// `workers` replicas of a model with `config`, each driven by its own thread.
// `precision` selects how the workers' linear layers compute (fp32 | bf16 | fp8, grpo/model.h).
std::unique_ptr<DeviceGroup> make_cpu_device_group(const grpo::ModelConfig& config, int workers,
                                                  grpo::Precision precision = grpo::Precision::fp32);

// One replica per listed GPU (CUDA ordinals), reduced with NCCL when there are several. Needs a
// CUDA build of LibTorch and, for more than one GPU, the NCCL collective; throws cohort::Error
// saying which is missing.
std::unique_ptr<DeviceGroup> make_gpu_device_group(const grpo::ModelConfig& config, const std::vector<int>& gpus,
                                                  grpo::Precision precision = grpo::Precision::fp32);

// `--devices` for GPUs: "cuda" (every visible GPU) or "cuda:0,1,..."; throws cohort::Error.
std::vector<int> parse_gpu_list(const std::string& spec);

}  // namespace cohort::node
