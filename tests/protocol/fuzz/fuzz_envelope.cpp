// libFuzzer target: what a peer receives, as it decodes it. Any bytes as an Envelope (every
// message of the protocol: join replies, leases, audit leases with their completions, audit
// reports, updates, chunks, manifests); a join reply's round settings, and the bytes as
// RoundSettings directly, read into the typed round spec (exchange::read_round_settings), which
// must accept them or refuse with a SettingsError naming the field: never crash, never another
// exception.
#include <cstddef>
#include <cstdint>

#include "exchange/round_settings.h"
#include "protocol/messages.pb.h"

#include <google/protobuf/stubs/logging.h>

using namespace cohort;

namespace {

void read_settings(const wire::RoundSettings& s) {
  try {
    const exchange::RoundSpec spec = exchange::read_round_settings(s);
    (void)spec;
  } catch (const exchange::SettingsError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // invalid UTF-8 in a string field is logged per input
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  wire::Envelope e;
  if (e.ParseFromArray(data, static_cast<int>(size))) {
    if (e.has_join_reply()) read_settings(e.join_reply().settings());
    if (e.has_work_lease() && e.work_lease().has_audit()) {
      // What a validator checks before it computes (node/work.cpp, Node::validate).
      const auto& l = e.work_lease();
      std::size_t tokens = 0;
      for (const auto& c : l.audit().completions()) tokens += static_cast<std::size_t>(c.token_ids_size());
      (void)tokens;
    }
  }
  wire::RoundSettings s;
  if (s.ParseFromArray(data, static_cast<int>(size))) read_settings(s);
  return 0;
}
