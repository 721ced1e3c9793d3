// Typed errors of the peer protocol. Every failure a remote peer can cause (bad bytes, bad keys,
// silence) surfaces as a ProtocolError whose code says which rule was broken.
#pragma once

#include <string>
#include <string_view>

#include "common/check.h"

namespace cohort::protocol {

enum class ErrorCode {
  kNotCohortPeer,          // the peer's preamble is not ours (wrong service or port)
  kVersionMismatch,        // no protocol version in common
  kHandshakeFailed,        // Noise handshake message failed to authenticate or parse
  kBadIdentitySignature,   // the peer's identity payload signature does not verify
  kPinnedKeyMismatch,      // the responder is not the identity the initiator pinned
  kNotAllowed,             // the responder's allowlist refused the initiator
  kAuthenticationFailed,   // a transport message failed to decrypt (tampered/replayed/reordered)
  kMessageTooLarge,        // a length prefix exceeds the configured limit
  kMalformed,              // bytes that authenticate but do not parse
  kTimeout,                // handshake, idle or I/O deadline passed
  kClosed,                 // the peer closed the connection (possibly mid-message)
  kIo,                     // socket error
  kNonceExhausted,         // a cipher state reached its nonce limit
};

[[nodiscard]] std::string_view to_string(ErrorCode code);

class ProtocolError : public Error {
 public:
  ProtocolError(ErrorCode code, const std::string& message)
      : Error(std::string(to_string(code)) + ": " + message), code_(code) {}
  [[nodiscard]] ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace cohort::protocol
