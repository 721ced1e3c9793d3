// `cohort bench kernels`: CPU FP8 kernels against baselines measured in the same run:
//   - quantization throughput (GB/s of FP32 input) as a ratio of this machine's memcpy bandwidth
//     with the same thread count (target >= 0.5), for the AVX2 and the scalar paths;
//   - gradient codec encode (with error feedback) and decode throughput, bytes per parameter;
//   - the emulated FP8 GEMM's time over the FP32 GEMM's (OpenBLAS) on linear-layer shapes.
// Also built standalone as `kernels_bench kernels` (kernels/CMakeLists.txt), without LibTorch.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "kernels/fp8_cuda.h"
#include "kernels/fp8_gemm.h"
#include "kernels/grad_codec.h"
#include "kernels/quantize.h"

namespace cohort::bench {
namespace {

namespace k = cohort::kernels;

struct Options {
  int threads = 0;  // 0: hardware concurrency
  int size_mb = 64;  // FP32 input per throughput measurement
  int reps = 9;
  int64_t gemm_m = 512, gemm_n = 2048, gemm_k = 2048;
};

// Median wall time of `reps` runs after one warm-up.
double median_seconds(int reps, const std::function<void()>& fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// memcpy split over `threads` std::threads, the bandwidth baseline.
void parallel_memcpy(float* dst, const float* src, size_t n, int threads) {
  std::vector<std::thread> pool;
  const size_t chunk = (n + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    const size_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    pool.emplace_back([=] { std::memcpy(dst + b, src + b, (e - b) * sizeof(float)); });
  }
  for (auto& th : pool) th.join();
}

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double gbps(double bytes, double seconds) { return bytes / seconds / 1e9; }

// The CUDA kernels against the device's own DRAM bandwidth (docs/RESULTS.md has the
// first-principles expectation): quantization moves 4 + 1 + 4/128 bytes per element.
void run_cuda(const Options& opt, int64_t rows, int64_t cols) {
  const auto t = k::cuda::time_cuda_kernels(rows, cols, 4096, 4096, 4096, opt.reps);
  const double elems = double(rows) * double(cols), moved = elems * (5.0 + 4.0 / 128);
  const k::GpuPeaks sheet = k::known_gpu_peaks(k::fp8_device().name);
  std::printf("\n  CUDA on %s, theoretical DRAM bandwidth %.0f GB/s (memory clock x bus width)",
              k::fp8_device().name.c_str(), t.peak_bandwidth_gbps);
  if (sheet.hbm_gbps > 0) std::printf(", datasheet %.0f GB/s", sheet.hbm_gbps);
  std::printf("\n");
  auto line = [&](const char* what, double s) {
    std::printf("  %-36s %8.1f GB/s of FP32  %7.1f us  %.2f of DRAM peak", what, gbps(4 * elems, s),
                s * 1e6, gbps(moved, s) / t.peak_bandwidth_gbps);
    if (sheet.hbm_gbps > 0) std::printf(" (%.2f of datasheet)", gbps(moved, s) / sheet.hbm_gbps);
    std::printf("\n");
  };
  line("cuda quantize_e4m3_tile128", t.quantize_tile128_s);
  line("cuda quantize_e4m3_block128", t.quantize_block128_s);
  line("cuda dequantize_e4m3_tile128", t.dequantize_tile128_s);
  if (t.gemm_e4m3_s > 0) {
    const double tflops = 2.0 * 4096 * 4096 * 4096 / t.gemm_e4m3_s / 1e12;
    std::printf("  %-36s %8.1f TFLOP/s  %7.1f us  (m=n=k=4096, FP32 out)",
                "cuBLASLt block-scaled E4M3 GEMM", tflops, t.gemm_e4m3_s * 1e6);
    if (t.peak_fp8_tflops > 0) {
      std::printf("  %.2f of FP8 dense peak %.0f TFLOP/s [%s]", tflops / t.peak_fp8_tflops,
                  t.peak_fp8_tflops, t.peak_fp8_source.c_str());
    }
    std::printf("\n");
  }
}

int run(const Options& opt) {
  const int threads = opt.threads > 0 ? opt.threads
                                      : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  k::set_cpu_threads(threads);
  const int64_t cols = 4096;
  const int64_t rows = std::max<int64_t>(1, int64_t{opt.size_mb} * (1 << 20) / 4 / cols);
  const size_t n = static_cast<size_t>(rows * cols);
  const double in_bytes = 4.0 * n;

  std::printf("cohort bench kernels: threads=%d, input %lld x %lld FP32 (%.0f MB), median of %d\n",
              threads, static_cast<long long>(rows), static_cast<long long>(cols), in_bytes / 1e6,
              opt.reps);
  const auto& dev = k::fp8_device();
  std::printf("  FP8 backend: %s (%s)\n", k::fp8_backend_name(k::select_fp8_backend()),
              dev.available ? dev.name.c_str() : dev.reason.c_str());

  const auto x = gaussian(n, 1, 1.0f);
  std::vector<float> y(n), scales(k::tile128_scale_count(rows, cols)),
      bscales(k::block128_scale_count(rows, cols));
  std::vector<uint8_t> q(n);

  const double t_memcpy = median_seconds(opt.reps, [&] { parallel_memcpy(y.data(), x.data(), n, threads); });
  const double memcpy_gbps = gbps(in_bytes, t_memcpy);
  std::printf("\n  baseline memcpy                      %7.2f GB/s\n", memcpy_gbps);
  std::printf("  %-36s %7s  %s\n", "quantization (GB/s of FP32)", "GB/s", "ratio to memcpy (target >= 0.5)");

  const k::CpuIsa saved = k::active_cpu_isa();
  for (k::CpuIsa isa : {k::CpuIsa::avx2, k::CpuIsa::scalar}) {
    if (!k::cpu_isa_supported(isa)) continue;
    k::set_cpu_isa(isa);
    const std::string tag = std::string(" [") + k::cpu_isa_name(isa) + "]";
    auto line = [&](const char* what, double seconds) {
      const double g = gbps(in_bytes, seconds);
      std::printf("  %-36s %7.2f  %.2f\n", (what + tag).c_str(), g, g / memcpy_gbps);
    };
    line("quantize_e4m3_tile128", median_seconds(opt.reps, [&] {
           k::quantize_e4m3_tile128(x.data(), rows, cols, q.data(), scales.data());
         }));
    line("quantize_e4m3_block128", median_seconds(opt.reps, [&] {
           k::quantize_e4m3_block128(x.data(), rows, cols, q.data(), bscales.data());
         }));
    line("dequantize_e4m3_tile128 (of output)", median_seconds(opt.reps, [&] {
           k::dequantize_e4m3_tile128(q.data(), scales.data(), rows, cols, y.data());
         }));
    line("fake_quantize_e4m3_tile128", median_seconds(opt.reps, [&] {
           k::fake_quantize_e4m3_tile128(x.data(), rows, cols, y.data());
         }));
  }
  k::set_cpu_isa(saved);

  // Gradient codec on the same number of parameters.
  const auto g = gaussian(n, 2, 1e-3f);
  k::Fp8GradEncoder enc(n);
  std::vector<uint8_t> payload;
  const double t_enc = median_seconds(opt.reps, [&] { payload = enc.encode(g); });
  const double t_enc_plain = median_seconds(opt.reps, [&] { payload = k::encode_fp8_e4m3_block(g); });
  const double t_dec = median_seconds(opt.reps, [&] {
    if (!k::decode_fp8_e4m3_block(payload, y).ok()) std::abort();
  });
  std::printf("\n  gradient codec (CODEC_FP8_E4M3_BLOCK), %zu params, %.4f bytes/param (FP32: 4, target <= 1.05)\n",
              n, double(payload.size()) / double(n));
  std::printf("  %-36s %7.2f GB/s of FP32  %7.1f Mparam/s  ratio to memcpy %.2f\n", "encode, error feedback",
              gbps(in_bytes, t_enc), n / t_enc / 1e6, gbps(in_bytes, t_enc) / memcpy_gbps);
  std::printf("  %-36s %7.2f GB/s of FP32  %7.1f Mparam/s  ratio to memcpy %.2f\n", "encode, no feedback",
              gbps(in_bytes, t_enc_plain), n / t_enc_plain / 1e6, gbps(in_bytes, t_enc_plain) / memcpy_gbps);
  std::printf("  %-36s %7.2f GB/s of FP32  %7.1f Mparam/s  ratio to memcpy %.2f\n", "decode (validated)",
              gbps(in_bytes, t_dec), n / t_dec / 1e6, gbps(in_bytes, t_dec) / memcpy_gbps);

  // Emulated FP8 GEMM over FP32 GEMM: Y = X W^T for a linear layer (tokens x d_in -> d_out).
  std::printf("\n  emulated FP8 GEMM vs FP32 GEMM (OpenBLAS), Y[m x n] = X[m x k] W[n x k]^T\n");
  const int64_t shapes[][3] = {{opt.gemm_m, opt.gemm_n, opt.gemm_k}, {128, 1024, 1024}, {2048, 512, 512}};
  for (const auto& s : shapes) {
    const int64_t m = s[0], nn = s[1], kk = s[2];
    const auto a = gaussian(m * kk, 3, 1.0f), w = gaussian(nn * kk, 4, 0.02f);
    std::vector<float> out(m * nn);
    const int reps = std::max(3, opt.reps / 3);
    const double t32 = median_seconds(reps, [&] { k::gemm_f32_xwt(a.data(), w.data(), m, nn, kk, out.data()); });
    const double t8 = median_seconds(reps, [&] { k::gemm_e4m3_emulated_xwt(a.data(), w.data(), m, nn, kk, out.data()); });
    std::printf("  m=%-5lld n=%-5lld k=%-5lld FP32 %8.2f ms (%6.1f GFLOP/s)  FP8 emulated %8.2f ms  overhead x%.2f\n",
                static_cast<long long>(m), static_cast<long long>(nn), static_cast<long long>(kk), t32 * 1e3,
                2.0 * m * nn * kk / t32 / 1e9, t8 * 1e3, t8 / t32);
  }
  if (k::select_fp8_backend() == k::Fp8Backend::cuda) run_cuda(opt, rows, cols);
  return 0;
}

}  // namespace

void add_kernels_bench(CLI::App& bench) {
  auto opt = std::make_shared<Options>();
  auto* cmd = bench.add_subcommand("kernels", "FP8 kernels: quantization vs memcpy, gradient codec, emulated FP8 GEMM vs FP32");
  cmd->add_option("--threads", opt->threads, "CPU threads (default: all cores)");
  cmd->add_option("--size-mb", opt->size_mb, "FP32 input size per throughput measurement (MB)")->check(CLI::Range(1, 4096));
  cmd->add_option("--reps", opt->reps, "timed repetitions (median reported)")->check(CLI::Range(1, 1000));
  cmd->add_option("--gemm-m", opt->gemm_m, "GEMM rows (tokens)")->check(CLI::PositiveNumber);
  cmd->add_option("--gemm-n", opt->gemm_n, "GEMM output features")->check(CLI::PositiveNumber);
  cmd->add_option("--gemm-k", opt->gemm_k, "GEMM input features")->check(CLI::PositiveNumber);
  cmd->callback([opt] {
    const int rc = run(*opt);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace cohort::bench
