#include "exchange/refusal.h"

#include <cctype>

namespace cohort::exchange {

std::string reason_name(wire::AckReason r) {
  std::string s = wire::AckReason_Name(r);
  if (s.rfind("ACK_", 0) == 0) s = s.substr(4);
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s.empty() ? "unknown" : s;
}

bool is_misbehaviour(wire::AckReason r) {
  switch (r) {
    case wire::ACK_BAD_REWARD:
    case wire::ACK_BAD_NORM:
    case wire::ACK_MALFORMED:
    case wire::ACK_BAD_SIGNATURE:
    case wire::ACK_SIGNER_MISMATCH:
    case wire::ACK_RECOMPUTE_MISMATCH:
    case wire::ACK_NOT_SAMPLED:
    case wire::ACK_BAD_AUDIT:
      return true;
    default:
      return false;
  }
}

bool is_misbehaviour(const std::string& name) {
  for (int r = wire::AckReason_MIN; r <= wire::AckReason_MAX; ++r)
    if (wire::AckReason_IsValid(r) && reason_name(static_cast<wire::AckReason>(r)) == name)
      return is_misbehaviour(static_cast<wire::AckReason>(r));
  return false;
}

}  // namespace cohort::exchange
