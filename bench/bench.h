// `cohort bench [grpo|kernels|protocol|devices|e2e|swarm]`: benchmarks that print ratios against a baseline
// measured in the same run (these machines are shared and noisy; absolute timings mislead).
#pragma once

namespace CLI { class App; }

namespace cohort::bench {

// Registers `bench` and its subcommands on the top-level app.
void add_commands(CLI::App& app);

// One entry per module; each lives in bench/<module>_bench.cpp and returns an exit code.
void add_kernels_bench(CLI::App& bench);
void add_protocol_bench(CLI::App& bench);
void add_grpo_bench(CLI::App& bench);
void add_devices_bench(CLI::App& bench);
void add_e2e_bench(CLI::App& bench);
void add_swarm_bench(CLI::App& bench);

}  // namespace cohort::bench
