// The example transcript of docs/PROTOCOL.md (tests/protocol/vectors/cohort-v1-transcript.json):
// a whole version-1 connection built from the specification's primitives with fixed keys — the
// bytes an independent implementation must reproduce. The channel itself is held to the same
// rules by channel_test.cpp, whose raw peers speak this format to the real Server.
// COHORT_WRITE_TRANSCRIPT=1 rewrites the file (only when the wire format changes on purpose).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>

#include "protocol/framing.h"
#include "protocol/identity.h"
#include "protocol/messages.pb.h"
#include "protocol/signed_update.h"
#include "protocol/tensor_codec.h"

namespace cohort::protocol {
namespace {

Bytes framed(const Bytes& m) {
  Bytes out(2 + m.size());
  out[0] = static_cast<std::uint8_t>(m.size() >> 8);
  out[1] = static_cast<std::uint8_t>(m.size());
  std::copy(m.begin(), m.end(), out.begin() + 2);
  return out;
}

nlohmann::ordered_json build_transcript() {
  nlohmann::ordered_json t;
  const Identity init_id = Identity::from_seed(Bytes(32, 0x01));
  const Identity resp_id = Identity::from_seed(Bytes(32, 0x02));
  const auto init_s = noise::KeyPair::from_secret(Bytes(32, 0x11));
  const auto init_e = noise::KeyPair::from_secret(Bytes(32, 0x12));
  const auto resp_s = noise::KeyPair::from_secret(Bytes(32, 0x21));
  const auto resp_e = noise::KeyPair::from_secret(Bytes(32, 0x22));
  t["inputs"] = {
      {"initiator_ed25519_seed", to_hex(Bytes(32, 0x01))},
      {"responder_ed25519_seed", to_hex(Bytes(32, 0x02))},
      {"initiator_static_x25519", to_hex(Bytes(32, 0x11))},
      {"initiator_ephemeral_x25519", to_hex(Bytes(32, 0x12))},
      {"responder_static_x25519", to_hex(Bytes(32, 0x21))},
      {"responder_ephemeral_x25519", to_hex(Bytes(32, 0x22))},
  };
  t["initiator_peer_id"] = init_id.id().hex();
  t["responder_peer_id"] = resp_id.id().hex();

  const Bytes pre_i = {'C', 'O', 'H', 'O', 'R', 'T', 1, 1}, pre_r = pre_i;
  Bytes prologue = pre_i;
  prologue.insert(prologue.end(), pre_r.begin(), pre_r.end());
  t["initiator_preamble"] = to_hex(pre_i);
  t["responder_preamble"] = to_hex(pre_r);

  noise::HandshakeState i(noise::HandshakePattern::xx, true, prologue, {.s = init_s, .e = init_e, .rs = {}});
  noise::HandshakeState r(noise::HandshakePattern::xx, false, prologue, {.s = resp_s, .e = resp_e, .rs = {}});
  const Bytes m1 = i.write_message({});
  EXPECT_TRUE(r.read_message(m1).empty());
  const Bytes resp_payload = make_identity_payload(resp_id, resp_s.public_key);
  const Bytes m2 = r.write_message(resp_payload);
  EXPECT_EQ(verify_identity_payload(i.read_message(m2), *i.remote_static()), resp_id.id());
  const Bytes init_payload = make_identity_payload(init_id, init_s.public_key);
  const Bytes m3 = i.write_message(init_payload);
  EXPECT_EQ(verify_identity_payload(r.read_message(m3), *r.remote_static()), init_id.id());
  EXPECT_EQ(i.handshake_hash(), r.handshake_hash());
  t["message1_wire"] = to_hex(framed(m1));
  t["message2_wire"] = to_hex(framed(m2));
  t["message3_wire"] = to_hex(framed(m3));
  t["responder_identity_payload"] = to_hex(resp_payload);
  t["initiator_identity_payload"] = to_hex(init_payload);
  t["handshake_hash"] = to_hex(i.handshake_hash());

  auto [i_send, i_recv] = i.split();
  auto [r_send, r_recv] = r.split();
  FrameSealer r_sealer(std::move(r_send), ChannelLimits{}.rekey_interval);
  FrameSealer i_sealer(std::move(i_send), ChannelLimits{}.rekey_interval);
  Bytes verdict;
  r_sealer.seal(MessageClass::verdict, Bytes{0}, verdict);
  t["verdict_wire"] = to_hex(verdict);
  FrameOpener i_opener(std::move(i_recv), {});
  i_opener.feed(verdict);
  EXPECT_EQ(i_opener.pop()->body, Bytes{0});

  wire::Envelope env;
  env.set_id(1);
  env.mutable_heartbeat()->set_sent_unix_ms(1000);
  env.mutable_heartbeat()->set_status("ok");
  const std::string env_bytes = env.SerializeAsString();
  Bytes first;
  i_sealer.seal(MessageClass::control, as_bytes(env_bytes), first);
  t["first_envelope"] = "Envelope{id: 1, heartbeat{sent_unix_ms: 1000, status: \"ok\"}}";
  t["first_envelope_bytes"] = to_hex(as_bytes(env_bytes));
  t["first_envelope_wire"] = to_hex(first);
  FrameOpener r_opener(std::move(r_recv), {});
  r_opener.feed(first);
  EXPECT_EQ(r_opener.pop()->body, Bytes(env_bytes.begin(), env_bytes.end()));

  wire::GradientUpdate u;
  u.set_round_id("example");
  u.set_lease_id("lease-1");
  u.set_policy_version(3);
  u.set_sequence(1);
  u.set_timestamp_unix_ms(1'700'000'000'000);
  u.set_recipient(resp_id.id().bytes().data(), kPublicKeyLen);
  u.set_units(4);
  const std::vector<std::int64_t> shape = {2};
  const Bytes grad = {0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0};  // F32 {1.0, -2.0}
  *u.add_tensors() = encode_raw("model.norm.weight", wire::DTYPE_F32, shape, grad);
  const wire::SignedUpdate su = sign_update(u, init_id);
  t["update_body"] = to_hex(as_bytes(su.body()));
  t["update_signing_digest"] = to_hex(signing_digest(kUpdateDomain, as_bytes(su.body())));
  t["update_signature"] = to_hex(as_bytes(su.signature()));
  return t;
}

TEST(Transcript, VersionOneConnectionMatchesTheDocumentedVector) {
  const std::string path = COHORT_TRANSCRIPT_VECTOR;
  const nlohmann::ordered_json built = build_transcript();
  if (std::getenv("COHORT_WRITE_TRANSCRIPT")) {
    std::ofstream(path) << built.dump(1) << "\n";
    GTEST_SKIP() << "wrote " << path;
  }
  std::ifstream in(path);
  ASSERT_TRUE(in) << "missing " << path;
  const nlohmann::ordered_json stored = nlohmann::ordered_json::parse(in);
  for (const auto& [key, value] : built.items()) {
    EXPECT_EQ(stored.value(key, nlohmann::ordered_json()), value) << key;
  }
}

}  // namespace
}  // namespace cohort::protocol
