#include "node/device_group.h"

#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "node/collective_torch.h"
#include "node/nccl_collective.h"

namespace cohort::node {
namespace {

// Replicas driven by one thread each; what differs between CPU and GPU workers is where the
// replicas live, how weights reach them and which collective sums their gradients.
class ReplicaGroup : public DeviceGroup {
 public:
  int size() const override { return static_cast<int>(replicas_.size()); }

  void run(const std::function<void(int, grpo::Model&)>& fn) override {
    std::vector<std::string> errors(size());
    auto one = [&](int w) {
      try {
        // The worker's CUDA device is current on its thread (a no-op for CPU replicas).
        c10::OptionalDeviceGuard guard;
        if (replicas_[w]->device().is_cuda()) guard.reset_device(replicas_[w]->device());
        fn(w, *replicas_[w]);
      } catch (const std::exception& e) {
        errors[w] = e.what();
        if (errors[w].empty()) errors[w] = "unknown error";
      } catch (...) {
        errors[w] = "unknown exception";
      }
    };
    if (size() == 1) {
      one(0);
    } else {
      std::vector<std::thread> threads;
      for (int w = 0; w < size(); ++w) threads.emplace_back(one, w);
      for (auto& t : threads) t.join();
    }
    for (int w = 0; w < size(); ++w)
      if (!errors[w].empty()) throw WorkerError(w, errors[w]);
  }

  Collective& collective() override { return *collective_; }

  grpo::Model& replica(int w) override { return *replicas_.at(w); }

  void load_reference(const std::string& name, std::span<const float> values) override {
    at::NoGradGuard g;
    if (references_.empty())
      for (const auto& r : replicas_) {
        references_.push_back(std::make_unique<grpo::Model>(r->config(), 0));
        references_.back()->set_precision(r->precision());
        references_.back()->to(r->device());
        for (auto& p : references_.back()->parameters()) p.requires_grad_(false);
      }
    // Loaded once per session: a plain copy into each device (no broadcast needed).
    for (auto& r : references_) {
      at::Tensor* p = r->find(name);
      if (!p) throw Error("no parameter " + name + " in the local model");
      if (static_cast<size_t>(p->numel()) != values.size())
        throw Error("reference parameter " + name + " has " + std::to_string(p->numel()) +
                    " values, got " + std::to_string(values.size()));
      p->copy_(at::from_blob(const_cast<float*>(values.data()), p->sizes(), at::kFloat));
    }
  }

  const grpo::Model* reference(int w) const override {
    return references_.empty() ? nullptr : references_.at(w).get();
  }

 protected:
  at::Tensor& parameter(int w, const std::string& name, size_t values) {
    at::Tensor* p = replicas_[w]->find(name);
    if (!p) throw Error("no parameter " + name + " in the local model");
    if (static_cast<size_t>(p->numel()) != values)
      throw Error("parameter " + name + " has " + std::to_string(p->numel()) + " values, got " +
                  std::to_string(values));
    return *p;
  }

  std::vector<std::unique_ptr<grpo::Model>> replicas_;
  std::vector<std::unique_ptr<grpo::Model>> references_;  // empty unless the round has a KL term
  std::unique_ptr<Collective> collective_;
};

class CpuDeviceGroup final : public ReplicaGroup {
 public:
  CpuDeviceGroup(const grpo::ModelConfig& config, int workers, grpo::Precision precision) {
    COHORT_CHECK(workers >= 1);
    for (int i = 0; i < workers; ++i) {
      replicas_.push_back(std::make_unique<grpo::Model>(config, 0));
      replicas_.back()->set_precision(precision);
    }
    collective_ = make_cpu_collective(workers);
  }

  std::vector<wire::Device> describe() const override { return describe_cpu_devices(size()); }

  void load(const std::string& name, std::span<const float> values) override {
    at::NoGradGuard g;
    for (int w = 0; w < size(); ++w) {
      at::Tensor& p = parameter(w, name, values.size());
      p.copy_(at::from_blob(const_cast<float*>(values.data()), p.sizes(), at::kFloat));
    }
  }
};

// One worker per GPU. Weights enter once, on the first GPU, and are broadcast from there; the
// gradient sums are reduced with NCCL on the workers' devices (node/nccl_collective.h).
class CudaDeviceGroup final : public ReplicaGroup {
 public:
  CudaDeviceGroup(const grpo::ModelConfig& config, const std::vector<int>& gpus, grpo::Precision precision)
      : gpus_(gpus) {
    COHORT_CHECK(!gpus.empty());
    for (int gpu : gpus) {
      replicas_.push_back(std::make_unique<grpo::Model>(config, 0));
      replicas_.back()->set_precision(precision);
      replicas_.back()->to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(gpu)));
    }
    // One GPU needs no communicator: the CPU twin's one-shard reduction touches no memory.
    collective_ = gpus.size() == 1 ? make_cpu_collective(1) : make_nccl_collective(NcclOptions{.devices = gpus});
  }

  std::vector<wire::Device> describe() const override { return describe_gpu_devices(gpus_); }

  void load(const std::string& name, std::span<const float> values) override {
    at::NoGradGuard g;
    at::Tensor& first = parameter(0, name, values.size());
    first.copy_(at::from_blob(const_cast<float*>(values.data()), first.sizes(), at::kFloat));
    if (size() == 1) return;
    std::vector<at::Tensor> all;
    for (int w = 0; w < size(); ++w) all.push_back(parameter(w, name, values.size()));
    broadcast_tensors(*collective_, all);
  }

 private:
  std::vector<int> gpus_;
};

}  // namespace

std::vector<wire::Device> describe_cpu_devices(int workers) {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const uint64_t mem = pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
  std::vector<wire::Device> out;
  for (int i = 0; i < workers; ++i) {
    wire::Device d;
    d.set_kind("cpu");
    d.set_name("cpu:" + std::to_string(i));
    d.set_memory_bytes(mem / static_cast<uint64_t>(workers));
    d.set_fp8(false);
    out.push_back(d);
  }
  return out;
}

std::vector<wire::Device> describe_gpu_devices(const std::vector<int>& gpus) {
  std::vector<wire::Device> out;
  for (int gpu : gpus) {
    const CudaDeviceInfo info = cuda_device_info(gpu);
    wire::Device d;
    d.set_kind("cuda");
    d.set_name("cuda:" + std::to_string(gpu) + " " + info.name);
    d.set_memory_bytes(info.memory_bytes);
    d.set_fp8(info.major * 10 + info.minor >= 89);  // Ada (8.9) and Hopper (9.0) have FP8 tensor cores
    out.push_back(d);
  }
  return out;
}

std::unique_ptr<DeviceGroup> make_cpu_device_group(const grpo::ModelConfig& config, int workers,
                                                  grpo::Precision precision) {
  return std::make_unique<CpuDeviceGroup>(config, workers, precision);
}

std::unique_ptr<DeviceGroup> make_gpu_device_group(const grpo::ModelConfig& config, const std::vector<int>& gpus,
                                                  grpo::Precision precision) {
  if (gpus.empty()) throw Error("no GPUs given");
  for (int gpu : gpus) grpo::parse_device("cuda:" + std::to_string(gpu));  // says what is missing
  if (gpus.size() > 1 && !nccl_built())
    throw Error("several GPUs need the NCCL collective, and this build of cohort has none (install NCCL "
                "and reconfigure with COHORT_CUDA=ON)");
  return std::make_unique<CudaDeviceGroup>(config, gpus, precision);
}

std::vector<int> parse_gpu_list(const std::string& spec) {
  // "cuda" = every visible GPU; "cuda:0,2" = those.
  if (spec.rfind("cuda", 0) != 0) throw Error("GPU list '" + spec + "' must be \"cuda\" or \"cuda:0,1,...\"");
  std::vector<int> out;
  if (spec == "cuda") {
    std::string why;
    const int n = cuda_device_count(&why);
    if (n == 0) throw Error("--devices cuda: no GPU usable (" + why + ")");
    for (int i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  if (spec.size() < 6 || spec[4] != ':') throw Error("GPU list '" + spec + "' must be \"cuda:0,1,...\"");
  std::stringstream ss(spec.substr(5));
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 3)
      throw Error("GPU list '" + spec + "': '" + item + "' is not a device number");
    const int d = std::stoi(item);
    if (std::find(out.begin(), out.end(), d) != out.end())
      throw Error("GPU list '" + spec + "' names device " + item + " twice");
    out.push_back(d);
  }
  if (out.empty()) throw Error("GPU list '" + spec + "' names no device");
  return out;
}

}  // namespace cohort::node
