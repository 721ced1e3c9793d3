// A round's settings, read from TOML (docs/ROUND_CONFIG.md documents every key and default):
// model, task, GRPO and sampling settings, admission, staleness bound, storage, schedule.
//
//   RoundConfig cfg = RoundConfig::load("round.toml");   // throws cohort::Error naming the key
//   cfg.grpo.prompts_per_step; cfg.staleness_bound; cfg.data_dir;
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/aggregation.h"
#include "coordinator/ledger.h"
#include "grpo/grpo_config.h"

namespace cohort::coordinator {

enum class Admission { open, allowlist };
enum class GradientCodec { fp8, raw, topk };

// [card]: what the round card (GET /round) tells volunteers beyond what the coordinator knows
// (docs/ROUND_CONFIG.md).
struct CardConfig {
  // The peer protocol's public HOST:PORT (default: `listen` with its bound port, which is only
  // reachable from elsewhere when it is a public address).
  std::vector<std::string> addresses;
  // The public base URL of the HTTP endpoint (default: http://<status_listen>): the card's status
  // URL and the files' first source are under it.
  std::string url;
  double min_down_mbps = 0, min_up_mbps = 0;  // the stated minimum link (0: none)
};

struct RoundConfig {
  std::string round_id = "round";
  int64_t steps = 20;
  uint32_t staleness_bound = 1;        // S: updates on versions >= current - S are accepted
  double lease_timeout_s = 120;        // a lease not returned by then is re-issued
  double reconnect_grace_s = 10;       // a disconnected peer's lease waits this long for a resend
  double backup_factor = 2;            // backup leases (scheduler.h); 0: off
  int min_peers = 1;                   // no lease is issued before this many peers are connected
  int64_t checkpoint_interval = 10;    // steps between checkpoints (the last step always)
  int64_t eval_every = 0;              // held-out evaluation interval in steps (0: off)
  int eval_n = 200;
  std::string data_dir = "runs/round";
  std::string listen = "127.0.0.1:7070";
  std::string status_listen = "127.0.0.1:0";  // "" disables the HTTP status endpoint
  // [network] limits that keep an open round alive (docs/ROUND_CONFIG.md): connected peers,
  // handshakes in progress, connections and new connections per second per source address.
  int max_peers = 1000;
  int max_pending_handshakes = 256;
  int max_connections_per_ip = 16;
  double handshakes_per_ip_per_s = 5;
  double handshake_burst_per_ip = 20;
  // A peer connection silent this long is closed (its leases then wait reconnect_grace_s); peers
  // are asked to send a heartbeat every quarter of it while they compute.
  double idle_timeout_s = 120;
  std::string key_file;                // default: <data_dir>/coordinator.key (created if missing)
  Admission admission = Admission::open;
  std::vector<std::string> allowlist;  // hex Ed25519 public keys
  std::string model_path;              // checkpoint folder (config.json + model.safetensors)
  std::string system_prompt = "r1";    // chat models: "r1" | "default" (the template's) | text
  // [model] policy_dtype: what nodes receive and compute on ("auto": bf16 for a Hugging Face model
  // folder, one with tokenizer.json; fp32 for the built-in character-level models).
  std::string policy_dtype = "auto";
  // [network] mirrors: base URLs serving a copy of <data_dir>/blobs as GET <url>/blobs/<hex>,
  // listed in every manifest; nodes try them first and fall back to the channel.
  std::vector<std::string> mirrors;
  GradientCodec codec = GradientCodec::fp8;
  double max_update_norm = 0;          // refuse updates whose mean-gradient norm exceeds (0: off)
  AggregationConfig aggregation;       // how a step's updates combine ([aggregation])
  CardConfig card;                     // [card]
  // [verification]: the share of accepted-so-far updates whose gradient the coordinator
  // recomputes in full from the reported completions, the cosine similarity the reported
  // gradient must reach, and the misbehaviour refusals after which a peer is banned.
  double recompute_fraction = 0;
  // Adaptive trust (BOINC's adaptive replication): each peer's audit probability follows its
  // record: 1 for its first `trust_after` accepted updates since its last misbehaviour, then
  // trust_after / n for n accepted in a row, never below recompute_fraction (audit_probability).
  bool adaptive_trust = false;
  int trust_after = 10;
  double recompute_min_cosine = 0.9;
  int ban_after = 3;
  // Validators (docs/OPERATOR.md "Validators"): audits are recomputed by peers the coordinator
  // picks (never the update's author, never one at the author's address when
  // validator_distinct_address), reporting a count sketch of `sketch_size` buckets; the
  // coordinator recomputes itself a `validator_check_fraction` share of their reports (spot
  // checks, at most `coordinator_audits_per_step` per step on average), every report that
  // disagrees with the update (who lied?), and audits no validator took within
  // validator_timeout_s.
  bool validators = false;
  double validator_check_fraction = 0.1;
  double coordinator_audits_per_step = 0.25;
  double validator_timeout_s = 60;
  bool validator_distinct_address = true;
  uint32_t sketch_size = 16384;
  // The sampling checks of every audit: completions' typicality beyond this many standard
  // deviations, or log-probabilities further from the recomputed ones than the precision's
  // tolerance per token, are refused as not sampled from the policy.
  double typicality_z_max = 8;
  // New keys (trust streak below trust_after, adaptive trust) get leases of at most this many
  // prompts, so a Sybil's fresh keys are checked on small work first (0: no cap).
  uint32_t probe_lease_prompts = 0;
  LedgerSync ledger_sync = LedgerSync::full;  // [round] ledger_sync: "full" | "normal"
  bool dump_gradients = false;         // write the applied mean gradient of each step (tests)
  int linger_s = 3;                    // after the last step, wait this long for nodes to leave
  grpo::GrpoConfig grpo;               // task (built-in or JSONL dataset + reward), sampling,
                                       // loss, optimizer, prompts_per_step, mask_truncated, seed

  // Throws cohort::Error with the key and the reason for an unknown key or a bad value.
  // check = false leaves validate() to the caller (command-line overrides come first).
  static RoundConfig load(const std::string& path, bool check = true);
  static RoundConfig parse(const std::string& toml_text, const std::string& origin = "<string>",
                           bool check = true);
  // Rejects settings the distributed form cannot reproduce (batch-scaled advantages, beta != 0).
  void validate() const;
};

}  // namespace cohort::coordinator
