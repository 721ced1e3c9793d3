// CLI commands owned by the node module: `node run`.
#pragma once
namespace CLI { class App; }
namespace cohort::node {
void add_commands(CLI::App& app);
}  // namespace cohort::node
