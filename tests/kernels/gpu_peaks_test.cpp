// known_gpu_peaks: device names as cudaDeviceProp reports them map to the right datasheet row
// (the more specific names, which contain the generic ones, must win).
#include <gtest/gtest.h>

#include "kernels/fp8_cuda.h"

namespace cohort::kernels {
namespace {

TEST(GpuPeaks, SpecificNamesWinOverTheirPrefixes) {
  EXPECT_DOUBLE_EQ(known_gpu_peaks("NVIDIA H100 80GB HBM3").fp8_dense_tflops, 1979);
  EXPECT_DOUBLE_EQ(known_gpu_peaks("NVIDIA H100 80GB HBM3").hbm_gbps, 3350);
  EXPECT_DOUBLE_EQ(known_gpu_peaks("NVIDIA H100 PCIe").fp8_dense_tflops, 1513);
  EXPECT_DOUBLE_EQ(known_gpu_peaks("NVIDIA H100 NVL").hbm_gbps, 3900);
  EXPECT_DOUBLE_EQ(known_gpu_peaks("NVIDIA H200").hbm_gbps, 4800);
  EXPECT_DOUBLE_EQ(known_gpu_peaks("NVIDIA H200 NVL").fp8_dense_tflops, 1670.5);
  EXPECT_DOUBLE_EQ(known_gpu_peaks("NVIDIA GH200 480GB").hbm_gbps, 4000);
  EXPECT_DOUBLE_EQ(known_gpu_peaks("NVIDIA L40S").fp8_dense_tflops, 733);
  EXPECT_DOUBLE_EQ(known_gpu_peaks("NVIDIA L4").fp8_dense_tflops, 242.5);
}

TEST(GpuPeaks, UnknownDeviceHasNoPeak) {
  const GpuPeaks p = known_gpu_peaks("NVIDIA GeForce RTX 3090");
  EXPECT_EQ(p.fp8_dense_tflops, 0);
  EXPECT_EQ(p.hbm_gbps, 0);
  EXPECT_TRUE(p.source.empty());
}

}  // namespace
}  // namespace cohort::kernels
