// The public Noise test vectors (cacophony) for 25519_ChaChaPoly_BLAKE2b: every handshake and
// transport ciphertext and the handshake hash must match byte for byte, on both sides.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <string>

#include "protocol/error.h"
#include "protocol/noise.h"

#include <sodium.h>

namespace cohort::protocol::noise {
namespace {

Bytes hex(const nlohmann::json& v) {
  auto b = from_hex(v.get<std::string>());
  EXPECT_TRUE(b.has_value());
  return b.value_or(Bytes{});
}

PublicKey key32(const nlohmann::json& v) {
  const Bytes b = hex(v);
  PublicKey k{};
  EXPECT_EQ(b.size(), 32u);
  std::copy_n(b.begin(), std::min<std::size_t>(32, b.size()), k.begin());
  return k;
}

HandshakeKeys keys_for(const nlohmann::json& v, const std::string& side) {
  HandshakeKeys k;
  if (v.contains(side + "_static")) k.s = KeyPair::from_secret(hex(v[side + "_static"]));
  if (v.contains(side + "_ephemeral")) k.e = KeyPair::from_secret(hex(v[side + "_ephemeral"]));
  if (v.contains(side + "_remote_static")) k.rs = key32(v[side + "_remote_static"]);
  return k;
}

nlohmann::json load_vectors() {
  std::ifstream in(COHORT_NOISE_VECTORS);
  if (!in) {
    ADD_FAILURE() << "Noise test vectors not found at " << COHORT_NOISE_VECTORS
                  << " (expected tests/protocol/vectors in the source tree; override with "
                     "-DCOHORT_NOISE_VECTORS=/path/to/noise-25519-chachapoly-blake2b.json)";
    return {};
  }
  return nlohmann::json::parse(in);
}

// Runs one vector, recording a failure for every byte that does not match.
void run_vector(const nlohmann::json& v, HandshakePattern pattern) {
  const bool one_way = pattern == HandshakePattern::n || pattern == HandshakePattern::k ||
                       pattern == HandshakePattern::x;
  HandshakeState init(pattern, true, hex(v["init_prologue"]), keys_for(v, "init"));
  HandshakeState resp(pattern, false, hex(v["resp_prologue"]), keys_for(v, "resp"));

  std::optional<std::pair<CipherState, CipherState>> ic, rc;  // (send, receive)
  std::size_t i = 0;
  for (const auto& m : v["messages"]) {
    const Bytes payload = hex(m["payload"]);
    const Bytes expected = hex(m["ciphertext"]);
    const bool from_initiator = one_way || i % 2 == 0;
    SCOPED_TRACE("message " + std::to_string(i));
    if (!init.finished() || !resp.finished()) {
      HandshakeState& w = from_initiator ? init : resp;
      HandshakeState& r = from_initiator ? resp : init;
      const Bytes ct = w.write_message(payload);
      EXPECT_EQ(to_hex(ct), to_hex(expected));
      EXPECT_EQ(to_hex(r.read_message(ct)), to_hex(payload));
      if (init.finished() && resp.finished()) {
        EXPECT_EQ(to_hex(init.handshake_hash()), v["handshake_hash"].get<std::string>());
        EXPECT_EQ(to_hex(resp.handshake_hash()), v["handshake_hash"].get<std::string>());
        ic.emplace(init.split());
        rc.emplace(resp.split());
      }
    } else {
      CipherState& send = from_initiator ? ic->first : rc->first;
      CipherState& recv = from_initiator ? rc->second : ic->second;
      Bytes ct, pt;
      send.encrypt_with_ad({}, payload, ct);
      EXPECT_EQ(to_hex(ct), to_hex(expected));
      recv.decrypt_with_ad({}, ct, pt);
      EXPECT_EQ(to_hex(pt), to_hex(payload));
    }
    ++i;
  }
  EXPECT_TRUE(ic.has_value()) << "handshake never finished";
}

TEST(NoiseVectors, EveryXXAndNNVectorAndEveryOtherSupportedPatternMatches) {
  const nlohmann::json doc = load_vectors();
  ASSERT_TRUE(doc.contains("vectors")) << "vector file has no 'vectors' array";
  std::set<std::string> passed;
  for (const auto& v : doc["vectors"]) {
    const std::string name = v["protocol_name"];
    const std::string prefix = "Noise_", suffix = "_25519_ChaChaPoly_BLAKE2b";
    ASSERT_TRUE(name.rfind(prefix, 0) == 0 && name.size() > prefix.size() + suffix.size());
    const auto pattern = pattern_from_name(name.substr(prefix.size(), name.size() - prefix.size() - suffix.size()));
    if (!pattern) continue;  // PSK and deferred patterns: not implemented
    ASSERT_EQ(protocol_name(*pattern), name);
    SCOPED_TRACE(name);
    const int before = ::testing::UnitTest::GetInstance()->current_test_info()->result()->total_part_count();
    run_vector(v, *pattern);
    if (::testing::UnitTest::GetInstance()->current_test_info()->result()->total_part_count() == before) {
      passed.insert(name);
    }
  }
  EXPECT_TRUE(passed.contains("Noise_XX_25519_ChaChaPoly_BLAKE2b"));
  EXPECT_TRUE(passed.contains("Noise_NN_25519_ChaChaPoly_BLAKE2b"));
  EXPECT_EQ(passed.size(), 15u) << "all 15 fundamental patterns should have vectors and pass";
}

TEST(NoiseCipherState, RekeyMatchesTheSpecDefinition) {
  // REKEY(k) = first 32 bytes of ENCRYPT(k, 2^64-1, "", zeros[32]) (section 4.2); the nonce is
  // untouched. Reference computed straight from libsodium.
  Key k{};
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(i * 7 + 1);
  std::uint8_t nonce[12] = {0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  std::uint8_t zeros[32] = {}, out[48];
  unsigned long long len = 0;
  crypto_aead_chacha20poly1305_ietf_encrypt(out, &len, zeros, 32, nullptr, 0, nullptr, nonce, k.data());
  Key expected;
  std::copy_n(out, 32, expected.begin());

  CipherState rekeyed(k), reference(expected);
  rekeyed.set_nonce(5);
  reference.set_nonce(5);
  rekeyed.rekey();
  EXPECT_EQ(rekeyed.nonce(), 5u);
  const Bytes msg = {1, 2, 3, 4, 5};
  Bytes a, b;
  rekeyed.encrypt_with_ad({}, msg, a);
  reference.encrypt_with_ad({}, msg, b);
  EXPECT_EQ(a, b);
}

TEST(NoiseCipherState, RefusesTheReservedNonce) {
  CipherState c(Key{});
  c.set_nonce(kMaxNonce);
  Bytes out;
  EXPECT_THROW(c.encrypt_with_ad({}, Bytes(4), out), cohort::Error);
}

}  // namespace
}  // namespace cohort::protocol::noise
