// Long-term identities: an Ed25519 key pair whose public key *is* the peer's id. Key files are
// created with mode 0600 and refused when others can read them.
//
//   Identity me = Identity::load("node.key");          // or Identity::generate()
//   PeerId coordinator = PeerId::parse(hex_from_config);
//   spdlog::info("peer {}", me.id().fingerprint());
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "protocol/bytes.h"
#include "protocol/noise.h"

namespace cohort::protocol {

inline constexpr std::size_t kPublicKeyLen = 32;
inline constexpr std::size_t kSignatureLen = 64;
using Signature = std::array<std::uint8_t, kSignatureLen>;

// An Ed25519 public key: the printable, comparable id of a coordinator or node.
class PeerId {
 public:
  PeerId() = default;
  explicit PeerId(const std::array<std::uint8_t, kPublicKeyLen>& key) : key_(key) {}
  // nullopt unless exactly 32 bytes.
  [[nodiscard]] static std::optional<PeerId> from_bytes(ByteView bytes);
  // 64 hex characters; throws cohort::Error with a readable message otherwise.
  [[nodiscard]] static PeerId parse(std::string_view hex);

  [[nodiscard]] const std::array<std::uint8_t, kPublicKeyLen>& bytes() const { return key_; }
  [[nodiscard]] ByteView view() const { return key_; }
  [[nodiscard]] std::string hex() const;           // 64 lowercase hex characters
  [[nodiscard]] std::string fingerprint() const;   // first 12 hex characters, for logs

  auto operator<=>(const PeerId&) const = default;

 private:
  std::array<std::uint8_t, kPublicKeyLen> key_{};
};

// True when `signature` is a valid Ed25519 signature by `signer` over `message`.
[[nodiscard]] bool verify_signature(const PeerId& signer, ByteView message, ByteView signature);

// An Ed25519 key pair (secret in libsodium guarded memory) plus the X25519 Noise static key this
// process uses in handshakes, bound to the identity by a signature made once at construction.
class Identity {
 public:
  [[nodiscard]] static Identity generate();
  // Throws cohort::Error when the file is missing, malformed, or readable by group/others.
  [[nodiscard]] static Identity load(const std::filesystem::path& path);
  // From a 32-byte Ed25519 seed (deterministic; tests and key files).
  [[nodiscard]] static Identity from_seed(ByteView seed32);

  // Writes the key file with mode 0600; refuses to overwrite unless `overwrite`.
  void save(const std::filesystem::path& path, bool overwrite = false) const;

  [[nodiscard]] const PeerId& id() const { return id_; }
  [[nodiscard]] Signature sign(ByteView message) const;

  // Noise static key and the handshake identity payload (see docs/PROTOCOL.md, "Identity payload").
  [[nodiscard]] const noise::KeyPair& noise_static() const { return noise_static_; }
  [[nodiscard]] const Bytes& identity_payload() const { return identity_payload_; }

 private:
  struct Secret;
  struct SecretDeleter { void operator()(Secret* s) const; };

  Identity() = default;
  void bind_noise_static();

  std::shared_ptr<Secret> secret_;  // shared: copies of an Identity sign with the same key
  PeerId id_;
  noise::KeyPair noise_static_;
  Bytes identity_payload_;
};

// The identity payload carried in XX messages 2 and 3: Ed25519 public key (32) || signature (64)
// over kStaticKeyDomain || X25519 static public key (32).
inline constexpr std::string_view kStaticKeyDomain = "cohort-noise-static-key:";
inline constexpr std::size_t kIdentityPayloadLen = kPublicKeyLen + kSignatureLen;

[[nodiscard]] Bytes make_identity_payload(const Identity& identity, const noise::PublicKey& static_key);
// The PeerId the payload proves for `static_key`; throws ProtocolError(bad_identity_signature) when
// the payload has the wrong length or its signature does not verify.
[[nodiscard]] PeerId verify_identity_payload(ByteView payload, const noise::PublicKey& static_key);

}  // namespace cohort::protocol

template <>
struct std::hash<cohort::protocol::PeerId> {
  std::size_t operator()(const cohort::protocol::PeerId& id) const noexcept {
    std::size_t h = 0;
    for (int i = 0; i < 8; ++i) h = (h << 8) | id.bytes()[i];
    return h;
  }
};
