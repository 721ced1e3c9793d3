// Standalone `protocol_bench`: runs bench/protocol_bench.cpp without the cohort binary, e.g.
//   build/protocol/protocol_bench protocol --trials 5
#include <CLI/CLI.hpp>

#include "bench/bench.h"

int main(int argc, char** argv) {
  CLI::App app{"Cohort peer protocol benchmark (same as `cohort bench protocol`)"};
  app.require_subcommand(1);
  cohort::bench::add_protocol_bench(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
