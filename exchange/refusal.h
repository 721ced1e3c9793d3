// A refusal of something an untrusted peer sent: the Ack reason that goes back on the wire and
// a sentence for people (the ledger, the log, the peer). Checks of peer input return one of these
// instead of throwing (common/check.h states the error policy).
//
//   if (std::optional<Refusal> r = decode_gradient(update, layout, out)) return ack_of(*r);
#pragma once

#include <string>

#include "protocol/messages.pb.h"

namespace cohort::exchange {

struct Refusal {
  wire::AckReason reason = wire::ACK_MALFORMED;
  std::string detail;
};

// "bad_reward" for ACK_BAD_REWARD: the name the ledger, the metrics and docs/OPERATOR.md use.
std::string reason_name(wire::AckReason r);

// Whether a refusal for this reason counts as misbehaviour (what bans are counted from): a peer
// that sends these did something no honest, up-to-date peer does. Staleness, expired or unknown
// leases and replays can happen to honest peers (slow links, reconnects) and do not count.
bool is_misbehaviour(wire::AckReason r);
bool is_misbehaviour(const std::string& reason_name);

}  // namespace cohort::exchange
