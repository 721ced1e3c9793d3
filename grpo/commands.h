// CLI commands owned by the learning core: `pretrain`, `train`, `eval` (`demo` is the
// decentralized run and lives in coordinator/).
#pragma once


namespace CLI { class App; }
namespace cohort::grpo {
struct ModelConfig;
void add_commands(CLI::App& app);
// --hidden, --layers, --heads, --kv-heads, --intermediate: the shape of a model built from
// scratch (`cohort pretrain`, `cohort bench e2e`); defaults are `shape`'s values.
void add_model_shape_options(CLI::App& cmd, ModelConfig& shape);
}  // namespace cohort::grpo
