// Process-wide runtime set-up: thread pools of LibTorch (OpenMP) and OpenBLAS, and a
// description of the BLAS in use, so benchmarks can say what they ran on.
//
// Why: Debian's LibTorch runs its own ops on OpenMP while OpenBLAS keeps a separate pthread
// pool. With both pools at full width and OpenMP spinning after each parallel region, the two
// starve each other. runtime_init() makes OpenMP wait passively (re-executing the process once
// with OMP_WAIT_POLICY=PASSIVE, since libgomp reads it only at load time) and sizes both pools.
#pragma once

#include <string>

namespace cohort {

// Call first thing in main(). May re-exec the process (same argv) to fix the OpenMP policy.
// COHORT_THREADS=N overrides the thread count (default: all cores); COHORT_TORCH_THREADS and
// COHORT_BLAS_THREADS set one pool each. OMP_WAIT_POLICY set by the caller is respected.
// Installs the caching CPU allocator (common/cpu_allocator.h) unless
// COHORT_NO_CACHING_ALLOCATOR is set.
void runtime_init(int argc, char** argv);

// Sets both LibTorch's intra-op pool and OpenBLAS's pool to n threads.
void set_num_threads(int n);

struct BlasInfo {
  std::string library;     // shared object providing cblas_sgemm, e.g. ".../libopenblas.so.0"
  std::string config;      // openblas_get_config() when OpenBLAS, else empty
  int blas_threads = 0;    // OpenBLAS pool size (0 when unknown)
  int torch_threads = 0;   // LibTorch intra-op threads
  std::string omp_wait_policy;
};
BlasInfo blas_info();

}  // namespace cohort
