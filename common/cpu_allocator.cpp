#include "common/cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "common/check.h"

namespace cohort {
namespace {

constexpr size_t kMinCached = size_t(1) << 20;
constexpr size_t kAlignment = 64;

size_t size_class(size_t n) {
  // 4 classes per power of two: round up to a multiple of 2^(floor(log2 n) − 2).
  const int log = 63 - __builtin_clzll(n);
  const size_t step = size_t(1) << (log - 2);
  return (n + step - 1) / step * step;
}

struct Block {
  void* ptr;
  size_t size;
};

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(size_t max_cached) : max_cached_(max_cached) {}

  c10::DataPtr allocate(size_t n) const override {
    if (n < kMinCached) {
      void* p = n == 0 ? nullptr : std::aligned_alloc(kAlignment, (n + kAlignment - 1) / kAlignment * kAlignment);
      if (n != 0 && p == nullptr) throw std::bad_alloc();
      return {p, p, &free_small, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t cls = size_class(n);
    Block* b = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(cls);
      if (it != free_.end() && !it->second.empty()) {
        b = it->second.back();
        it->second.pop_back();
        stats_.cached_bytes -= cls;
        ++stats_.hits;
      } else {
        ++stats_.misses;
      }
    }
    if (b == nullptr) {
      void* p = std::aligned_alloc(kAlignment, cls);
      if (p == nullptr) {
        release_cache();  // give back what we hold, then try once more
        p = std::aligned_alloc(kAlignment, cls);
        if (p == nullptr) throw std::bad_alloc();
      }
      b = new Block{p, cls};
    }
    return {b->ptr, b, &free_large, c10::Device(c10::DeviceType::CPU)};
  }

  static void free_small(void* p) { std::free(p); }

  static void free_large(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    CachingCpuAllocator* self = instance_;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      if (self->enabled_ && self->stats_.cached_bytes + b->size <= self->max_cached_) {
        self->free_[b->size].push_back(b);
        self->stats_.cached_bytes += b->size;
        return;
      }
    }
    std::free(b->ptr);
    delete b;
  }

  void release_cache() const {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, blocks] : free_)
      for (Block* b : blocks) {
        std::free(b->ptr);
        delete b;
      }
    free_.clear();
    stats_.cached_bytes = 0;
  }

  CpuAllocatorStats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  static CachingCpuAllocator* instance_;
  std::atomic<bool> enabled_{true};

 private:
  size_t max_cached_;
  mutable std::mutex mu_;
  mutable std::map<size_t, std::vector<Block*>> free_;
  mutable CpuAllocatorStats stats_;
};

CachingCpuAllocator* CachingCpuAllocator::instance_ = nullptr;

}  // namespace

void install_caching_cpu_allocator(size_t max_cached_bytes) {
  static std::once_flag once;
  std::call_once(once, [&] {
    // Never destroyed: tensors may be freed during static destruction.
    CachingCpuAllocator::instance_ = new CachingCpuAllocator(max_cached_bytes);
    c10::SetCPUAllocator(CachingCpuAllocator::instance_, /*priority=*/1);
  });
}

void set_cpu_allocator_caching(bool enabled) {
  if (auto* a = CachingCpuAllocator::instance_) {
    a->enabled_ = enabled;
    if (!enabled) a->release_cache();
  }
}

CpuAllocatorStats caching_cpu_allocator_stats() {
  return CachingCpuAllocator::instance_ ? CachingCpuAllocator::instance_->stats()
                                        : CpuAllocatorStats{};
}

}  // namespace cohort
