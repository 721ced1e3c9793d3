// Standalone `kernels_bench`: runs bench/kernels_bench.cpp without the cohort binary, e.g.
//   build-kernels/kernels/kernels_bench kernels --threads 2
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <cstdlib>

#include "bench/bench.h"

int main(int argc, char** argv) {
  // As cohort's runtime_init does: OpenMP threads must wait passively, or between parallel
  // regions they spin on the cores OpenBLAS's own pool needs. libgomp reads the policy only at
  // load time, hence the re-exec.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // on failure, go on with the default policy
  }
  CLI::App app{"Cohort FP8 kernels benchmark (same as `cohort bench kernels`)"};
  app.require_subcommand(1);
  cohort::bench::add_kernels_bench(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
