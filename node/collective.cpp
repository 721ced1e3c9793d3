#include "node/collective.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

namespace cohort::node {

const char* collective_failure_name(CollectiveFailure f) {
  switch (f) {
    case CollectiveFailure::timeout:
      return "timeout";
    case CollectiveFailure::nccl:
      return "nccl";
    case CollectiveFailure::cuda:
      return "cuda";
    case CollectiveFailure::no_device:
      return "no device";
  }
  return "unknown";
}

namespace {

// Below this many floats per thread, threads cost more than they bring.
constexpr size_t kMinFloatsPerThread = size_t{1} << 18;

// Runs body(begin, end) over [0, count) split into `threads` contiguous ranges.
template <class F>
void parallel_ranges(size_t count, int threads, const F& body) {
  const size_t t = std::max<size_t>(1, std::min<size_t>(threads, count / kMinFloatsPerThread));
  if (t == 1) {
    body(size_t{0}, count);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(t);
  for (size_t i = 0; i < t; ++i)
    pool.emplace_back([&, i] {
      try {
        body(count * i / t, count * (i + 1) / t);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    });
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// dst += a (+ b (+ c)), left to right per element: one pass over dst for up to three shards.
void add_into(float* __restrict dst, const float* __restrict a, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] += a[i];
}
void add_into(float* __restrict dst, const float* __restrict a, const float* __restrict b,
              size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = (dst[i] + a[i]) + b[i];
}
void add_into(float* __restrict dst, const float* __restrict a, const float* __restrict b,
              const float* __restrict c, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = ((dst[i] + a[i]) + b[i]) + c[i];
}

class CpuCollective final : public Collective {
 public:
  CpuCollective(int workers, int threads, size_t chunk_floats)
      : workers_(workers), threads_(threads), chunk_(chunk_floats) {
    COHORT_CHECK(workers >= 1);
    COHORT_CHECK(chunk_floats >= 1);
    if (threads_ <= 0)
      threads_ = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
  }

  int size() const override { return workers_; }

  void reduce_sum(std::span<const GradientShard> shards, size_t count, ReduceTo to) override {
    COHORT_CHECK(static_cast<int>(shards.size()) == workers_, "one shard per worker");
    for (size_t s = 0; s < shards.size(); ++s) {
      COHORT_CHECK(count == 0 || shards[s].grad != nullptr);
      COHORT_CHECK(shards[s].counts.size() == shards[0].counts.size(),
                   "every shard has as many counts");
      for (size_t r = 0; r < s; ++r)
        COHORT_CHECK(count == 0 || shards[r].grad != shards[s].grad, "shards alias");
    }
    // Counts: tiny, summed in double, worker order.
    for (size_t s = 1; s < shards.size(); ++s)
      for (size_t k = 0; k < shards[0].counts.size(); ++k)
        shards[0].counts[k] += shards[s].counts[k];
    if (to == ReduceTo::all)
      for (size_t s = 1; s < shards.size(); ++s)
        std::copy(shards[0].counts.begin(), shards[0].counts.end(), shards[s].counts.begin());
    if (shards.size() == 1 || count == 0) return;

    parallel_ranges(count, threads_, [&](size_t begin, size_t end) {
      for (size_t b = begin; b < end; b += chunk_) {
        const size_t n = std::min(chunk_, end - b);
        float* dst = shards[0].grad + b;
        // The chunk of shard 0 stays in cache while the other shards are added to it, in order,
        // up to three per pass.
        for (size_t s = 1; s < shards.size();) {
          const size_t left = shards.size() - s;
          if (left >= 3) {
            add_into(dst, shards[s].grad + b, shards[s + 1].grad + b, shards[s + 2].grad + b, n);
            s += 3;
          } else if (left == 2) {
            add_into(dst, shards[s].grad + b, shards[s + 1].grad + b, n);
            s += 2;
          } else {
            add_into(dst, shards[s].grad + b, n);
            s += 1;
          }
        }
        if (to == ReduceTo::all)
          for (size_t s = 1; s < shards.size(); ++s)
            std::memcpy(shards[s].grad + b, dst, n * sizeof(float));
      }
    });
  }

  void broadcast(std::span<float* const> buffers, size_t count, std::span<void* const>) override {
    COHORT_CHECK(static_cast<int>(buffers.size()) == workers_, "one buffer per worker");
    if (buffers.size() == 1 || count == 0) return;
    parallel_ranges(count, threads_, [&](size_t begin, size_t end) {
      for (size_t s = 1; s < buffers.size(); ++s)
        std::memcpy(buffers[s] + begin, buffers[0] + begin, (end - begin) * sizeof(float));
    });
  }

 private:
  int workers_;
  int threads_;
  size_t chunk_;
};

}  // namespace

std::unique_ptr<Collective> make_cpu_collective(int workers, int threads, size_t chunk_floats) {
  return std::make_unique<CpuCollective>(workers, threads, chunk_floats);
}

}  // namespace cohort::node
