#include "common/runtime.h"

#include "common/cpu_allocator.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <thread>

namespace cohort {
namespace {

using openblas_set_fn = void (*)(int);
using openblas_get_fn = int (*)();
using openblas_config_fn = char* (*)();

template <typename Fn>
Fn blas_symbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

int default_threads() {
  if (const char* env = std::getenv("COHORT_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

}  // namespace

void runtime_init(int argc, char** argv) {
  (void)argc;
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);
    // exec failed (no /proc): carry on with the default policy.
  }
  set_num_threads(default_threads());
  if (std::getenv("COHORT_NO_CACHING_ALLOCATOR") == nullptr) {
    // Freed blocks held for reuse: up to 4 GiB, but no more than 1/16 of the machine's memory
    // (a coordinator and nodes of a 0.5 B model share a 24 GiB machine in the benchmarks), or
    // COHORT_CPU_CACHE_MB.
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    size_t cap = size_t{4} << 30;
    if (pages > 0 && page > 0) cap = std::min(cap, static_cast<size_t>(pages) * static_cast<size_t>(page) / 16);
    if (const char* mb = std::getenv("COHORT_CPU_CACHE_MB"); mb && std::atoll(mb) >= 0)
      cap = static_cast<size_t>(std::atoll(mb)) << 20;
    install_caching_cpu_allocator(cap);
  }
  // Individual overrides, for measuring pool layouts (docs/RESULTS.md).
  if (const char* t = std::getenv("COHORT_TORCH_THREADS"); t && std::atoi(t) > 0)
    at::set_num_threads(std::atoi(t));
  if (const char* b = std::getenv("COHORT_BLAS_THREADS"); b && std::atoi(b) > 0)
    if (auto fn = blas_symbol<openblas_set_fn>("openblas_set_num_threads")) fn(std::atoi(b));
}

void set_num_threads(int n) {
  at::set_num_threads(n);
  if (auto fn = blas_symbol<openblas_set_fn>("openblas_set_num_threads")) fn(n);
}

BlasInfo blas_info() {
  BlasInfo info;
  Dl_info dl{};
  if (void* sym = dlsym(RTLD_DEFAULT, "cblas_sgemm"); sym && dladdr(sym, &dl) && dl.dli_fname) {
    char resolved[4096];
    info.library = realpath(dl.dli_fname, resolved) ? resolved : dl.dli_fname;
  } else if (void* s2 = dlsym(RTLD_DEFAULT, "sgemm_"); s2 && dladdr(s2, &dl) && dl.dli_fname) {
    char resolved[4096];
    info.library = realpath(dl.dli_fname, resolved) ? resolved : dl.dli_fname;
  }
  if (auto cfg = blas_symbol<openblas_config_fn>("openblas_get_config")) info.config = cfg();
  if (auto get = blas_symbol<openblas_get_fn>("openblas_get_num_threads")) info.blas_threads = get();
  info.torch_threads = at::get_num_threads();
  if (const char* p = std::getenv("OMP_WAIT_POLICY")) info.omp_wait_policy = p;
  return info;
}

}  // namespace cohort
