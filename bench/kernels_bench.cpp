// PLACEHOLDER: replaced by the kernels module's benchmark.
#include "bench/bench.h"
#include <CLI/CLI.hpp>
namespace cohort::bench {
void add_kernels_bench(CLI::App& bench) { (void)bench; }
}  // namespace cohort::bench
