// Signed gradient updates and weight manifests: the signer serializes the body once, signs a
// domain-separated BLAKE2b-256 digest of exactly those bytes, and anyone can re-verify the stored
// bytes later. Verification returns a typed verdict the coordinator turns into an Ack. An update
// is a small signed header plus a stream (its completions and tensors) that the header binds by
// length and digest, so no single message has to carry a model-sized gradient.
//
//   SealedUpdate s = seal_update(update, node_identity);                 // node: header + stream
//   VerifiedUpdate r = verify_update(s.header, {.recipient = me.id(), .current_version = v,
//                                               .staleness_bound = 2}, channel.peer(), s.stream);
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
// sequence and the rest. Everything stays in the body (small updates, tests); seal_update
// streams the bulk.
[[nodiscard]] wire::SignedUpdate sign_update(wire::GradientUpdate update, const Identity& signer);

// Pieces of a stream sent in UpdateChunk messages, and the most one update may stream (protobuf
// parses the stream as one message: 2 GiB).
inline constexpr std::size_t kUpdateChunkBytes = std::size_t{1} << 20;
inline constexpr std::uint64_t kMaxStreamBytes = (std::uint64_t{1} << 31) - 1;

struct SealedUpdate {
  wire::SignedUpdate header;  // header.stream_bytes() == stream.size()
  std::string stream;         // serialized GradientUpdate holding only completions and tensors
  [[nodiscard]] std::uint64_t wire_bytes() const { return header.ByteSizeLong() + stream.size(); }
};
// Moves the completions and tensors into the stream, binds it in the header (stream_bytes,
// stream_blake2b) and signs the header. Throws cohort::Error when the stream would pass
// kMaxStreamBytes (a smaller codec is the remedy).
[[nodiscard]] SealedUpdate seal_update(wire::GradientUpdate update, const Identity& signer);
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

// Stateless checks, in order: sizes, signature over the exact body, header parse, the stream
// (its length and BLAKE2b-256 as the header states them), signer == body.peer
// (== expected_signer when given), recipient, staleness. Never checks replays.
[[nodiscard]] VerifiedUpdate verify_update(const wire::SignedUpdate& signed_update,
                                           const UpdatePolicy& policy,
                                           const std::optional<PeerId>& expected_signer = std::nullopt,
                                           std::string_view stream = {});

// The full GradientUpdate of a verified update: the body with its stream merged in (tensors
// included; check each with check_tensor). Throws ProtocolError(malformed) when either does not
// parse. Call verify_update first: this does not check that the stream is the one signed.
[[nodiscard]] wire::GradientUpdate decode_update(const wire::SignedUpdate& signed_update,
                                                 std::string_view stream = {});

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
