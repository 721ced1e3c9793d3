// `cohort keygen --out FILE`: creates an identity key file (mode 0600) and prints its public key.
#include "protocol/commands.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "common/check.h"
#include "protocol/identity.h"

namespace cohort::protocol {

void add_commands(CLI::App& app) {
  struct Options {
    std::string out;
    bool force = false;
  };
  auto opts = std::make_shared<Options>();
  auto* keygen = app.add_subcommand(
      "keygen", "Create an Ed25519 identity key file (mode 0600) and print its public key (peer id)");
  keygen->add_option("--out,-o", opts->out, "Key file to create")->required();
  keygen->add_flag("--force", opts->force, "Overwrite an existing key file");
  keygen->callback([opts] {
    if (!opts->force && std::filesystem::exists(opts->out)) {
      throw cohort::Error("key file " + opts->out + " already exists; refusing to overwrite an identity (pass --force "
                  "to replace it, which changes this peer's id)");
    }
    const Identity id = Identity::generate();
    id.save(opts->out, opts->force);
    std::fprintf(stderr, "wrote %s (mode 0600); its peer id (public key) is:\n", opts->out.c_str());
    std::printf("%s\n", id.id().hex().c_str());
  });
}

}  // namespace cohort::protocol
