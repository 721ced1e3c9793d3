// Datasheet peaks of the GPUs Cohort targets, for the benchmark's "fraction of peak" columns.
#include <array>
#include <string_view>

#include "kernels/fp8_cuda.h"

namespace cohort::kernels {

GpuPeaks known_gpu_peaks(const std::string& device_name) {
  struct Row {
    std::string_view match;  // substring of cudaDeviceProp::name; most specific first
    double hbm_gbps, fp8_dense_tflops;
  };
  // NVIDIA datasheets (H100: nvidia.com/en-us/data-center/h100, H200: .../h200, L40S, L4);
  // they quote FP8 "with sparsity", halved here to the dense figure a GEMM can reach.
  static constexpr std::array<Row, 8> kRows{{
      {"H100 NVL", 3900, 3341 / 2.0},
      {"H100 PCIe", 2000, 3026 / 2.0},
      {"H200 NVL", 4800, 3341 / 2.0},
      {"GH200", 4000, 3958 / 2.0},
      {"H100", 3350, 3958 / 2.0},  // SXM5 ("NVIDIA H100 80GB HBM3")
      {"H200", 4800, 3958 / 2.0},  // SXM
      {"L40S", 864, 1466 / 2.0},
      {"L4", 300, 485 / 2.0},
  }};
  for (const Row& r : kRows) {
    if (device_name.find(r.match) != std::string::npos) {
      return {r.hbm_gbps, r.fp8_dense_tflops, "datasheet (" + std::string(r.match) + ")"};
    }
  }
  return {};
}

}  // namespace cohort::kernels
