// A round card: everything a volunteer's node needs to join a public round (where to connect,
// the coordinator's key, the model, the task, every file with its size, BLAKE2b and where to
// fetch it, what the node needs), signed by the coordinator's identity key (docs/PROTOCOL.md,
// "Round cards"). The coordinator serves it at GET /round and writes it beside its ledger;
// `cohort node join` reads it, checks the signature against the key its user pinned, and fetches
// the files.
//
//   std::string text = sign_round_card(card, identity);         // coordinator
//   RoundCard card = read_round_card(text);                       // node: throws CardError
//   if (card.coordinator_key != pinned_hex) ...                   // the signer is the card's key
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/check.h"
#include "protocol/identity.h"

namespace cohort::exchange {

// The domain the card's signature covers (protocol/digest.h lists the others).
inline constexpr std::string_view kRoundCardDomain = "cohort/round-card/v1";
inline constexpr std::string_view kRoundCardFormat = "cohort-round-card/1";
// The largest card file a node reads (and the largest `card` string in it).
inline constexpr size_t kMaxRoundCardBytes = 1 << 20;

// A card that is malformed, or whose signature does not verify; the message says which field.
class CardError : public Error {
 public:
  explicit CardError(const std::string& why) : Error("round card: " + why, 2) {}
};

// A file every node of the round must hold byte for byte.
struct CardFile {
  std::string role;     // "dataset" | "tokenizer"
  std::string name;     // a plain file name (no folders), as the node lays it out
  uint64_t size = 0;
  std::string blake2b;  // BLAKE2b-256 of its bytes, 64 lowercase hex
  // Base URLs serving it as GET <base>/blobs/<blake2b> (the coordinator's own first, then the
  // round's mirrors): tried in order, every byte checked against the digest.
  std::vector<std::string> sources;
};

struct RoundCard {
  std::string round_id;
  std::string coordinator_key;          // hex Ed25519: the card's signer
  std::vector<std::string> addresses;   // HOST:PORT of the peer protocol, preferred first (nodes use the first)
  std::string status_url;               // GET /status of the round (JSON); the dashboard at its /
  std::string model_name;
  uint64_t parameters = 0;
  std::string policy_dtype;             // what nodes receive: "fp32" | "bf16"
  std::string config_blake2b;           // BLAKE2b-256 of the model's config.json as sent
  std::string task;                     // "arith" | "countdown" | "dataset:<reward>"
  std::string gradient_codec;           // "raw" | "fp8" | "topk"
  double kl_beta = 0;                   // > 0: nodes also hold the reference policy
  std::vector<CardFile> files;
  // Estimated memory per worker device for each precision (fp32 | bf16 | fp8), in bytes: weights,
  // gradients, the flat gradient sum, the reference policy when kl_beta > 0, and activations
  // for one micro-batch (docs/PEER.md says how it is counted).
  std::map<std::string, uint64_t> memory_bytes;
  uint64_t snapshot_bytes = 0;          // the policy's full download (a joiner's first fetch)
  double min_down_mbps = 0, min_up_mbps = 0;  // the operator's stated minimum link (0: none)
  std::vector<std::string> mirrors;     // blob mirrors of the round's weights
  int64_t issued_ms = 0;                // unix ms
};

// "HOST:PORT" with a non-empty host (an IPv6 address in brackets) and a port in 1..65535: what a
// card's addresses, [card] addresses and a node's --coordinator must be. split_host_port returns
// the host (brackets removed) and the port, or nullopt.
[[nodiscard]] std::optional<std::pair<std::string, uint16_t>> split_host_port(std::string_view address);
[[nodiscard]] inline bool is_host_port(std::string_view address) {
  return split_host_port(address).has_value();
}

// The card file's text: {"format", "card" (the card's JSON as a string: the exact bytes signed),
// "signature" (128 hex: Ed25519 by the coordinator over BLAKE2b-256(kRoundCardDomain || 0 ||
// card))}. `card.coordinator_key` is set from `signer`.
[[nodiscard]] std::string sign_round_card(RoundCard card, const protocol::Identity& signer);

// Parses and checks a card file's text: its format, every field's type and range, file names
// without folders, digests of 64 hex, and the signature by the card's own coordinator_key. The
// caller compares that key with the one it trusts. Throws CardError.
[[nodiscard]] RoundCard read_round_card(std::string_view text);

}  // namespace cohort::exchange
