// Standalone `devices_bench`: runs bench/devices_bench.cpp without the cohort binary, e.g.
//   build/node/devices_bench devices --trials 5
#include <CLI/CLI.hpp>

#include "bench/bench.h"

int main(int argc, char** argv) {
  CLI::App app{"Cohort device-group collective benchmark (same as `cohort bench devices`)"};
  app.require_subcommand(1);
  cohort::bench::add_devices_bench(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
