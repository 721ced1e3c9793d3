// `cohort node join CARD`: a public round from its signed card (exchange/round_card.h). The card
// is read from a URL or a file, its signature checked against the key the user pinned (or, on
// first use, the key it names is printed and remembered for that round id), and every file it
// names is fetched into the cache folder: content-addressed by BLAKE2b, resumed where an earlier
// fetch stopped, verified before use, never fetched twice.
//
//   JoinedRound r = join_round({.card = "http://203.0.113.7:8080/round"});
//   options.host = r.host; options.port = r.port; options.dataset = r.dataset; ...
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "exchange/round_card.h"

namespace cohort::node {

struct JoinOptions {
  std::string card;             // http:// URL or a file path
  std::string coordinator_key;  // 64 hex the card must be signed by ("": trust on first use)
  std::filesystem::path cache_dir;   // "": default_cache_dir()
  std::filesystem::path config_dir;  // "": default_config_dir() (where first-use keys are kept)
};

// What run_node needs from the card, the files in place.
struct JoinedRound {
  exchange::RoundCard card;
  std::string host;
  uint16_t port = 0;
  std::string dataset;        // the dataset's cached file ("" when the round has none)
  std::string tokenizer_dir;  // a folder holding the tokenizer files ("" when none)
  uint64_t fetched_bytes = 0; // bytes downloaded this time (0: everything was cached)
};

// Throws cohort::Error (exit code 2 for a card that is forged, altered, or signed by another key
// than the pinned or remembered one; 1 for a card or file that cannot be fetched).
JoinedRound join_round(const JoinOptions& options);

// `cohort node status`: this peer's record in a round, from the round's GET /status, as text
// (credit, accepted and refused updates with reasons, rank by credit, last seen). `round` is a
// card (URL or file; its status_url is used) or a status URL. Throws cohort::Error.
std::string peer_status_text(const std::string& round, const std::string& peer_hex);

// $XDG_CACHE_HOME/cohort, else ~/.cache/cohort: fetched round files (safe to delete).
std::filesystem::path default_cache_dir();
// $XDG_CONFIG_HOME/cohort, else ~/.config/cohort: the node's key and remembered coordinators.
std::filesystem::path default_config_dir();
// The node's identity key when --key is not given: <config dir>/node.key.
std::filesystem::path default_key_file();

}  // namespace cohort::node
