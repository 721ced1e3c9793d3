// The coordinator of a round: admits peers over the Noise channel, hands out leases of prompt
// groups sized to each peer's measured throughput, verifies and aggregates signed updates
// (recomputing every completion's reward), steps AdamW, publishes signed weight manifests,
// and keeps everything durable in the ledger so that `serve` on the same data directory
// resumes after a crash with no accepted update lost or applied twice.
//
//   RoundConfig cfg = RoundConfig::load("round.toml");
//   Coordinator c(cfg);
//   c.serve();                     // returns when the round's last step is applied
//   std::string j = status_json_from_ledger(cfg.data_dir);
#pragma once

#include <memory>
#include <string>

#include "coordinator/round_config.h"

namespace cohort::coordinator {

// Reasons recorded in the ledger (and sent as Ack reasons) for refused updates and connections
// are exchange::reason_name of the Ack reason; docs/OPERATOR.md explains each.

class Coordinator {
 public:
  explicit Coordinator(RoundConfig cfg);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Runs until the last step is applied (then lingers cfg.linger_s for peers to leave). Throws
  // cohort::Error when it cannot start or go on, and when stopped by SIGINT/SIGTERM before the
  // round completes (exit code 130; `serve` on the same data directory resumes).
  void serve();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Files the coordinator writes in its data directory.
std::string endpoint_path(const std::string& data_dir);   // endpoint.json: ports, key, pid
std::string ledger_path(const std::string& data_dir);     // ledger.sqlite

// The status document built from the ledger alone (the coordinator need not be running).
std::string status_json_from_ledger(const std::string& data_dir);

}  // namespace cohort::coordinator
