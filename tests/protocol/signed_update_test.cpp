// Signed updates: the signature covers BLAKE2b-256(domain || 0 || exact body bytes); every
// verdict the coordinator can return is provoked here.
#include <gtest/gtest.h>
#include <sodium.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "common/check.h"
#include "protocol/digest.h"
#include "protocol/error.h"
#include "protocol/signed_update.h"
#include "protocol/tensor_codec.h"

namespace cohort::protocol {
namespace {

struct SignedUpdate : ::testing::Test {
  Identity coordinator = Identity::generate();
  Identity node = Identity::generate();
  Identity mallory = Identity::generate();

  wire::GradientUpdate update(std::uint64_t sequence = 7, std::uint64_t version = 10) const {
    wire::GradientUpdate u;
    u.set_round_id("arith-1");
    u.set_lease_id("lease-42");
    u.set_policy_version(version);
    u.set_sequence(sequence);
    u.set_timestamp_unix_ms(1'700'000'000'000);
    u.set_recipient(coordinator.id().bytes().data(), kPublicKeyLen);
    u.set_units(640);
    u.set_sequences(16);
    u.set_tokens(640);
    u.mutable_rewards()->set_mean(0.25);
    u.mutable_rewards()->set_count(16);
    auto* c = u.add_completions();
    c->set_prompt_index(3);
    c->set_completion(1);
    c->set_blake2b(std::string(32, '\x11'));
    std::vector<float> g(256, 0.125f);
    *u.add_tensors() = encode_raw("model.norm.weight", wire::DTYPE_F32, std::vector<std::int64_t>{256},
                                  ByteView(reinterpret_cast<const std::uint8_t*>(g.data()), g.size() * 4));
    return u;
  }
  UpdatePolicy policy(std::uint64_t current = 10, std::uint64_t bound = 2) const {
    return {.recipient = coordinator.id(), .current_version = current, .staleness_bound = bound};
  }
};

// A sealed update: the header is small whatever the gradient, the stream holds completions and
// tensors, and the header binds it by length and an independently computed BLAKE2b-256.
TEST_F(SignedUpdate, SealedUpdateBindsItsStream) {
  const wire::GradientUpdate original = update();
  const SealedUpdate s = seal_update(original, node);
  EXPECT_LT(s.header.body().size(), 200u);
  EXPECT_EQ(s.header.stream_bytes(), s.stream.size());
  wire::GradientUpdate bulk;  // the stream is a GradientUpdate with only the bulk fields
  ASSERT_TRUE(bulk.ParseFromString(s.stream));
  EXPECT_EQ(bulk.completions_size(), 1);
  EXPECT_EQ(bulk.tensors_size(), 1);
  EXPECT_TRUE(bulk.round_id().empty());
  unsigned char d[32];
  crypto_generichash(d, 32, reinterpret_cast<const unsigned char*>(s.stream.data()), s.stream.size(),
                     nullptr, 0);
  const VerifiedUpdate r = verify_update(s.header, policy(), node.id(), s.stream);
  ASSERT_TRUE(r) << r.detail;
  EXPECT_EQ(r.header.stream_blake2b(), std::string(reinterpret_cast<char*>(d), 32));
  wire::GradientUpdate full = decode_update(s.header, s.stream);
  full.clear_stream_bytes();
  full.clear_stream_blake2b();
  wire::GradientUpdate expected = original;
  expected.set_peer(node.id().bytes().data(), kPublicKeyLen);
  EXPECT_EQ(full.SerializeAsString(), expected.SerializeAsString());
}

TEST_F(SignedUpdate, StreamThatIsNotTheSignedOneIsMalformed) {
  const SealedUpdate s = seal_update(update(), node);
  std::string flipped = s.stream;
  flipped[flipped.size() / 2] ^= 1;
  EXPECT_EQ(verify_update(s.header, policy(), node.id(), flipped).verdict, UpdateVerdict::malformed);
  EXPECT_EQ(verify_update(s.header, policy(), node.id(), s.stream.substr(1)).verdict,
            UpdateVerdict::malformed);
  EXPECT_EQ(verify_update(s.header, policy(), node.id()).verdict, UpdateVerdict::malformed);
  wire::SignedUpdate lying = s.header;  // the transport count disagrees with the signed one
  lying.set_stream_bytes(s.stream.size() + 1);
  EXPECT_EQ(verify_update(lying, policy(), node.id(), s.stream).verdict, UpdateVerdict::malformed);
  // A stream re-signed by someone else under the node's header is a bad signature, not a pass.
  wire::SignedUpdate forged = s.header;
  forged.set_signer(mallory.id().bytes().data(), kPublicKeyLen);
  EXPECT_EQ(verify_update(forged, policy(), node.id(), s.stream).verdict,
            UpdateVerdict::bad_signature);
}

TEST_F(SignedUpdate, ValidUpdateVerifiesAgainstAnIndependentDigest) {
  const wire::SignedUpdate su = sign_update(update(), node);
  const VerifiedUpdate r = verify_update(su, policy(), node.id());
  ASSERT_TRUE(r) << r.detail;
  EXPECT_EQ(r.header.sequence(), 7u);
  EXPECT_EQ(*r.signer, node.id());
  EXPECT_EQ(r.header.lease_id(), "lease-42");
  EXPECT_EQ(r.header.tensors_size(), 0) << "verification must not copy the tensors";
  const wire::GradientUpdate full = decode_update(su);
  ASSERT_EQ(full.tensors_size(), 1);
  EXPECT_EQ(full.tensors(0).name(), "model.norm.weight");
  EXPECT_EQ(full.completions_size(), 1);

  // Re-derive what was signed with libsodium alone: BLAKE2b-256("cohort/signed-update/v1" 0x00 body).
  std::string preimage = "cohort/signed-update/v1";
  preimage.push_back('\0');
  preimage += su.body();
  std::uint8_t digest[32];
  crypto_generichash_blake2b(digest, 32, reinterpret_cast<const std::uint8_t*>(preimage.data()),
                             preimage.size(), nullptr, 0);
  EXPECT_EQ(to_hex(ByteView(digest, 32)), to_hex(r.digest));
  EXPECT_EQ(crypto_sign_verify_detached(reinterpret_cast<const std::uint8_t*>(su.signature().data()),
                                        digest, 32, node.id().bytes().data()),
            0);
}

TEST_F(SignedUpdate, SignatureCoversTheExactBytesNotAReserialization) {
  // A repeated scalar field (sequence = 7 again: tag 0x28, varint 7) parses to the same message
  // but re-serializes without the duplicate; the signature must still verify because it covers
  // the received bytes.
  std::string body = [&] {
    auto u = update();
    u.set_peer(node.id().bytes().data(), kPublicKeyLen);
    return u.SerializeAsString();
  }();
  body += std::string("\x28\x07", 2);
  const wire::SignedUpdate su = sign_update_body(body, node);
  const VerifiedUpdate r = verify_update(su, policy());
  ASSERT_TRUE(r) << r.detail;
  EXPECT_NE(decode_update(su).SerializeAsString(), body);
  EXPECT_EQ(r.header.sequence(), 7u);
}

TEST_F(SignedUpdate, OneFlippedBitAnywhereIsRejected) {
  const wire::SignedUpdate good = sign_update(update(), node);
  auto check = [&](wire::SignedUpdate su, const char* field, std::size_t byte) {
    const VerifiedUpdate r = verify_update(su, policy());
    EXPECT_FALSE(r) << field << " byte " << byte;
    EXPECT_TRUE(r.verdict == UpdateVerdict::bad_signature || r.verdict == UpdateVerdict::malformed)
        << field << " byte " << byte << ": " << to_string(r.verdict);
  };
  for (std::size_t i = 0; i < good.body().size(); ++i) {
    wire::SignedUpdate su = good;
    (*su.mutable_body())[i] ^= static_cast<char>(1 << (i % 8));
    check(su, "body", i);
  }
  for (std::size_t i = 0; i < kSignatureLen * 8; ++i) {
    wire::SignedUpdate su = good;
    (*su.mutable_signature())[i / 8] ^= static_cast<char>(1 << (i % 8));
    check(su, "signature", i);
  }
  for (std::size_t i = 0; i < kPublicKeyLen * 8; ++i) {
    wire::SignedUpdate su = good;
    (*su.mutable_signer())[i / 8] ^= static_cast<char>(1 << (i % 8));
    check(su, "signer", i);
  }
}

TEST_F(SignedUpdate, WrongRecipientIsRejected) {
  auto u = update();
  const Identity other_coordinator = Identity::generate();
  u.set_recipient(other_coordinator.id().bytes().data(), kPublicKeyLen);
  const VerifiedUpdate r = verify_update(sign_update(u, node), policy());
  EXPECT_EQ(r.verdict, UpdateVerdict::wrong_recipient);
  EXPECT_EQ(to_ack_reason(r.verdict), wire::ACK_WRONG_RECIPIENT);
}

TEST_F(SignedUpdate, ReplayIsRejectedBySequenceAndByDigest) {
  ReplayGuard guard;
  const VerifiedUpdate first = verify_update(sign_update(update(7), node), policy());
  ASSERT_TRUE(first);
  EXPECT_FALSE(guard.seen(node.id(), 7, first.digest));
  guard.remember(node.id(), 7, first.digest);
  EXPECT_TRUE(guard.seen(node.id(), 7, first.digest));
  // Same peer and sequence, different content.
  auto u = update(7);
  u.set_loss(1.5);
  const VerifiedUpdate same_sequence = verify_update(sign_update(u, node), policy());
  EXPECT_TRUE(guard.seen(node.id(), 7, same_sequence.digest));
  // Sequences strictly increase: a lower one is a replay too, a higher one is not.
  const VerifiedUpdate lower = verify_update(sign_update(update(6), node), policy());
  EXPECT_TRUE(guard.seen(node.id(), 6, lower.digest));
  const VerifiedUpdate higher = verify_update(sign_update(update(8), node), policy());
  EXPECT_FALSE(guard.seen(node.id(), 8, higher.digest));
  // A guard restored from a ledger that only knows the digest.
  ReplayGuard restored;
  restored.remember(node.id(), 999, first.digest);
  EXPECT_TRUE(restored.seen(node.id(), 1000, first.digest));
  // Another peer may use the same sequence number.
  Identity other = Identity::generate();
  const VerifiedUpdate others = verify_update(sign_update(update(7), other), policy());
  EXPECT_FALSE(guard.seen(other.id(), 7, others.digest));
}

TEST_F(SignedUpdate, SignatureByAnotherKeyIsRejected) {
  const wire::SignedUpdate honest = sign_update(update(), node);
  // Mallory re-signs the node's body: the body names the node, the signer is mallory.
  const wire::SignedUpdate resigned = sign_update_body(honest.body(), mallory);
  EXPECT_EQ(verify_update(resigned, policy()).verdict, UpdateVerdict::signer_mismatch);
  // Mallory's signature presented under the node's key.
  wire::SignedUpdate swapped = honest;
  swapped.set_signature(resigned.signature());
  EXPECT_EQ(verify_update(swapped, policy()).verdict, UpdateVerdict::bad_signature);
  // A valid update from mallory arriving on the node's authenticated channel.
  const VerifiedUpdate r = verify_update(sign_update(update(), mallory), policy(), node.id());
  EXPECT_EQ(r.verdict, UpdateVerdict::signer_mismatch);
}

TEST_F(SignedUpdate, StalenessBoundIsEnforced) {
  EXPECT_TRUE(verify_update(sign_update(update(1, 8), node), policy(10, 2)));
  EXPECT_EQ(verify_update(sign_update(update(1, 7), node), policy(10, 2)).verdict, UpdateVerdict::stale);
  EXPECT_EQ(verify_update(sign_update(update(1, 11), node), policy(10, 2)).verdict, UpdateVerdict::stale);
  EXPECT_TRUE(verify_update(sign_update(update(1, 10), node), policy(10, 0)));
}

TEST_F(SignedUpdate, MalformedSizesAreRejectedBeforeVerifying) {
  wire::SignedUpdate su = sign_update(update(), node);
  su.mutable_signer()->pop_back();
  EXPECT_EQ(verify_update(su, policy()).verdict, UpdateVerdict::malformed);
  su = sign_update(update(), node);
  su.mutable_signature()->push_back('\0');
  EXPECT_EQ(verify_update(su, policy()).verdict, UpdateVerdict::malformed);
  // Signed garbage: the signature is fine, the body does not parse.
  const wire::SignedUpdate garbage = sign_update_body(std::string("\xff\xff\xff", 3), node);
  EXPECT_EQ(verify_update(garbage, policy()).verdict, UpdateVerdict::malformed);
}

TEST_F(SignedUpdate, WeightManifestSignatureIsCheckedAgainstThePinnedCoordinator) {
  wire::WeightManifest m;
  m.set_round_id("arith-1");
  m.set_policy_version(3);
  auto* e = m.add_tensors();
  e->set_name("model.norm.weight");
  e->set_dtype(wire::DTYPE_F32);
  e->add_shape(256);
  const Digest d = blake2b_256(Bytes(1024, 0));
  e->set_blake2b(d.data(), d.size());
  const wire::SignedManifest sm = sign_manifest(m, coordinator);
  EXPECT_EQ(verify_manifest(sm, coordinator.id()).policy_version(), 3u);
  EXPECT_THROW((void)verify_manifest(sm, mallory.id()), ProtocolError);
  wire::SignedManifest tampered = sm;
  (*tampered.mutable_body())[3] ^= 1;
  EXPECT_THROW((void)verify_manifest(tampered, coordinator.id()), ProtocolError);
  // A manifest signature is not a valid update signature (domain separation).
  wire::SignedUpdate as_update;
  as_update.set_body(sm.body());
  as_update.set_signer(sm.signer());
  as_update.set_signature(sm.signature());
  EXPECT_EQ(verify_update(as_update, policy()).verdict, UpdateVerdict::bad_signature);
}

// Files a round names (datasets, tokenizers) are compared by BLAKE2b-256 of their bytes, read in
// 1 MiB blocks: the empty file gives RFC 7693's unkeyed BLAKE2b-256 of "", and a file of several
// blocks gives what libsodium computes over the bytes in one call.
TEST(FileDigest, EqualsBlake2bOfTheFileBytes) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("cohort_digest_" + std::to_string(::getpid()))).string();
  std::ofstream(path, std::ios::binary | std::ios::trunc).flush();
  EXPECT_EQ(to_hex(blake2b_256_file(path)),
            "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");
  std::string bytes((5u << 20) / 2 + 17, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 2654435761u) >> 13);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  std::uint8_t want[32];
  crypto_generichash(want, sizeof want, reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(),
                     nullptr, 0);
  const Digest got = blake2b_256_file(path);
  EXPECT_EQ(to_hex(got), to_hex(ByteView(want, sizeof want)));
  std::filesystem::remove(path);
  EXPECT_THROW((void)blake2b_256_file(path), Error);
}

}  // namespace
}  // namespace cohort::protocol
