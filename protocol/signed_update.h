// Signed gradient updates and weight manifests: the signer serializes the body once, signs a
// domain-separated BLAKE2b-256 digest of exactly those bytes, and anyone can re-verify the stored
// bytes later. Verification returns a typed verdict the coordinator turns into an Ack.
//
//   wire::SignedUpdate su = sign_update(update, node_identity);          // node
//   VerifiedUpdate r = verify_update(su, {.recipient = me.id(), .current_version = v,
//                                         .staleness_bound = 2}, channel.peer());  // coordinator
//   if (!r || replays.seen(*r.signer, r.header.sequence(), r.digest)) refuse(...);
//   else { ...accept...; replays.remember(*r.signer, r.header.sequence(), r.digest); }
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "protocol/digest.h"
#include "protocol/identity.h"
#include "protocol/messages.pb.h"

namespace cohort::protocol {

enum class UpdateVerdict {
  ok,
  malformed,        // sizes wrong or the body does not parse
  bad_signature,     // the signature does not verify over the exact body bytes
  signer_mismatch,   // body.peer != signer, or signer is not the channel's authenticated peer
  wrong_recipient,   // body.recipient is not this coordinator
  stale,            // policy_version < current − staleness_bound (or from the future)
  replayed,         // same (peer, sequence) or same digest seen before
};

[[nodiscard]] std::string_view to_string(UpdateVerdict verdict);
[[nodiscard]] wire::AckReason to_ack_reason(UpdateVerdict verdict);

// Sets update.peer to the signer's id, serializes once and signs. The caller sets recipient,
// sequence and the rest.
[[nodiscard]] wire::SignedUpdate sign_update(wire::GradientUpdate update, const Identity& signer);
// Signs given body bytes as they are (tests; re-signing stored bodies).
[[nodiscard]] wire::SignedUpdate sign_update_body(std::string body, const Identity& signer);

struct UpdatePolicy {
  PeerId recipient;                    // this coordinator
  std::uint64_t current_version = 0;
  std::uint64_t staleness_bound = 0;   // S: accept versions in [current − S, current]
};

struct VerifiedUpdate {
  UpdateVerdict verdict = UpdateVerdict::malformed;
  std::string detail;                  // human-readable reason when not ok
  Digest digest{};                     // signing digest (valid once the sizes check out)
  std::optional<PeerId> signer;
  // Every field of the body except `completions` and `tensors` (the bulk is not copied to be
  // checked); valid from signer_mismatch on. decode_update() parses the whole body.
  wire::GradientUpdate header;
  explicit operator bool() const { return verdict == UpdateVerdict::ok; }
};

// Stateless checks, in order: sizes, signature over the exact body, header parse, signer ==
// body.peer (== expected_signer when given), recipient, staleness. Never checks replays.
[[nodiscard]] VerifiedUpdate verify_update(const wire::SignedUpdate& signed_update,
                                           const UpdatePolicy& policy,
                                           const std::optional<PeerId>& expected_signer = std::nullopt);

// The full GradientUpdate of a verified SignedUpdate (tensors included; check each with
// check_tensor). Throws ProtocolError(malformed) when the body does not parse.
[[nodiscard]] wire::GradientUpdate decode_update(const wire::SignedUpdate& signed_update);

// Replay protection for accepted updates: a peer's sequence numbers strictly increase, so an
// update is a replay when its sequence is not above the highest accepted from that peer, or when
// its digest was accepted before (from anyone). Memory: one number per peer plus one digest per
// accepted update. The coordinator preloads it from its ledger after a restart with remember().
class ReplayGuard {
 public:
  [[nodiscard]] bool seen(const PeerId& peer, std::uint64_t sequence, const Digest& digest) const;
  void remember(const PeerId& peer, std::uint64_t sequence, const Digest& digest);
  [[nodiscard]] std::size_t size() const { return digests_.size(); }

 private:
  std::unordered_map<PeerId, std::uint64_t> highest_;
  std::unordered_set<Digest, DigestHash> digests_;
};


// Weight manifests: same scheme, kManifestDomain.
[[nodiscard]] wire::SignedManifest sign_manifest(const wire::WeightManifest& manifest, const Identity& signer);
// The manifest when `signed_manifest` is signed by `expected_signer`; throws
// ProtocolError(bad_identity_signature) or ProtocolError(malformed) otherwise.
[[nodiscard]] wire::WeightManifest verify_manifest(const wire::SignedManifest& signed_manifest,
                                                   const PeerId& expected_signer);

}  // namespace cohort::protocol
