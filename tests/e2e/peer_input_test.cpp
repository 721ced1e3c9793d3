// Findings of an independent client (one written from docs/PROTOCOL.md alone), replayed against a
// live coordinator process over the real Noise channel: a signed, otherwise valid update with a
// NaN loss, one whose reward statistics contradict its completions, a sequence lower than an
// accepted one, and a display name carrying newlines, NUL, terminal escapes and 205 KB. Each is
// refused with its reason or escaped and capped where it is written (log and ledger). Also: a
// node given round settings it cannot use ends with exit code 1 and names the field.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <chrono>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "coordinator/coordinator.h"
#include "coordinator/ledger.h"
#include "exchange/round_settings.h"
#include "exchange/seeds.h"
#include "grpo/checkpoint.h"
#include "grpo/model.h"
#include "grpo/scoring.h"
#include "grpo/tokenizer.h"
#include "protocol/channel.h"
#include "protocol/identity.h"
#include "protocol/signed_update.h"
#include "tests/support/tiny_base.h"
#include "tools/local_cluster.h"

namespace cohort {
namespace {

namespace fs = std::filesystem;
using tools::Subprocess;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class PeerInput : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("cohort-peer-input-" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "-" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    coord_ = Subprocess();
    if (!HasFailure()) fs::remove_all(dir_);
  }

  tools::Endpoint start_coordinator(int ban_after = 100, int max_peers = 1000) {
    grpo::Model m(test::tiny_model_config(), 7);
    grpo::save_model((dir_ / "base").string(), m);
    std::ofstream(dir_ / "round.toml")
        << "[round]\nid = \"pi\"\nsteps = 50\nprompts_per_step = 8\n"
        << "data_dir = \"" << (dir_ / "round").string() << "\"\n"
        << "[network]\nlisten = \"127.0.0.1:0\"\nmax_peers = " << max_peers << "\n"
        << "[model]\npath = \"" << (dir_ / "base").string() << "\"\n"
        << "[task]\nname = \"arith\"\n"
        << "[grpo]\ngroup_size = 2\nloss = \"grpo\"\ngradient_codec = \"raw\"\n"
        << "[sampling]\nmax_new_tokens = 16\n"
        << "[verification]\nban_after = " << ban_after << "\n";
    coord_ = Subprocess::spawn({COHORT_BIN, "coordinator", "serve", "--config",
                                (dir_ / "round.toml").string(), "--threads", "1"},
                               (dir_ / "coordinator.log").string());
    return tools::wait_for_endpoint((dir_ / "round").string(), 120, coord_.pid());
  }

  fs::path dir_;
  Subprocess coord_;
};

// A hand-written client: joins, asks for leases, and builds updates from the settings alone.
struct Client {
  protocol::Identity id = protocol::Identity::generate();
  protocol::BlockingChannel ch;
  exchange::RoundSpec spec;
  std::unique_ptr<grpo::Task> task;
  std::unique_ptr<grpo::Tokenizer> tok;
  wire::WeightManifest manifest;
  uint64_t next_id = 1;

  Client(const tools::Endpoint& ep, const std::string& display_name)
      : ch(protocol::BlockingChannel::connect(
            ep.host, static_cast<uint16_t>(ep.port), id,
            {.expected_peer = protocol::PeerId::parse(ep.coordinator_key)})) {
    wire::Envelope join;
    join.set_id(next_id++);
    join.mutable_join_request()->set_display_name(display_name);
    ch.send(join);
    const wire::Envelope reply = ch.receive();
    EXPECT_TRUE(reply.has_join_reply());
    spec = exchange::read_round_settings(reply.join_reply().settings());
    task = grpo::make_task(spec.grpo.task);
    tok = grpo::make_tokenizer("chars");
    wire::Envelope m;
    m.set_id(next_id++);
    m.mutable_manifest_request();
    ch.send(m);
    manifest.ParseFromString(ch.receive().manifest().body());
  }

  wire::WorkLease lease() {
    for (;;) {
      wire::Envelope w;
      w.set_id(next_id++);
      w.mutable_work_request();
      ch.send(w);
      const wire::Envelope r = ch.receive();
      if (r.has_work_lease()) return r.work_lease();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // An honest-looking update for the lease: every completion the task's reference answer (its
  // reward recomputed with the coordinator's own verifier), a zero gradient sum.
  wire::GradientUpdate update(const wire::WorkLease& l, uint64_t sequence,
                              const protocol::PeerId& coordinator) {
    wire::GradientUpdate u;
    u.set_round_id(l.round_id());
    u.set_lease_id(l.lease_id());
    u.set_policy_version(l.policy_version());
    u.set_peer(id.id().bytes().data(), id.id().bytes().size());
    u.set_sequence(sequence);
    u.set_recipient(coordinator.bytes().data(), coordinator.bytes().size());
    double sum = 0, sq = 0, lo = 1e300, hi = -1e300;
    for (uint64_t p : l.prompt_indices()) {
      const grpo::Prompt prompt = task->train_prompt(p);
      for (uint32_t c = 0; c < l.group_size(); ++c) {
        std::vector<int64_t> ids = tok->encode(task->reference_completion(prompt));
        ids.push_back(tok->eos_id());
        auto* d = u.add_completions();
        d->set_prompt_index(p);
        d->set_completion(c);
        for (int64_t t : ids) d->add_token_ids(static_cast<uint32_t>(t));
        const auto h = exchange::completion_digest(std::span<const int64_t>(ids));
        d->set_blake2b(h.data(), h.size());
        const auto r = static_cast<float>(grpo::score_completion(*tok, *task, prompt, ids).total);
        d->set_reward(r);
        sum += r, sq += double(r) * r, lo = std::min<double>(lo, r), hi = std::max<double>(hi, r);
      }
    }
    const double n = u.completions_size();
    u.set_units(static_cast<uint64_t>(n));  // loss = grpo: one unit per completion
    u.set_sequences(static_cast<uint64_t>(n));
    uint64_t tokens = 0;
    for (const auto& c : u.completions()) tokens += c.token_ids_size();
    u.set_tokens(tokens);
    auto* rs = u.mutable_rewards();
    rs->set_count(static_cast<uint64_t>(n));
    rs->set_mean(sum / n);
    rs->set_std(std::sqrt(std::max(0.0, sq / n - (sum / n) * (sum / n))));
    rs->set_min(lo);
    rs->set_max(hi);
    for (const auto& e : manifest.tensors()) {
      auto* t = u.add_tensors();
      t->set_name(e.name());
      t->set_dtype(wire::DTYPE_F32);
      *t->mutable_shape() = e.shape();
      t->set_codec(wire::CODEC_RAW);
      t->set_payload(std::string(e.size_bytes(), '\0'));
    }
    return u;
  }

  wire::Ack send(wire::GradientUpdate u) {
    wire::Envelope e;
    e.set_id(next_id++);
    *e.mutable_update() = protocol::sign_update(std::move(u), id);
    ch.send(e);
    const wire::Envelope a = ch.receive();
    EXPECT_TRUE(a.has_ack());
    return a.ack();
  }
};

TEST_F(PeerInput, IndependentClientFindingsAreRefusedOrEscaped) {
  const tools::Endpoint ep = start_coordinator();
  const auto coordinator_id = protocol::PeerId::parse(ep.coordinator_key);
  std::string name = "mallory\n[info] coordinator: peer 0000 banned\x1b[31m";
  name.push_back('\0');
  name += std::string(205 * 1024, 'A');
  const auto log_before = fs::file_size(dir_ / "coordinator.log");
  Client c(ep, name);

  auto l1 = c.lease();
  auto nan_loss = c.update(l1, 1000, coordinator_id);
  nan_loss.set_loss(std::numeric_limits<double>::quiet_NaN());
  const wire::Ack a1 = c.send(nan_loss);
  EXPECT_EQ(a1.reason(), wire::ACK_MALFORMED) << a1.message();

  auto l2 = c.lease();
  auto lying_stats = c.update(l2, 1001, coordinator_id);
  lying_stats.mutable_rewards()->set_mean(lying_stats.rewards().mean() + 0.5);
  const wire::Ack a2 = c.send(lying_stats);
  EXPECT_EQ(a2.reason(), wire::ACK_BAD_REWARD) << a2.message();

  auto l3 = c.lease();
  const wire::Ack a3 = c.send(c.update(l3, 2000, coordinator_id));
  EXPECT_EQ(a3.reason(), wire::ACK_OK) << a3.message();

  auto l4 = c.lease();
  const wire::Ack a4 = c.send(c.update(l4, 1500, coordinator_id));  // below the accepted 2000
  EXPECT_EQ(a4.reason(), wire::ACK_REPLAYED) << a4.message();
  c.ch.close();

  // The display name: no forged line, no raw control bytes, capped.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string log = slurp(dir_ / "coordinator.log");
  const std::string added = log.substr(static_cast<size_t>(log_before));
  EXPECT_EQ(added.find("\n[info] coordinator: peer 0000 banned"),
            std::string::npos);  // no forged line
  EXPECT_EQ(added.find('\x1b'), std::string::npos);
  EXPECT_EQ(added.find('\0'), std::string::npos);
  EXPECT_NE(added.find("mallory\\x0a[info]"), std::string::npos) << added.substr(0, 2000);
  EXPECT_LT(added.size(), 64u * 1024) << "the log grew by " << added.size() << " bytes";
  coordinator::Ledger ledger(coordinator::ledger_path((dir_ / "round").string()));
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(ledger.handle(), "SELECT name FROM peers", -1, &st, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  const std::string stored = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  EXPECT_LT(stored.size(), 256u);
  EXPECT_EQ(stored.find('\n'), std::string::npos);
  EXPECT_EQ(stored.rfind("mallory\\x0a", 0), 0u);
}

// An admitted peer that hoards or churns leases (an independent client's findings: looping
// `holding: [every lease received]` collected 12 leases in 10 s; looping `holding: ["x"]` made tens
// of thousands of lease rows). It holds at most two, and asking for more while holding two, naming
// a lease never issued to it, or letting leases go again and again are each refused as
// misbehaviour; the third such refusal bans the peer, its leases go back to the pool at once, and
// the ledger's lease rows stay a handful.
TEST_F(PeerInput, LeaseHoardingAndChurnAreRefusedAndBanned) {
  const tools::Endpoint ep = start_coordinator(/*ban_after=*/3);
  Client c(ep, "hoarder");
  auto ask = [&](const std::vector<std::string>& holding) {
    wire::Envelope w;
    w.set_id(c.next_id++);
    auto* wr = w.mutable_work_request();
    for (const auto& h : holding) wr->add_holding(h);
    c.ch.send(w);
    return c.ch.receive();
  };
  const std::string l1 = c.lease().lease_id();
  wire::Envelope r = ask({l1});  // asking ahead while computing l1: honest
  ASSERT_TRUE(r.has_work_lease()) << r.DebugString();
  const std::string l2 = r.work_lease().lease_id();
  r = ask({l1, l2});  // a third while holding two: refused (misbehaviour 1)
  ASSERT_TRUE(r.has_ack()) << r.DebugString();
  EXPECT_EQ(r.ack().reason(), wire::ACK_OVERLOADED);
  EXPECT_NE(r.ack().message().find("you hold 2 leases"), std::string::npos) << r.ack().message();
  r = ask({"x"});  // a lease never issued to this peer (misbehaviour 2)
  ASSERT_TRUE(r.has_ack()) << r.DebugString();
  EXPECT_EQ(r.ack().reason(), wire::ACK_UNKNOWN_LEASE);
  EXPECT_NE(r.ack().message().find("never issued to you"), std::string::npos) << r.ack().message();
  // Churn: naming nothing lets l1 and l2 go (2 in a row) and a lease comes; letting it go makes 3
  // and another comes; letting that one go makes 4, over the bound: refused (misbehaviour 3), banned.
  r = ask({});
  EXPECT_TRUE(r.has_work_lease()) << r.DebugString();
  r = ask({});
  EXPECT_TRUE(r.has_work_lease()) << r.DebugString();
  r = ask({});
  ASSERT_TRUE(r.has_ack()) << r.DebugString();
  EXPECT_EQ(r.ack().reason(), wire::ACK_UNKNOWN_LEASE);
  EXPECT_NE(r.ack().message().find("in a row"), std::string::npos) << r.ack().message();
  const wire::Envelope bye = c.ch.receive();  // after the refusal that bans
  ASSERT_TRUE(bye.has_error()) << bye.DebugString();
  EXPECT_EQ(bye.error().code(), wire::ACK_BANNED);
  coord_.signal(SIGTERM);
  coord_.wait(30);
  coordinator::Ledger ledger(coordinator::ledger_path((dir_ / "round").string()));
  const auto counts = ledger.misbehaviour_counts();
  ASSERT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts.begin()->second, 3);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(ledger.handle(), "SELECT COUNT(*) FROM leases", -1, &st, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(st, 0), 4);  // l1, l2 and the two the churn got
  sqlite3_finalize(st);
  EXPECT_TRUE(ledger.leases_in_state("active").empty());  // all back in the pool
}

// A full round says so: past [network] max_peers a join is answered admitted = false with
// ACK_OVERLOADED and a sentence (a node tries again with backoff), and there is room again once a
// peer leaves.
TEST_F(PeerInput, JoinBeyondMaxPeersIsRefusedOverloadedUntilThereIsRoom) {
  const tools::Endpoint ep = start_coordinator(/*ban_after=*/3, /*max_peers=*/1);
  auto first = std::make_unique<Client>(ep, "first");
  const protocol::Identity second = protocol::Identity::generate();
  auto join = [&] {
    auto ch = protocol::BlockingChannel::connect(
        ep.host, static_cast<uint16_t>(ep.port), second,
        {.expected_peer = protocol::PeerId::parse(ep.coordinator_key)});
    wire::Envelope j;
    j.set_id(1);
    j.mutable_join_request()->set_display_name("second");
    ch.send(j);
    return ch.receive().join_reply();
  };
  const wire::JoinReply full = join();
  EXPECT_FALSE(full.admitted());
  EXPECT_EQ(full.reason(), wire::ACK_OVERLOADED);
  EXPECT_NE(full.message().find("the round is full"), std::string::npos) << full.message();
  first->ch.close();
  first.reset();
  bool admitted = false;
  for (int i = 0; i < 50 && !admitted; ++i) {  // the coordinator notices the close
    admitted = join().admitted();
    if (!admitted) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(admitted);
}

// A stand-in coordinator that admits a node and sends it settings with one bad field.
TEST_F(PeerInput, MalformedRoundSettingEndsTheNodeWithExitCodeOneNamingTheField) {
  const protocol::Identity coordinator = protocol::Identity::generate();
  exchange::RoundSpec spec;
  spec.round_id = "bad";
  spec.grpo.group_size = 2;
  spec.model_config_json = test::tiny_model_config().to_json();
  wire::RoundSettings settings = exchange::make_round_settings(spec);
  settings.set_top_p(7.5);  // outside (0, 1]
  asio::io_context io;
  protocol::Server server(io.get_executor(),
                          asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0),
                          coordinator, {}, [&](protocol::Channel ch) -> asio::awaitable<void> {
                            try {
                              const wire::Envelope join = co_await ch.receive();
                              wire::Envelope r;
                              r.set_reply_to(join.id());
                              r.mutable_join_reply()->set_admitted(true);
                              *r.mutable_join_reply()->mutable_settings() = settings;
                              co_await ch.send(r);
                              (void)co_await ch.receive();  // until the node hangs up
                            } catch (const std::exception&) {
                            }
                          });
  server.start();
  std::thread net([&] { io.run(); });
  const std::string key = (dir_ / "node.key").string();
  Subprocess node = Subprocess::spawn(
      {COHORT_BIN, "node", "run", "--coordinator", "127.0.0.1:" + std::to_string(server.port()),
       "--coordinator-key", coordinator.id().hex(), "--key", key, "--give-up-after", "20"},
      (dir_ / "node.log").string());
  const auto rc = node.wait(60);
  server.stop();
  io.stop();
  net.join();
  ASSERT_TRUE(rc.has_value()) << "the node did not end";
  EXPECT_EQ(*rc, 1);
  const std::string out = slurp(dir_ / "node.log");
  EXPECT_NE(out.find("round setting 'top_p'"), std::string::npos) << out;
}

}  // namespace
}  // namespace cohort
