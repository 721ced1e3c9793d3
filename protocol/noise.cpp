// Noise revision 34, 25519_ChaChaPoly_BLAKE2b. Section numbers refer to noiseprotocol.org/noise.html.
#include "protocol/noise.h"

#include <sodium.h>

#include <cstring>

#include "protocol/error.h"

namespace cohort::protocol::noise {
namespace {

constexpr std::size_t kBlockLen = 128;  // BLAKE2b block length, used by HMAC

struct SodiumInit {
  SodiumInit() { COHORT_CHECK(sodium_init() >= 0, "libsodium failed to initialize"); }
};
void ensure_sodium() { static SodiumInit once; }

void make_nonce(std::uint64_t n, std::uint8_t out[12]) {
  std::memset(out, 0, 4);
  for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<std::uint8_t>(n >> (8 * i));
}

PublicKey dh(const KeyPair& local, const PublicKey& remote) {
  PublicKey out;
  if (crypto_scalarmult_curve25519(out.data(), local.secret.data(), remote.data()) != 0) {
    throw ProtocolError(ErrorCode::handshake_failed, "peer sent a low-order X25519 public key");
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

KeyPair KeyPair::generate() {
  ensure_sodium();
  KeyPair kp;
  randombytes_buf(kp.secret.data(), kp.secret.size());
  crypto_scalarmult_curve25519_base(kp.public_key.data(), kp.secret.data());
  return kp;
}

KeyPair KeyPair::from_secret(ByteView secret32) {
  ensure_sodium();
  COHORT_CHECK(secret32.size() == kDhLen, "X25519 secret must be 32 bytes");
  KeyPair kp;
  std::memcpy(kp.secret.data(), secret32.data(), kDhLen);
  crypto_scalarmult_curve25519_base(kp.public_key.data(), kp.secret.data());
  return kp;
}

KeyPair::~KeyPair() { sodium_memzero(secret.data(), secret.size()); }

// ---------------------------------------------------------------------------------------------

CipherState::~CipherState() { sodium_memzero(k_.data(), k_.size()); }

void CipherState::initialize_key(const Key& k) {
  ensure_sodium();
  k_ = k;
  n_ = 0;
  has_key_ = true;
}

void CipherState::encrypt_with_ad(ByteView ad, ByteView plaintext, Bytes& out) {
  const std::size_t at = out.size();
  if (!has_key_) {
    out.insert(out.end(), plaintext.begin(), plaintext.end());
    return;
  }
  if (n_ == kMaxNonce) throw ProtocolError(ErrorCode::nonce_exhausted, "cipher state nonce limit");
  out.resize(at + plaintext.size() + kTagLen);
  std::uint8_t nonce[12];
  make_nonce(n_, nonce);
  unsigned long long clen = 0;
  crypto_aead_chacha20poly1305_ietf_encrypt(out.data() + at, &clen, plaintext.data(),
                                            plaintext.size(), ad.data(), ad.size(), nullptr, nonce,
                                            k_.data());
  ++n_;
}

void CipherState::decrypt_with_ad(ByteView ad, ByteView ciphertext, Bytes& out) {
  if (!has_key_) {
    out.insert(out.end(), ciphertext.begin(), ciphertext.end());
    return;
  }
  if (n_ == kMaxNonce) throw ProtocolError(ErrorCode::nonce_exhausted, "cipher state nonce limit");
  if (ciphertext.size() < kTagLen) {
    throw ProtocolError(ErrorCode::authentication_failed, "ciphertext shorter than its tag");
  }
  const std::size_t at = out.size();
  out.resize(at + ciphertext.size() - kTagLen);
  std::uint8_t nonce[12];
  make_nonce(n_, nonce);
  unsigned long long mlen = 0;
  if (crypto_aead_chacha20poly1305_ietf_decrypt(out.data() + at, &mlen, nullptr, ciphertext.data(),
                                                ciphertext.size(), ad.data(), ad.size(), nonce,
                                                k_.data()) != 0) {
    out.resize(at);
    throw ProtocolError(ErrorCode::authentication_failed, "message failed authentication");
  }
  ++n_;
}

void CipherState::encrypt_to(const std::uint8_t* plaintext, std::size_t plaintext_len,
                             std::uint8_t* data) {
  COHORT_CHECK(has_key_);
  if (n_ == kMaxNonce) throw ProtocolError(ErrorCode::nonce_exhausted, "cipher state nonce limit");
  std::uint8_t nonce[12];
  make_nonce(n_, nonce);
  unsigned long long maclen = 0;
  crypto_aead_chacha20poly1305_ietf_encrypt_detached(data, data + plaintext_len, &maclen, plaintext,
                                                     plaintext_len, nullptr, 0, nullptr, nonce,
                                                     k_.data());
  ++n_;
}

std::size_t CipherState::decrypt_to(const std::uint8_t* data, std::size_t ciphertext_len,
                                    std::uint8_t* plaintext) {
  COHORT_CHECK(has_key_);
  if (n_ == kMaxNonce) throw ProtocolError(ErrorCode::nonce_exhausted, "cipher state nonce limit");
  if (ciphertext_len < kTagLen) {
    throw ProtocolError(ErrorCode::authentication_failed, "transport message shorter than its tag");
  }
  const std::size_t len = ciphertext_len - kTagLen;
  std::uint8_t nonce[12];
  make_nonce(n_, nonce);
  if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(plaintext, nullptr, data, len, data + len,
                                                         nullptr, 0, nonce, k_.data()) != 0) {
    throw ProtocolError(ErrorCode::authentication_failed,
                        "transport message failed authentication (tampered, replayed, reordered "
                        "or truncated)");
  }
  ++n_;
  return len;
}

void CipherState::rekey() {
  COHORT_CHECK(has_key_);
  std::uint8_t zeros[kKeyLen + kTagLen] = {};
  std::uint8_t out[kKeyLen + kTagLen];
  std::uint8_t nonce[12];
  make_nonce(kMaxNonce, nonce);
  unsigned long long clen = 0;
  crypto_aead_chacha20poly1305_ietf_encrypt(out, &clen, zeros, kKeyLen, nullptr, 0, nullptr, nonce,
                                            k_.data());
  std::memcpy(k_.data(), out, kKeyLen);
  sodium_memzero(out, sizeof out);
}

// ---------------------------------------------------------------------------------------------

Hash hash(ByteView a, ByteView b) {
  ensure_sodium();
  crypto_generichash_blake2b_state st;
  crypto_generichash_blake2b_init(&st, nullptr, 0, kHashLen);
  crypto_generichash_blake2b_update(&st, a.data(), a.size());
  if (!b.empty()) crypto_generichash_blake2b_update(&st, b.data(), b.size());
  Hash out;
  crypto_generichash_blake2b_final(&st, out.data(), out.size());
  return out;
}

Hash hmac(ByteView key, ByteView data) {
  COHORT_CHECK(key.size() <= kBlockLen);
  std::uint8_t ipad[kBlockLen], opad[kBlockLen];
  for (std::size_t i = 0; i < kBlockLen; ++i) {
    const std::uint8_t k = i < key.size() ? key[i] : 0;
    ipad[i] = k ^ 0x36;
    opad[i] = k ^ 0x5c;
  }
  const Hash inner = hash(ByteView(ipad, kBlockLen), data);
  Hash out = hash(ByteView(opad, kBlockLen), inner);
  sodium_memzero(ipad, sizeof ipad);
  sodium_memzero(opad, sizeof opad);
  return out;
}

void hkdf(ByteView chaining_key, ByteView ikm, Hash& out1, Hash& out2, Hash* out3) {
  Hash temp = hmac(chaining_key, ikm);
  const std::uint8_t one = 0x01;
  out1 = hmac(temp, ByteView(&one, 1));
  std::uint8_t buf[kHashLen + 1];
  std::memcpy(buf, out1.data(), kHashLen);
  buf[kHashLen] = 0x02;
  out2 = hmac(temp, ByteView(buf, sizeof buf));
  if (out3) {
    std::memcpy(buf, out2.data(), kHashLen);
    buf[kHashLen] = 0x03;
    *out3 = hmac(temp, ByteView(buf, sizeof buf));
  }
  sodium_memzero(buf, sizeof buf);
  sodium_memzero(temp.data(), temp.size());
}

// ---------------------------------------------------------------------------------------------

SymmetricState::SymmetricState(std::string_view protocol_name) {
  ensure_sodium();
  if (protocol_name.size() <= kHashLen) {
    h_.fill(0);
    std::memcpy(h_.data(), protocol_name.data(), protocol_name.size());
  } else {
    h_ = hash(as_bytes(protocol_name));
  }
  ck_ = h_;
}

void SymmetricState::mix_key(ByteView ikm) {
  Hash temp_k;
  hkdf(ck_, ikm, ck_, temp_k);
  Key k;
  std::memcpy(k.data(), temp_k.data(), kKeyLen);
  cipher_.initialize_key(k);
  sodium_memzero(temp_k.data(), temp_k.size());
  sodium_memzero(k.data(), k.size());
}

void SymmetricState::mix_hash(ByteView data) { h_ = hash(h_, data); }

void SymmetricState::encrypt_and_hash(ByteView plaintext, Bytes& out) {
  const std::size_t at = out.size();
  cipher_.encrypt_with_ad(h_, plaintext, out);
  mix_hash(ByteView(out.data() + at, out.size() - at));
}

void SymmetricState::decrypt_and_hash(ByteView ciphertext, Bytes& out) {
  cipher_.decrypt_with_ad(h_, ciphertext, out);
  mix_hash(ciphertext);
}

std::pair<CipherState, CipherState> SymmetricState::split() const {
  Hash t1, t2;
  hkdf(ck_, {}, t1, t2);
  Key k1, k2;
  std::memcpy(k1.data(), t1.data(), kKeyLen);
  std::memcpy(k2.data(), t2.data(), kKeyLen);
  std::pair<CipherState, CipherState> out{CipherState(k1), CipherState(k2)};
  sodium_memzero(t1.data(), t1.size());
  sodium_memzero(t2.data(), t2.size());
  sodium_memzero(k1.data(), k1.size());
  sodium_memzero(k2.data(), k2.size());
  return out;
}

// ---------------------------------------------------------------------------------------------

namespace {

struct PatternSpec {
  HandshakePattern pattern;
  const char* name;
  bool initiator_pre_s;  // -> s
  bool responder_pre_s;  // <- s
  const char* messages;  // tokens, messages separated by '|'; direction alternates from ->
};

// Section 7.4 (one-way) and 7.5 (interactive).
constexpr PatternSpec kPatterns[] = {
    {HandshakePattern::n, "N", false, true, "e es"},
    {HandshakePattern::k, "K", true, true, "e es ss"},
    {HandshakePattern::x, "X", false, true, "e es s ss"},
    {HandshakePattern::nn, "NN", false, false, "e|e ee"},
    {HandshakePattern::nk, "NK", false, true, "e es|e ee"},
    {HandshakePattern::nx, "NX", false, false, "e|e ee s es"},
    {HandshakePattern::kn, "KN", true, false, "e|e ee se"},
    {HandshakePattern::kk, "KK", true, true, "e es ss|e ee se"},
    {HandshakePattern::kx, "KX", true, false, "e|e ee se s es"},
    {HandshakePattern::xn, "XN", false, false, "e|e ee|s se"},
    {HandshakePattern::xk, "XK", false, true, "e es|e ee|s se"},
    {HandshakePattern::xx, "XX", false, false, "e|e ee s es|s se"},
    {HandshakePattern::in, "IN", false, false, "e s|e ee se"},
    {HandshakePattern::ik, "IK", false, true, "e es s ss|e ee se"},
    {HandshakePattern::ix, "IX", false, false, "e s|e ee se s es"},
};

const PatternSpec& spec_of(HandshakePattern p) {
  for (const auto& s : kPatterns)
    if (s.pattern == p) return s;
  COHORT_CHECK(false, "unknown handshake pattern");
  __builtin_unreachable();
}

}  // namespace

std::optional<HandshakePattern> pattern_from_name(std::string_view name) {
  for (const auto& s : kPatterns)
    if (name == s.name) return s.pattern;
  return std::nullopt;
}

std::string protocol_name(HandshakePattern pattern) {
  return std::string("Noise_") + spec_of(pattern).name + "_25519_ChaChaPoly_BLAKE2b";
}

HandshakeState::HandshakeState(HandshakePattern pattern, bool initiator, ByteView prologue,
                               HandshakeKeys keys)
    : symmetric_(protocol_name(pattern)),
      initiator_(initiator),
      s_(std::move(keys.s)),
      e_(std::move(keys.e)),
      rs_(keys.rs) {
  const PatternSpec& spec = spec_of(pattern);
  std::string_view text = spec.messages;
  std::vector<Token> current;
  std::size_t i = 0;
  while (i <= text.size()) {
    std::size_t j = i;
    while (j < text.size() && text[j] != ' ' && text[j] != '|') ++j;
    const std::string_view tok = text.substr(i, j - i);
    if (tok == "e") current.push_back(Token::e);
    else if (tok == "s") current.push_back(Token::s);
    else if (tok == "ee") current.push_back(Token::ee);
    else if (tok == "es") current.push_back(Token::es);
    else if (tok == "se") current.push_back(Token::se);
    else if (tok == "ss") current.push_back(Token::ss);
    if (j >= text.size() || text[j] == '|') {
      messages_.push_back(std::move(current));
      current.clear();
    }
    i = j + 1;
  }

  symmetric_.mix_hash(prologue);
  // Pre-messages: the initiator's first, then the responder's (section 7.1).
  auto pre = [&](bool ours) {
    if (ours) {
      if (!s_) throw ProtocolError(ErrorCode::handshake_failed, "pattern needs a local static key");
      symmetric_.mix_hash(s_->public_key);
    } else {
      if (!rs_) throw ProtocolError(ErrorCode::handshake_failed, "pattern needs the remote static key");
      symmetric_.mix_hash(*rs_);
    }
  };
  if (spec.initiator_pre_s) pre(initiator_);
  if (spec.responder_pre_s) pre(!initiator_);
}

bool HandshakeState::finished() const { return next_ >= messages_.size(); }

bool HandshakeState::my_turn() const {
  return !finished() && ((next_ % 2 == 0) == initiator_);
}

void HandshakeState::dh_mix(Token token) {
  auto need = [](bool ok, const char* what) {
    if (!ok) throw ProtocolError(ErrorCode::handshake_failed, std::string("missing ") + what);
  };
  PublicKey shared{};
  switch (token) {
    case Token::ee:
      need(e_ && re_, "ephemeral keys");
      shared = dh(*e_, *re_);
      break;
    case Token::ss:
      need(s_ && rs_, "static keys");
      shared = dh(*s_, *rs_);
      break;
    case Token::es:  // initiator's ephemeral with responder's static
      if (initiator_) {
        need(e_ && rs_, "keys for es");
        shared = dh(*e_, *rs_);
      } else {
        need(s_ && re_, "keys for es");
        shared = dh(*s_, *re_);
      }
      break;
    case Token::se:  // initiator's static with responder's ephemeral
      if (initiator_) {
        need(s_ && re_, "keys for se");
        shared = dh(*s_, *re_);
      } else {
        need(e_ && rs_, "keys for se");
        shared = dh(*e_, *rs_);
      }
      break;
    default:
      COHORT_CHECK(false, "not a DH token");
  }
  symmetric_.mix_key(shared);
  sodium_memzero(shared.data(), shared.size());
}

Bytes HandshakeState::write_message(ByteView payload) {
  if (!my_turn()) throw ProtocolError(ErrorCode::handshake_failed, "not our turn to write");
  Bytes out;
  for (Token t : messages_[next_]) {
    if (t == Token::e) {
      if (!e_) e_ = KeyPair::generate();
      out.insert(out.end(), e_->public_key.begin(), e_->public_key.end());
      symmetric_.mix_hash(e_->public_key);
    } else if (t == Token::s) {
      if (!s_) throw ProtocolError(ErrorCode::handshake_failed, "pattern needs a local static key");
      symmetric_.encrypt_and_hash(s_->public_key, out);
    } else {
      dh_mix(t);
    }
  }
  symmetric_.encrypt_and_hash(payload, out);
  if (out.size() > kMaxMessageLen) {
    throw ProtocolError(ErrorCode::message_too_large, "handshake message over 65535 bytes");
  }
  ++next_;
  return out;
}

Bytes HandshakeState::read_message(ByteView message) {
  if (finished() || my_turn()) throw ProtocolError(ErrorCode::handshake_failed, "not our turn to read");
  if (message.size() > kMaxMessageLen) {
    throw ProtocolError(ErrorCode::message_too_large, "handshake message over 65535 bytes");
  }
  std::size_t pos = 0;
  auto take = [&](std::size_t n) {
    if (message.size() - pos < n) {
      throw ProtocolError(ErrorCode::handshake_failed, "handshake message too short");
    }
    ByteView v = message.subspan(pos, n);
    pos += n;
    return v;
  };
  for (Token t : messages_[next_]) {
    if (t == Token::e) {
      ByteView v = take(kDhLen);
      PublicKey re;
      std::memcpy(re.data(), v.data(), kDhLen);
      re_ = re;
      symmetric_.mix_hash(v);
    } else if (t == Token::s) {
      ByteView v = take(symmetric_.has_key() ? kDhLen + kTagLen : kDhLen);
      Bytes plain;
      try {
        symmetric_.decrypt_and_hash(v, plain);
      } catch (const ProtocolError&) {
        throw ProtocolError(ErrorCode::handshake_failed, "peer's static key failed to decrypt");
      }
      PublicKey rs;
      std::memcpy(rs.data(), plain.data(), kDhLen);
      rs_ = rs;
    } else {
      dh_mix(t);
    }
  }
  Bytes payload;
  try {
    symmetric_.decrypt_and_hash(message.subspan(pos), payload);
  } catch (const ProtocolError&) {
    throw ProtocolError(ErrorCode::handshake_failed, "handshake payload failed to authenticate");
  }
  ++next_;
  return payload;
}

std::pair<CipherState, CipherState> HandshakeState::split() const {
  COHORT_CHECK(finished(), "split() before the handshake finished");
  auto [c1, c2] = symmetric_.split();
  if (initiator_) return {std::move(c1), std::move(c2)};
  return {std::move(c2), std::move(c1)};
}

}  // namespace cohort::protocol::noise
