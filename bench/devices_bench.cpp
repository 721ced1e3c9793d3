// `cohort bench devices`: the in-node reduction of gradient sums (node/collective.h) against
// this machine's memcpy bandwidth, measured side by side (alternating, same thread count):
//   - CPU twin: GB/s of gradient consumed (workers x bytes per second) and the ratio of its
//     memory traffic ((workers + 1) x bytes: every shard read, shard 0 written) to memcpy's
//     (2 x bytes) throughput; 1.0 means the reduction runs at memcpy's speed. It can exceed 1:
//     memcpy's plain stores also read each destination line first (read for ownership), which
//     the 2 x bytes does not count, while the reduction's destination is read anyway;
//   - NCCL, where this build has it and GPUs are visible: reduce / all-reduce / broadcast time
//     and bus bandwidth of a gradient on every visible GPU.
// Also built standalone as `devices_bench devices` (node/CMakeLists.txt), without LibTorch.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "node/collective.h"
#include "node/nccl_collective.h"

namespace cohort::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int size_mb = 256;  // gradient per worker (FP32)
  std::vector<int> workers = {2, 4};
  int threads = 0;  // 0: the twin's default (hardware concurrency, at most 8)
  int trials = 7;
  int nccl_mb = 1885;  // Qwen2.5-0.5B's FP32 gradient: 494,032,768 parameters x 4 bytes
};

double seconds(const std::function<void()>& fn) {
  const auto t0 = Clock::now();
  fn();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void parallel_memcpy(float* dst, const float* src, size_t n, int threads) {
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    const size_t b = n * t / threads, e = n * (t + 1) / threads;
    pool.emplace_back([=] { std::memcpy(dst + b, src + b, (e - b) * sizeof(float)); });
  }
  for (auto& th : pool) th.join();
}

int run(const Options& opt) {
  const int threads =
      opt.threads > 0 ? opt.threads
                      : static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
  const size_t count = size_t(opt.size_mb) * (1 << 20) / sizeof(float);
  const double bytes = double(count) * sizeof(float);
  std::printf(
      "cohort bench devices: CPU twin, %d MiB FP32 per worker, %d threads, median of %d "
      "alternating trials\n",
      opt.size_mb, threads, opt.trials);
  std::printf("  %-8s %12s %12s %14s %14s\n", "workers", "memcpy GB/s", "reduce GB/s",
              "traffic ratio", "reduce ms");
  for (int w : opt.workers) {
    auto twin = node::make_cpu_collective(w, threads);
    std::vector<std::vector<float>> g(w, std::vector<float>(count));
    for (int i = 0; i < w; ++i)
      for (size_t k = 0; k < count; ++k) g[i][k] = float((k + i) % 97) * 0.25f;
    std::vector<float> copy(count);
    std::vector<std::vector<double>> counts(w, std::vector<double>(3, 1.0));
    std::vector<node::GradientShard> shards(w);
    for (int i = 0; i < w; ++i) shards[i] = {g[i].data(), counts[i]};
    std::vector<double> t_copy, t_reduce;
    parallel_memcpy(copy.data(), g[0].data(), count, threads);  // warm-up, pages touched
    twin->reduce_sum(shards, count);
    for (int t = 0; t < opt.trials; ++t) {
      t_copy.push_back(seconds([&] { parallel_memcpy(copy.data(), g[1].data(), count, threads); }));
      t_reduce.push_back(seconds([&] { twin->reduce_sum(shards, count); }));
    }
    const double memcpy_gbps = bytes / median(t_copy) / 1e9;
    const double reduce_gbps = w * bytes / median(t_reduce) / 1e9;
    const double traffic = ((w + 1) * bytes / median(t_reduce)) / (2 * bytes / median(t_copy));
    std::printf("  %-8d %12.2f %12.2f %14.2f %14.1f\n", w, memcpy_gbps, reduce_gbps, traffic,
                median(t_reduce) * 1e3);
  }

  std::string why;
  const int gpus = node::cuda_device_count(&why);
  if (!node::nccl_built() || gpus < 1) {
    std::printf("\n  NCCL: not measured (%s)\n", why.c_str());
    return 0;
  }
  node::NcclOptions no;
  no.devices.resize(gpus);
  std::iota(no.devices.begin(), no.devices.end(), 0);
  const size_t ncount = size_t(opt.nccl_mb) * (1 << 20) / sizeof(float);
  const auto t = node::time_nccl_collective(no, ncount, opt.trials);
  const double nb = double(ncount) * sizeof(float);
  const double ring = gpus > 1 ? 2.0 * (gpus - 1) / gpus : 0.0;
  std::printf("\n  NCCL on %d GPU(s), %d MiB FP32 per GPU, buckets of %zu MiB\n", gpus, opt.nccl_mb,
              no.bucket_bytes >> 20);
  std::printf("  reduce to worker 0   %9.2f ms  bus %7.1f GB/s\n", t.reduce_s * 1e3,
              nb / t.reduce_s / 1e9);
  std::printf("  all-reduce           %9.2f ms  bus %7.1f GB/s (x %.2f)\n", t.all_reduce_s * 1e3,
              ring * nb / t.all_reduce_s / 1e9, ring);
  std::printf("  broadcast            %9.2f ms  bus %7.1f GB/s\n", t.broadcast_s * 1e3,
              nb / t.broadcast_s / 1e9);
  return 0;
}

}  // namespace

void add_devices_bench(CLI::App& bench) {
  auto opt = std::make_shared<Options>();
  auto* cmd = bench.add_subcommand(
      "devices", "In-node gradient reduction: CPU twin vs memcpy, NCCL where present");
  cmd->add_option("--size-mb", opt->size_mb, "FP32 gradient per worker (MiB)")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  cmd->add_option("--workers", opt->workers, "worker counts to measure")->capture_default_str();
  cmd->add_option("--threads", opt->threads,
                  "CPU threads (default: hardware concurrency, at most 8)");
  cmd->add_option("--trials", opt->trials, "alternating trials (median reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--nccl-mb", opt->nccl_mb,
                  "FP32 gradient per GPU for NCCL (MiB; default Qwen2.5-0.5B)")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  cmd->callback([opt] {
    for (int w : opt->workers)
      if (w < 2) throw CLI::ValidationError("--workers", "each count must be at least 2");
    const int rc = run(*opt);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace cohort::bench
