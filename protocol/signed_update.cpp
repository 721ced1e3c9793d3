#include "protocol/signed_update.h"

#include <google/protobuf/io/coded_stream.h>

#include <climits>

#include "common/check.h"
#include "protocol/error.h"

namespace cohort::protocol {

std::string_view to_string(UpdateVerdict verdict) {
  switch (verdict) {
    case UpdateVerdict::ok: return "ok";
    case UpdateVerdict::malformed: return "malformed";
    case UpdateVerdict::bad_signature: return "bad signature";
    case UpdateVerdict::signer_mismatch: return "signer mismatch";
    case UpdateVerdict::wrong_recipient: return "wrong recipient";
    case UpdateVerdict::stale: return "stale";
    case UpdateVerdict::replayed: return "replayed";
  }
  return "unknown";
}

wire::AckReason to_ack_reason(UpdateVerdict verdict) {
  switch (verdict) {
    case UpdateVerdict::ok: return wire::ACK_OK;
    case UpdateVerdict::malformed: return wire::ACK_MALFORMED;
    case UpdateVerdict::bad_signature: return wire::ACK_BAD_SIGNATURE;
    case UpdateVerdict::signer_mismatch: return wire::ACK_SIGNER_MISMATCH;
    case UpdateVerdict::wrong_recipient: return wire::ACK_WRONG_RECIPIENT;
    case UpdateVerdict::stale: return wire::ACK_STALE;
    case UpdateVerdict::replayed: return wire::ACK_REPLAYED;
  }
  return wire::ACK_INTERNAL;
}

namespace {

// GradientUpdate fields that carry the bulk; verification skips them without copying.
constexpr std::uint32_t kCompletionsField = 12;
constexpr std::uint32_t kTensorsField = 13;

// Parses every top-level field of a serialized GradientUpdate except the bulk ones into `header`.
// False when the top-level structure is not valid protobuf wire format.
bool parse_header(const std::string& body, wire::GradientUpdate& header) {
  if (body.size() > INT_MAX) return false;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const std::uint8_t*>(body.data()),
                                            static_cast<int>(body.size()));
  std::string small;
  for (;;) {
    const int start = in.CurrentPosition();
    const std::uint32_t tag = in.ReadTag();
    if (tag == 0) {
      // 0 is both "end of input" and "bad tag": only a clean end at a field boundary is valid.
      if (static_cast<std::size_t>(start) != body.size()) return false;
      break;
    }
    const std::uint32_t field = tag >> 3;
    if (field == 0) return false;
    switch (tag & 7) {
      case 0: {  // varint
        std::uint64_t v;
        if (!in.ReadVarint64(&v)) return false;
        break;
      }
      case 1:
        if (!in.Skip(8)) return false;
        break;
      case 2: {  // length-delimited
        std::uint32_t len;
        if (!in.ReadVarint32(&len) || len > INT_MAX || !in.Skip(static_cast<int>(len))) return false;
        break;
      }
      case 5:
        if (!in.Skip(4)) return false;
        break;
      default:  // groups are not proto3
        return false;
    }
    if (field != kCompletionsField && field != kTensorsField) {
      small.append(body, static_cast<std::size_t>(start), static_cast<std::size_t>(in.CurrentPosition() - start));
    }
  }
  return header.ParseFromString(small);
}

}  // namespace

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

SealedUpdate seal_update(wire::GradientUpdate update, const Identity& signer) {
  wire::GradientUpdate bulk;
  bulk.mutable_completions()->Swap(update.mutable_completions());
  bulk.mutable_tensors()->Swap(update.mutable_tensors());
  if (const size_t bytes = bulk.ByteSizeLong(); bytes > kMaxStreamBytes)
    throw Error("the update's stream would be " + std::to_string(bytes) +
                " bytes, over the 2 GiB a stream may hold: use a smaller gradient codec");
  SealedUpdate out;
  out.stream = bulk.SerializeAsString();
  const Digest d = blake2b_256(as_bytes(out.stream));
  update.set_stream_bytes(out.stream.size());
  update.set_stream_blake2b(d.data(), d.size());
  out.header = sign_update(std::move(update), signer);
  out.header.set_stream_bytes(out.stream.size());
  return out;
}

VerifiedUpdate verify_update(const wire::SignedUpdate& su, const UpdatePolicy& policy,
                             const std::optional<PeerId>& expected_signer,
                             std::string_view stream) {
  VerifiedUpdate r;
  auto fail = [&](UpdateVerdict v, std::string detail) -> VerifiedUpdate {
    r.verdict = v;
    r.detail = std::move(detail);
    return std::move(r);
  };
  const auto signer = PeerId::from_bytes(as_bytes(su.signer()));
  if (!signer) return fail(UpdateVerdict::malformed, "signer is not a 32-byte Ed25519 key");
  if (su.signature().size() != kSignatureLen) {
    return fail(UpdateVerdict::malformed, "signature is not 64 bytes");
  }
  r.signer = signer;
  r.digest = signing_digest(kUpdateDomain, as_bytes(su.body()));
  if (!verify_signature(*signer, r.digest, as_bytes(su.signature()))) {
    return fail(UpdateVerdict::bad_signature, "signature by " + signer->fingerprint() + " does not verify");
  }
  if (!parse_header(su.body(), r.header)) {
    return fail(UpdateVerdict::malformed, "body is not a GradientUpdate");
  }
  if (r.header.stream_bytes() != stream.size() || su.stream_bytes() != stream.size()) {
    return fail(UpdateVerdict::malformed,
                "the signed header streams " + std::to_string(r.header.stream_bytes()) +
                    " bytes; " + std::to_string(stream.size()) + " arrived");
  }
  if (!stream.empty()) {
    const Digest d = blake2b_256(as_bytes(stream));
    if (r.header.stream_blake2b() !=
        std::string_view(reinterpret_cast<const char*>(d.data()), d.size())) {
      return fail(UpdateVerdict::malformed, "the stream's BLAKE2b-256 is not the one signed");
    }
  }
  if (r.header.peer() != su.signer()) {
    return fail(UpdateVerdict::signer_mismatch, "body names a different peer than its signer");
  }
  if (expected_signer && *expected_signer != *signer) {
    return fail(UpdateVerdict::signer_mismatch, "signed by " + signer->fingerprint() +
                                                    ", but the channel authenticated " +
                                                    expected_signer->fingerprint());
  }
  if (r.header.recipient() != std::string_view(reinterpret_cast<const char*>(policy.recipient.bytes().data()),
                                               kPublicKeyLen)) {
    return fail(UpdateVerdict::wrong_recipient, "update is addressed to another coordinator");
  }
  const std::uint64_t v = r.header.policy_version();
  if (v > policy.current_version) {
    return fail(UpdateVerdict::stale, "policy version " + std::to_string(v) + " is from the future (current " +
                                           std::to_string(policy.current_version) + ")");
  }
  if (policy.current_version - v > policy.staleness_bound) {
    return fail(UpdateVerdict::stale, "policy version " + std::to_string(v) + " is older than " +
                                           std::to_string(policy.current_version) + " - " +
                                           std::to_string(policy.staleness_bound));
  }
  r.verdict = UpdateVerdict::ok;
  return r;
}

wire::GradientUpdate decode_update(const wire::SignedUpdate& su, std::string_view stream) {
  wire::GradientUpdate update;
  if (!update.ParseFromString(su.body())) {
    throw ProtocolError(ErrorCode::malformed, "update body is not a GradientUpdate");
  }
  if (!stream.empty()) {
    bool ok = stream.size() <= kMaxStreamBytes;
    if (ok) {
      google::protobuf::io::CodedInputStream in(reinterpret_cast<const std::uint8_t*>(stream.data()),
                                                static_cast<int>(stream.size()));
      in.SetTotalBytesLimit(static_cast<int>(kMaxStreamBytes));
      ok = update.MergeFromCodedStream(&in) && in.ConsumedEntireMessage();
    }
    if (!ok) throw ProtocolError(ErrorCode::malformed, "update stream is not a GradientUpdate");
  }
  return update;
}

bool ReplayGuard::seen(const PeerId& peer, std::uint64_t sequence, const Digest& digest) const {
  if (digests_.contains(digest)) return true;
  const auto it = highest_.find(peer);
  return it != highest_.end() && sequence <= it->second;
}

void ReplayGuard::remember(const PeerId& peer, std::uint64_t sequence, const Digest& digest) {
  auto [it, fresh] = highest_.try_emplace(peer, sequence);
  if (!fresh && sequence > it->second) it->second = sequence;
  digests_.insert(digest);
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
    throw ProtocolError(ErrorCode::bad_identity_signature,
                        "weight manifest is not signed by the coordinator " + expected_signer.fingerprint());
  }
  if (!verify_signature(expected_signer, signing_digest(kManifestDomain, as_bytes(sm.body())),
                        as_bytes(sm.signature()))) {
    throw ProtocolError(ErrorCode::bad_identity_signature, "weight manifest signature does not verify");
  }
  wire::WeightManifest m;
  if (!m.ParseFromString(sm.body())) throw ProtocolError(ErrorCode::malformed, "manifest body does not parse");
  return m;
}

}  // namespace cohort::protocol
