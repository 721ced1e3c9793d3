#include "protocol/signed_update.h"

#include "protocol/error.h"

namespace cohort::protocol {

std::string_view to_string(UpdateVerdict verdict) {
  switch (verdict) {
    case UpdateVerdict::kOk: return "ok";
    case UpdateVerdict::kMalformed: return "malformed";
    case UpdateVerdict::kBadSignature: return "bad signature";
    case UpdateVerdict::kSignerMismatch: return "signer mismatch";
    case UpdateVerdict::kWrongRecipient: return "wrong recipient";
    case UpdateVerdict::kStale: return "stale";
    case UpdateVerdict::kReplayed: return "replayed";
  }
  return "unknown";
}

wire::AckReason to_ack_reason(UpdateVerdict verdict) {
  switch (verdict) {
    case UpdateVerdict::kOk: return wire::ACK_OK;
    case UpdateVerdict::kMalformed: return wire::ACK_MALFORMED;
    case UpdateVerdict::kBadSignature: return wire::ACK_BAD_SIGNATURE;
    case UpdateVerdict::kSignerMismatch: return wire::ACK_SIGNER_MISMATCH;
    case UpdateVerdict::kWrongRecipient: return wire::ACK_WRONG_RECIPIENT;
    case UpdateVerdict::kStale: return wire::ACK_STALE;
    case UpdateVerdict::kReplayed: return wire::ACK_REPLAYED;
  }
  return wire::ACK_INTERNAL;
}

wire::SignedUpdate sign_update_body(std::string body, const Identity& signer) {
  const Digest digest = signing_digest(kUpdateDomain, as_bytes(body));
  const Signature sig = signer.sign(digest);
  wire::SignedUpdate out;
  out.set_body(std::move(body));
  out.set_signer(signer.id().bytes().data(), kPublicKeyLen);
  out.set_signature(sig.data(), sig.size());
  return out;
}

wire::SignedUpdate sign_update(wire::GradientUpdate update, const Identity& signer) {
  update.set_peer(signer.id().bytes().data(), kPublicKeyLen);
  return sign_update_body(update.SerializeAsString(), signer);
}

VerifiedUpdate verify_update(const wire::SignedUpdate& su, const UpdatePolicy& policy,
                             const std::optional<PeerId>& expected_signer) {
  VerifiedUpdate r;
  auto fail = [&](UpdateVerdict v, std::string detail) -> VerifiedUpdate {
    r.verdict = v;
    r.detail = std::move(detail);
    return std::move(r);
  };
  const auto signer = PeerId::from_bytes(as_bytes(su.signer()));
  if (!signer) return fail(UpdateVerdict::kMalformed, "signer is not a 32-byte Ed25519 key");
  if (su.signature().size() != kSignatureLen) {
    return fail(UpdateVerdict::kMalformed, "signature is not 64 bytes");
  }
  r.signer = signer;
  r.digest = signing_digest(kUpdateDomain, as_bytes(su.body()));
  if (!verify_signature(*signer, r.digest, as_bytes(su.signature()))) {
    return fail(UpdateVerdict::kBadSignature, "signature by " + signer->fingerprint() + " does not verify");
  }
  if (!r.update.ParseFromString(su.body())) {
    return fail(UpdateVerdict::kMalformed, "body is not a GradientUpdate");
  }
  if (r.update.peer() != su.signer()) {
    return fail(UpdateVerdict::kSignerMismatch, "body names a different peer than its signer");
  }
  if (expected_signer && *expected_signer != *signer) {
    return fail(UpdateVerdict::kSignerMismatch, "signed by " + signer->fingerprint() +
                                                    ", but the channel authenticated " +
                                                    expected_signer->fingerprint());
  }
  if (r.update.recipient() != std::string_view(reinterpret_cast<const char*>(policy.recipient.bytes().data()),
                                               kPublicKeyLen)) {
    return fail(UpdateVerdict::kWrongRecipient, "update is addressed to another coordinator");
  }
  const std::uint64_t v = r.update.policy_version();
  if (v > policy.current_version) {
    return fail(UpdateVerdict::kStale, "policy version " + std::to_string(v) + " is from the future (current " +
                                           std::to_string(policy.current_version) + ")");
  }
  if (policy.current_version - v > policy.staleness_bound) {
    return fail(UpdateVerdict::kStale, "policy version " + std::to_string(v) + " is older than " +
                                           std::to_string(policy.current_version) + " - " +
                                           std::to_string(policy.staleness_bound));
  }
  r.verdict = UpdateVerdict::kOk;
  return r;
}

bool ReplayGuard::seen(const PeerId& peer, std::uint64_t sequence, const Digest& digest) const {
  if (digests_.contains(digest)) return true;
  const auto it = sequences_.find(peer);
  return it != sequences_.end() && it->second.contains(sequence);
}

void ReplayGuard::remember(const PeerId& peer, std::uint64_t sequence, const Digest& digest) {
  sequences_[peer].insert(sequence);
  digests_.insert(digest);
}

VerifiedUpdate UpdateVerifier::verify(const wire::SignedUpdate& su,
                                      const std::optional<PeerId>& expected_signer) {
  VerifiedUpdate r = verify_update(su, policy_, expected_signer);
  if (!r) return r;
  if (replays_.seen(*r.signer, r.update.sequence(), r.digest)) {
    r.verdict = UpdateVerdict::kReplayed;
    r.detail = "update " + std::to_string(r.update.sequence()) + " from " + r.signer->fingerprint() +
               " was already received";
    return r;
  }
  replays_.remember(*r.signer, r.update.sequence(), r.digest);
  return r;
}

wire::SignedManifest sign_manifest(const wire::WeightManifest& manifest, const Identity& signer) {
  wire::SignedManifest out;
  out.set_body(manifest.SerializeAsString());
  const Signature sig = signer.sign(signing_digest(kManifestDomain, as_bytes(out.body())));
  out.set_signer(signer.id().bytes().data(), kPublicKeyLen);
  out.set_signature(sig.data(), sig.size());
  return out;
}

wire::WeightManifest verify_manifest(const wire::SignedManifest& sm, const PeerId& expected_signer) {
  if (sm.signer() != std::string_view(reinterpret_cast<const char*>(expected_signer.bytes().data()),
                                      kPublicKeyLen)) {
    throw ProtocolError(ErrorCode::kBadIdentitySignature,
                        "weight manifest is not signed by the coordinator " + expected_signer.fingerprint());
  }
  if (!verify_signature(expected_signer, signing_digest(kManifestDomain, as_bytes(sm.body())),
                        as_bytes(sm.signature()))) {
    throw ProtocolError(ErrorCode::kBadIdentitySignature, "weight manifest signature does not verify");
  }
  wire::WeightManifest m;
  if (!m.ParseFromString(sm.body())) throw ProtocolError(ErrorCode::kMalformed, "manifest body does not parse");
  return m;
}

}  // namespace cohort::protocol
