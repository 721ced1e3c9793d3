// The Noise Protocol Framework (revision 34) for the suite 25519_ChaChaPoly_BLAKE2b, on libsodium.
// Sans-I/O: HandshakeState turns payloads into handshake messages and back; after split() the two
// CipherStates seal transport messages. The channel (channel.h) drives it over TCP.
//
//   auto hs = HandshakeState(HandshakePattern::xx, /*initiator=*/true, prologue, my_static);
//   Bytes m1 = hs.write_message({});           // -> e
//   ByteView payload = hs.read_message(m2);    // <- e, ee, s, es
//   ...
//   auto [send, recv] = hs.split();
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "protocol/bytes.h"

namespace cohort::protocol::noise {

inline constexpr std::size_t kDhLen = 32;
inline constexpr std::size_t kHashLen = 64;
inline constexpr std::size_t kKeyLen = 32;
inline constexpr std::size_t kTagLen = 16;
inline constexpr std::size_t kMaxMessageLen = 65535;
inline constexpr std::uint64_t kMaxNonce = ~std::uint64_t{0};  // reserved by the spec

using Key = std::array<std::uint8_t, kKeyLen>;
using Hash = std::array<std::uint8_t, kHashLen>;
using PublicKey = std::array<std::uint8_t, kDhLen>;

// An X25519 key pair. The secret is wiped on destruction.
struct KeyPair {
  std::array<std::uint8_t, kDhLen> secret{};
  PublicKey public_key{};

  [[nodiscard]] static KeyPair generate();
  [[nodiscard]] static KeyPair from_secret(ByteView secret32);
  KeyPair() = default;
  KeyPair(const KeyPair&) = default;
  KeyPair& operator=(const KeyPair&) = default;
  ~KeyPair();
};

// k, n and ENCRYPT/DECRYPT with AEAD ChaCha20-Poly1305 (IETF): nonce = 4 zero bytes || LE64(n).
class CipherState {
 public:
  CipherState() = default;
  explicit CipherState(const Key& k) { initialize_key(k); }
  ~CipherState();

  void initialize_key(const Key& k);
  [[nodiscard]] bool has_key() const { return has_key_; }
  [[nodiscard]] std::uint64_t nonce() const { return n_; }
  void set_nonce(std::uint64_t n) { n_ = n; }

  // Appends ciphertext (plaintext.size() + 16 bytes, or plaintext when there is no key) to `out`.
  // Throws ProtocolError(nonce_exhausted) rather than reuse a nonce.
  void encrypt_with_ad(ByteView ad, ByteView plaintext, Bytes& out);
  // Appends plaintext to `out`; throws ProtocolError(authentication_failed) when the tag is wrong,
  // leaving n unchanged.
  void decrypt_with_ad(ByteView ad, ByteView ciphertext, Bytes& out);

  // Transport hot path: encrypts `plaintext_len` bytes of `plaintext` into `out` (which may equal
  // `plaintext`) followed by the 16-byte tag.
  void encrypt_to(const std::uint8_t* plaintext, std::size_t plaintext_len, std::uint8_t* out);
  // Decrypts `ciphertext_len` bytes (tag last) into `plaintext` (may equal `ciphertext`) and
  // returns the plaintext length; throws ProtocolError(authentication_failed) on a bad tag.
  [[nodiscard]] std::size_t decrypt_to(const std::uint8_t* ciphertext, std::size_t ciphertext_len,
                                       std::uint8_t* plaintext);

  // REKEY(k): k = first 32 bytes of ENCRYPT(k, maxnonce, zerolen, zeros[32]). Nonce unchanged.
  void rekey();

 private:
  Key k_{};
  std::uint64_t n_ = 0;
  bool has_key_ = false;
};

// BLAKE2b-512, HMAC-BLAKE2b and Noise's HKDF.
[[nodiscard]] Hash hash(ByteView a, ByteView b = {});
[[nodiscard]] Hash hmac(ByteView key, ByteView data);
// Noise HKDF with 2 or 3 outputs (third is empty unless `three`).
void hkdf(ByteView chaining_key, ByteView ikm, Hash& out1, Hash& out2, Hash* out3 = nullptr);

class SymmetricState {
 public:
  explicit SymmetricState(std::string_view protocol_name);

  void mix_key(ByteView ikm);
  void mix_hash(ByteView data);
  void encrypt_and_hash(ByteView plaintext, Bytes& out);
  void decrypt_and_hash(ByteView ciphertext, Bytes& out);
  [[nodiscard]] std::pair<CipherState, CipherState> split() const;
  [[nodiscard]] const Hash& handshake_hash() const { return h_; }
  [[nodiscard]] bool has_key() const { return cipher_.has_key(); }

 private:
  Hash ck_{};
  Hash h_{};
  CipherState cipher_;
};

// The fundamental interactive and one-way patterns without PSKs; Cohort uses xx.
enum class HandshakePattern { n, k, x, nn, nk, nx, kn, kk, kx, xn, xk, xx, in, ik, ix };

// "XX" -> xx; nullopt for names outside the list above.
[[nodiscard]] std::optional<HandshakePattern> pattern_from_name(std::string_view name);
[[nodiscard]] std::string protocol_name(HandshakePattern pattern);  // Noise_XX_25519_ChaChaPoly_BLAKE2b

struct HandshakeKeys {
  std::optional<KeyPair> s;          // local static
  std::optional<KeyPair> e;          // local ephemeral; generated when absent (set only in tests)
  std::optional<PublicKey> rs;       // remote static known in advance (K/I patterns' pre-message)
};

class HandshakeState {
 public:
  HandshakeState(HandshakePattern pattern, bool initiator, ByteView prologue, HandshakeKeys keys);

  // Next message to send; throws ProtocolError if it is not our turn or a key is missing.
  [[nodiscard]] Bytes write_message(ByteView payload);
  // Consumes the peer's message and returns its payload; throws ProtocolError(handshake_failed)
  // when the message is short or fails to authenticate.
  [[nodiscard]] Bytes read_message(ByteView message);

  [[nodiscard]] bool finished() const;
  [[nodiscard]] bool my_turn() const;
  // (send, receive) cipher states; only once finished.
  [[nodiscard]] std::pair<CipherState, CipherState> split() const;
  [[nodiscard]] const Hash& handshake_hash() const { return symmetric_.handshake_hash(); }
  // The peer's static key once a message carrying it has been read.
  [[nodiscard]] const std::optional<PublicKey>& remote_static() const { return rs_; }

 private:
  enum class Token { e, s, ee, es, se, ss };
  void dh_mix(Token token);

  SymmetricState symmetric_;
  bool initiator_;
  std::optional<KeyPair> s_, e_;
  std::optional<PublicKey> rs_, re_;
  std::vector<std::vector<Token>> messages_;
  std::size_t next_ = 0;
};

}  // namespace cohort::protocol::noise
