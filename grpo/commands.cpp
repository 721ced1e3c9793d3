#include "grpo/commands.h"
#include <CLI/CLI.hpp>
namespace cohort::grpo { void add_commands(CLI::App& app) { (void)app; } }
