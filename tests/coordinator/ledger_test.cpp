// The ledger (coordinator/ledger.h) on a real SQLite file: a transaction left by an exception
// rolls back and the next one commits; misbehaviour is counted by the one shared definition.
#include "coordinator/ledger.h"

#include <gtest/gtest.h>
#include <unistd.h>

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

}  // namespace
}  // namespace cohort::coordinator
