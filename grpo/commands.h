// CLI commands owned by the learning core: `pretrain`, `train`, `eval` (`demo` is the
// decentralized run and lives in coordinator/).
#pragma once


namespace CLI { class App; }
namespace cohort::grpo {
void add_commands(CLI::App& app);
}  // namespace cohort::grpo
