// libFuzzer target: the round card reader (exchange/round_card.h) on any input, two ways. Odd
// first byte: the rest is a card file as a node downloads it (almost every input stops at the
// signature). Even first byte: the rest is a card body, signed here with a fixed key and wrapped
// as a coordinator would, so every field check is reached. Either a CardError (a sentence), or a
// card whose invariants hold: plain file names, 64-hex digests, HOST:PORT addresses, bounded lists.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "exchange/round_card.h"
#include "protocol/digest.h"

namespace {

const cohort::protocol::Identity& signer() {
  static const cohort::protocol::Identity id = [] {
    std::uint8_t seed[32] = {7};
    return cohort::protocol::Identity::from_seed(cohort::protocol::ByteView(seed, sizeof seed));
  }();
  return id;
}

bool plain_name(const std::string& n) {
  return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos &&
         n.find('\\') == std::string::npos && n.find('\0') == std::string::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) == 0) {
    const auto sig = signer().sign(cohort::protocol::signing_digest(
        cohort::exchange::kRoundCardDomain, cohort::protocol::as_bytes(text)));
    nlohmann::json file = {{"format", cohort::exchange::kRoundCardFormat},
                           {"card", nlohmann::json(text)},
                           {"signature", cohort::protocol::to_hex(cohort::protocol::ByteView(sig.data(), sig.size()))}};
    try {
      text = file.dump();
    } catch (const nlohmann::json::exception&) {
      return 0;  // not UTF-8: cannot be a JSON string, so cannot be a card
    }
  }
  try {
    const cohort::exchange::RoundCard c = cohort::exchange::read_round_card(text);
    if (c.coordinator_key.size() != 64 || c.addresses.empty() || c.files.size() > 64) std::abort();
    for (const auto& a : c.addresses)
      if (!cohort::exchange::is_host_port(a)) std::abort();
    for (const auto& f : c.files)
      if (!plain_name(f.name) || f.blake2b.size() != 64 || f.sources.empty() || f.sources.size() > 16)
        std::abort();
  } catch (const cohort::exchange::CardError& e) {
    if (std::string(e.what()).empty()) std::abort();
  }
  return 0;
}
