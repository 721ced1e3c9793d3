// Standalone `kernels_bench`: runs bench/kernels_bench.cpp without the cohort binary, e.g.
//   build-kernels/kernels/kernels_bench kernels --threads 2
#include <CLI/CLI.hpp>

#include "bench/bench.h"

int main(int argc, char** argv) {
  CLI::App app{"Cohort FP8 kernels benchmark (same as `cohort bench kernels`)"};
  app.require_subcommand(1);
  cohort::bench::add_kernels_bench(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
