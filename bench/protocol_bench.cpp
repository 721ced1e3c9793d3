// PLACEHOLDER: replaced by the protocol module's benchmark.
#include "bench/bench.h"
#include <CLI/CLI.hpp>
namespace cohort::bench {
void add_protocol_bench(CLI::App& bench) { (void)bench; }
}  // namespace cohort::bench
