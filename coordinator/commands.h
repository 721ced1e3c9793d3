// CLI commands owned by the coordinator module: `coordinator serve`, `coordinator status`, and
// `demo` (a coordinator and three peer nodes on loopback, pretraining the base if needed).
#pragma once
namespace CLI { class App; }
namespace cohort::coordinator {
void add_commands(CLI::App& app);
}  // namespace cohort::coordinator
