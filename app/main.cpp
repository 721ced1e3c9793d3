// The `cohort` executable: one binary, subcommands registered by the module that owns them.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <exception>

#include "bench/bench.h"
#include "common/check.h"
#include "common/runtime.h"
#include "coordinator/commands.h"
#include "grpo/commands.h"
#include "node/commands.h"
#include "protocol/commands.h"

int main(int argc, char** argv) {
  cohort::runtime_init(argc, argv);

  CLI::App app{"Cohort: GRPO training on volunteer hardware"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("cohort ") + COHORT_VERSION);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Debug logging");
  app.parse_complete_callback([&] {
    if (verbose) spdlog::set_level(spdlog::level::debug);
  });

  cohort::grpo::add_commands(app);
  cohort::protocol::add_commands(app);
  cohort::node::add_commands(app);
  cohort::coordinator::add_commands(app);
  cohort::bench::add_commands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const cohort::Error& e) {
    std::fprintf(stderr, "cohort: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cohort: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
