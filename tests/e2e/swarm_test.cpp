// `cohort bench swarm` as `make test` runs it: a real coordinator process and 50 simulated peers in
// another process, each with its own key and Noise channel over loopback TCP, for a few seconds.
// Every update a simulated peer sent was accepted or refused with a documented reason, every peer
// joined, and the round advanced.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "tools/local_cluster.h"

namespace cohort {
namespace {

namespace fs = std::filesystem;

TEST(Swarm, FiftySimulatedPeersAllUpdatesAnsweredAndTheRoundAdvances) {
  const fs::path dir = fs::temp_directory_path() / ("cohort-swarm-test-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string out = (dir / "swarm.json").string();
  tools::Subprocess bench = tools::Subprocess::spawn(
      {COHORT_BIN, "bench", "swarm", "--peers", "50", "--seconds", "8", "--think-s", "0.5",
       "--idle-s", "1", "--ledger-sync", "normal", "--dir", (dir / "run").string(), "--json-out", out},
      (dir / "bench.log").string());
  ASSERT_EQ(bench.wait(240), 0) << "see " << dir / "bench.log";
  std::ifstream in(out);
  ASSERT_TRUE(in) << "no report in " << out;
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["joined"], 50);
  EXPECT_EQ(j["connected_idle"], 50);
  EXPECT_EQ(j["disconnected"], 0) << j["session_errors"].dump();
  // Every update sent got an Ack: accepted, or refused with a reason docs/OPERATOR.md lists. Honest
  // simulated peers on a loopback round should be refused for nothing but a lease that ran out.
  const std::set<std::string> documented = {"ACK_STALE", "ACK_LEASE_EXPIRED"};
  int64_t refused = 0;
  for (const auto& [reason, n] : j["refusals"].items()) {
    EXPECT_TRUE(documented.count(reason)) << reason << " x" << n;
    refused += n.get<int64_t>();
  }
  EXPECT_GT(j["updates_sent"].get<int64_t>(), 100);
  EXPECT_EQ(j["accepted"].get<int64_t>() + refused, j["updates_sent"].get<int64_t>());
  EXPECT_GE(j["versions"].get<int64_t>(), 2);  // steps were applied while the swarm worked
  EXPECT_GT(j["manifests"].get<int64_t>(), 0);
  EXPECT_GT(j["lease_p50_ms"].get<double>(), 0);
  EXPECT_GT(j["coordinator_rss_idle_mb"].get<double>(), 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace cohort
