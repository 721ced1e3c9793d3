#include "protocol/identity.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "protocol/error.h"

namespace cohort::protocol {
namespace {

constexpr std::string_view kSeedField = "ed25519-seed:";

void ensure_sodium() {
  static const int once = sodium_init();
  COHORT_CHECK(once >= 0, "libsodium failed to initialize");
}

std::string trim(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return std::string(s);
}

}  // namespace

std::string to_hex(ByteView bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 15];
  }
  return out;
}

std::optional<Bytes> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Bytes out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

std::optional<PeerId> PeerId::from_bytes(ByteView bytes) {
  if (bytes.size() != kPublicKeyLen) return std::nullopt;
  std::array<std::uint8_t, kPublicKeyLen> key;
  std::memcpy(key.data(), bytes.data(), kPublicKeyLen);
  return PeerId(key);
}

PeerId PeerId::parse(std::string_view hex) {
  const std::string text = trim(hex);
  auto bytes = from_hex(text);
  if (!bytes || bytes->size() != kPublicKeyLen) {
    throw Error("'" + text + "' is not a peer id: expected 64 hex characters (an Ed25519 public key "
                "as printed by `cohort keygen`)");
  }
  return *from_bytes(*bytes);
}

std::string PeerId::hex() const { return to_hex(key_); }
std::string PeerId::fingerprint() const { return hex().substr(0, 12); }

bool verify_signature(const PeerId& signer, ByteView message, ByteView signature) {
  ensure_sodium();
  if (signature.size() != kSignatureLen) return false;
  return crypto_sign_verify_detached(signature.data(), message.data(), message.size(),
                                     signer.bytes().data()) == 0;
}

// ---------------------------------------------------------------------------------------------

struct Identity::Secret {
  std::uint8_t sk[crypto_sign_SECRETKEYBYTES];  // seed || public key, as libsodium keeps it
};

void Identity::SecretDeleter::operator()(Secret* s) const { sodium_free(s); }

Identity Identity::from_seed(ByteView seed32) {
  ensure_sodium();
  COHORT_CHECK(seed32.size() == crypto_sign_SEEDBYTES, "Ed25519 seed must be 32 bytes");
  auto* raw = static_cast<Secret*>(sodium_malloc(sizeof(Secret)));
  if (raw == nullptr) throw Error("out of guarded memory for the identity key");
  Identity id;
  id.secret_ = std::shared_ptr<Secret>(raw, SecretDeleter{});
  std::array<std::uint8_t, kPublicKeyLen> pk;
  crypto_sign_seed_keypair(pk.data(), raw->sk, seed32.data());
  id.id_ = PeerId(pk);
  id.bind_noise_static();
  return id;
}

Identity Identity::generate() {
  ensure_sodium();
  std::uint8_t seed[crypto_sign_SEEDBYTES];
  randombytes_buf(seed, sizeof seed);
  Identity id = from_seed(ByteView(seed, sizeof seed));
  sodium_memzero(seed, sizeof seed);
  return id;
}

void Identity::bind_noise_static() {
  noise_static_ = noise::KeyPair::generate();
  identity_payload_ = make_identity_payload(*this, noise_static_.public_key);
}

Signature Identity::sign(ByteView message) const {
  Signature sig;
  crypto_sign_detached(sig.data(), nullptr, message.data(), message.size(), secret_->sk);
  return sig;
}

Identity Identity::load(const std::filesystem::path& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) {
    throw Error("cannot read key file " + path.string() + ": " + std::strerror(errno) +
                " (create one with `cohort keygen --out " + path.string() + "`)");
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    throw Error("key file " + path.string() + " is accessible by other users (mode " + mode +
                "); restrict it with `chmod 600 " + path.string() + "`");
  }
  std::ifstream in(path);
  if (!in) throw Error("cannot open key file " + path.string());
  std::string line;
  std::optional<Bytes> seed;
  while (std::getline(in, line)) {
    const std::string t = trim(line);
    if (t.rfind(kSeedField, 0) == 0) seed = from_hex(trim(std::string_view(t).substr(kSeedField.size())));
  }
  if (!seed || seed->size() != crypto_sign_SEEDBYTES) {
    throw Error("key file " + path.string() + " has no valid '" + std::string(kSeedField) +
                " <64 hex>' line; it is not a cohort key file");
  }
  Identity id = from_seed(*seed);
  sodium_memzero(seed->data(), seed->size());
  return id;
}

void Identity::save(const std::filesystem::path& path, bool overwrite) const {
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL);
  const int fd = ::open(path.c_str(), flags, 0600);
  if (fd < 0) {
    throw Error("cannot create key file " + path.string() + ": " + std::strerror(errno) +
                (errno == EEXIST ? " (refusing to overwrite an existing key)" : ""));
  }
  // O_CREAT's mode does not apply to an existing file.
  if (::fchmod(fd, 0600) != 0) {
    ::close(fd);
    throw Error("cannot chmod 600 key file " + path.string() + ": " + std::strerror(errno));
  }
  std::string text = "# Cohort identity key (Ed25519). Secret: keep this file mode 0600.\n"
                     "public: " + id_.hex() + "\n" + std::string(kSeedField) + " " +
                     to_hex(ByteView(secret_->sk, crypto_sign_SEEDBYTES)) + "\n";
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  sodium_memzero(text.data(), text.size());
  ::close(fd);
  if (!ok) throw Error("cannot write key file " + path.string() + ": " + std::strerror(errno));
}

// ---------------------------------------------------------------------------------------------

Bytes make_identity_payload(const Identity& identity, const noise::PublicKey& static_key) {
  Bytes message(kStaticKeyDomain.begin(), kStaticKeyDomain.end());
  message.insert(message.end(), static_key.begin(), static_key.end());
  const Signature sig = identity.sign(message);
  Bytes payload(identity.id().bytes().begin(), identity.id().bytes().end());
  payload.insert(payload.end(), sig.begin(), sig.end());
  return payload;
}

PeerId verify_identity_payload(ByteView payload, const noise::PublicKey& static_key) {
  if (payload.size() != kIdentityPayloadLen) {
    throw ProtocolError(ErrorCode::bad_identity_signature,
                        "identity payload is " + std::to_string(payload.size()) + " bytes, expected " +
                            std::to_string(kIdentityPayloadLen));
  }
  const PeerId claimed = *PeerId::from_bytes(payload.first(kPublicKeyLen));
  Bytes message(kStaticKeyDomain.begin(), kStaticKeyDomain.end());
  message.insert(message.end(), static_key.begin(), static_key.end());
  if (!verify_signature(claimed, message, payload.subspan(kPublicKeyLen))) {
    throw ProtocolError(ErrorCode::bad_identity_signature,
                        "peer claiming identity " + claimed.fingerprint() +
                            " did not sign its Noise static key with it");
  }
  return claimed;
}

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::not_cohort_peer: return "not a cohort peer";
    case ErrorCode::version_mismatch: return "protocol version mismatch";
    case ErrorCode::handshake_failed: return "handshake failed";
    case ErrorCode::bad_identity_signature: return "bad identity signature";
    case ErrorCode::pinned_key_mismatch: return "pinned key mismatch";
    case ErrorCode::not_allowed: return "peer not allowed";
    case ErrorCode::authentication_failed: return "authentication failed";
    case ErrorCode::message_too_large: return "message too large";
    case ErrorCode::malformed: return "malformed message";
    case ErrorCode::timeout: return "timeout";
    case ErrorCode::closed: return "connection closed";
    case ErrorCode::io: return "I/O error";
    case ErrorCode::nonce_exhausted: return "nonce exhausted";
  }
  return "unknown error";
}

}  // namespace cohort::protocol
