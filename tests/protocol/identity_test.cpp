// Identities: Ed25519 against RFC 8032, key files (0600, refusal when readable by others),
// peer ids, the handshake identity payload, and `cohort keygen`.
#include <gtest/gtest.h>
#include <CLI/CLI.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "protocol/commands.h"
#include "protocol/error.h"
#include "protocol/identity.h"

namespace cohort::protocol {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/cohort-identity-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

unsigned mode_of(const fs::path& p) {
  struct stat st{};
  EXPECT_EQ(::stat(p.c_str(), &st), 0);
  return st.st_mode & 0777;
}

TEST(Identity, MatchesRfc8032TestVector1) {
  const auto seed = from_hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
  const Identity id = Identity::from_seed(*seed);
  EXPECT_EQ(id.id().hex(), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  const Signature sig = id.sign({});
  EXPECT_EQ(to_hex(sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e3970"
            "1cf9b46bd25bf5f0595bbe24655141438e7a100b");
  EXPECT_TRUE(verify_signature(id.id(), {}, sig));
  Signature bad = sig;
  bad[10] ^= 1;
  EXPECT_FALSE(verify_signature(id.id(), {}, bad));
}

TEST(Identity, KeyFileIsMode0600AndLoadsTheSameIdentity) {
  TempDir dir;
  const Identity id = Identity::generate();
  id.save(dir / "node.key");
  EXPECT_EQ(mode_of(dir / "node.key"), 0600u);
  const Identity loaded = Identity::load(dir / "node.key");
  EXPECT_EQ(loaded.id(), id.id());
  const Bytes msg = {1, 2, 3};
  EXPECT_TRUE(verify_signature(id.id(), msg, loaded.sign(msg)));
}

TEST(Identity, RefusesKeyFileReadableByOthers) {
  TempDir dir;
  Identity::generate().save(dir / "node.key");
  ASSERT_EQ(::chmod((dir / "node.key").c_str(), 0644), 0);
  try {
    (void)Identity::load(dir / "node.key");
    FAIL() << "loaded a world-readable key";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chmod 600"), std::string::npos) << e.what();
  }
}

TEST(Identity, RefusesToOverwriteAnExistingKeyFile) {
  TempDir dir;
  const Identity first = Identity::generate();
  first.save(dir / "node.key");
  EXPECT_THROW(Identity::generate().save(dir / "node.key"), Error);
  EXPECT_EQ(Identity::load(dir / "node.key").id(), first.id());
  const Identity second = Identity::generate();
  second.save(dir / "node.key", /*overwrite=*/true);
  EXPECT_EQ(Identity::load(dir / "node.key").id(), second.id());
}

TEST(Identity, RejectsMissingAndMalformedKeyFiles) {
  TempDir dir;
  EXPECT_THROW((void)Identity::load(dir / "absent.key"), Error);
  {
    std::ofstream(dir / "bad.key") << "ed25519-seed: zz\n";
  }
  ::chmod((dir / "bad.key").c_str(), 0600);
  EXPECT_THROW((void)Identity::load(dir / "bad.key"), Error);
}

TEST(PeerId, ParsesPrintsAndFingerprints) {
  const Identity id = Identity::generate();
  const std::string hex = id.id().hex();
  EXPECT_EQ(hex.size(), 64u);
  EXPECT_EQ(PeerId::parse(hex), id.id());
  EXPECT_EQ(PeerId::parse("  " + hex + "\n"), id.id());
  EXPECT_EQ(id.id().fingerprint(), hex.substr(0, 12));
  EXPECT_THROW((void)PeerId::parse(hex.substr(1)), Error);
  EXPECT_THROW((void)PeerId::parse(std::string(64, 'g')), Error);
}

TEST(IdentityPayload, BindsTheNoiseStaticKeyToTheIdentity) {
  const Identity id = Identity::generate();
  const auto& s = id.noise_static().public_key;
  EXPECT_EQ(id.identity_payload().size(), kIdentityPayloadLen);
  EXPECT_EQ(verify_identity_payload(id.identity_payload(), s), id.id());

  // Another static key: the signature no longer covers it.
  const auto other_static = noise::KeyPair::generate().public_key;
  EXPECT_THROW((void)verify_identity_payload(id.identity_payload(), other_static), ProtocolError);

  // Claiming id's public key with a signature made by someone else.
  const Identity mallory = Identity::generate();
  Bytes forged = make_identity_payload(mallory, s);
  std::copy(id.id().bytes().begin(), id.id().bytes().end(), forged.begin());
  try {
    (void)verify_identity_payload(forged, s);
    FAIL();
  } catch (const ProtocolError& e) {
    EXPECT_EQ(e.code(), ErrorCode::bad_identity_signature);
  }
  Bytes short_payload(id.identity_payload().begin(), id.identity_payload().end() - 1);
  EXPECT_THROW((void)verify_identity_payload(short_payload, s), ProtocolError);
}

TEST(Keygen, WritesA0600KeyFileAndPrintsItsPublicKey) {
  TempDir dir;
  const std::string path = (dir / "coord.key").string();
  CLI::App app;
  add_commands(app);
  const char* argv[] = {"cohort", "keygen", "--out", path.c_str()};
  testing::internal::CaptureStdout();
  app.parse(4, const_cast<char**>(argv));
  std::fflush(stdout);
  const std::string printed = testing::internal::GetCapturedStdout();
  EXPECT_EQ(mode_of(path), 0600u);
  EXPECT_EQ(printed, Identity::load(path).id().hex() + "\n");
}

}  // namespace
}  // namespace cohort::protocol
