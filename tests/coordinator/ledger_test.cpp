// The ledger (coordinator/ledger.h) on a real SQLite file: a transaction left by an exception
// rolls back and the next one commits; misbehaviour is counted by the one shared definition;
// credit counts only accepted work, and a ledger written before credits and the KL column opens
// (its updates earn no credit, its steps read KL 0).
#include "coordinator/ledger.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <stdexcept>

namespace cohort::coordinator {
namespace {

namespace fs = std::filesystem;

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("cohort-ledger-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }

  static UpdateRecord update(const std::string& peer, uint64_t seq, bool accepted,
                             const std::string& reason) {
    UpdateRecord u;
    u.peer = peer;
    u.sequence = seq;
    u.lease_id = "s1-" + std::to_string(seq);
    u.step = 1;
    u.digest = std::string(32, static_cast<char>(seq));
    u.accepted = accepted;
    u.reason = reason;
    u.body = accepted ? "body" : "";
    return u;
  }

  fs::path dir;
};

TEST_F(LedgerTest, ThrowMidUpdateRollsBackAndTheNextUpdateCommits) {
  Ledger ledger((dir / "ledger.sqlite").string());
  try {
    Ledger::Transaction tx(ledger);
    ledger.record_update(update("aa", 1, true, "ok"));
    throw std::runtime_error("disk full while closing the lease");
  } catch (const std::runtime_error&) {
  }
  EXPECT_TRUE(ledger.accepted_digests().empty());  // rolled back
  {
    Ledger::Transaction tx(ledger);  // a stale open transaction would make this BEGIN fail
    ledger.record_update(update("aa", 2, true, "ok"));
    tx.commit();
  }
  const auto seen = ledger.accepted_digests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].sequence, 2u);
  // Durable: a second connection sees it.
  Ledger again((dir / "ledger.sqlite").string());
  EXPECT_EQ(again.accepted_digests().size(), 1u);
}

TEST_F(LedgerTest, MisbehaviourCountsOnlyTheSharedReasons) {
  Ledger ledger((dir / "ledger.sqlite").string());
  ledger.record_update(update("aa", 1, false, "bad_reward"));
  ledger.record_update(update("aa", 2, false, "malformed"));
  ledger.record_update(update("aa", 3, false, "stale"));
  ledger.record_update(update("aa", 4, false, "lease_expired"));
  ledger.record_update(update("bb", 5, false, "recompute_mismatch"));
  ledger.record_update(update("bb", 6, true, "ok"));
  const auto counts = ledger.misbehaviour_counts();
  EXPECT_EQ(counts.at("aa"), 2);
  EXPECT_EQ(counts.at("bb"), 1);
}

// The trust streak after a restart: accepted updates since the last refusal for misbehaviour;
// refusals that are not misbehaviour (stale, expired) do not end it.
TEST_F(LedgerTest, TrustStreaksCountAcceptedUpdatesSinceTheLastMisbehaviour) {
  Ledger ledger((dir / "ledger.sqlite").string());
  ledger.record_update(update("aa", 1, true, "ok"));
  ledger.record_update(update("aa", 2, false, "recompute_mismatch"));
  ledger.record_update(update("aa", 3, true, "ok"));
  ledger.record_update(update("aa", 4, false, "lease_expired"));
  ledger.record_update(update("aa", 5, true, "ok"));
  ledger.record_update(update("bb", 6, true, "ok"));
  ledger.record_update(update("bb", 7, true, "ok"));
  ledger.record_update(update("cc", 8, false, "not_sampled"));
  const auto streaks = ledger.trust_streaks();
  EXPECT_EQ(streaks.at("aa"), 2);
  EXPECT_EQ(streaks.at("bb"), 2);
  EXPECT_EQ(streaks.at("cc"), 0);
}

TEST_F(LedgerTest, CreditCountsOnlyAcceptedWorkPerPeerAndPerStep) {
  Ledger ledger((dir / "ledger.sqlite").string());
  ledger.record_peer("aa", "alice", "{}", 1000);
  ledger.record_peer("bb", "bob", "{}", 1000);
  auto with = [](UpdateRecord u, double tokens, int64_t groups, int64_t sequences, int64_t bytes,
                 int64_t at_ms) {
    u.completion_tokens = tokens;
    u.groups = groups;
    u.sequences = sequences;
    u.bytes = bytes;
    u.received_ms = at_ms;
    return u;
  };
  ledger.record_update(with(update("aa", 1, true, "ok"), 120, 2, 16, 1000, 5000));
  ledger.record_update(with(update("aa", 2, true, "ok"), 80, 1, 8, 500, 7000));
  // Refused work earns nothing, whatever it claimed.
  ledger.record_update(with(update("aa", 3, false, "bad_reward"), 999, 9, 72, 9000, 8000));
  ledger.record_update(with(update("bb", 4, false, "superseded"), 64, 1, 8, 400, 6000));
  ledger.record_step({.step = 1, .version = 1, .units = 24, .updates = 2});

  const auto j = nlohmann::json::parse(ledger.status_json());
  const auto& a = j["peers"]["aa"];
  EXPECT_EQ(a["credit_tokens"].get<double>(), 200.0);
  EXPECT_EQ(a["credit_groups"].get<int64_t>(), 3);
  EXPECT_EQ(a["accepted"].get<int64_t>(), 2);
  EXPECT_EQ(a["refused"].get<int64_t>(), 1);
  EXPECT_EQ(a["refused_reasons"]["bad_reward"].get<int64_t>(), 1);
  EXPECT_EQ(a["last_seen_ms"].get<int64_t>(), 8000);  // its last update, after its join
  const auto& b = j["peers"]["bb"];
  EXPECT_EQ(b["credit_tokens"].get<double>(), 0.0);
  EXPECT_EQ(b["credit_groups"].get<int64_t>(), 0);
  EXPECT_EQ(b["refused_reasons"]["superseded"].get<int64_t>(), 1);
  EXPECT_EQ(j["credits"]["tokens"].get<double>(), 200.0);
  EXPECT_EQ(j["credits"]["groups"].get<int64_t>(), 3);
  // Step 1's accepted updates: 200 completion tokens over 24 sequences, 1,500 bytes.
  ASSERT_EQ(j["steps"].size(), 1u);
  EXPECT_DOUBLE_EQ(j["steps"][0]["completion_len"].get<double>(), 200.0 / 24.0);
  EXPECT_EQ(j["steps"][0]["bytes_up"].get<int64_t>(), 1500);
}

TEST_F(LedgerTest, ALedgerFromBeforeCreditsOpensAndItsUpdatesEarnNone) {
  const std::string path = (dir / "ledger.sqlite").string();
  {  // the updates table as the previous release wrote it
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TABLE updates(id INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT, "
                           "sequence INTEGER, lease_id TEXT, step INTEGER, policy_version INTEGER, "
                           "digest BLOB, accepted INTEGER, reason TEXT, detail TEXT, units REAL, "
                           "tokens REAL, sequences INTEGER, reward_mean REAL, accuracy REAL, "
                           "bytes INTEGER, received_ms INTEGER, body BLOB, signature BLOB, stream BLOB);"
                           "CREATE TABLE steps(step INTEGER PRIMARY KEY, version INTEGER, units REAL, "
                           "updates INTEGER, reward_mean REAL, accuracy REAL, loss REAL, grad_norm REAL, "
                           "aggregate_s REAL, optimizer_s REAL, publish_s REAL, applied_ms INTEGER);"
                           "INSERT INTO steps(step, version, units, updates) VALUES(1, 1, 8, 1);"
                           "INSERT INTO updates(peer,sequence,accepted,reason,sequences,bytes) "
                           "VALUES('aa',1,1,'ok',8,100);",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  Ledger ledger(path);
  UpdateRecord u = update("aa", 2, true, "ok");
  u.completion_tokens = 50;
  u.groups = 1;
  ledger.record_update(u);
  const auto j = nlohmann::json::parse(ledger.status_json());
  EXPECT_EQ(j["peers"]["aa"]["accepted"].get<int64_t>(), 2);
  EXPECT_EQ(j["peers"]["aa"]["credit_tokens"].get<double>(), 50.0);
  EXPECT_EQ(j["peers"]["aa"]["credit_groups"].get<int64_t>(), 1);
  // Steps recorded before the KL term read back with KL 0; new ones keep theirs.
  ledger.record_step({.step = 2, .version = 2, .units = 8, .updates = 1, .kl = 0.125});
  const auto steps = ledger.steps();
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0].kl, 0.0);
  EXPECT_EQ(steps[1].kl, 0.125);
}

}  // namespace
}  // namespace cohort::coordinator
