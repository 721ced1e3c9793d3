#include "bench/bench.h"

#include <CLI/CLI.hpp>

namespace cohort::bench {

void add_commands(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (ratios against same-run baselines)");
  add_grpo_bench(*bench);
  add_kernels_bench(*bench);
  add_protocol_bench(*bench);
  add_devices_bench(*bench);
  add_e2e_bench(*bench);
  add_swarm_bench(*bench);
}

}  // namespace cohort::bench
