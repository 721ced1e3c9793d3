#include "bench/bench.h"
#include <CLI/CLI.hpp>
namespace cohort::bench { void add_grpo_bench(CLI::App& b) { (void)b; } }
