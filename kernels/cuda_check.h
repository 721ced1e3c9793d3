// Internal to kernels/: CUDA runtime errors as cohort::Error with the failing call named.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common/check.h"

namespace cohort::kernels::detail {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(std::string(what) + " failed: " + cudaGetErrorName(status) + " (" +
                cudaGetErrorString(status) + ")");
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace cohort::kernels::detail
