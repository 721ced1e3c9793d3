// The CUDA path of kernels/: device detection and backend choice, E4M3 quantize/dequantize
// kernels on device pointers (same math as the CPU path: fp8.h, same layouts: quantize.h), and
// the FP8 GEMM through cuBLASLt with DeepSeek-V3 scaling (VEC128_32F x BLK128x128_32F).
//
//   if (select_fp8_backend() == Fp8Backend::cuda) {           // logs the choice once
//     cuda::quantize_e4m3_tile128(x, m, k, xq, xs, stream);     // device pointers
//     cuda::quantize_e4m3_block128(w, n, k, wq, ws, stream);
//     cuda::gemm_e4m3_xwt(xq, xs, wq, ws, m, n, k, y, GemmOutput::f32, stream);
//   }
//
// The header needs no CUDA headers (streams are passed as void*, a cudaStream_t; nullptr is the
// legacy default stream). In a build without CUDA every function below exists: fp8_device()
// reports why there is no device and the kernels throw cohort::Error.
#pragma once

#include <cstdint>
#include <string>

namespace cohort::kernels {

struct Fp8DeviceInfo {
  bool available = false;         // CUDA build, a device present, compute capability >= 8.9
  bool block_scaled_gemm = false; // cuBLASLt's VEC128/BLK128x128 FP8 GEMM: compute capability 9.0
  int device = -1;
  int cc_major = 0, cc_minor = 0;
  std::string name;               // e.g. "NVIDIA H100 80GB HBM3"
  std::string reason;             // why not available, for logs
};

// Inspects the current CUDA device (cached after the first call).
const Fp8DeviceInfo& fp8_device();

enum class Fp8Backend { cpu, cuda };
// cuda when fp8_device().available, else cpu; logs which (and why) the first time.
Fp8Backend select_fp8_backend();
const char* fp8_backend_name(Fp8Backend backend);

enum class GemmOutput { f32, bf16 };

// Peak figures of a GPU for the benchmark's ratios. A lookup by device name in a table of
// datasheet values (H100 SXM/PCIe/NVL, H200 SXM/NVL, GH200, L40S, L4; FP8 tensor TFLOP/s dense,
// i.e. the datasheet's sparse figure halved); zeros and an empty source for other names.
struct GpuPeaks {
  double hbm_gbps = 0;
  double fp8_dense_tflops = 0;
  std::string source;
};
GpuPeaks known_gpu_peaks(const std::string& device_name);

namespace cuda {

// Same contracts as the CPU functions of the same names in quantize.h, on device pointers.
// 16-byte vector loads/stores are used when cols % 16 == 0 and the pointers are 16-byte aligned,
// scalar accesses otherwise (ragged sizes work either way).
void quantize_e4m3_tile128(const float* x, int64_t rows, int64_t cols, uint8_t* q, float* scales,
                           void* stream = nullptr);
void dequantize_e4m3_tile128(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                             float* x, void* stream = nullptr);
void quantize_e4m3_block128(const float* w, int64_t rows, int64_t cols, uint8_t* q, float* scales,
                            void* stream = nullptr);
void dequantize_e4m3_block128(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                              float* w, void* stream = nullptr);

// Y[m x n] (row-major, FP32 or BF16) = X[m x k] . W[n x k]^T on E4M3 operands, FP32 accumulation.
// xq/x_scales come from quantize_e4m3_tile128(X), wq/w_scales from quantize_e4m3_block128(W).
// In cuBLASLt's column-major terms this is the TN GEMM D[n x m] = W^T(op T) . X, with W's
// scale mode BLK128x128_32F and X's VEC128_32F. Requirements, each checked with a
// cohort::Error that names it: k % 16 == 0 and n % 8 == 0 (16-byte leading dimensions),
// every pointer 16-byte aligned, a device with block_scaled_gemm. Synchronous with respect to
// the host only through the stream.
void gemm_e4m3_xwt(const uint8_t* xq, const float* x_scales, const uint8_t* wq,
                   const float* w_scales, int64_t m, int64_t n, int64_t k, void* y,
                   GemmOutput out, void* stream = nullptr);

// Timings for `cohort bench kernels` on a GPU: the kernels above on device buffers of
// rows x cols (random data), and the GEMM on m x n x k, each the median of `reps` runs timed
// with CUDA events. peak_bandwidth_gbps is the device's theoretical DRAM bandwidth (memory
// clock x bus width x 2), the yardstick for the memory-bound quantization kernels;
// peak_fp8_tflops the dense FP8 tensor peak: known_gpu_peaks() by name, else for sm_90 an
// estimate of SMs x boost clock x 8192 FLOP/clock/SM (Hopper's dense FP8 rate; peak_fp8_source
// says which).
struct CudaKernelTimes {
  double peak_bandwidth_gbps = 0;
  double peak_fp8_tflops = 0;
  std::string peak_fp8_source;
  double quantize_tile128_s = 0, quantize_block128_s = 0, dequantize_tile128_s = 0;
  double gemm_e4m3_s = 0;  // 0 when the device has no block-scaled FP8 GEMM
};
CudaKernelTimes time_cuda_kernels(int64_t rows, int64_t cols, int64_t m, int64_t n, int64_t k,
                                  int reps);

// Self-check on the device: converts every float bit pattern in [begin, begin + count) with
// fp8.h's e4m3_from_float and with the hardware's cvt.rn.satfinite.e4m3x2.f32 and returns how
// many differ (0 expected). Lets the first run on real hardware prove the device path.
uint64_t count_e4m3_mismatches_vs_hardware(uint64_t begin, uint64_t count);

}  // namespace cuda
}  // namespace cohort::kernels
