#include "node/device_group.h"

#include <torch/torch.h>
#include <unistd.h>

#include <thread>

#include "common/check.h"

namespace cohort::node {
namespace {

class CpuDeviceGroup final : public DeviceGroup {
 public:
  CpuDeviceGroup(const grpo::ModelConfig& config, int workers, grpo::Precision precision) {
    COHORT_CHECK(workers >= 1);
    for (int i = 0; i < workers; ++i) {
      replicas_.push_back(std::make_unique<grpo::Model>(config, 0));
      replicas_.back()->set_precision(precision);
    }
    collective_ = make_cpu_collective(workers);
  }
  int size() const override { return static_cast<int>(replicas_.size()); }

  std::vector<wire::Device> describe() const override { return describe_cpu_devices(size()); }

  void load(const std::string& name, std::span<const float> values) override {
    at::NoGradGuard g;
    for (auto& m : replicas_) {
      at::Tensor* p = m->find(name);
      if (!p) throw Error("no parameter " + name + " in the local model");
      if (static_cast<size_t>(p->numel()) != values.size())
        throw Error("parameter " + name + " has " + std::to_string(p->numel()) + " values, got " +
                    std::to_string(values.size()));
      p->copy_(at::from_blob(const_cast<float*>(values.data()), p->sizes(), at::kFloat));
    }
  }

  void run(const std::function<void(int, grpo::Model&)>& fn) override {
    std::vector<std::string> errors(size());
    auto one = [&](int w) {
      try {
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

 private:
  std::vector<std::unique_ptr<grpo::Model>> replicas_;
  std::unique_ptr<Collective> collective_;
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

std::unique_ptr<DeviceGroup> make_cpu_device_group(const grpo::ModelConfig& config, int workers,
                                                  grpo::Precision precision) {
  return std::make_unique<CpuDeviceGroup>(config, workers, precision);
}

}  // namespace cohort::node
