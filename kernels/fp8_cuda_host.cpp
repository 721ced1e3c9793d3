// Host side of the CUDA path: device detection, backend choice, and the cuBLASLt FP8 GEMM with
// DeepSeek-V3 scaling (X: VEC128_32F per 1x128 tile, W: BLK128x128_32F per block).
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "kernels/cuda_check.h"
#include "kernels/fp8_cuda.h"
#include "kernels/quantize.h"

namespace cohort::kernels {
namespace {

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw Error(std::string(what) + " failed: cuBLAS status " + std::to_string(int(status)));
  }
}

// One cuBLASLt handle and workspace per host thread, made on first use.
struct LtContext {
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  LtContext() {
    check_cublas(cublasLtCreate(&handle), "cublasLtCreate");
    detail::check_cuda(cudaMalloc(&workspace, kWorkspaceBytes), "cudaMalloc (cuBLASLt workspace)");
  }
  ~LtContext() {  // errors ignored: at process exit the driver may already be gone
    if (workspace != nullptr) cudaFree(workspace);
    if (handle != nullptr) cublasLtDestroy(handle);
  }
};

LtContext& lt_context() {
  thread_local LtContext ctx;
  return ctx;
}

// RAII for the descriptors of one call.
struct MatmulDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~MatmulDesc() { if (d) cublasLtMatmulDescDestroy(d); }
  template <class T>
  void set(cublasLtMatmulDescAttributes_t attr, const T& v, const char* what) {
    check_cublas(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)), what);
  }
};
struct Layout {
  cublasLtMatrixLayout_t d = nullptr;
  Layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    check_cublas(cublasLtMatrixLayoutCreate(&d, type, static_cast<uint64_t>(rows),
                                            static_cast<uint64_t>(cols), ld),
                 "cublasLtMatrixLayoutCreate");
  }
  ~Layout() { if (d) cublasLtMatrixLayoutDestroy(d); }
};
struct Preference {
  cublasLtMatmulPreference_t d = nullptr;
  Preference() { check_cublas(cublasLtMatmulPreferenceCreate(&d), "cublasLtMatmulPreferenceCreate"); }
  ~Preference() { if (d) cublasLtMatmulPreferenceDestroy(d); }
};

std::string shape_text(int64_t m, int64_t n, int64_t k) {
  return "m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k);
}

}  // namespace

const Fp8DeviceInfo& fp8_device() {
  static const Fp8DeviceInfo info = [] {
    Fp8DeviceInfo i;
    int count = 0;
    const cudaError_t st = cudaGetDeviceCount(&count);
    if (st != cudaSuccess) {
      i.reason = std::string("no usable CUDA device (") + cudaGetErrorString(st) + ")";
      (void)cudaGetLastError();
      return i;
    }
    if (count == 0) {
      i.reason = "no CUDA device";
      return i;
    }
    int dev = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
      i.reason = "cannot query the CUDA device";
      (void)cudaGetLastError();
      return i;
    }
    i.device = dev;
    i.cc_major = prop.major;
    i.cc_minor = prop.minor;
    i.name = prop.name;
    if (prop.major * 10 + prop.minor < 89) {
      i.reason = i.name + " has compute capability " + std::to_string(prop.major) + "." +
                 std::to_string(prop.minor) + "; FP8 needs 8.9 (Ada) or newer";
      return i;
    }
    i.available = true;
    i.block_scaled_gemm = prop.major == 9;  // cuBLASLt VEC128 / BLK128x128 FP8: Hopper only
    return i;
  }();
  return info;
}

Fp8Backend select_fp8_backend() {
  const Fp8DeviceInfo& d = fp8_device();
  static std::once_flag logged;
  std::call_once(logged, [&] {
    if (d.available) {
      spdlog::info("FP8 kernels: CUDA path on {} (sm_{}{}), block-scaled cuBLASLt GEMM: {}", d.name,
                   d.cc_major, d.cc_minor, d.block_scaled_gemm ? "yes" : "no (needs sm_90)");
    } else {
      spdlog::info("FP8 kernels: CPU path ({})", d.reason);
    }
  });
  return d.available ? Fp8Backend::cuda : Fp8Backend::cpu;
}

const char* fp8_backend_name(Fp8Backend backend) {
  return backend == Fp8Backend::cuda ? "cuda" : "cpu";
}

namespace cuda {

void gemm_e4m3_xwt(const uint8_t* xq, const float* x_scales, const uint8_t* wq,
                   const float* w_scales, int64_t m, int64_t n, int64_t k, void* y,
                   GemmOutput out, void* stream) {
  const char* fn = "cuda::gemm_e4m3_xwt";
  if (m <= 0 || n <= 0 || k <= 0) {
    throw Error(std::string(fn) + ": empty or negative shape " + shape_text(m, n, k));
  }
  if (k % 16 != 0) {
    throw Error(std::string(fn) + ": k must be a multiple of 16 (16-byte aligned FP8 rows of X and W "
                "for cuBLASLt); got " + shape_text(m, n, k) + ". Pad K with zeros.");
  }
  const int64_t out_bytes = out == GemmOutput::f32 ? 4 : 2;
  if ((n * out_bytes) % 16 != 0) {
    throw Error(std::string(fn) + ": n must make 16-byte output rows (n % " +
                std::to_string(16 / out_bytes) + " == 0); got " + shape_text(m, n, k));
  }
  const void* ptrs[] = {xq, x_scales, wq, w_scales, y};
  const char* names[] = {"xq", "x_scales", "wq", "w_scales", "y"};
  for (int i = 0; i < 5; ++i) {
    if (!detail::aligned16(ptrs[i])) {
      throw Error(std::string(fn) + ": pointer " + names[i] +
                  " is not 16-byte aligned, which cuBLASLt's FP8 GEMM requires");
    }
  }
  const Fp8DeviceInfo& dev = fp8_device();
  if (!dev.block_scaled_gemm) {
    throw Error(std::string(fn) + ": cuBLASLt's VEC128/BLK128x128 FP8 GEMM needs a compute "
                "capability 9.0 GPU; " + (dev.available ? dev.name + " is sm_" +
                std::to_string(dev.cc_major) + std::to_string(dev.cc_minor) : dev.reason) +
                " (use the CPU emulation gemm_e4m3_emulated_xwt)");
  }

  LtContext& ctx = lt_context();
  // Row-major Y[m x n] = X W^T is column-major D[n x m] = op(A) B with A = W stored k x n
  // (op T), B = X stored k x m (op N): the TN layout FP8 tensor-core GEMMs require.
  MatmulDesc op;
  check_cublas(cublasLtMatmulDescCreate(&op.d, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  op.set(CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T, "TRANSA");
  op.set(CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N, "TRANSB");
  const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  op.set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, a_mode, "A_SCALE_MODE");
  op.set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, b_mode, "B_SCALE_MODE");
  op.set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, w_scales, "A_SCALE_POINTER");
  op.set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, x_scales, "B_SCALE_POINTER");

  const cudaDataType_t out_type = out == GemmOutput::f32 ? CUDA_R_32F : CUDA_R_16BF;
  Layout a(CUDA_R_8F_E4M3, k, n, k), b(CUDA_R_8F_E4M3, k, m, k), c(out_type, n, m, n);
  Preference pref;
  size_t ws = LtContext::kWorkspaceBytes;
  check_cublas(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws, sizeof(ws)),
               "MAX_WORKSPACE_BYTES");
  cublasLtMatmulHeuristicResult_t heuristic[4] = {};
  int found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(ctx.handle, op.d, a.d, b.d, c.d, c.d,
                                                           pref.d, 4, heuristic, &found);
  if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
    throw Error(std::string(fn) + ": cuBLASLt has no algorithm for the block-scaled E4M3 GEMM " +
                shape_text(m, n, k) + " with " +
                (out == GemmOutput::f32 ? "FP32" : "BF16") + " output on " + dev.name +
                " (cuBLAS status " + std::to_string(int(hs)) + ")");
  }
  const float alpha = 1.0f, beta = 0.0f;
  check_cublas(cublasLtMatmul(ctx.handle, op.d, &alpha, wq, a.d, xq, b.d, &beta, y, c.d, y, c.d,
                              &heuristic[0].algo, ctx.workspace, LtContext::kWorkspaceBytes,
                              static_cast<cudaStream_t>(stream)),
               "cublasLtMatmul (block-scaled E4M3)");
}

namespace {

template <class T>
struct DeviceArray {
  T* p = nullptr;
  explicit DeviceArray(size_t n) { detail::check_cuda(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc"); }
  ~DeviceArray() { cudaFree(p); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
};

struct Event {
  cudaEvent_t e = nullptr;
  Event() { detail::check_cuda(cudaEventCreate(&e), "cudaEventCreate"); }
  ~Event() { cudaEventDestroy(e); }
};

double median_event_seconds(int reps, const std::function<void()>& launch) {
  launch();  // warm-up (and cuBLASLt heuristics)
  detail::check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  std::vector<double> t;
  Event start, stop;
  for (int i = 0; i < reps; ++i) {
    detail::check_cuda(cudaEventRecord(start.e), "cudaEventRecord");
    launch();
    detail::check_cuda(cudaEventRecord(stop.e), "cudaEventRecord");
    detail::check_cuda(cudaEventSynchronize(stop.e), "cudaEventSynchronize");
    float ms = 0;
    detail::check_cuda(cudaEventElapsedTime(&ms, start.e, stop.e), "cudaEventElapsedTime");
    t.push_back(ms * 1e-3);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void fill_random(float* device, size_t n, uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> h(n);
  for (auto& v : h) v = d(rng);
  detail::check_cuda(cudaMemcpy(device, h.data(), n * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
}

}  // namespace

CudaKernelTimes time_cuda_kernels(int64_t rows, int64_t cols, int64_t m, int64_t n, int64_t k,
                                  int reps) {
  const Fp8DeviceInfo& dev = fp8_device();
  if (!dev.available) throw Error("cuda::time_cuda_kernels: " + dev.reason);
  CudaKernelTimes t;
  int clock_khz = 0, bus_bits = 0;
  detail::check_cuda(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev.device), "cudaDeviceGetAttribute");
  detail::check_cuda(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev.device), "cudaDeviceGetAttribute");
  t.peak_bandwidth_gbps = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
  const GpuPeaks known = known_gpu_peaks(dev.name);
  if (known.fp8_dense_tflops > 0) {
    t.peak_fp8_tflops = known.fp8_dense_tflops;
    t.peak_fp8_source = known.source;
  } else if (dev.cc_major == 9) {
    int sms = 0, sm_clock_khz = 0;
    detail::check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev.device),
                       "cudaDeviceGetAttribute");
    detail::check_cuda(cudaDeviceGetAttribute(&sm_clock_khz, cudaDevAttrClockRate, dev.device),
                       "cudaDeviceGetAttribute");
    t.peak_fp8_tflops = double(sms) * sm_clock_khz * 1e3 * 8192 / 1e12;
    t.peak_fp8_source = "estimate: " + std::to_string(sms) + " SMs x " +
                        std::to_string(sm_clock_khz / 1000) + " MHz x 8192 FLOP/clock";
  }

  const size_t count = static_cast<size_t>(rows * cols);
  DeviceArray<float> x(count), y(count);
  DeviceArray<uint8_t> q(count);
  DeviceArray<float> ts(tile128_scale_count(rows, cols)), bs(block128_scale_count(rows, cols));
  fill_random(x.p, count, 1, 1.0f);
  t.quantize_tile128_s = median_event_seconds(reps, [&] { quantize_e4m3_tile128(x.p, rows, cols, q.p, ts.p); });
  t.quantize_block128_s = median_event_seconds(reps, [&] { quantize_e4m3_block128(x.p, rows, cols, q.p, bs.p); });
  quantize_e4m3_tile128(x.p, rows, cols, q.p, ts.p);
  t.dequantize_tile128_s = median_event_seconds(reps, [&] { dequantize_e4m3_tile128(q.p, ts.p, rows, cols, y.p); });

  if (dev.block_scaled_gemm) {
    DeviceArray<float> a(m * k), w(n * k), out(m * n);
    DeviceArray<uint8_t> aq(m * k), wq(n * k);
    DeviceArray<float> as(tile128_scale_count(m, k)), ws(block128_scale_count(n, k));
    fill_random(a.p, m * k, 2, 1.0f);
    fill_random(w.p, n * k, 3, 0.02f);
    quantize_e4m3_tile128(a.p, m, k, aq.p, as.p);
    quantize_e4m3_block128(w.p, n, k, wq.p, ws.p);
    t.gemm_e4m3_s = median_event_seconds(reps, [&] {
      gemm_e4m3_xwt(aq.p, as.p, wq.p, ws.p, m, n, k, out.p, GemmOutput::f32);
    });
  }
  return t;
}

}  // namespace cuda
}  // namespace cohort::kernels
