// CLI commands owned by the learning core: `pretrain`, `train`, `eval` (`demo` is the
// decentralized run and lives in coordinator/).
#pragma once

#include "grpo/config.h"

namespace CLI { class App; }
namespace cohort::grpo {
void add_commands(CLI::App& app);

// The model config of the built-in tasks: `shape`'s sizes with the character tokenizer's
// vocabulary and special-token ids (what `cohort pretrain` builds; demo, benches and tests too).
ModelConfig task_model_config(const ModelConfig& shape = {});
}  // namespace cohort::grpo
