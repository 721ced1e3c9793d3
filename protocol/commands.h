// CLI commands owned by the protocol module (`cohort keygen`).
#pragma once
namespace CLI { class App; }
namespace cohort::protocol {
void add_commands(CLI::App& app);
}  // namespace cohort::protocol
