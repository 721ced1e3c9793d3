// Typed errors of the peer protocol. Every failure a remote peer can cause (bad bytes, bad keys,
// silence) surfaces as a ProtocolError whose code says which rule was broken.
#pragma once

#include <string>
#include <string_view>

#include "common/check.h"

namespace cohort::protocol {

enum class ErrorCode {
  not_cohort_peer,         // the peer's preamble is not ours (wrong service or port)
  version_mismatch,        // no protocol version in common
  handshake_failed,        // Noise handshake message failed to authenticate or parse
  bad_identity_signature,  // the peer's identity payload signature does not verify
  pinned_key_mismatch,     // the responder is not the identity the initiator pinned
  not_allowed,             // the responder's allowlist refused the initiator
  authentication_failed,   // a transport message failed to decrypt (tampered/replayed/reordered)
  message_too_large,       // a length prefix exceeds the configured limit
  malformed,               // bytes that authenticate but do not parse
  timeout,                 // handshake, idle or I/O deadline passed
  closed,                  // the peer closed the connection (possibly mid-message)
  io,                      // socket error
  nonce_exhausted,         // a cipher state reached its nonce limit
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
