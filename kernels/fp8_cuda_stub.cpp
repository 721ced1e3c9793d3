// kernels/fp8_cuda.h in a build without the CUDA toolkit: no device, every kernel refuses.
#include <spdlog/spdlog.h>

#include <mutex>

#include "common/check.h"
#include "kernels/fp8_cuda.h"

namespace cohort::kernels {
namespace {

[[noreturn]] void no_cuda(const char* what) {
  throw Error(std::string(what) +
              ": this build has no CUDA support (configure with a CUDA toolkit and COHORT_CUDA=AUTO|ON)");
}

}  // namespace

const Fp8DeviceInfo& fp8_device() {
  static const Fp8DeviceInfo info = [] {
    Fp8DeviceInfo i;
    i.reason = "built without CUDA";
    return i;
  }();
  return info;
}

Fp8Backend select_fp8_backend() {
  static std::once_flag logged;
  std::call_once(logged, [] { spdlog::info("FP8 kernels: CPU path (built without CUDA)"); });
  return Fp8Backend::cpu;
}

const char* fp8_backend_name(Fp8Backend backend) {
  return backend == Fp8Backend::cuda ? "cuda" : "cpu";
}

namespace cuda {

void quantize_e4m3_tile128(const float*, int64_t, int64_t, uint8_t*, float*, void*) {
  no_cuda("cuda::quantize_e4m3_tile128");
}
void dequantize_e4m3_tile128(const uint8_t*, const float*, int64_t, int64_t, float*, void*) {
  no_cuda("cuda::dequantize_e4m3_tile128");
}
void quantize_e4m3_block128(const float*, int64_t, int64_t, uint8_t*, float*, void*) {
  no_cuda("cuda::quantize_e4m3_block128");
}
void dequantize_e4m3_block128(const uint8_t*, const float*, int64_t, int64_t, float*, void*) {
  no_cuda("cuda::dequantize_e4m3_block128");
}
void gemm_e4m3_xwt(const uint8_t*, const float*, const uint8_t*, const float*, int64_t, int64_t,
                   int64_t, void*, GemmOutput, void*) {
  no_cuda("cuda::gemm_e4m3_xwt");
}
CudaKernelTimes time_cuda_kernels(int64_t, int64_t, int64_t, int64_t, int64_t, int) {
  no_cuda("cuda::time_cuda_kernels");
}
uint64_t count_e4m3_mismatches_vs_hardware(uint64_t, uint64_t) {
  no_cuda("cuda::count_e4m3_mismatches_vs_hardware");
}

}  // namespace cuda
}  // namespace cohort::kernels
