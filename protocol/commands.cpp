// PLACEHOLDER: replaced by the protocol module (keygen).
#include "protocol/commands.h"
#include <CLI/CLI.hpp>
namespace cohort::protocol {
void add_commands(CLI::App& app) { (void)app; }
}  // namespace cohort::protocol
