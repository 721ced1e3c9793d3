// Host code only (CUDA runtime + NCCL); compiled when the CUDA toolkit and NCCL were found
// (node/CMakeLists.txt), otherwise nccl_collective_stub.cpp says why it is missing.
#include "node/nccl_collective.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <set>
#include <thread>

namespace cohort::node {
namespace {

using Clock = std::chrono::steady_clock;

std::string cuda_message(cudaError_t status) {
  return std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")";
}

void check_cuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess)
    throw CollectiveError(CollectiveFailure::cuda, what + " failed: " + cuda_message(status));
}

std::string nccl_message(ncclResult_t status, ncclComm_t comm) {
  std::string m = ncclGetErrorString(status);
  const char* last = ncclGetLastError(comm);
  if (last && *last) m += ": " + std::string(last);
  return m;
}

// Restores the caller's current CUDA device: this file switches devices to address each
// worker's default stream.
class CurrentDeviceGuard {
 public:
  CurrentDeviceGuard() { cudaGetDevice(&device_); }
  ~CurrentDeviceGuard() { cudaSetDevice(device_); }
  CurrentDeviceGuard(const CurrentDeviceGuard&) = delete;
  CurrentDeviceGuard& operator=(const CurrentDeviceGuard&) = delete;

 private:
  int device_ = 0;
};

// Host staging for one device's counts: pinned, so that the asynchronous copies back do not
// block this thread (a pageable device-to-host copy waits for the stream, defeating the timeout).
struct CountStaging {
  double* host = nullptr;    // cudaMallocHost
  double* device = nullptr;  // cudaMalloc on the worker's device
  size_t capacity = 0;
};

class NcclCollective final : public Collective {
 public:
  explicit NcclCollective(NcclOptions o) : opt_(std::move(o)) {
    std::string why;
    const int visible = cuda_device_count(&why);
    if (opt_.devices.empty())
      throw CollectiveError(CollectiveFailure::no_device, "NCCL collective: no devices given");
    if (visible == 0)
      throw CollectiveError(CollectiveFailure::no_device, "NCCL collective: " + why);
    std::set<int> seen;
    for (int d : opt_.devices) {
      if (d < 0 || d >= visible)
        throw CollectiveError(CollectiveFailure::no_device,
                              "CUDA device " + std::to_string(d) + " requested, " +
                                  std::to_string(visible) + " visible");
      if (!seen.insert(d).second)
        throw CollectiveError(CollectiveFailure::no_device,
                              "CUDA device " + std::to_string(d) + " listed twice");
    }
    if (opt_.bucket_bytes < sizeof(float)) opt_.bucket_bytes = sizeof(float);
    staging_.resize(opt_.devices.size());
    init_comms();
    int version = 0;
    ncclGetVersion(&version);
    spdlog::info("nccl: {} communicators (NCCL {}), buckets of {} MiB, timeout {:.0f} s",
                 opt_.devices.size(), version, double(opt_.bucket_bytes) / (1 << 20),
                 opt_.timeout_s);
  }

  ~NcclCollective() override {
    for (size_t r = 0; r < comms_.size(); ++r) ncclCommDestroy(comms_[r]);
    for (size_t r = 0; r < staging_.size(); ++r) {
      cudaSetDevice(opt_.devices[r]);
      if (staging_[r].device) cudaFree(staging_[r].device);
      if (staging_[r].host) cudaFreeHost(staging_[r].host);
    }
  }

  int size() const override { return static_cast<int>(opt_.devices.size()); }

  void reduce_sum(std::span<const GradientShard> shards, size_t count, ReduceTo to) override {
    COHORT_CHECK(static_cast<int>(shards.size()) == size(), "one shard per worker");
    const size_t n_counts = shards[0].counts.size();
    for (size_t r = 0; r < shards.size(); ++r) {
      COHORT_CHECK(shards[r].counts.size() == n_counts, "every shard has as many counts");
      if (count) check_device_pointer(shards[r].grad, static_cast<int>(r));
    }
    CurrentDeviceGuard guard;
    init_comms();
    std::vector<cudaStream_t> streams(shards.size());
    for (size_t r = 0; r < shards.size(); ++r)
      streams[r] = static_cast<cudaStream_t>(shards[r].stream);

    // Counts: host → pinned → device, on each worker's stream, before the reduction.
    for (size_t r = 0; r < shards.size() && n_counts; ++r) {
      ensure_staging(static_cast<int>(r), n_counts);
      std::memcpy(staging_[r].host, shards[r].counts.data(), n_counts * sizeof(double));
      check_cuda(cudaSetDevice(opt_.devices[r]),
                 "cudaSetDevice(" + std::to_string(opt_.devices[r]) + ")");
      check_cuda(cudaMemcpyAsync(staging_[r].device, staging_[r].host, n_counts * sizeof(double),
                                 cudaMemcpyHostToDevice, streams[r]),
                 "cudaMemcpyAsync (counts to device " + std::to_string(opt_.devices[r]) + ")");
    }
    const size_t bucket = std::max<size_t>(1, opt_.bucket_bytes / sizeof(float));
    const size_t buckets = std::max<size_t>(1, (count + bucket - 1) / bucket);
    for (size_t b = 0; b < buckets; ++b) {
      const size_t off = b * bucket, n = std::min(bucket, count - std::min(count, off));
      const bool last = b + 1 == buckets;
      const std::string where =
          "bucket " + std::to_string(b + 1) + " of " + std::to_string(buckets);
      group(
          [&] {
            std::string failure;
            for (size_t r = 0; r < shards.size() && failure.empty(); ++r) {
              if (n)
                failure = enqueue(to, shards[r].grad + off, n, ncclFloat, r, streams[r], where);
              if (failure.empty() && last && n_counts)
                failure = enqueue(to, staging_[r].device, n_counts, ncclDouble, r, streams[r],
                                  where + " (counts)");
            }
            return failure;
          },
          where);
    }
    for (size_t r = 0; r < shards.size() && n_counts; ++r) {
      if (to == ReduceTo::worker0 && r != 0) continue;
      check_cuda(cudaSetDevice(opt_.devices[r]),
                 "cudaSetDevice(" + std::to_string(opt_.devices[r]) + ")");
      check_cuda(cudaMemcpyAsync(staging_[r].host, staging_[r].device, n_counts * sizeof(double),
                                 cudaMemcpyDeviceToHost, streams[r]),
                 "cudaMemcpyAsync (counts from device " + std::to_string(opt_.devices[r]) + ")");
    }
    wait(streams, "reduce of " + std::to_string(count * sizeof(float)) + " bytes");
    for (size_t r = 0; r < shards.size() && n_counts; ++r) {
      if (to == ReduceTo::worker0 && r != 0) continue;
      std::memcpy(shards[r].counts.data(), staging_[r].host, n_counts * sizeof(double));
    }
  }

  void broadcast(std::span<float* const> buffers, size_t count,
                 std::span<void* const> stream_list) override {
    COHORT_CHECK(static_cast<int>(buffers.size()) == size(), "one buffer per worker");
    COHORT_CHECK(stream_list.empty() || stream_list.size() == buffers.size(),
                 "one stream per worker or none");
    if (count == 0) return;
    for (size_t r = 0; r < buffers.size(); ++r)
      check_device_pointer(buffers[r], static_cast<int>(r));
    CurrentDeviceGuard guard;
    init_comms();
    std::vector<cudaStream_t> streams(buffers.size(), nullptr);
    for (size_t r = 0; r < stream_list.size(); ++r)
      streams[r] = static_cast<cudaStream_t>(stream_list[r]);
    const size_t bucket = std::max<size_t>(1, opt_.bucket_bytes / sizeof(float));
    for (size_t off = 0; off < count; off += bucket) {
      const size_t n = std::min(bucket, count - off);
      const std::string where = "broadcast bucket at " + std::to_string(off);
      group(
          [&] {
            for (size_t r = 0; r < buffers.size(); ++r) {
              const ncclResult_t st = ncclBroadcast(buffers[r] + off, buffers[r] + off, n,
                                                    ncclFloat, 0, comms_[r], streams[r]);
              if (st != ncclSuccess && st != ncclInProgress)
                return "ncclBroadcast (" + where + ", device " + std::to_string(opt_.devices[r]) +
                       ") failed: " + nccl_message(st, comms_[r]);
            }
            return std::string();
          },
          where);
    }
    wait(streams, "broadcast of " + std::to_string(count * sizeof(float)) + " bytes");
  }

 private:
  void init_comms() {
    if (!comms_.empty()) return;
    comms_.assign(opt_.devices.size(), nullptr);
    const ncclResult_t st = ncclCommInitAll(comms_.data(), size(), opt_.devices.data());
    if (st != ncclSuccess) {
      comms_.clear();
      throw CollectiveError(CollectiveFailure::nccl,
                            "ncclCommInitAll over " + std::to_string(size()) +
                                " devices failed: " + nccl_message(st, nullptr));
    }
  }

  // Every communicator is aborted: queued work is dropped, no rank is left waiting. The next
  // call creates new communicators.
  [[noreturn]] void abort_and_throw(CollectiveFailure f, const std::string& message) {
    for (ncclComm_t c : comms_) ncclCommAbort(c);
    comms_.clear();
    spdlog::error("nccl: {}; communicators aborted", message);
    throw CollectiveError(
        f, message + " (NCCL communicators aborted; they are recreated on the next call)");
  }

  // "" when enqueued, else what failed.
  std::string enqueue(ReduceTo to, void* p, size_t n, ncclDataType_t type, size_t r, cudaStream_t s,
                      const std::string& where) {
    const ncclResult_t st = to == ReduceTo::all
                                ? ncclAllReduce(p, p, n, type, ncclSum, comms_[r], s)
                                : ncclReduce(p, p, n, type, ncclSum, 0, comms_[r], s);
    if (st == ncclSuccess || st == ncclInProgress) return {};
    return std::string(to == ReduceTo::all ? "ncclAllReduce" : "ncclReduce") + " (" + where +
           ", device " + std::to_string(opt_.devices[r]) +
           ") failed: " + nccl_message(st, comms_[r]);
  }

  // body() enqueues every rank's operation and returns the first failure ("" when none); the
  // group is closed before any abort, so no communicator is left inside an open group.
  template <class F>
  void group(const F& body, const std::string& where) {
    const ncclResult_t start = ncclGroupStart();
    if (start != ncclSuccess)
      abort_and_throw(CollectiveFailure::nccl,
                      "ncclGroupStart (" + where + ") failed: " + nccl_message(start, nullptr));
    const std::string failure = body();
    const ncclResult_t end = ncclGroupEnd();
    if (!failure.empty()) abort_and_throw(CollectiveFailure::nccl, failure);
    if (end != ncclSuccess && end != ncclInProgress)
      abort_and_throw(CollectiveFailure::nccl,
                      "ncclGroupEnd (" + where + ") failed: " + nccl_message(end, nullptr));
  }

  // Polls until every stream is done; an asynchronous NCCL error, a CUDA error or the timeout
  // aborts the communicators and throws.
  void wait(const std::vector<cudaStream_t>& streams, const std::string& what) {
    const auto t0 = Clock::now();
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      bool done = true;
      for (size_t r = 0; r < streams.size(); ++r) {
        const std::string dev = "device " + std::to_string(opt_.devices[r]);
        ncclResult_t async = ncclSuccess;
        const ncclResult_t st = ncclCommGetAsyncError(comms_[r], &async);
        if (st != ncclSuccess)
          abort_and_throw(CollectiveFailure::nccl,
                          "ncclCommGetAsyncError on " + dev + ": " + nccl_message(st, comms_[r]));
        if (async != ncclSuccess && async != ncclInProgress)
          abort_and_throw(CollectiveFailure::nccl,
                          what + " on " + dev + ": " + nccl_message(async, comms_[r]));
        if (cudaSetDevice(opt_.devices[r]) != cudaSuccess)
          abort_and_throw(CollectiveFailure::cuda, "cudaSetDevice(" + dev + ")");
        const cudaError_t q = cudaStreamQuery(streams[r]);  // nullptr: this device's default stream
        if (q == cudaErrorNotReady) {
          done = false;
        } else if (q != cudaSuccess) {
          abort_and_throw(CollectiveFailure::cuda, what + " on " + dev + ": " + cuda_message(q));
        }
      }
      if (done) return;
      const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
      if (waited > opt_.timeout_s)
        abort_and_throw(CollectiveFailure::timeout, what + " on " + std::to_string(size()) +
                                                        " GPUs did not complete within " +
                                                        std::to_string(opt_.timeout_s) + " s");
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  void check_device_pointer(const void* p, int r) {
    cudaPointerAttributes a{};
    check_cuda(cudaPointerGetAttributes(&a, p),
               "cudaPointerGetAttributes (worker " + std::to_string(r) + ")");
    if ((a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged) ||
        a.device != opt_.devices[r])
      throw CollectiveError(CollectiveFailure::cuda,
                            "worker " + std::to_string(r) + "'s buffer is not in CUDA device " +
                                std::to_string(opt_.devices[r]) + "'s memory");
  }

  void ensure_staging(int r, size_t n) {
    CountStaging& s = staging_[r];
    if (s.capacity >= n) return;
    check_cuda(cudaSetDevice(opt_.devices[r]), "cudaSetDevice");
    if (s.device) cudaFree(s.device);
    if (s.host) cudaFreeHost(s.host);
    s = {};
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&s.device), n * sizeof(double)),
               "cudaMalloc (counts)");
    check_cuda(cudaMallocHost(reinterpret_cast<void**>(&s.host), n * sizeof(double)),
               "cudaMallocHost (counts)");
    s.capacity = n;
  }

  NcclOptions opt_;
  std::vector<ncclComm_t> comms_;
  std::vector<CountStaging> staging_;
};

}  // namespace

bool nccl_built() { return true; }

int cuda_device_count(std::string* why) {
  int n = 0;
  const cudaError_t st = cudaGetDeviceCount(&n);
  if (st != cudaSuccess) {
    cudaGetLastError();  // clear it: not sticky, the caller may try CPU work next
    if (why) *why = "cudaGetDeviceCount: " + cuda_message(st);
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device is visible";
  return n;
}

CudaDeviceInfo cuda_device_info(int device) {
  cudaDeviceProp p{};
  check_cuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties(" + std::to_string(device) + ")");
  return {p.name, p.totalGlobalMem, p.major, p.minor};
}

std::unique_ptr<Collective> make_nccl_collective(const NcclOptions& options) {
  return std::make_unique<NcclCollective>(options);
}

NcclTiming time_nccl_collective(const NcclOptions& options, size_t count, int reps) {
  auto c = make_nccl_collective(options);
  const size_t n = options.devices.size();
  std::vector<float*> bufs(n, nullptr);
  struct Free {
    std::vector<float*>& b;
    const std::vector<int>& d;
    ~Free() {
      for (size_t r = 0; r < b.size(); ++r)
        if (b[r]) {
          cudaSetDevice(d[r]);
          cudaFree(b[r]);
        }
    }
  } free_all{bufs, options.devices};
  for (size_t r = 0; r < n; ++r) {
    check_cuda(cudaSetDevice(options.devices[r]), "cudaSetDevice");
    check_cuda(
        cudaMalloc(reinterpret_cast<void**>(&bufs[r]), std::max<size_t>(1, count) * sizeof(float)),
        "cudaMalloc");
    check_cuda(cudaMemset(bufs[r], 0, count * sizeof(float)), "cudaMemset");
  }
  std::vector<std::array<double, 1>> counts(n, {1.0});
  auto median = [&](const std::function<void()>& fn) {
    fn();
    std::vector<double> t;
    for (int i = 0; i < std::max(1, reps); ++i) {
      const auto t0 = Clock::now();
      fn();
      t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  auto reduce = [&](ReduceTo to) {
    std::vector<GradientShard> shards(n);
    for (size_t r = 0; r < n; ++r) shards[r] = {bufs[r], counts[r], nullptr};
    c->reduce_sum(shards, count, to);
  };
  NcclTiming t;
  t.reduce_s = median([&] { reduce(ReduceTo::worker0); });
  t.all_reduce_s = median([&] { reduce(ReduceTo::all); });
  t.broadcast_s = median([&] { c->broadcast(bufs, count); });
  return t;
}

}  // namespace cohort::node
