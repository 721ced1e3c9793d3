// End-to-end: a real coordinator and real node processes (the `cohort` binary) on loopback,
// real Noise channels, real SQLite ledger and checkpoint files in a temporary folder.
// Proves that the gradient the coordinator applies equals the single-process gradient on the
// same prompts and seeds, that learning happens, and that each fault ends in its documented
// ledger reason while the round still completes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <sstream>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "coordinator/coordinator.h"
#include "coordinator/ledger.h"
#include "tools/local_cluster.h"
#include "coordinator/round_config.h"
#include "exchange/gradient_wire.h"
#include "exchange/param_layout.h"
#include "exchange/seeds.h"
#include "grpo/checkpoint.h"
#include "exchange/round_card.h"
#include "grpo/safetensors.h"
#include "grpo/tokenizer.h"
#include "grpo/trainer.h"
#include "node/weight_sync.h"
#include "protocol/bytes.h"
#include "protocol/digest.h"
#include "protocol/identity.h"
#include "protocol/signed_update.h"
#include "tests/support/tiny_base.h"

namespace cohort::coordinator {
namespace {

namespace fs = std::filesystem;
using tools::Endpoint;
using tools::Subprocess;
using tools::http_get;
using tools::wait_for_endpoint;

// ---------------------------------------------------------------------------------------------
// Helpers

class Db {
 public:
  explicit Db(const std::string& path) {
    EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_busy_timeout(db_, 5000);
  }
  ~Db() { sqlite3_close(db_); }
  std::vector<std::vector<std::string>> rows(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    std::vector<std::vector<std::string>> out;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
      ADD_FAILURE() << sqlite3_errmsg(db_) << " in " << sql;
      return out;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
      std::vector<std::string> r;
      for (int c = 0; c < sqlite3_column_count(st); ++c) {
        auto* t = sqlite3_column_text(st, c);
        r.push_back(t ? reinterpret_cast<const char*>(t) : "");
      }
      out.push_back(std::move(r));
    }
    sqlite3_finalize(st);
    return out;
  }
  int64_t count(const std::string& sql) {
    auto r = rows(sql);
    return r.empty() || r[0].empty() || r[0][0].empty() ? 0 : std::stoll(r[0][0]);
  }

 private:
  sqlite3* db_ = nullptr;
};

struct Round {
  int steps = 3;
  int prompts = 6;
  int group = 4;
  int staleness = 0;
  double lease_timeout = 60;
  double grace = 1;
  int checkpoint_interval = 1;
  int linger = 5;
  std::string codec = "raw";
  double lr = 1e-3;
  bool dump = false;
  std::string listen = "127.0.0.1:0";
  std::vector<std::string> allowlist;
  std::string aggregation = "mean";
  double recompute_fraction = 0;
  int ban_after = 3;
  int eval_every = 0;
  int eval_n = 10;
  int digits = 1;
  bool mask_truncated = false;
  int max_new_tokens = 8;
  int min_peers = 1;
  double idle_timeout = 120;
  std::string policy_dtype;  // "" leaves [model] policy_dtype at its default
  double beta = 0;           // [grpo] beta: the KL term
  bool adaptive_trust = false;
  int trust_after = 10;
  // Validators: [verification] validators, with validator_distinct_address off (every process
  // here connects from 127.0.0.1).
  bool validators = false;
  double validator_check_fraction = 0.1;
  double validator_timeout = 60;
};

class E2E : public ::testing::Test {
 protected:
  // One weak base for the whole suite (tests/support/tiny_base.h).
  static void SetUpTestSuite() {
    shared_ = fs::temp_directory_path() / ("cohort-e2e-base-" + std::to_string(::getpid()));
    fs::remove_all(shared_);
    grpo::Model m(test::tiny_model_config(), 7);
    test::warm_up_tiny_base(m);
    grpo::save_model((shared_ / "base").string(), m);
  }
  static void TearDownTestSuite() { fs::remove_all(shared_); }
  static inline fs::path shared_;

  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("cohort-e2e-" + std::string(info->name()) + "-" +
                                        std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    base_ = (shared_ / "base").string();
  }
  void TearDown() override {
    nodes_.clear();  // SIGKILL + reap whatever still runs
    coord_ = Subprocess();
    if (!HasFailure()) fs::remove_all(dir_);
  }

  std::string data() const { return (dir_ / "round").string(); }
  std::string ledger() const { return ledger_path(data()); }

  std::string write_config(const Round& r) {
    std::ostringstream t;
    t << "[round]\nid = \"e2e\"\nsteps = " << r.steps << "\nprompts_per_step = " << r.prompts
      << "\nstaleness_bound = " << r.staleness << "\nlease_timeout_s = " << r.lease_timeout
      << "\nreconnect_grace_s = " << r.grace << "\ncheckpoint_interval = " << r.checkpoint_interval
      << "\ndata_dir = \"" << data() << "\"\nseed = 5\nlinger_s = " << r.linger
      << "\neval_every = " << r.eval_every << "\neval_n = " << r.eval_n << "\nmin_peers = " << r.min_peers << "\n";
    t << "[network]\nlisten = \"" << r.listen << "\"\nstatus_listen = \"127.0.0.1:0\"\nidle_timeout_s = "
      << r.idle_timeout << "\n";
    if (!r.allowlist.empty()) {
      t << "[admission]\nmode = \"allowlist\"\nallowlist = [";
      for (size_t i = 0; i < r.allowlist.size(); ++i) t << (i ? ", " : "") << '"' << r.allowlist[i] << '"';
      t << "]\n";
    }
    t << "[model]\npath = \"" << base_ << "\"\n";
    if (!r.policy_dtype.empty()) t << "policy_dtype = \"" << r.policy_dtype << "\"\n";
    t << "[task]\nname = \"arith\"\ndigits = " << r.digits << "\n";
    t << "[grpo]\ngroup_size = " << r.group << "\nlr = " << r.lr << "\ngradient_codec = \"" << r.codec
      << "\"\nmask_truncated = " << (r.mask_truncated ? "true" : "false") << "\nbeta = " << r.beta
      << "\n[sampling]\nmax_new_tokens = " << r.max_new_tokens << "\n";
    t << "[aggregation]\nrule = \"" << r.aggregation << "\"\n";
    t << "[verification]\nrecompute_fraction = " << r.recompute_fraction << "\nban_after = " << r.ban_after
      << "\nadaptive_trust = " << (r.adaptive_trust ? "true" : "false") << "\ntrust_after = " << r.trust_after << "\n";
    if (r.validators)
      t << "validators = true\nvalidator_distinct_address = false\nvalidator_check_fraction = "
        << r.validator_check_fraction << "\nvalidator_timeout_s = " << r.validator_timeout << "\n";
    if (r.dump) t << "[debug]\ndump_gradients = true\n";
    const std::string path = (dir_ / "round.toml").string();
    std::ofstream(path) << t.str();
    return path;
  }

  Endpoint start_coordinator(const std::string& config, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {COHORT_BIN, "coordinator", "serve", "--config", config, "--threads", "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    coord_ = Subprocess::spawn(argv, (dir_ / "coordinator.log").string());
    return wait_for_endpoint(data(), 120, coord_.pid());
  }

  std::string key(const std::string& name) {
    const std::string path = (dir_ / (name + ".key")).string();
    if (!fs::exists(path)) protocol::Identity::generate().save(path);
    return path;
  }
  std::string key_hex(const std::string& name) { return protocol::Identity::load(key(name)).id().hex(); }

  Subprocess& start_node(const Endpoint& ep, const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {COHORT_BIN, "node", "run", "--coordinator",
                                     ep.host + ":" + std::to_string(ep.port), "--coordinator-key",
                                     ep.coordinator_key, "--key", key(name), "--name", name,
                                     "--threads", "1", "--give-up-after", "60", "--max-backoff", "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    nodes_.push_back(Subprocess::spawn(argv, (dir_ / (name + ".log")).string()));
    return nodes_.back();
  }

  int wait_coordinator(double timeout = 240) {
    auto rc = coord_.wait(timeout);
    if (!rc) {
      ADD_FAILURE() << "coordinator did not finish; log:\n" << log("coordinator");
      return -1;
    }
    return *rc;
  }

  std::string log(const std::string& name) {
    std::ifstream in(dir_ / (name + ".log"));
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Waits until `sql` counts at least n rows in the ledger.
  bool wait_until(const std::string& sql, int64_t n, double timeout_s = 120) {
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < timeout_s) {
      if (fs::exists(ledger())) {
        Db db(ledger());
        if (db.count(sql) >= n) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // Every prompt of every applied step is covered by exactly one accepted update.
  void expect_each_group_counted_once(const Round& r) {
    Db db(ledger());
    std::map<int64_t, std::multiset<uint64_t>> covered;
    for (auto& row : db.rows("SELECT l.step, l.prompts FROM updates u JOIN leases l ON u.lease_id = l.lease_id "
                             "WHERE u.accepted = 1"))
      for (uint64_t i : split_indices(row[1])) covered[std::stoll(row[0])].insert(i);
    for (int s = 1; s <= r.steps; ++s) {
      const auto& c = covered[s];
      EXPECT_EQ(c.size(), static_cast<size_t>(r.prompts)) << "step " << s;
      for (int p = 0; p < r.prompts; ++p)
        EXPECT_EQ(c.count(static_cast<uint64_t>((s - 1) * r.prompts + p)), 1u) << "step " << s << " prompt " << p;
    }
    EXPECT_EQ(db.count("SELECT COUNT(*) FROM steps"), r.steps);
    EXPECT_EQ(db.count("SELECT COUNT(*) FROM (SELECT peer, sequence FROM updates WHERE accepted = 1 "
                       "GROUP BY peer, sequence HAVING COUNT(*) > 1)"),
              0);
  }

  // The mean gradient of `step` computed by one process: all its prompts in one batch, the same
  // seeds, on `weights` (the version the step was sampled on; the base for step 1); with the
  // round's beta against the base as the reference policy (`beta` overrides it when >= 0).
  std::map<std::string, at::Tensor> reference_step_one_gradient(const Round& r, int step = 1,
                                                                std::string weights = "",
                                                                double beta = -1) {
    RoundConfig cfg = RoundConfig::load((dir_ / "round.toml").string());
    if (beta >= 0) cfg.grpo.loss.beta = beta;
    auto model = grpo::load_model(weights.empty() ? base_ : weights);
    auto reference = cfg.grpo.loss.beta > 0 ? grpo::load_model(base_) : nullptr;
    auto task = grpo::make_task(cfg.grpo.task);
    grpo::CharTokenizer tok;
    grpo::ScoredBatch b;
    std::vector<std::vector<int64_t>> ids;
    grpo::SamplingParams sp = cfg.grpo.sampling;
    sp.stop_tokens = tok.stop_ids();
    for (int p = 0; p < r.prompts; ++p) {
      const uint64_t i = static_cast<uint64_t>((step - 1) * r.prompts + p);
      b.prompts.push_back(task->train_prompt(i));
      ids.push_back(grpo::encode_prompt(tok, b.prompts.back()));
      sp.group_seeds.push_back(exchange::prompt_seed(cfg.grpo.seed, i));
    }
    b.rollout = grpo::generate(*model, ids, r.group, sp, tok.pad_id());
    grpo::score_rollout(tok, *task, b);
    b.advantages = grpo::group_advantages(b.rewards, r.group, cfg.grpo.scale);
    auto sums = grpo::accumulate_gradient(*model, reference.get(), b.rollout, b.advantages, cfg.grpo);
    EXPECT_GT(sums.units, 0);
    std::map<std::string, at::Tensor> out;
    for (const auto& p : model->named_parameters()) out[p.name] = p.tensor.grad() / sums.units;
    return out;
  }

  // The mean gradient the coordinator applied at `step` (dump_gradients).
  std::map<std::string, at::Tensor> applied_gradient(int step) {
    char name[64];
    std::snprintf(name, sizeof name, "step-%06d.safetensors", step);
    std::map<std::string, at::Tensor> out;
    for (const auto& t : grpo::read_safetensors((fs::path(data()) / "gradients" / name).string()))
      out[t.name] = t.tensor;
    return out;
  }

  static double cosine(const std::map<std::string, at::Tensor>& a, std::map<std::string, at::Tensor>& b) {
    double dot = 0, aa = 0, bb = 0;
    for (const auto& [name, x] : a) {
      const auto& y = b.at(name);
      dot += (x.to(at::kDouble) * y.to(at::kDouble)).sum().item<double>();
      aa += x.to(at::kDouble).pow(2).sum().item<double>();
      bb += y.to(at::kDouble).pow(2).sum().item<double>();
    }
    return dot / std::sqrt(aa * bb);
  }

  double poisoned_round_cosine(const std::string& rule);
  // A round that audits every update (recompute_fraction = 1, ban_after = 1): a `--fault poison`
  // peer takes work first, then the `honest` peers (name, extra node flags) join. The poisoner
  // never gets an update accepted and is banned; no other peer has an update refused.
  void poisoner_is_caught_by_audits(
      Round& r, const std::vector<std::pair<std::string, std::vector<std::string>>>& honest);

  fs::path dir_;
  std::string base_;
  Subprocess coord_;
  std::deque<Subprocess> nodes_;  // deque: references stay valid as nodes are added
};

// ---------------------------------------------------------------------------------------------

// Three nodes with different capacities split step 1 however the scheduler likes; the mean
// gradient the coordinator applies equals the gradient one process computes on the same
// prompts with the same per-prompt seeds.
TEST_F(E2E, StepOneGradientEqualsSingleProcessGradient) {
  Round r;
  r.dump = true;
  r.steps = 2;
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "a", {"--max-batch", "1"});
  start_node(ep, "b", {"--max-batch", "2"});
  // Every node takes at most half a step, so each step aggregates at least two updates whatever
  // the scheduling; node c also splits its leases across two local workers.
  start_node(ep, "c", {"--devices", "2", "--max-batch", "3"});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);

  auto ref = reference_step_one_gradient(r);
  auto applied = applied_gradient(1);
  ASSERT_EQ(applied.size(), ref.size());
  double max_diff = 0, max_ref = 0;
  for (const auto& [name, g] : ref) {
    ASSERT_TRUE(applied.count(name)) << name;
    max_diff = std::max(max_diff, (applied[name] - g).abs().max().item<double>());
    max_ref = std::max(max_ref, g.abs().max().item<double>());
  }
  EXPECT_GT(max_ref, 0);
  EXPECT_LE(max_diff, 1e-5 * std::max(1.0, max_ref)) << "max |applied - reference| " << max_diff;

  // Each step was assembled from several updates (how they fell to peers is the scheduler's
  // business and depends on timing), and the ledger refused none. The nodes ask for their next
  // lease while computing one: no lease they held was taken for lost.
  Db db(ledger());
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1"), 2 * r.steps);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM leases WHERE reason LIKE 'peer asked for new work%'"), 0)
      << log("coordinator");
}

// The KL term in a round (beta > 0): nodes fetch the reference policy (the initial weights) once
// and add the KL gradient; step 2, sampled on version 1 (which differs from the reference, so the
// KL term has a gradient), equals the single-process gradient with the KL term, and differs from
// the one without it by far more than the tolerance. The step's mean KL is in the ledger.
TEST_F(E2E, KlTermStepGradientEqualsSingleProcessGradient) {
  Round r;
  r.dump = true;
  r.steps = 2;
  r.beta = 1.0;  // large, so that the KL part of the gradient is far above the tolerance
  r.lr = 1e-2;   // a step 1 that moves the policy well away from the reference
  r.recompute_fraction = 1;  // every update audited: the audit recomputes with the KL term too
  r.min_peers = 2;  // both take part: a 2-step round can end before a slow start (loaded CI)
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "a", {"--max-batch", "2"});
  start_node(ep, "b", {"--devices", "2", "--max-batch", "3"});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  EXPECT_NE(log("a").find("reference policy loaded for the KL term"), std::string::npos) << log("a");

  const std::string v1 = (fs::path(data()) / "checkpoints" / "step-000001").string();
  auto with_kl = reference_step_one_gradient(r, 2, v1);
  auto without_kl = reference_step_one_gradient(r, 2, v1, /*beta=*/0);
  auto applied = applied_gradient(2);
  double max_diff = 0, max_ref = 0, kl_part = 0;
  for (const auto& [name, g] : with_kl) {
    ASSERT_TRUE(applied.count(name)) << name;
    max_diff = std::max(max_diff, (applied[name] - g).abs().max().item<double>());
    max_ref = std::max(max_ref, g.abs().max().item<double>());
    kl_part = std::max(kl_part, (without_kl[name] - g).abs().max().item<double>());
  }
  const double tolerance = 1e-5 * std::max(1.0, max_ref);
  EXPECT_LE(max_diff, tolerance) << "max |applied - reference| " << max_diff;
  EXPECT_GT(kl_part, 100 * tolerance) << "the KL term hardly changes the gradient: the test proves nothing";
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0) << log("coordinator");
  // Step 1 is sampled on the reference itself (KL 0); step 2 on version 1 (KL > 0).
  const auto kl = db.rows("SELECT kl FROM steps ORDER BY step");
  ASSERT_EQ(kl.size(), 2u);
  EXPECT_NEAR(std::stod(kl[0][0]), 0.0, 1e-6);
  EXPECT_GT(std::stod(kl[1][0]), 1e-6);
}

// A node killed with SIGKILL while it holds two leases (the one it computes and the one it asked
// for ahead): after the reconnect grace their prompts go to another node and every group is
// counted exactly once.
TEST_F(E2E, NodeKilledMidLeaseIsReissuedAndCountedOnce) {
  Round r;
  r.steps = 2;
  r.grace = 1;
  auto ep = start_coordinator(write_config(r));
  Subprocess& slow = start_node(ep, "slow", {"--delay-ms", "600000"});
  const std::string slow_hex = key_hex("slow");
  // The lease it computes and the one it asked for ahead.
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM leases WHERE state = 'active' AND peer = '" + slow_hex + "'", 2))
      << log("coordinator");
  // The live status endpoint answers while the round runs.
  const std::string status = http_get(ep.host, ep.status_port, "/status");
  EXPECT_NE(status.find("\"round_id\":\"e2e\""), std::string::npos) << status;
  EXPECT_NE(status.find(slow_hex), std::string::npos) << status;
  // And in the Prometheus text format.
  const std::string metrics = http_get(ep.host, ep.status_port, "/metrics");
  EXPECT_NE(metrics.find("# TYPE cohort_policy_version gauge"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("cohort_active_leases 2"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("peer=\"" + slow_hex.substr(0, 16) + "\""), std::string::npos) << metrics;
  start_node(ep, "steady");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  slow.signal(SIGKILL);
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_GE(db.count("SELECT COUNT(*) FROM leases WHERE peer = '" + slow_hex + "' AND state = 'expired'"), 2);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + slow_hex + "'"), 0);
}

// `min_peers = 2`: the first node to join gets no lease until the second one is connected; then
// both work and the round completes.
TEST_F(E2E, LeasesStartOnceMinPeersAreConnected) {
  Round r;
  r.steps = 2;
  r.min_peers = 2;
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "first");
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM peers", 1)) << log("coordinator");
  // The first node keeps asking ("no work yet") for a while, and no lease exists.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_EQ(Db(ledger()).count("SELECT COUNT(*) FROM leases"), 0) << log("coordinator");
  const std::string waiting = http_get(ep.host, ep.status_port, "/status");
  EXPECT_NE(waiting.find("\"leases_started\":false"), std::string::npos) << waiting;
  EXPECT_NE(waiting.find("\"min_peers\":2"), std::string::npos) << waiting;
  start_node(ep, "second");
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM leases WHERE issued_ms < (SELECT MAX(first_seen_ms) FROM peers)"), 0);
  EXPECT_NE(log("coordinator").find("2 peers connected (min_peers 2): leases start"), std::string::npos);
}

// A lease that takes longer than the coordinator's idle timeout (here 3 s of work against 2 s):
// the node's heartbeats keep the connection open, so no lease is taken for lost and every update
// is accepted.
TEST_F(E2E, HeartbeatsKeepALongLeaseConnected) {
  Round r;
  r.steps = 2;
  r.idle_timeout = 2;
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "patient", {"--delay-ms", "3000"});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM leases WHERE state <> 'completed'"), 0) << log("coordinator");
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0) << log("coordinator");
  EXPECT_EQ(log("coordinator").find("timed out"), std::string::npos) << log("coordinator");
}

// The step's compute made to last 5 s (COHORT_TEST_STEP_DELAY_MS, read by the coordinator's
// executor) while the network thread goes on: GET /status answers during it, a second peer joins
// during it, heartbeats and work requests are served, and nobody is disconnected.
TEST_F(E2E, NetworkThreadAnswersWhileAStepComputesForSeconds) {
  Round r;
  r.steps = 2;
  r.idle_timeout = 2;  // a blocked network thread would close silent peers
  ::setenv("COHORT_TEST_STEP_DELAY_MS", "5000", 1);
  auto ep = start_coordinator(write_config(r));
  ::unsetenv("COHORT_TEST_STEP_DELAY_MS");
  start_node(ep, "first");
  auto applying = [&](const std::string& status) {
    return nlohmann::json::parse(status).value("applying_step", 0);
  };
  // Wait until the executor is applying step 1.
  std::string status;
  const auto t0 = std::chrono::steady_clock::now();
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    status = http_get(ep.host, ep.status_port, "/status");
    ASSERT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(120)) << log("coordinator");
  } while (applying(status) != 1);
  // While it does: a second peer joins and is counted, and /status keeps answering.
  start_node(ep, "second");
  bool joined_during_step = false;
  for (int i = 0; i < 200 && !joined_during_step; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const auto j = nlohmann::json::parse(http_get(ep.host, ep.status_port, "/status"));
    if (j.value("applying_step", 0) != 1) break;
    joined_during_step = j.value("connected", 0) == 2;
  }
  EXPECT_TRUE(joined_during_step) << log("coordinator");
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  const std::string coord = log("coordinator");
  EXPECT_EQ(coord.find("timed out"), std::string::npos) << coord;
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0) << coord;
}

// kill -9 of the coordinator mid-run, then `serve` again on the same data directory: the run
// completes, every step is applied once, and no accepted update is lost or counted twice.
TEST_F(E2E, CoordinatorKilledAndRestartedResumesConsistently) {
  Round r;
  r.steps = 4;
  r.checkpoint_interval = 2;
  auto cfg = write_config(r);
  auto ep = start_coordinator(cfg);
  start_node(ep, "a");
  start_node(ep, "b");
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM steps", 1)) << log("coordinator");
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND step >= 2", 1)) << log("coordinator");
  coord_.signal(SIGKILL);
  coord_.wait(30);
  // Same port, so that the nodes' reconnection attempts find the new process.
  r.listen = "127.0.0.1:" + std::to_string(ep.port);
  cfg = write_config(r);
  auto ep2 = start_coordinator(cfg);
  EXPECT_EQ(ep2.coordinator_key, ep.coordinator_key);
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  // From its checkpoint ("resumed") and/or by replaying the ledger's accepted updates ("replayed"),
  // depending on whether the kill came before or after the step-2 checkpoint.
  const std::string restarted = log("coordinator");
  EXPECT_TRUE(restarted.find("resumed") != std::string::npos || restarted.find("replayed") != std::string::npos)
      << restarted;
  EXPECT_TRUE(fs::exists(fs::path(data()) / "checkpoints" / "step-000004" / "model.safetensors"));
  // The ledger's step units are the sums of the accepted updates' units (none lost, none doubled).
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM steps s WHERE ABS(s.units - (SELECT SUM(units) FROM updates u "
                     "WHERE u.accepted = 1 AND u.step = s.step)) > 0.5"),
            0);
}

// S = 0 and a node that sends its update long after its lease expired and the step moved on.
TEST_F(E2E, StaleUpdateIsRefusedWithReasonStale) {
  Round r;
  r.steps = 3;
  r.lease_timeout = 2;
  r.linger = 20;
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "late", {"--delay-ms", "8000", "--max-leases", "1"});
  const std::string late_hex = key_hex("late");
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM leases WHERE peer = '" + late_hex + "'", 1)) << log("coordinator");
  start_node(ep, "steady");
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM updates WHERE reason = 'stale'", 1, 120)) << log("coordinator");
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
}

// Peers choose their own precision: a node computing with FP8 linear layers (FP8Linear, the CPU
// emulation here) does the whole round, and every update it sends is accepted.
TEST_F(E2E, Fp8NodeCompletesARound) {
  Round r;
  r.steps = 2;
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "fp8", {"--precision", "fp8"});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator") << log("fp8");
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0);
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" +
                     key_hex("fp8") + "'"),
            r.steps)
      << log("fp8");
}

// A two-GPU-style node (two local workers) whose second worker throws on its first lease: the
// node gives that lease back with the worker's reason, carries on, and completes the round
// alone; the coordinator re-issued the lease and every group is counted once.
TEST_F(E2E, FailingWorkerGivesTheLeaseBackAndTheNodeCarriesOn) {
  Round r;
  r.steps = 2;
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "pair", {"--devices", "2", "--fault", "worker-throw"});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator") << log("pair");
  expect_each_group_counted_once(r);
  EXPECT_NE(log("pair").find("given back: worker 1 failed: injected fault"), std::string::npos) << log("pair");
  Db db(ledger());
  const std::string pair = key_hex("pair");
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM leases WHERE peer = '" + pair +
                     "' AND state = 'returned' AND reason LIKE 'given back: worker 1 failed: injected fault%'"),
            1)
      << log("coordinator");
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM leases WHERE state = 'expired'"), 0);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0);
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + pair + "'"), r.steps);
}

// Misbehaving peers in one round under an allowlist: a false reward claim (bad_reward), a
// replayed update (replayed) and an unlisted key (not_admitted). The honest work completes it.
TEST_F(E2E, MisbehavingPeersEndInTheirLedgerReasons) {
  Round r;
  r.steps = 2;
  r.staleness = 1;  // the replay arrives within the window, so the replay guard (not staleness) refuses it
  r.allowlist = {key_hex("honest"), key_hex("liar"), key_hex("replayer")};
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "liar", {"--fault", "false-reward", "--max-leases", "1"});
  start_node(ep, "replayer", {"--fault", "replay", "--max-leases", "1"});
  Subprocess& stranger = start_node(ep, "stranger");
  EXPECT_EQ(stranger.wait(60).value_or(-1), 2) << log("stranger");
  // The honest peer joins once both faults are on record, so that it cannot take all the work first.
  EXPECT_TRUE(wait_until("SELECT COUNT(*) FROM updates WHERE reason = 'bad_reward'", 1)) << log("coordinator");
  EXPECT_TRUE(wait_until("SELECT COUNT(*) FROM updates WHERE reason = 'replayed'", 1)) << log("coordinator");
  start_node(ep, "honest");
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE reason = 'bad_reward' AND peer = '" + key_hex("liar") + "'"), 1);
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE reason = 'replayed' AND peer = '" + key_hex("replayer") + "'"), 1);
  EXPECT_GE(db.count("SELECT COUNT(*) FROM refusals WHERE reason = 'not_admitted' AND peer = '" + key_hex("stranger") + "'"), 1);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + key_hex("liar") + "'"), 0);
}

// A peer that reports honest rewards but sends a poisoned gradient (reversed, ×20, plus noise): the
// coordinator recomputes every update here (recompute_fraction = 1), refuses it with
// `recompute_mismatch`, bans the peer at once (ban_after = 1) and refuses its next connection;
// the honest peer's updates all pass the same audit.
void E2E::poisoner_is_caught_by_audits(
    Round& r, const std::vector<std::pair<std::string, std::vector<std::string>>>& honest) {
  r.recompute_fraction = 1.0;
  r.ban_after = 1;
  auto ep = start_coordinator(write_config(r));
  Subprocess& poisoner = start_node(ep, "poisoner", {"--fault", "poison", "--max-batch", "2"});
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM updates WHERE reason = 'recompute_mismatch'", 1)) << log("coordinator");
  for (const auto& [name, flags] : honest) start_node(ep, name, flags);
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  EXPECT_NE(poisoner.wait(60).value_or(-1), 0) << log("poisoner");
  Db db(ledger());
  const std::string p = key_hex("poisoner");
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + p + "'"), 0);
  EXPECT_GE(db.count("SELECT COUNT(*) FROM refusals WHERE reason = 'banned' AND peer = '" + p + "'"), 1);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0 AND peer <> '" + p + "'"), 0)
      << log("coordinator");
}

TEST_F(E2E, PoisonedGradientIsCaughtByRecomputationAndThePeerBanned) {
  Round r;
  r.steps = 2;
  poisoner_is_caught_by_audits(r, {{"honest", {}}});
  Db db(ledger());
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + key_hex("honest") + "'"), r.steps);
  EXPECT_NE(log("coordinator").find("recomputed lease"), std::string::npos);
}

// The top-k codec (a pure function of the lease gradient) under audit of every update: honest
// peers computing in FP32 and in FP8 pass the recomputation of the compressor, a poisoned one is
// refused (`recompute_mismatch`) and banned, and the updates travel as streams far below FP8's
// 1.04 bytes per parameter.
TEST_F(E2E, TopkUpdatesPassTheirAuditAndPoisonDoesNot) {
  Round r;
  r.steps = 3;
  r.codec = "topk";
  poisoner_is_caught_by_audits(r, {{"fp32", {}}, {"fp8", {"--precision", "fp8"}}});
  Db db(ledger());
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1"), r.steps);
  // The built-in model has 791,680 parameters: an FP8 update is over 800 kB, a top-k one (its
  // completions included) under a quarter of that.
  EXPECT_LT(db.count("SELECT MAX(bytes) FROM updates WHERE accepted = 1"), 200'000);
  // Every honest update was audited (and the poisoner's first one).
  const std::string coord = log("coordinator");
  int64_t audits = 0;
  for (size_t at = coord.find("recomputed lease"); at != std::string::npos;
       at = coord.find("recomputed lease", at + 1))
    ++audits;
  EXPECT_GE(audits, db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1") + 1);
}

// The top-k codec folds each update's kept entries into its step's sum, in a buffer the coordinator
// reuses from step to step (zeroed, not re-allocated): every applied gradient is exactly the sum of
// the step's accepted updates, decoded again here from the ledger's signed bodies and streams,
// over the step's units, with two steps open at once (S = 1) and the buffer reused at each. The
// ledger drops bodies once a checkpoint covers them: no checkpoint before the last step, and the
// bodies are read while the nodes are stopped mid-round.
TEST_F(E2E, TopkStepsApplyExactlyTheirUpdates) {
  Round r;
  r.steps = 8;
  r.checkpoint_interval = 1000;
  r.staleness = 1;
  r.codec = "topk";
  r.dump = true;
  r.min_peers = 2;
  auto ep = start_coordinator(write_config(r));
  // 200 ms before each update: the round cannot reach its last step while the ledger is read.
  Subprocess& a = start_node(ep, "a", {"--max-batch", "2", "--delay-ms", "200"});
  Subprocess& b = start_node(ep, "b", {"--max-batch", "3", "--delay-ms", "200"});
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM steps", 4)) << log("coordinator");
  a.signal(SIGSTOP);
  b.signal(SIGSTOP);

  struct StepUpdates {
    std::vector<double> sum;
    double units = 0;
  };
  std::map<int, StepUpdates> steps;
  const auto model = grpo::load_model(base_);
  const exchange::ParamLayout layout(*model);
  auto unhex = [](const std::string& h) {
    const auto bytes = protocol::from_hex(h);
    EXPECT_TRUE(bytes.has_value());
    return bytes ? std::string(bytes->begin(), bytes->end()) : std::string();
  };
  {
    Db db(ledger());
    for (const auto& row : db.rows("SELECT step FROM steps WHERE step < " + std::to_string(r.steps))) {
      StepUpdates& st = steps[std::stoi(row[0])];
      st.sum.assign(layout.total, 0.0);
      for (const auto& u : db.rows("SELECT hex(body), hex(signature), hex(stream), units FROM updates "
                                   "WHERE accepted = 1 AND step = " + row[0])) {
        wire::SignedUpdate su;
        su.set_body(unhex(u[0]));
        su.set_signature(unhex(u[1]));
        const wire::GradientUpdate full = protocol::decode_update(su, unhex(u[2]));
        std::vector<float> g(layout.total, 0.0f);
        const auto refused = exchange::decode_gradient(full, layout, g);
        ASSERT_FALSE(refused.has_value()) << refused->detail;
        for (size_t k = 0; k < g.size(); ++k) st.sum[k] += g[k];
        st.units += std::stod(u[3]);
      }
    }
  }
  a.signal(SIGCONT);
  b.signal(SIGCONT);
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);

  ASSERT_GE(steps.size(), 4u);
  for (const auto& [step, st] : steps) {
    ASSERT_GT(st.units, 0) << "step " << step;
    const auto applied = applied_gradient(step);
    double max_diff = 0, max_ref = 0;
    size_t nonzero = 0;
    for (const auto& slot : layout.slots) {
      const at::Tensor t = applied.at(slot.name).contiguous().to(at::kFloat).reshape({-1});
      ASSERT_EQ(static_cast<uint64_t>(t.numel()), slot.numel) << slot.name;
      const float* x = t.data_ptr<float>();
      for (uint64_t k = 0; k < slot.numel; ++k) {
        const double want = st.sum[slot.offset + k] / st.units;
        max_diff = std::max(max_diff, std::abs(double(x[k]) - want));
        max_ref = std::max(max_ref, std::abs(want));
        nonzero += want != 0;
      }
    }
    EXPECT_GT(nonzero, 0u) << "step " << step;
    EXPECT_LT(nonzero, layout.total / 4) << "step " << step << ": top-k updates keep a few entries";
    EXPECT_LE(max_diff, 1e-6 * std::max(1.0, max_ref))
        << "step " << step << ": max |applied - sum of its updates / units| " << max_diff;
  }
}

// A BF16 policy: nodes sample and compute on the published bits and audits recompute every update
// on the same bits (none refused); a node fetches the snapshot once and patches after, checking
// every tensor's digest; a node that joins mid-round takes the snapshot; the coordinator serves
// every blob over HTTP with Range requests (GET /blobs/<hex>).
TEST_F(E2E, Bf16PolicyTravelsAsPatchesAndBlobsOverHttp) {
  Round r;
  r.steps = 14;  // ~6 s at 400 ms a step: room for the late node's start (2+ s on a loaded VM)
  r.staleness = 1;
  r.lr = 1e-5;  // most BF16 bits stay from one version to the next
  r.policy_dtype = "bf16";
  r.recompute_fraction = 1.0;
  auto ep = start_coordinator(write_config(r));
  const std::string early_json = (dir_ / "early.json").string(), late_json = (dir_ / "late.json").string();
  // The early node waits 400 ms before each update, so that the round lasts while the late one
  // starts (a step of this model is otherwise over in a fraction of a second).
  start_node(ep, "early", {"--summary-out", early_json, "--delay-ms", "400"});
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM steps", 1)) << log("coordinator");
  start_node(ep, "late", {"--summary-out", late_json});

  // Any published blob, by its digest, in ranges; an unknown digest is a 404.
  const std::string base = "http://" + ep.host + ":" + std::to_string(ep.status_port);
  int served = 0;
  for (const auto& e : fs::directory_iterator(fs::path(data()) / "blobs")) {
    std::ifstream in(e.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), {});
    if (bytes.size() < 100) continue;
    try {
      EXPECT_EQ(node::http_blob_range(base, e.path().filename().string(), 10, 90), bytes.substr(10, 90));
      const uint64_t tail = std::min<uint64_t>(bytes.size(), 5 << 20);
      EXPECT_EQ(node::http_blob_range(base, e.path().filename().string(), bytes.size() - tail, tail),
                bytes.substr(bytes.size() - tail));
      ++served;
    } catch (const Error&) {
      // Removed since it was listed: a version no longer served.
    }
  }
  EXPECT_GE(served, 1);
  EXPECT_THROW((void)node::http_blob_range(base, std::string(64, '0'), 0, 1), Error);

  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  for (auto& n : nodes_) n.wait(60);
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0) << log("coordinator");
  const auto early = nlohmann::json::parse(std::ifstream(early_json));
  EXPECT_EQ(early["weights_snapshots"].get<int>(), 1) << early.dump();
  EXPECT_GE(early["weights_patches"].get<int>(), 1) << early.dump();
  EXPECT_EQ(early["weights_patch_fallbacks"].get<int>(), 0) << early.dump();
  // Each patch weighs less than the snapshot it spares.
  EXPECT_LT(early["weights_patch_bytes"].get<double>() / early["weights_patches"].get<double>(),
            early["weights_snapshot_bytes"].get<double>() / early["weights_snapshots"].get<double>());
  // The joiner works mid-round, from the snapshot of the version it joined at.
  ASSERT_TRUE(fs::exists(late_json)) << log("late");
  const auto late = nlohmann::json::parse(std::ifstream(late_json));
  EXPECT_GE(late["leases"].get<int>(), 1) << late.dump();
  EXPECT_GE(late["weights_snapshots"].get<int>(), 1) << late.dump();
  EXPECT_NE(log("coordinator").find("(bf16): snapshot"), std::string::npos);
}

// With S = 1 updates may arrive sampled on the version before the current one; audits rebuild
// that version from its published tensors. One node alone takes whole steps and asks for the
// next step's lease while computing this one, so from step 2 on each of its updates was sampled
// on the version before the one current when it arrives. Every update is audited, and an honest
// one must reproduce exactly (wrong weights fail the cosine and norm checks below).
TEST_F(E2E, AuditsRecomputeUpdatesOnTheVersionTheyWereSampledOn) {
  Round r;
  r.steps = 4;
  r.staleness = 1;
  r.recompute_fraction = 1.0;
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "alone");
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0) << log("coordinator");
  const int64_t accepted = db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1");
  // The raw codec: an audit on the right weights reproduces the reported sum up to float
  // summation order; one version off (lr 1e-3) drifts by more than that.
  const std::string coord = log("coordinator");
  int64_t audits = 0, on_older = 0;
  double min_cosine = 1, max_ratio_error = 0;
  for (size_t at = coord.find("recomputed lease"); at != std::string::npos; at = coord.find("recomputed lease", at + 1)) {
    ++audits;
    const size_t v = coord.find(" on v", at), cur = coord.find("(current v", at);
    const size_t c = coord.find("cosine ", at), n = coord.find("norm ratio ", at);
    ASSERT_TRUE(v != std::string::npos && cur != std::string::npos && c != std::string::npos && n != std::string::npos);
    if (std::stoll(coord.substr(v + 5, 12)) < std::stoll(coord.substr(cur + 10, 12))) ++on_older;
    min_cosine = std::min(min_cosine, std::stod(coord.substr(c + 7, 12)));
    max_ratio_error = std::max(max_ratio_error, std::abs(std::stod(coord.substr(n + 11, 12)) - 1));
  }
  EXPECT_EQ(audits, accepted) << coord;
  EXPECT_GE(on_older, 1) << coord;
  std::printf("audits: %lld (%lld on an older version), min cosine %.6f, max |norm ratio - 1| %.6f\n",
              static_cast<long long>(audits), static_cast<long long>(on_older), min_cosine, max_ratio_error);
  EXPECT_GE(min_cosine, 0.99999) << coord;
  EXPECT_LE(max_ratio_error, 1e-4) << coord;
}

// Without recomputation a poisoned update (its gradient reversed, ×20, plus N(0, 10) noise per
// coordinate) is accepted. A robust rule keeps the applied gradient pointing where the honest
// full-batch gradient points; the plain mean does not (cosine 0.24 in the run recorded in
// docs/RESULTS.md, against 0.85 for the median and 0.89 for centered clipping).
double E2E::poisoned_round_cosine(const std::string& rule) {
  Round r;
  r.steps = 1;
  r.dump = true;
  r.aggregation = rule;
  auto ep = start_coordinator(write_config(r));
  // The poisoner takes one group of step 1 before the honest peers start (≤ 2 groups per lease),
  // so the step has at least four updates, one of them poisoned.
  start_node(ep, "poisoner", {"--fault", "poison", "--max-batch", "1", "--max-leases", "1"});
  EXPECT_TRUE(wait_until("SELECT COUNT(*) FROM leases WHERE peer = '" + key_hex("poisoner") + "'", 1))
      << log("coordinator");
  start_node(ep, "a", {"--max-batch", "2"});
  start_node(ep, "b", {"--max-batch", "2"});
  EXPECT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + key_hex("poisoner") + "'"), 1);
  auto ref = reference_step_one_gradient(r);
  auto applied = applied_gradient(1);
  const double c = cosine(ref, applied);
  std::printf("%s: cosine(applied, honest full-batch gradient) = %.3f\n", rule.c_str(), c);
  return c;
}

TEST_F(E2E, MedianAggregationBoundsAPoisonedPeer) { EXPECT_GT(poisoned_round_cosine("median"), 0.5); }

TEST_F(E2E, CenteredClipBoundsAPoisonedPeer) { EXPECT_GT(poisoned_round_cosine("centered_clip"), 0.5); }

// Learning happens across processes, on the demo's recipe at a smaller scale: the built-in model
// shape warmed up on 2-digit addition to a weak base, then a GRPO round with three peers. The
// accuracy of each step's own completions (fresh prompts every step, temperature 1) rises from
// the first steps to the last, and the held-out accuracy the coordinator measures at the end is
// above the base's on the same held-out problems.
class E2ELearning : public E2E {
 protected:
  static void SetUpTestSuite() {
    learning_ = fs::temp_directory_path() / ("cohort-e2e-learning-" + std::to_string(::getpid()));
    fs::remove_all(learning_);
    grpo::CharTokenizer tok;
    grpo::PretrainConfig pc;
    pc.task.name = "arith";
    pc.task.digits = 2;
    pc.model = grpo::task_model_config();  // the built-in shape (docs/RESULTS.md: 791,680 parameters)
    pc.stop_at_accuracy = 0.2;
    pc.eval_every = 25;
    pc.eval_n = 100;
    pc.steps = 1500;
    auto task = grpo::make_task(pc.task);
    grpo::Model m(pc.model, 1);
    grpo::pretrain(m, tok, *task, pc, false);
    grpo::save_model((learning_ / "base").string(), m);
  }
  static void TearDownTestSuite() { fs::remove_all(learning_); }
  void SetUp() override {
    E2E::SetUp();
    base_ = (learning_ / "base").string();
  }
  static inline fs::path learning_;
};

TEST_F(E2ELearning, DecentralizedAccuracyRises) {
  Round r;
  r.steps = 32;
  r.prompts = 32;
  r.group = 8;
  r.lr = 3e-4;
  r.digits = 2;
  r.max_new_tokens = 16;
  r.checkpoint_interval = 100;
  r.eval_every = r.steps;
  r.eval_n = 200;
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "a", {"--max-batch", "16"});
  start_node(ep, "b", {"--max-batch", "8"});
  start_node(ep, "c", {"--max-batch", "4"});
  ASSERT_EQ(wait_coordinator(600), 0) << log("coordinator");
  Db db(ledger());
  auto rows = db.rows("SELECT accuracy FROM steps ORDER BY step");
  ASSERT_EQ(rows.size(), static_cast<size_t>(r.steps));
  double first = 0, last = 0;
  const int k = 6;
  for (int i = 0; i < k; ++i) {
    first += std::stod(rows[i][0]) / k;
    last += std::stod(rows[rows.size() - 1 - i][0]) / k;
  }
  RoundConfig cfg = RoundConfig::load((dir_ / "round.toml").string());
  auto base = grpo::load_model(base_);
  grpo::CharTokenizer tok;
  auto task = grpo::make_task(cfg.grpo.task);
  const double base_heldout = grpo::evaluate(*base, tok, *task, r.eval_n, r.max_new_tokens).accuracy;
  const double final_heldout = std::stod(db.rows("SELECT accuracy FROM evals ORDER BY step DESC LIMIT 1").at(0).at(0));
  std::printf("step accuracy: first %d steps %.3f, last %d steps %.3f; held-out %.3f -> %.3f\n", k, first, k,
              last, base_heldout, final_heldout);
  EXPECT_GT(last, first + 0.05);
  EXPECT_GT(final_heldout, base_heldout);
}

// A round on a JSONL dataset with the math reward, given on the coordinator's command line as
// `cohort train` takes it: leases name indices into the dataset's shuffled training split, the
// coordinator recomputes every reward with the math verifier, and truncated completions are
// masked on both sides (the token units agree). Nodes must hold the same file: one without it
// and one with a file that differs in one record leave with exit code 3 and the documented reason.
TEST_F(E2E, DatasetRoundCompletesAndRefusesNodesWithAnotherFile) {
  // 1-digit sums as {"prompt", "answer"} records: what the base model was warmed up on, so some
  // completions earn the reward.
  const std::string good = (dir_ / "sums.jsonl").string(), other = (dir_ / "other" / "sums.jsonl").string();
  fs::create_directories(dir_ / "other");
  {
    std::ofstream g(good), o(other);
    for (int a = 0; a < 10; ++a)
      for (int b = 0; b < 10; ++b) {
        const std::string line = "{\"prompt\": \"" + std::to_string(a) + "+" + std::to_string(b) +
                                 "=\", \"answer\": \"" + std::to_string(a + b) + "\"}\n";
        g << line;
        o << (a == 9 && b == 9 ? "{\"prompt\": \"9+9=\", \"answer\": \"19\"}\n" : line);
      }
  }
  Round r;
  r.steps = 2;
  r.mask_truncated = true;
  // "<answer>", two digits, "</answer>", EOS: sums of 10 and more are cut at 4 tokens, so
  // truncated completions occur and the coordinator's unit count must leave them out.
  r.max_new_tokens = 4;
  auto ep = start_coordinator(write_config(r), {"--dataset", good, "--reward", "math"});

  Subprocess& missing = start_node(ep, "missing");
  EXPECT_EQ(missing.wait(60).value_or(-1), 3) << log("missing");
  EXPECT_NE(log("missing").find("the round uses dataset sums.jsonl; give this node its copy with --dataset"),
            std::string::npos)
      << log("missing");
  Subprocess& differs = start_node(ep, "differs", {"--dataset", other});
  EXPECT_EQ(differs.wait(60).value_or(-1), 3) << log("differs");
  EXPECT_NE(log("differs").find("dataset sums.jsonl mismatch: " + other + " has BLAKE2b-256"), std::string::npos)
      << log("differs");

  start_node(ep, "good", {"--dataset", good});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator") << log("good");
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0) << log("coordinator");
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + key_hex("good") + "'"),
            r.steps);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM leases WHERE peer IN ('" + key_hex("missing") + "', '" +
                     key_hex("differs") + "')"),
            0);
  // The rewards the coordinator recomputed (and accepted) include correct answers.
  EXPECT_GT(std::stod(db.rows("SELECT SUM(accuracy) FROM updates WHERE accepted = 1")[0][0]), 0.0)
      << log("coordinator");
  EXPECT_NE(log("good").find("task " + good), std::string::npos) << log("good");
}

// A Hugging Face model folder (config.json + model.safetensors + tokenizer.json) given with
// `--model`: the coordinator prompts and scores with its byte-level BPE tokenizer, and nodes read
// the tokenizer from their own copy of the folder (`--tokenizer`), checked by digest.
// A tiny Hugging Face-style model folder: config.json + model.safetensors + a byte-level BPE
// tokenizer.json without merges (the 256 GPT-2 byte characters, then <|endoftext|> as EOS) and
// tokenizer_config.json; `other_config` gives tokenizer_config.json another (valid) content.
void write_hf_model(const fs::path& dir, bool other_config = false) {
  nlohmann::json vocab = nlohmann::json::object();
  int shifted = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : 256u + static_cast<uint32_t>(shifted++);
    std::string ch;
    if (cp < 0x80) {
      ch += static_cast<char>(cp);
    } else {
      ch += static_cast<char>(0xC0 | (cp >> 6));
      ch += static_cast<char>(0x80 | (cp & 0x3F));
    }
    vocab[ch] = b;
  }
  vocab["<|endoftext|>"] = 256;
  const nlohmann::json tokenizer = {
      {"added_tokens", {{{"id", 256}, {"content", "<|endoftext|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  grpo::ModelConfig mc = test::tiny_model_config();
  mc.tokenizer.clear();
  mc.vocab_size = 260;
  mc.bos_token_id = -1;
  mc.eos_token_id = 256;
  mc.pad_token_id = 256;
  grpo::save_model(dir.string(), grpo::Model(mc, 3));
  std::ofstream(dir / "tokenizer.json") << tokenizer.dump();
  std::ofstream(dir / "tokenizer_config.json")
      << (other_config ? nlohmann::json{{"eos_token", "<|endoftext|>"}, {"pad_token", "<|endoftext|>"}}
                       : nlohmann::json{{"eos_token", "<|endoftext|>"}})
             .dump();
}

// A small GSM8K-format JSONL dataset.
void write_sums_dataset(const std::string& path) {
  std::ofstream q(path);
  for (int i = 0; i < 20; ++i)
    q << "{\"question\": \"What is " << i << " plus one?\", \"answer\": \"Add one. #### " << i + 1 << "\"}\n";
}

TEST_F(E2E, HuggingFaceModelRoundChecksTheNodesTokenizer) {
  const fs::path model = dir_ / "hf-model", copy = dir_ / "node-copy", other = dir_ / "node-other";
  write_hf_model(model);
  // The nodes' copies: the same tokenizer files, or another tokenizer_config.json.
  for (const fs::path& d : {copy, other}) {
    fs::create_directories(d);
    fs::copy_file(model / "tokenizer.json", d / "tokenizer.json");
  }
  fs::copy_file(model / "tokenizer_config.json", copy / "tokenizer_config.json");
  {
    const fs::path scratch = dir_ / "scratch";
    write_hf_model(scratch, /*other_config=*/true);
    fs::copy_file(scratch / "tokenizer_config.json", other / "tokenizer_config.json");
  }
  const grpo::ModelConfig mc = grpo::load_model(model.string())->config();
  ASSERT_EQ(grpo::tokenizer_for_model(model.string(), mc)->name(), "bpe");
  const std::string data_file = (dir_ / "q.jsonl").string();
  write_sums_dataset(data_file);
  Round r;
  r.steps = 1;
  r.prompts = 4;
  r.max_new_tokens = 4;
  auto ep = start_coordinator(write_config(r), {"--model", model.string(), "--dataset", data_file});

  Subprocess& no_tokenizer = start_node(ep, "no-tokenizer", {"--dataset", data_file});
  EXPECT_EQ(no_tokenizer.wait(60).value_or(-1), 3) << log("no-tokenizer");
  EXPECT_NE(log("no-tokenizer").find("the round uses the model's tokenizer.json; give this node its copy with --tokenizer"),
            std::string::npos)
      << log("no-tokenizer");
  Subprocess& differs = start_node(ep, "differs", {"--dataset", data_file, "--tokenizer", other.string()});
  EXPECT_EQ(differs.wait(60).value_or(-1), 3) << log("differs");
  EXPECT_NE(log("differs").find("the model's tokenizer_config.json mismatch"), std::string::npos) << log("differs");

  start_node(ep, "good", {"--dataset", data_file, "--tokenizer", copy.string()});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator") << log("good");
  expect_each_group_counted_once(r);
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0) << log("coordinator");
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + key_hex("good") + "'"), 1);
  // The round's checkpoint opens like the folder it came from: weights and tokenizer together.
  const fs::path ck = fs::path(data()) / "checkpoints" / "step-000001";
  EXPECT_EQ(grpo::tokenizer_for_model(ck.string(), grpo::load_model(ck.string())->config())->name(), "bpe");
}

// As a new volunteer would join a public round: a coordinator serving a JSONL-dataset round with a
// Hugging Face-style tokenizer folder publishes its signed card at GET /round; a node on an empty
// cache and an empty config folder runs `cohort node join URL --coordinator-key HEX` with no other
// flag (its key and cache in the XDG folders), fetches the three files, verifies them and works a
// lease; started again, it fetches nothing. A card checked against another key is refused.
TEST_F(E2E, NodeJoinsFromTheRoundCardAndItsCacheServesTheSecondStart) {
  const fs::path model = dir_ / "hf-model";
  write_hf_model(model);
  const std::string data_file = (dir_ / "q.jsonl").string();
  write_sums_dataset(data_file);
  Round r;
  r.steps = 3;
  r.prompts = 4;
  r.max_new_tokens = 4;
  auto ep = start_coordinator(write_config(r), {"--model", model.string(), "--dataset", data_file});

  // The card names the round's files by their digests; the copy beside the ledger is the same.
  const std::string card_text = http_get(ep.host, ep.status_port, "/round");
  const exchange::RoundCard card = exchange::read_round_card(card_text);
  EXPECT_EQ(card.coordinator_key, ep.coordinator_key);
  EXPECT_EQ(card.round_id, "e2e");
  EXPECT_EQ(card.addresses, std::vector<std::string>{"127.0.0.1:" + std::to_string(ep.port)});
  EXPECT_EQ(card.task, "dataset:math");
  std::map<std::string, std::string> digests;
  for (const auto& f : card.files) digests[f.name] = f.blake2b;
  auto file_hex = [](const fs::path& p) {
    const protocol::Digest d = protocol::blake2b_256_file(p.string());
    return protocol::to_hex(protocol::ByteView(d.data(), d.size()));
  };
  ASSERT_EQ(digests.size(), 3u) << card_text;
  EXPECT_EQ(digests["q.jsonl"], file_hex(data_file));
  EXPECT_EQ(digests["tokenizer.json"], file_hex(model / "tokenizer.json"));
  EXPECT_EQ(digests["tokenizer_config.json"], file_hex(model / "tokenizer_config.json"));
  {
    std::ifstream in(fs::path(data()) / "round-card.json");
    std::stringstream beside;
    beside << in.rdbuf();
    EXPECT_EQ(exchange::read_round_card(beside.str()).coordinator_key, ep.coordinator_key);
  }

  const std::string url = "http://" + ep.host + ":" + std::to_string(ep.status_port) + "/round";
  const fs::path home = dir_ / "home";
  auto join = [&](const std::string& name, const std::string& key, std::vector<std::string> extra) -> Subprocess& {
    std::vector<std::string> argv = {"/usr/bin/env", "XDG_CACHE_HOME=" + (home / "cache").string(),
                                     "XDG_CONFIG_HOME=" + (home / "config").string(), COHORT_BIN,
                                     "node", "join", url, "--coordinator-key", key};
    argv.insert(argv.end(), extra.begin(), extra.end());
    nodes_.push_back(Subprocess::spawn(argv, (dir_ / (name + ".log")).string()));
    return nodes_.back();
  };
  Subprocess& wrong = join("wrong-key", key_hex("someone-else"), {});
  EXPECT_EQ(wrong.wait(60).value_or(-1), 2) << log("wrong-key");
  EXPECT_NE(log("wrong-key").find("not by the pinned --coordinator-key"), std::string::npos) << log("wrong-key");
  EXPECT_FALSE(fs::exists(home / "cache" / "cohort" / "blobs" / digests["q.jsonl"]));

  // First start: empty cache; leaves after one accepted lease (--max-leases only to stop it here).
  Subprocess& first = join("first", ep.coordinator_key, {"--threads", "1", "--max-leases", "1"});
  ASSERT_EQ(first.wait(120).value_or(-1), 0) << log("first");
  const std::string first_log = log("first");
  for (const auto& name : {"q.jsonl", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_NE(first_log.find(std::string(name) + ": fetched"), std::string::npos) << name << "\n" << first_log;
  const fs::path key_file = home / "config" / "cohort" / "node.key";
  ASSERT_TRUE(fs::exists(key_file)) << first_log;
  EXPECT_NE(first_log.find("created this node's identity key at " + key_file.string()), std::string::npos) << first_log;
  std::map<std::string, fs::file_time_type> written;
  for (const auto& [name, hex] : digests) written[name] = fs::last_write_time(home / "cache" / "cohort" / "blobs" / hex);

  // Second start: every file from the cache, none fetched; it works until the round ends.
  join("second", ep.coordinator_key, {"--threads", "1"});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator") << log("second");
  const std::string second_log = log("second");
  for (const auto& name : {"q.jsonl", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_NE(second_log.find(std::string(name) + ": cached"), std::string::npos) << name << "\n" << second_log;
  EXPECT_EQ(second_log.find(": fetched"), std::string::npos) << second_log;
  for (const auto& [name, hex] : digests)
    EXPECT_EQ(fs::last_write_time(home / "cache" / "cohort" / "blobs" / hex), written[name]) << name;
  EXPECT_EQ(second_log.find("created this node's identity key"), std::string::npos) << second_log;

  expect_each_group_counted_once(r);
  const std::string me = protocol::Identity::load(key_file).id().hex();
  Db db(ledger());
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 0"), 0) << log("coordinator");
  EXPECT_GE(db.count("SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + me + "'"), 2);
}

// The web dashboard at GET / in a real browser: headless Chromium loads the page from a live
// coordinator (one step applied, its node gone, so the numbers hold still), runs its script, and
// the DOM shows what GET /status reports: round, step, accepted updates, credits per peer, one
// point per step on the curves. A screenshot is saved beside the logs. Skipped without Chromium
// (scripts/bootstrap installs Debian's `chromium` for development).
TEST_F(E2E, DashboardInChromiumShowsWhatStatusReports) {
  std::string chromium;
  for (const char* c : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (fs::exists(c)) chromium = c;
  if (chromium.empty()) GTEST_SKIP() << "no Chromium (apt-get install chromium; scripts/bootstrap does)";
  Round r;
  r.steps = 20;  // more than six leases can finish: the coordinator waits for peers, unchanging
  r.prompts = 4;
  auto ep = start_coordinator(write_config(r));
  Subprocess& node = start_node(ep, "volunteer", {"--max-leases", "6"});
  ASSERT_EQ(node.wait(120).value_or(-1), 0) << log("volunteer");
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM steps", 1)) << log("coordinator");
  // Still: no lease out, no step being applied (the node has left; nothing changes after this).
  nlohmann::json status;
  for (int i = 0; i < 300; ++i) {
    status = nlohmann::json::parse(http_get(ep.host, ep.status_port, "/status"));
    if (status["active_leases"] == 0 && status["applying_step"] == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(status["applying_step"], 0) << status.dump(1);
  const int version = status["version"].get<int>();
  ASSERT_GE(version, 1) << status.dump(1);

  const std::string url = "http://" + ep.host + ":" + std::to_string(ep.status_port) + "/";
  auto browse = [&](const std::string& what, const std::string& out) {
    const std::string cmd = chromium + " --headless --no-sandbox --disable-gpu --hide-scrollbars "
                            "--user-data-dir=" + (dir_ / "chromium").string() +
                            " --virtual-time-budget=10000 --window-size=1280,1700 " + what + " " + url +
                            " > " + out + " 2>> " + (dir_ / "chromium.log").string();
    Subprocess b = Subprocess::spawn({"/bin/sh", "-c", cmd});
    return b.wait(120).value_or(-1);
  };
  const fs::path dom_file = dir_ / "dashboard.dom.html";
  ASSERT_EQ(browse("--dump-dom", dom_file.string()), 0) << log("chromium");
  std::stringstream ss;
  ss << std::ifstream(dom_file).rdbuf();
  const std::string dom = ss.str();
  ASSERT_NE(dom.find("data-loaded=\"1\""), std::string::npos) << "the page never rendered a status:\n" << dom;
  auto text_of = [&](const std::string& id) {
    const std::string open = "id=\"" + id + "\">";
    const auto at = dom.find(open);
    if (at == std::string::npos) return std::string("<no #" + id + ">");
    const auto from = at + open.size();
    return dom.substr(from, dom.find('<', from) - from);
  };
  EXPECT_EQ(text_of("round-id"), "e2e");
  EXPECT_EQ(text_of("step"), std::to_string(version) + " / 20");
  EXPECT_EQ(text_of("version"), std::to_string(version));
  int64_t accepted = 0;
  for (const auto& [hex, p] : status["peers"].items()) {
    accepted += p["accepted"].get<int64_t>();
    const std::string row = "<tr data-peer=\"" + hex + "\" data-credit-tokens=\"" +
                            std::to_string(std::llround(p["credit_tokens"].get<double>())) +
                            "\" data-credit-groups=\"" + std::to_string(p["credit_groups"].get<int64_t>()) + "\"";
    EXPECT_NE(dom.find(row), std::string::npos) << row << "\n" << dom;
    EXPECT_GT(p["credit_groups"].get<int64_t>(), 0);
  }
  EXPECT_EQ(text_of("updates-accepted"), std::to_string(accepted));
  EXPECT_EQ(text_of("credit-tokens"), std::to_string(std::llround(status["credits"]["tokens"].get<double>())));
  EXPECT_EQ(text_of("credit-groups"), std::to_string(status["credits"]["groups"].get<int64_t>()));
  {
    Db db(ledger());  // credit: the groups of the accepted updates' leases, each once
    int64_t groups = 0;
    for (auto& row : db.rows("SELECT l.prompts FROM updates u JOIN leases l ON u.lease_id = l.lease_id "
                             "WHERE u.accepted = 1"))
      groups += static_cast<int64_t>(split_indices(row[0]).size());
    EXPECT_EQ(status["credits"]["groups"].get<int64_t>(), groups);
  }
  // The reward curve: one point per applied step.
  const auto chart = dom.find("id=\"chart-reward\"");
  ASSERT_NE(chart, std::string::npos);
  const auto points = dom.find("points=\"", chart);
  ASSERT_NE(points, std::string::npos);
  const std::string pts = dom.substr(points + 8, dom.find('"', points + 8) - points - 8);
  EXPECT_EQ(std::count(pts.begin(), pts.end(), ','), version) << pts;

  const fs::path shot = dir_ / "dashboard.png";
  ASSERT_EQ(browse("--screenshot=" + shot.string(), "/dev/null"), 0) << log("chromium");
  std::string png(8, '\0');
  std::ifstream(shot, std::ios::binary).read(png.data(), 8);
  EXPECT_EQ(png, "\x89PNG\r\n\x1a\n");
  EXPECT_GT(fs::file_size(shot), 20000u);  // a rendered page, not a blank one
}

// A volunteer pauses their node (`cohort node pause`) and resumes it: paused, the node finishes
// and delivers what it holds, takes no lease while its session stays open (no reconnect), and
// works again once resumed; `cohort node status` shows its credit from the round's status page.
TEST_F(E2E, PausedNodeKeepsItsSessionTakesNoLeaseAndResumes) {
  Round r;
  r.steps = 200;  // longer than the test: the coordinator keeps handing out work
  r.prompts = 4;
  auto ep = start_coordinator(write_config(r));
  const std::string me = key_hex("volunteer");
  Subprocess& node = start_node(ep, "volunteer", {"--max-batch", "1"});
  const std::string mine = "SELECT COUNT(*) FROM updates WHERE accepted = 1 AND peer = '" + me + "'";
  ASSERT_TRUE(wait_until(mine, 2)) << log("volunteer");
  auto cli = [&](const std::string& verb) {
    Subprocess c = Subprocess::spawn({COHORT_BIN, "node", verb, "--key", key("volunteer")},
                                     (dir_ / ("cli-" + verb + ".log")).string());
    return c.wait(30).value_or(-1);
  };
  ASSERT_EQ(cli("pause"), 0) << log("cli-pause");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (log("volunteer").find("paused by you") == std::string::npos && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_NE(log("volunteer").find("paused by you"), std::string::npos) << log("volunteer");
  const std::string leases = "SELECT COUNT(*) FROM leases WHERE peer = '" + me + "'";
  int64_t before = 0;
  {
    Db db(ledger());
    before = db.count(leases);
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));
  {
    Db db(ledger());
    EXPECT_EQ(db.count(leases), before) << "a paused node was issued a lease";
    EXPECT_EQ(db.count("SELECT COUNT(*) FROM leases WHERE peer = '" + me + "' AND state = 'active'"), 0);
  }
  EXPECT_TRUE(node.running());
  int64_t accepted = 0;
  {
    Db db(ledger());
    accepted = db.count(mine);
  }
  ASSERT_EQ(cli("resume"), 0) << log("cli-resume");
  EXPECT_TRUE(wait_until(mine, accepted + 2, 60)) << log("volunteer");
  EXPECT_NE(log("volunteer").find("node: resumed"), std::string::npos) << log("volunteer");
  // One session throughout: the coordinator saw the peer join once.
  const std::string c = log("coordinator");
  ASSERT_NE(c.find("(volunteer) joined"), std::string::npos) << c;
  EXPECT_EQ(c.find("(volunteer) joined"), c.rfind("(volunteer) joined")) << c;

  // Its own record, as `cohort node status` prints it from the status page.
  Subprocess st = Subprocess::spawn(
      {COHORT_BIN, "node", "status", "http://" + ep.host + ":" + std::to_string(ep.status_port), "--key", key("volunteer")},
      (dir_ / "cli-status.log").string());
  ASSERT_EQ(st.wait(30).value_or(-1), 0) << log("cli-status");
  EXPECT_NE(log("cli-status").find("this node " + me.substr(0, 16)), std::string::npos) << log("cli-status");
  EXPECT_NE(log("cli-status").find("(rank 1 of 1)"), std::string::npos) << log("cli-status");
}

// Adversary kinds (node --fault) against a round that audits every update and bans at the first
// misbehaviour: gradient attacks (reversed, ×10, noise, NaN, zero) are refused by recomputation
// or the norm check; free-riders that send the stop token alone, a cherry-picker that keeps the
// better of two samples per completion, and a lazy peer that keeps its first weights and labels
// its work current, are refused `not_sampled`: the audit samples the
// lease again from its seeds on the version claimed and gets other completions. The honest peers
// are never refused for misbehaviour and the round completes with every group counted once.
TEST_F(E2E, AdversariesAreRefusedWithTheirReasonsAndTheRoundCompletes) {
  Round r;
  r.steps = 6;
  r.prompts = 8;
  r.lr = 1e-2;  // each step moves the policy enough that stale weights sample other completions
  r.recompute_fraction = 1.0;
  r.ban_after = 1;
  auto ep = start_coordinator(write_config(r));
  // The lazy peer loads version 0 with the others and keeps it: honest at first, then further
  // and further behind the version it claims.
  const std::vector<std::pair<std::string, std::string>> first = {
      {"sign-flip", "1"}, {"scaled", "1"}, {"noise", "1"}, {"nan", "1"},
      {"zero", "4"},      {"stop-only", "1"}, {"lazy", "1"}, {"cherry-pick", "2"}};
  for (const auto& [kind, batch] : first) start_node(ep, kind, {"--fault", kind, "--max-batch", batch});
  // Each has had an update checked before the honest peers come.
  for (const auto& [kind, batch] : first)
    ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM updates WHERE peer = '" + key_hex(kind) + "'", 1))
        << kind << "\n" << log(kind) << log("coordinator");
  start_node(ep, "honest-a", {"--max-batch", "2"});
  start_node(ep, "honest-b", {"--max-batch", "2"});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);

  Db db(ledger());
  auto count = [&](const std::string& who, const std::string& where) {
    return db.count("SELECT COUNT(*) FROM updates WHERE peer = '" + key_hex(who) + "' AND " + where);
  };
  // A lease whose groups all scored alike has a zero gradient, which reversed, scaled or noised
  // (noise in proportion to it) stays zero, the honest answer: accepted. Any lease with a signal
  // is refused.
  for (const char* kind : {"sign-flip", "scaled", "noise"})
    EXPECT_GE(count(kind, "reason = 'recompute_mismatch'"), 1) << kind << "\n" << log("coordinator");
  EXPECT_EQ(count("nan", "accepted = 1"), 0);
  EXPECT_GE(count("nan", "reason IN ('bad_norm', 'malformed')"), 1) << log("coordinator");
  // A zero gradient is the honest one for a lease whose groups all scored alike: refused once
  // any group had a signal.
  EXPECT_GE(count("zero", "reason = 'recompute_mismatch'"), 1) << log("coordinator");
  EXPECT_EQ(count("stop-only", "accepted = 1"), 0);
  EXPECT_GE(count("stop-only", "reason = 'not_sampled'"), 1) << log("coordinator");
  // The lazy peer is caught by whichever comes first: its own update refused not_sampled (the
  // log-probabilities of its completions), or, when it validates before its update is judged, its
  // reports (computed on the version it kept) contradicted by the coordinator's recomputation and
  // refused bad_audit (seen once in a full ctest run on 2 cores).
  const int64_t lazy_audits = db.count("SELECT COUNT(*) FROM refusals WHERE reason = 'bad_audit' AND peer = '" +
                                       key_hex("lazy") + "'");
  EXPECT_GE(count("lazy", "reason = 'not_sampled'") + lazy_audits, 1) << log("lazy") << log("coordinator");
  EXPECT_EQ(count("cherry-pick", "accepted = 1"), 0);
  EXPECT_GE(count("cherry-pick", "reason = 'not_sampled'"), 1) << log("cherry-pick") << log("coordinator");
  // ban_after = 1: each was banned at its first refusal for misbehaviour (the ban is a `banned`
  // row, and so is each later handshake the banned key tried).
  for (const char* kind : {"sign-flip", "scaled", "noise", "nan", "zero", "stop-only", "lazy", "cherry-pick"})
    EXPECT_GE(db.count("SELECT COUNT(*) FROM refusals WHERE reason = 'banned' AND peer = '" + key_hex(kind) + "'"), 1)
        << kind << "\n" << log("coordinator");
  for (const char* honest : {"honest-a", "honest-b"})
    EXPECT_EQ(count(honest, "reason IN ('recompute_mismatch', 'not_sampled', 'bad_norm', 'malformed', 'bad_reward')"), 0)
        << honest << "\n" << log("coordinator");
  EXPECT_GE(count("honest-a", "accepted = 1") + count("honest-b", "accepted = 1"), r.steps);
}

// Adaptive trust: a poisoner, new, is audited at its first update and banned; an honest peer is
// audited on each of its first trust_after updates, then on a shrinking share, and its record
// (the ledger's `audited` column, /status audit_probability) says so.
TEST_F(E2E, AdaptiveTrustAuditsNewKeysFullyAndTrustedOnesLess) {
  Round r;
  r.steps = 6;
  r.prompts = 4;
  r.adaptive_trust = true;
  r.trust_after = 2;
  r.recompute_fraction = 0;  // no floor: trust decides alone
  r.ban_after = 1;
  auto ep = start_coordinator(write_config(r));
  start_node(ep, "poisoner", {"--fault", "poison", "--max-batch", "1"});
  ASSERT_TRUE(wait_until("SELECT COUNT(*) FROM updates WHERE reason = 'recompute_mismatch'", 1)) << log("coordinator");
  start_node(ep, "honest", {"--max-batch", "1"});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);
  Db db(ledger());
  const std::string h = key_hex("honest");
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE peer = '" + key_hex("poisoner") + "' AND accepted = 1"), 0);
  const auto rows = db.rows("SELECT audited FROM updates WHERE peer = '" + h + "' AND accepted = 1 ORDER BY id");
  ASSERT_GE(rows.size(), 12u);  // 24 groups in leases of one
  EXPECT_EQ(rows[0][0], "1");
  EXPECT_EQ(rows[1][0], "1");
  int64_t audited = 0;
  for (const auto& row : rows) audited += row[0] == "1";
  // Expected about 2 × (1 + ln(n / 2)) ≈ 5 of 24: all of them would mean trust never grew.
  EXPECT_LT(audited, static_cast<int64_t>(rows.size()) - 4) << audited << " of " << rows.size();
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM updates WHERE peer = '" + h + "' AND accepted = 0 AND "
                     "reason IN ('recompute_mismatch', 'not_sampled')"),
            0);
}

// Validators: the audits are recomputed by peers, not the coordinator. Honest validators catch a
// lazy peer (its completions are not what the version it claims samples) and a copycat (a
// colluder's gradient re-signed over its own honest completions); a rubber-stamping validator,
// whose reports contradict the coordinator's own recomputation, is refused as bad_audit; the
// round completes with each group once, and the coordinator recomputed only to settle
// disagreements (and spot checks). A Sybil (one process, many keys) comes back with a fresh key
// each time one is banned, and each is banned in turn.
TEST_F(E2E, ValidatorPeersAuditAndCatchALazyPeerACopycatAndALyingValidator) {
  Round r;
  r.steps = 12;
  r.prompts = 8;
  r.min_peers = 7;  // the first lease waits for all seven: each takes part from version 0
  r.recompute_fraction = 1.0;
  r.ban_after = 1;
  r.validators = true;
  r.validator_check_fraction = 0;  // the coordinator recomputes disagreements only
  r.validator_timeout = 60;        // a validator always reports here: no fallback
  auto ep = start_coordinator(write_config(r));
  const fs::path collude = dir_ / "collude";
  fs::create_directories(collude);
  // Two honest validators; the colluder (honest work, its gradients left for the copycat); the
  // lazy peer, which keeps version 0 and is caught by the log-probabilities of its completions
  // (a step apart at lr 1e-3 they differ by far more than FP32 rounding) or by re-sampling; the
  // copycat; the rubber stamp.
  start_node(ep, "honest-a", {"--max-batch", "2"});
  start_node(ep, "honest-b", {"--max-batch", "2"});
  start_node(ep, "colluder", {"--max-batch", "2", "--collude-dir", collude.string()});
  start_node(ep, "lazy", {"--fault", "lazy", "--max-batch", "1"});
  start_node(ep, "copycat", {"--fault", "copycat", "--max-batch", "2", "--collude-dir", collude.string()});
  start_node(ep, "stamp", {"--fault", "rubber-stamp", "--max-batch", "1"});
  start_node(ep, "sybil", {"--fault", "sybil", "--max-batch", "1"});
  ASSERT_EQ(wait_coordinator(), 0) << log("coordinator");
  expect_each_group_counted_once(r);

  Db db(ledger());
  auto count = [&](const std::string& who, const std::string& where) {
    return db.count("SELECT COUNT(*) FROM updates WHERE peer = '" + key_hex(who) + "' AND " + where);
  };
  // The lazy peer is caught by whichever comes first: its own update refused not_sampled (the
  // log-probabilities of its completions), or, when it validates before its update is judged, its
  // reports (computed on the version it kept) contradicted by the coordinator's recomputation and
  // refused bad_audit (seen once in a full ctest run on 2 cores).
  const int64_t lazy_audits = db.count("SELECT COUNT(*) FROM refusals WHERE reason = 'bad_audit' AND peer = '" +
                                       key_hex("lazy") + "'");
  EXPECT_GE(count("lazy", "reason = 'not_sampled'") + lazy_audits, 1) << log("lazy") << log("coordinator");
  EXPECT_GE(count("copycat", "reason = 'recompute_mismatch'"), 1) << log("copycat") << log("coordinator");
  for (const char* honest : {"honest-a", "honest-b", "colluder"})
    EXPECT_EQ(count(honest, "reason IN ('recompute_mismatch', 'not_sampled', 'bad_norm', 'malformed', 'bad_reward')"), 0)
        << honest << "\n" << log("coordinator");
  // The Sybil's keys, one after the other: each refused for its reversed gradient and banned.
  const int64_t sybil_keys = db.count("SELECT COUNT(*) FROM peers WHERE name = 'sybil'");
  EXPECT_GE(sybil_keys, 2) << log("sybil");
  EXPECT_EQ(db.count("SELECT COUNT(DISTINCT u.peer) FROM updates u JOIN peers p ON p.peer = u.peer "
                     "WHERE p.name = 'sybil' AND u.reason = 'recompute_mismatch'"),
            db.count("SELECT COUNT(DISTINCT r.peer) FROM refusals r JOIN peers p ON p.peer = r.peer "
                     "WHERE p.name = 'sybil' AND r.reason = 'banned'"))
      << log("coordinator");
  // The rubber stamp's made-up reports contradicted the coordinator's recomputation: refused as
  // bad_audit and banned (ban_after = 1).
  EXPECT_GE(db.count("SELECT COUNT(*) FROM refusals WHERE reason = 'bad_audit' AND peer = '" + key_hex("stamp") + "'"), 1)
      << log("stamp") << log("coordinator");
  EXPECT_GE(db.count("SELECT COUNT(*) FROM refusals WHERE reason = 'banned' AND peer = '" + key_hex("stamp") + "'"), 1);
  for (const char* honest : {"honest-a", "honest-b", "colluder"})
    EXPECT_EQ(db.count("SELECT COUNT(*) FROM refusals WHERE reason = 'bad_audit' AND peer = '" + key_hex(honest) + "'"), 0)
        << honest << "\n" << log("coordinator");
  // Audits went to validators and their reports decided most of them: the coordinator recomputed
  // only the disagreements.
  const std::string clog = log("coordinator");
  auto occurrences = [&](const std::string& needle) {
    int64_t n = 0;
    for (size_t at = clog.find(needle); at != std::string::npos; at = clog.find(needle, at + 1)) ++n;
    return n;
  };
  const int64_t agreed = occurrences(": agrees");
  const int64_t recomputed = occurrences("coordinator: recomputed lease");
  EXPECT_GE(agreed, r.steps) << clog;
  EXPECT_LT(recomputed, agreed) << clog;
  // An audit falls back to the coordinator at once when no other peer is connected (the first
  // one's, here), never after waiting out validator_timeout_s.
  EXPECT_EQ(occurrences("after 60.0 s"), 0) << clog;
}

}  // namespace
}  // namespace cohort::coordinator
