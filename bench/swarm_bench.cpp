// `cohort bench swarm`: one coordinator process and N simulated peers in this process, over real
// loopback TCP, each with its own identity and Noise channel, speaking the real protocol: join,
// heartbeats, work requests, the signed manifest of each version it works on (and its blobs with
// --weights channel), and signed updates that pass every check the coordinator makes short of an
// audit (completions scored by the task's own verifier, counts and reward statistics exact,
// small finite gradients in the round's codec). A think time stands in for compute. Peers connect
// from many loopback addresses (127.10.x.y), as many machines would, so the coordinator's
// per-address limits apply as they would in a public round.
//
// Optionally a real `cohort node` works beside the swarm, and attackers run from other addresses
// (127.20.x.y): half-open connections, slowloris handshakes, a reconnect storm of fresh keys,
// peers that take a lease and vanish. Reports: handshakes per second, connected peers over time,
// lease and Ack round trips (p50/p99), updates accepted per second, coordinator CPU, RSS and file
// descriptors per connected peer, refusals by reason, the real node's throughput.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "bench/bench.h"
#include "common/check.h"
#include "common/clock.h"
#include "common/cpu_allocator.h"
#include "common/quantile.h"
#include "exchange/gradient_wire.h"
#include "exchange/manifest.h"
#include "exchange/param_layout.h"
#include "exchange/rewards.h"
#include "exchange/round_settings.h"
#include "exchange/seeds.h"
#include "exchange/weights.h"
#include "grpo/checkpoint.h"
#include "grpo/commands.h"
#include "grpo/model.h"
#include "grpo/scoring.h"
#include "grpo/tokenizer.h"
#include "node/link.h"
#include "node/weight_sync.h"
#include "protocol/channel.h"
#include "protocol/signed_update.h"
#include "tools/local_cluster.h"

namespace cohort::bench {
namespace {

namespace fs = std::filesystem;
using asio::ip::tcp;
using nlohmann::json;
using tools::Subprocess;

struct SwarmArgs {
  int peers = 100;
  double seconds = 30;       // the work phase
  double think_s = 5;        // per lease, standing in for compute (uniform ±20 %)
  int prompts_per_lease = 1; // what each simulated peer asks for (WorkRequest.max_prompts)
  int prompts_per_step = 0;  // 0: two leases per simulated peer (at least 8)
  int group_size = 4;
  int max_new_tokens = 16;
  std::string codec = "fp8";
  std::string weights = "manifest";  // none | manifest | channel
  int addresses = 250;               // loopback source addresses the peers spread over
  int connect_concurrency = 64;      // handshakes in flight from the swarm at once
  double idle_s = 3;                 // all peers connected, none working: RSS per peer
  std::string ledger_sync = "full";
  bool real_node = false;
  std::string attack;  // half-open | slowloris | storm | vanish | vanish-close
  int attackers = 0;
  int attack_addresses = 32;
  double attack_lead_s = 3;  // the attack runs this long before the real node starts
  std::string extra_config;  // appended to round.toml, after its [network] table
  grpo::ModelConfig shape = grpo::task_model_config();  // the random-init model
  std::string dir;
  std::string json_out;
};

// 127.<net>.<i / 250>.<1 + i % 250>: loopback addresses Linux routes without configuration.
asio::ip::address loopback_address(int net, int i) {
  return asio::ip::make_address_v4(asio::ip::address_v4::bytes_type{
      127, static_cast<unsigned char>(net), static_cast<unsigned char>(i / 250),
      static_cast<unsigned char>(1 + i % 250)});
}

// The coordinator process as /proc shows it.
struct ProcSample {
  double rss_bytes = 0, cpu_s = 0;
  int64_t fds = 0;
};

ProcSample sample_process(pid_t pid) {
  ProcSample s;
  std::ifstream status(fmt::format("/proc/{}/status", pid));
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmRSS:", 0) == 0) s.rss_bytes = std::stod(line.substr(6)) * 1024;
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string all((std::istreambuf_iterator<char>(stat)), {});
  // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
  const size_t close = all.rfind(')');
  if (close != std::string::npos) {
    std::istringstream in(all.substr(close + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int f = 3; f <= 15 && in >> field; ++f) {
      if (f == 14) utime = std::stod(field);
      if (f == 15) stime = std::stod(field);
    }
    s.cpu_s = (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }
  std::error_code ec;
  for (auto it = fs::directory_iterator(fmt::format("/proc/{}/fd", pid), ec);
       !ec && it != fs::directory_iterator(); it.increment(ec))
    ++s.fds;
  return s;
}

// What the simulated peers saw. One io thread drives them all: no locks.
struct SwarmStats {
  std::vector<double> handshake_ms, join_ms, lease_ms, ack_ms;
  std::vector<std::pair<double, double>> slow_leases;  // (unix s when asked, ms) over 50 ms
  int64_t connected = 0, peak_connected = 0, joined = 0, join_refused = 0, connect_failed = 0;
  int64_t leases = 0, no_work = 0, updates_sent = 0, accepted = 0, manifests = 0;
  int64_t disconnected = 0;  // sessions the coordinator ended or that failed mid-round
  double update_bytes = 0, weight_bytes = 0;
  std::map<std::string, int64_t> refusals;  // AckReason name → updates
  std::map<std::string, int64_t> errors;    // why sessions ended early → count
  uint64_t first_version = 0, last_version = 0;
  // Attackers.
  int64_t attack_connections = 0, attack_closed = 0, attack_joins = 0, attack_leases = 0,
          attack_refused = 0;
  std::vector<double> attack_hold_s;  // how long the coordinator let a connection live
};

// What the round's settings give the simulated peers: the task and tokenizer to score
// completions, and a few pre-encoded gradients in the round's codec (the coordinator decodes and
// checks every update; encoding a fresh one per update would only measure this process).
struct RoundContext {
  exchange::RoundSpec spec;
  std::unique_ptr<grpo::Task> task;
  std::unique_ptr<grpo::Tokenizer> tok;
  exchange::ParamLayout layout;
  std::vector<google::protobuf::RepeatedPtrField<wire::EncodedTensor>> gradients;
};

class Swarm {
 public:
  Swarm(const SwarmArgs& a, asio::io_context& io, tcp::endpoint ep, protocol::PeerId coordinator)
      : a_(a), io_(io), ep_(ep), coordinator_(coordinator), go_(io) {
    go_.expires_at(asio::steady_timer::time_point::max());
  }

  SwarmStats stats;

  void go() {
    working_ = true;
    stats.first_version = stats.last_version;
    go_.cancel();
  }
  void stop() {
    stopping_ = true;
    for (auto& s : held_sockets_)
      if (auto p = s.lock()) {
        asio::error_code ec;
        p->close(ec);
      }
  }

  asio::awaitable<void> honest_peer(int i);
  asio::awaitable<void> attacker(int j);

 private:
  // Waits until go().
  asio::awaitable<void> wait_go() {
    if (working_ || stopping_) co_return;
    asio::error_code ec;
    co_await go_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  // Sleeps `s` seconds or until stop(), sending a heartbeat on `link` every `beat` seconds.
  asio::awaitable<void> think(node::CoordinatorLink& link, double s, double beat);
  asio::awaitable<wire::Envelope> request(node::CoordinatorLink& link, const wire::Envelope& e) {
    co_await link.send(e);
    co_return co_await link.receive();
  }
  void init_round(const wire::RoundSettings& s);
  [[nodiscard]] protocol::SealedUpdate build_update(const protocol::Identity& id,
                                                    const wire::WorkLease& lease,
                                                    uint64_t sequence);
  asio::awaitable<void> fetch_weights(node::CoordinatorLink& link, uint64_t version,
                                      std::optional<uint64_t>& held);
  asio::awaitable<void> raw_attacker(int j, bool trickle);
  asio::awaitable<void> session_attacker(int j, bool vanish, bool close_at_once);
  void see_version(uint64_t v) { stats.last_version = std::max(stats.last_version, v); }

  const SwarmArgs& a_;
  asio::io_context& io_;
  tcp::endpoint ep_;
  protocol::PeerId coordinator_;
  asio::steady_timer go_;  // cancelled by go(): every waiting peer starts
  bool working_ = false, stopping_ = false;
  std::unique_ptr<RoundContext> round_;
  std::vector<std::weak_ptr<tcp::socket>> held_sockets_;
};

void Swarm::init_round(const wire::RoundSettings& s) {
  if (round_) return;
  auto r = std::make_unique<RoundContext>();
  r->spec = exchange::read_round_settings(s);
  r->task = grpo::make_task(r->spec.grpo.task);
  if (!r->spec.tokenizer_files.empty())
    throw Error("bench swarm runs built-in models only (this round names tokenizer files)");
  r->tok = grpo::make_tokenizer(r->spec.model.tokenizer.empty() ? "chars" : r->spec.model.tokenizer);
  const grpo::Model model(r->spec.model, 1);
  r->layout = exchange::ParamLayout(model);
  exchange::GradientEncoder enc(r->layout, r->spec.codec);
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.0f, 1e-4f);
  std::vector<float> flat(r->layout.total);
  for (int k = 0; k < 4; ++k) {
    for (float& x : flat) x = noise(rng);
    enc.encode(flat, r->gradients.emplace_back());
  }
  round_ = std::move(r);
}

// The lease's completions, as an honest node would report them: completion 0 of each group is
// the task's reference solution, the others random digits; every reward from the task's verifier.
protocol::SealedUpdate Swarm::build_update(const protocol::Identity& id,
                                           const wire::WorkLease& lease, uint64_t sequence) {
  const RoundContext& r = *round_;
  wire::GradientUpdate u;
  u.set_round_id(r.spec.round_id);
  u.set_lease_id(lease.lease_id());
  u.set_policy_version(lease.policy_version());
  u.set_peer(id.id().bytes().data(), id.id().bytes().size());
  u.set_sequence(sequence);
  u.set_timestamp_unix_ms(static_cast<uint64_t>(unix_ms()));
  u.set_recipient(coordinator_.bytes().data(), coordinator_.bytes().size());
  const int g = r.spec.grpo.group_size;
  const int max_new = r.spec.grpo.sampling.max_new_tokens;
  const int64_t stop = r.tok->stop_ids().front();
  std::mt19937 rng(static_cast<uint32_t>(sequence));
  std::vector<float> rewards;
  double tokens = 0;
  for (uint64_t idx : lease.prompt_indices()) {
    const grpo::Prompt p = r.task->train_prompt(idx);
    for (int c = 0; c < g; ++c) {
      std::string text = r.task->reference_completion(p);
      if (c > 0) {
        text.clear();
        for (int d = std::uniform_int_distribution<int>(1, 4)(rng); d > 0; --d)
          text += static_cast<char>('0' + std::uniform_int_distribution<int>(0, 9)(rng));
      }
      std::vector<int64_t> ids = r.tok->encode(text);
      if (static_cast<int>(ids.size()) > max_new - 1) ids.resize(static_cast<size_t>(max_new - 1));
      ids.push_back(stop);
      const auto reward = static_cast<float>(grpo::score_completion(*r.tok, *r.task, p, ids).total);
      auto* out = u.add_completions();
      out->set_prompt_index(idx);
      out->set_completion(static_cast<uint32_t>(c));
      for (int64_t t : ids) out->add_token_ids(static_cast<uint32_t>(t));
      const protocol::Digest d = exchange::completion_digest(std::span<const int64_t>(ids));
      out->set_blake2b(d.data(), d.size());
      out->set_reward(reward);
      rewards.push_back(reward);
      tokens += static_cast<double>(ids.size());  // every completion ends with a stop: none truncated
    }
  }
  const auto sequences = static_cast<double>(rewards.size());
  u.set_units(static_cast<uint64_t>(grpo::loss_units(r.spec.grpo.loss.loss, sequences, tokens)));
  u.set_sequences(static_cast<uint64_t>(sequences));
  u.set_tokens(static_cast<uint64_t>(tokens));
  *u.mutable_rewards() = exchange::reward_stats(rewards);
  u.set_loss(0.0);
  u.set_compute_precision("fp32");
  *u.mutable_tensors() = r.gradients[sequence % r.gradients.size()];
  return protocol::seal_update(std::move(u), id);
}

asio::awaitable<void> Swarm::think(node::CoordinatorLink& link, double s, double beat) {
  asio::steady_timer t(io_);
  const double end = mono_s() + s;
  double next_beat = mono_s() + beat;
  // Slices of at most 0.25 s: the peer notices stop() soon, and leaves.
  for (double now = mono_s(); !stopping_ && now < end; now = mono_s()) {
    const double wait = std::min({end - now, next_beat - now, 0.25});
    t.expires_after(std::chrono::duration_cast<asio::steady_timer::duration>(
        std::chrono::duration<double>(std::max(0.0, wait))));
    asio::error_code ec;
    co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (!stopping_ && mono_s() >= next_beat && mono_s() < end) {
      wire::Envelope hb;
      hb.mutable_heartbeat()->set_sent_unix_ms(static_cast<uint64_t>(unix_ms()));
      hb.mutable_heartbeat()->set_status("computing");
      co_await link.send(hb);
      next_beat += beat;
    }
  }
}

// The signed manifest of `version` (what a node reads before fetching blobs from a mirror); with
// --weights channel also the blobs a node holding `held` needs, over the channel, each checked.
asio::awaitable<void> Swarm::fetch_weights(node::CoordinatorLink& link, uint64_t version,
                                           std::optional<uint64_t>& held) {
  wire::Envelope req;
  req.mutable_manifest_request()->set_policy_version(version);
  const wire::Envelope env = co_await request(link, req);
  if (!env.has_manifest()) throw Error("expected a manifest");
  const wire::WeightManifest m = protocol::verify_manifest(env.manifest(), coordinator_);
  ++stats.manifests;
  if (a_.weights == "channel") {
    const exchange::FetchPlan plan = exchange::plan_fetch(m, held);
    std::vector<wire::BlobRef> blobs;
    for (const auto* p : plan.patches) blobs.push_back(p->blob());
    if (plan.patches.empty() && !plan.nothing) blobs.assign(m.snapshot().begin(), m.snapshot().end());
    for (const wire::BlobRef& b : blobs) {
      const std::string bytes = co_await node::fetch_blob_over_channel(link, b);
      if (!exchange::bytes_match(b, bytes)) throw Error("a blob does not match its digest");
      stats.weight_bytes += static_cast<double>(bytes.size());
    }
  }
  held = m.policy_version();
}

asio::awaitable<void> Swarm::honest_peer(int i) {
  const protocol::Identity id = protocol::Identity::generate();
  protocol::ChannelOptions opt;
  opt.expected_peer = coordinator_;
  opt.local_address = loopback_address(10, i % a_.addresses);
  bool counted = false;
  try {
    const double t0 = mono_s();
    protocol::Channel ch = co_await protocol::Channel::connect(ep_, id, opt);
    node::ChannelLink link(ch);
    const double t1 = mono_s();
    stats.handshake_ms.push_back(1e3 * (t1 - t0));
    wire::Envelope join;
    join.mutable_join_request()->set_display_name(fmt::format("swarm{}", i));
    join.mutable_join_request()->mutable_capabilities()->set_software_version("cohort bench swarm");
    const wire::Envelope reply = co_await request(link, join);
    if (!reply.has_join_reply()) throw Error("expected a join reply");
    if (!reply.join_reply().admitted()) {
      ++stats.join_refused;
      ++stats.errors["not admitted: " + wire::AckReason_Name(reply.join_reply().reason())];
      co_return;
    }
    stats.join_ms.push_back(1e3 * (mono_s() - t1));
    see_version(reply.join_reply().policy_version());
    init_round(reply.join_reply().settings());
    ++stats.joined;
    counted = true;
    stats.peak_connected = std::max(stats.peak_connected, ++stats.connected);
    const double beat = reply.join_reply().heartbeat_interval_ms()
                            ? reply.join_reply().heartbeat_interval_ms() / 1e3
                            : 15.0;
    co_await wait_go();
    std::mt19937 rng(static_cast<uint32_t>(i));
    // Peers of a running round are at every point of their leases, not in step: each starts
    // somewhere within one think time.
    co_await think(link, a_.think_s * std::uniform_real_distribution<double>(0, 1)(rng), beat);
    std::optional<uint64_t> held;
    uint64_t sequence = 0;
    while (!stopping_) {
      wire::Envelope wr;
      wr.mutable_work_request()->set_max_prompts(static_cast<uint32_t>(a_.prompts_per_lease));
      wr.mutable_work_request()->set_policy_version(held.value_or(0));
      const double s0 = mono_s();
      const wire::Envelope env = co_await request(link, wr);
      if (env.has_leave()) break;  // the round is over
      if (env.has_ack()) {
        ++stats.no_work;
        see_version(env.ack().policy_version());
        continue;  // the coordinator already waited before saying so
      }
      if (!env.has_work_lease()) throw Error("expected a lease");
      stats.lease_ms.push_back(1e3 * (mono_s() - s0));
      if (stats.lease_ms.back() > 50) stats.slow_leases.emplace_back(unix_ms() / 1e3 - (mono_s() - s0), stats.lease_ms.back());
      ++stats.leases;
      const wire::WorkLease& lease = env.work_lease();
      if (a_.weights != "none" && held != lease.policy_version())
        co_await fetch_weights(link, lease.policy_version(), held);
      co_await think(link, a_.think_s * std::uniform_real_distribution<double>(0.8, 1.2)(rng), beat);
      if (stopping_) {
        wire::Envelope leave;
        leave.mutable_leave()->set_reason("bench over");
        co_await link.send(leave);
        break;
      }
      sequence = std::max(sequence + 1, static_cast<uint64_t>(unix_ms()) * 1000);
      const protocol::SealedUpdate su = build_update(id, lease, sequence);
      co_await node::send_sealed_update(link, su);
      const double sent = mono_s();
      const wire::Envelope ack = co_await link.receive();
      ++stats.updates_sent;
      stats.update_bytes += static_cast<double>(su.wire_bytes());
      if (!ack.has_ack()) throw Error("expected an Ack");
      stats.ack_ms.push_back(1e3 * (mono_s() - sent));
      see_version(ack.ack().policy_version());
      if (ack.ack().reason() == wire::ACK_OK)
        ++stats.accepted;
      else
        ++stats.refusals[wire::AckReason_Name(ack.ack().reason())];
    }
    ch.close();
  } catch (const std::exception& e) {
    if (!counted) ++stats.connect_failed;
    if (!stopping_ || !counted) {
      ++stats.disconnected;
      std::string why = e.what();
      ++stats.errors[why.substr(0, 80)];
    }
  }
  if (counted) --stats.connected;
}

// Attacks that never finish a handshake: connections that send nothing (half-open) or the
// preamble one byte a second (slowloris), reopened as soon as the coordinator closes them.
asio::awaitable<void> Swarm::raw_attacker(int j, bool trickle) {
  asio::steady_timer t(io_);
  const asio::ip::address from = loopback_address(20, j % a_.attack_addresses);
  while (!stopping_) {
    auto s = std::make_shared<tcp::socket>(io_);
    if (held_sockets_.size() > 4 * static_cast<size_t>(a_.attackers) + 64)
      std::erase_if(held_sockets_, [](const auto& w) { return w.expired(); });
    held_sockets_.push_back(s);
    asio::error_code ec;
    s->open(tcp::v4(), ec);
    if (!ec) s->bind(tcp::endpoint(from, 0), ec);
    if (!ec) co_await s->async_connect(ep_, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      t.expires_after(std::chrono::milliseconds(100));
      co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    ++stats.attack_connections;
    const double t0 = mono_s();
    if (trickle) {
      static constexpr char kBytes[] = "COHORT\x01\x01 slowly, one byte at a time ...........";
      for (size_t k = 0; !stopping_; k = (k + 1) % (sizeof(kBytes) - 1)) {
        co_await asio::async_write(*s, asio::buffer(kBytes + k, 1),
                                   asio::redirect_error(asio::use_awaitable, ec));
        if (ec) break;
        t.expires_after(std::chrono::seconds(1));
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
    } else {
      std::array<char, 256> sink{};  // the responder's preamble; then wait for the close
      while (!ec) co_await s->async_read_some(asio::buffer(sink), asio::redirect_error(asio::use_awaitable, ec));
    }
    if (!stopping_) {
      ++stats.attack_closed;
      stats.attack_hold_s.push_back(mono_s() - t0);
    }
  }
}

// Attacks through whole sessions, each with a fresh key: join and leave at once (a reconnect
// storm), or join, take a lease and vanish (silent with the connection open, or gone).
asio::awaitable<void> Swarm::session_attacker(int j, bool vanish, bool close_at_once) {
  asio::steady_timer t(io_);
  protocol::ChannelOptions opt;
  opt.expected_peer = coordinator_;
  opt.local_address = loopback_address(20, j % a_.attack_addresses);
  opt.limits.idle_timeout = std::chrono::hours(1);  // a vanished peer waits for the coordinator
  while (!stopping_) {
    const protocol::Identity id = protocol::Identity::generate();
    bool failed = false;
    try {
      protocol::Channel ch = co_await protocol::Channel::connect(ep_, id, opt);
      node::ChannelLink link(ch);
      ++stats.attack_connections;
      wire::Envelope join;
      join.mutable_join_request()->set_display_name("attacker");
      const wire::Envelope reply = co_await request(link, join);
      if (!reply.has_join_reply() || !reply.join_reply().admitted()) {
        ++stats.attack_refused;
        continue;
      }
      ++stats.attack_joins;
      if (!vanish) {
        ch.close();
        continue;
      }
      wire::Envelope wr;
      wr.mutable_work_request()->set_max_prompts(0);
      const wire::Envelope env = co_await request(link, wr);
      if (env.has_work_lease()) ++stats.attack_leases;
      if (close_at_once) {
        ch.close();
        continue;
      }
      const double t0 = mono_s();
      try {
        for (;;) (void)co_await link.receive();  // silent until the coordinator hangs up
      } catch (const std::exception&) {
      }
      if (!stopping_) {
        ++stats.attack_closed;
        stats.attack_hold_s.push_back(mono_s() - t0);
      }
    } catch (const std::exception&) {
      ++stats.attack_refused;
      failed = true;
    }
    if (failed) {  // refused at the door: a short pause, not a busy loop
      asio::error_code ec;
      t.expires_after(std::chrono::milliseconds(50));
      co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }
}

asio::awaitable<void> Swarm::attacker(int j) {
  if (a_.attack == "half-open") co_await raw_attacker(j, false);
  else if (a_.attack == "slowloris") co_await raw_attacker(j, true);
  else if (a_.attack == "storm") co_await session_attacker(j, false, false);
  else if (a_.attack == "vanish") co_await session_attacker(j, true, false);
  else if (a_.attack == "vanish-close") co_await session_attacker(j, true, true);
}

// Runs `io` until `done()` or `deadline` (mono_s), calling `tick` every 0.5 s.
void run_until(asio::io_context& io, double deadline, const std::function<bool()>& done,
               const std::function<void()>& tick) {
  double next_tick = mono_s();
  while (mono_s() < deadline && !(done && done())) {
    io.run_for(std::chrono::milliseconds(50));
    if (io.stopped()) io.restart();
    if (mono_s() >= next_tick) {
      tick();
      next_tick += 0.5;
    }
  }
}

std::string ms_pair(const std::vector<double>& v) {
  return fmt::format("p50 {:.1f} ms, p99 {:.1f} ms (n={})", quantile(v, 0.5), quantile(v, 0.99), v.size());
}

int run_swarm(const SwarmArgs& a) {
  static const std::set<std::string> kAttacks = {"", "half-open", "slowloris", "storm", "vanish", "vanish-close"};
  if (!kAttacks.count(a.attack)) throw Error("unknown --attack '" + a.attack + "'");
  if (a.weights != "none" && a.weights != "manifest" && a.weights != "channel")
    throw Error("--weights must be none, manifest or channel");
  if (a.addresses < 1 || a.addresses > 250 * 250 || a.attack_addresses < 1)
    throw Error("--addresses and --attack-addresses must be at least 1 (at most 62500)");
  const fs::path dir = a.dir.empty() ? fs::temp_directory_path() / fmt::format("cohort-bench-swarm-{}", ::getpid())
                                     : fs::path(a.dir);
  fs::remove_all(dir);
  fs::create_directories(dir);
  set_cpu_allocator_caching(false);
  {
    const grpo::Model m(a.shape, 1);
    grpo::save_model((dir / "base").string(), m);
  }
  // Two leases' worth per peer: the staleness window (2 steps at S = 1) then never runs dry while
  // the oldest step waits for its last updates, so no work request waits for work.
  const int prompts_per_step =
      a.prompts_per_step > 0 ? a.prompts_per_step : std::max(8, 2 * a.peers * a.prompts_per_lease);
  const std::string data = (dir / "round").string();
  std::string toml = fmt::format(
      "[round]\nid = \"swarm\"\nsteps = 1000000\nprompts_per_step = {}\nstaleness_bound = 1\n"
      "checkpoint_interval = 1000000\ndata_dir = \"{}\"\nlinger_s = 0\nledger_sync = \"{}\"\n"
      "[model]\npath = \"{}\"\n[task]\nname = \"arith\"\n"
      "[grpo]\ngroup_size = {}\ngradient_codec = \"{}\"\n[sampling]\nmax_new_tokens = {}\n"
      "[network]\nlisten = \"127.0.0.1:0\"\nstatus_listen = \"\"\nmax_peers = {}\n{}\n",
      prompts_per_step, data, a.ledger_sync, fs::absolute(dir / "base").string(), a.group_size,
      a.codec, a.max_new_tokens, std::max(1000, a.peers + a.attackers + 16), a.extra_config);
  std::ofstream(dir / "round.toml") << toml;
  const std::string exe = tools::self_executable();
  Subprocess coord = Subprocess::spawn(
      {exe, "coordinator", "serve", "--config", (dir / "round.toml").string(), "--threads", "1"},
      (dir / "coordinator.log").string());
  const tools::Endpoint ep = tools::wait_for_endpoint(data, 120, coord.pid());
  const protocol::PeerId coordinator = protocol::PeerId::parse(ep.coordinator_key);
  const tcp::endpoint endpoint(asio::ip::make_address(ep.host), static_cast<uint16_t>(ep.port));

  asio::io_context io;
  Swarm sw(a, io, endpoint, coordinator);
  std::vector<json> timeline;  // connected peers and the coordinator's RSS every 0.5 s
  const double start = mono_s();
  auto tick = [&] {
    const ProcSample p = sample_process(coord.pid());
    timeline.push_back({{"t", mono_s() - start}, {"connected", sw.stats.connected},
                        {"coordinator_rss_mb", p.rss_bytes / 1e6}, {"coordinator_fds", p.fds}});
  };
  const ProcSample before = sample_process(coord.pid());

  // Connect phase: every simulated peer joins, at most connect_concurrency handshakes at once.
  std::printf("bench swarm: %d peers over %d loopback addresses, think %.1f s, %d prompts/step, G=%d, "
              "%.1f M parameters, codec %s, weights %s%s\n",
              a.peers, a.addresses, a.think_s, prompts_per_step, a.group_size,
              double(a.shape.parameter_count()) / 1e6, a.codec.c_str(),
              a.weights.c_str(), a.attack.empty() ? "" : fmt::format(", attack {} x{}", a.attack, a.attackers).c_str());
  const double c0 = mono_s();
  int launched = 0;
  auto settled = [&] { return sw.stats.joined + sw.stats.join_refused + sw.stats.connect_failed; };
  while (launched < a.peers || settled() < a.peers) {
    // The first peer alone: its join reply sets up the round in this process (the model's layout
    // and the pre-encoded gradients, seconds for a large model), which would otherwise stall the
    // other handshakes past their timeout.
    const int concurrency = sw.stats.joined > 0 ? a.connect_concurrency : 1;
    while (launched < a.peers && launched - settled() < concurrency)
      asio::co_spawn(io, sw.honest_peer(launched++), asio::detached);
    io.run_for(std::chrono::milliseconds(5));
    if (io.stopped()) io.restart();
    if (mono_s() - c0 > 600) throw Error("bench swarm: peers still connecting after 600 s");
  }
  const double connect_s = mono_s() - c0;
  tick();
  // Idle: all connected, none working. What each connected peer costs the coordinator at rest.
  run_until(io, mono_s() + a.idle_s, nullptr, tick);
  const ProcSample idle = sample_process(coord.pid());
  const int64_t connected_idle = sw.stats.connected;

  // Work phase, with the attack and the real node if asked.
  for (int j = 0; j < a.attackers; ++j) asio::co_spawn(io, sw.attacker(j), asio::detached);
  if (a.attackers > 0 && !a.attack.empty()) run_until(io, mono_s() + a.attack_lead_s, nullptr, tick);
  std::optional<Subprocess> node;
  if (a.real_node)
    node = Subprocess::spawn({exe, "node", "run", "--coordinator", fmt::format("{}:{}", ep.host, ep.port),
                              "--coordinator-key", ep.coordinator_key, "--key", (dir / "node.key").string(),
                              "--name", "real", "--threads", "1", "--summary-out", (dir / "node.json").string(),
                              "--give-up-after", "60"},
                             (dir / "node.log").string());
  sw.go();
  const ProcSample w0 = sample_process(coord.pid());
  const double work0 = mono_s();
  const int64_t accepted0 = sw.stats.accepted;
  run_until(io, work0 + a.seconds, nullptr, tick);
  const double work_s = mono_s() - work0;
  const ProcSample w1 = sample_process(coord.pid());
  const int64_t accepted_in_window = sw.stats.accepted - accepted0;
  sw.stop();
  if (node) node->signal(SIGINT);
  // Let the peers finish what is in flight (an update waiting for its Ack) and leave.
  run_until(io, mono_s() + 30, [&] { return sw.stats.connected == 0; }, tick);
  io.stop();
  std::optional<int> node_rc;
  if (node) node_rc = node->wait(60);
  coord.signal(SIGTERM);
  coord.wait(60);
  json real;
  if (node) {
    std::ifstream in(dir / "node.json");
    if (in) real = json::parse(in);
  }

  const SwarmStats& s = sw.stats;
  const double idle_rss_per_peer = connected_idle > 0 ? (idle.rss_bytes - before.rss_bytes) / double(connected_idle) : 0;
  json refusals = json::object(), errors = json::object();
  for (const auto& [k, v] : s.refusals) refusals[k] = v;
  for (const auto& [k, v] : s.errors) errors[k] = v;
  json j = {
      {"peers", a.peers}, {"addresses", a.addresses}, {"think_s", a.think_s},
      {"parameters", a.shape.parameter_count()},
      {"prompts_per_step", prompts_per_step}, {"prompts_per_lease", a.prompts_per_lease},
      {"group_size", a.group_size}, {"codec", a.codec}, {"weights", a.weights}, {"ledger_sync", a.ledger_sync},
      {"joined", s.joined}, {"join_refused", s.join_refused}, {"connect_failed", s.connect_failed},
      {"connect_s", connect_s}, {"joins_per_s", connect_s > 0 ? double(s.joined) / connect_s : 0},
      {"handshake_p50_ms", quantile(s.handshake_ms, 0.5)}, {"handshake_p99_ms", quantile(s.handshake_ms, 0.99)},
      {"join_p50_ms", quantile(s.join_ms, 0.5)}, {"join_p99_ms", quantile(s.join_ms, 0.99)},
      {"peak_connected", s.peak_connected}, {"connected_idle", connected_idle},
      {"coordinator_rss_before_mb", before.rss_bytes / 1e6}, {"coordinator_rss_idle_mb", idle.rss_bytes / 1e6},
      {"coordinator_rss_per_idle_peer_kib", idle_rss_per_peer / 1024},
      {"coordinator_fds_idle", idle.fds},
      {"work_s", work_s}, {"leases", s.leases}, {"no_work_answers", s.no_work},
      {"lease_p50_ms", quantile(s.lease_ms, 0.5)}, {"lease_p99_ms", quantile(s.lease_ms, 0.99)},
      {"updates_sent", s.updates_sent}, {"accepted", s.accepted},
      {"accepted_per_s", work_s > 0 ? double(accepted_in_window) / work_s : 0},
      {"ack_p50_ms", quantile(s.ack_ms, 0.5)}, {"ack_p99_ms", quantile(s.ack_ms, 0.99)},
      {"refusals", refusals}, {"session_errors", errors}, {"disconnected", s.disconnected},
      {"versions", s.last_version - s.first_version}, {"manifests", s.manifests},
      {"update_bytes_mean", s.updates_sent ? s.update_bytes / double(s.updates_sent) : 0.0},
      {"weight_bytes", s.weight_bytes},
      {"coordinator_cpu_share", work_s > 0 ? (w1.cpu_s - w0.cpu_s) / work_s : 0},
      {"coordinator_cpu_ms_per_update", accepted_in_window > 0 ? 1e3 * (w1.cpu_s - w0.cpu_s) / double(accepted_in_window) : 0.0},
      {"coordinator_rss_work_mb", w1.rss_bytes / 1e6}, {"coordinator_max_rss_mb", coord.max_rss_bytes() / 1e6},
      {"attack", a.attack}, {"attackers", a.attackers}, {"attack_addresses", a.attack_addresses},
      {"attack_connections", s.attack_connections}, {"attack_closed", s.attack_closed},
      {"attack_joins", s.attack_joins}, {"attack_leases", s.attack_leases}, {"attack_refused", s.attack_refused},
      {"attack_hold_p50_s", quantile(s.attack_hold_s, 0.5)}, {"attack_hold_max_s", quantile(s.attack_hold_s, 1.0)},
      {"slow_leases", s.slow_leases},
      {"real_node", real}, {"timeline", timeline}};
  if (node) {
    const double wall = real.value("wall_s", 0.0);
    j["real_node_groups_per_s"] = wall > 0 ? real.value("groups", 0.0) / wall : 0.0;
    j["real_node_exit"] = node_rc.value_or(-1);
  }
  std::printf("  connect        %lld joined in %.2f s: %.0f handshakes+joins/s; handshake %s; join %s\n",
              static_cast<long long>(s.joined), connect_s, j["joins_per_s"].get<double>(),
              ms_pair(s.handshake_ms).c_str(), ms_pair(s.join_ms).c_str());
  if (s.join_refused + s.connect_failed > 0)
    std::printf("  not joined     %lld refused, %lld failed to connect\n", static_cast<long long>(s.join_refused),
                static_cast<long long>(s.connect_failed));
  std::printf("  idle           %lld connected: coordinator RSS %.1f -> %.1f MB (%.1f KiB per peer), %lld fds\n",
              static_cast<long long>(connected_idle), before.rss_bytes / 1e6, idle.rss_bytes / 1e6,
              idle_rss_per_peer / 1024, static_cast<long long>(idle.fds));
  std::printf("  work %.0f s     %lld leases (%s), %lld no-work answers; %lld updates, %.1f accepted/s; Ack %s\n",
              work_s, static_cast<long long>(s.leases), ms_pair(s.lease_ms).c_str(),
              static_cast<long long>(s.no_work), static_cast<long long>(s.updates_sent),
              j["accepted_per_s"].get<double>(), ms_pair(s.ack_ms).c_str());
  std::printf("  coordinator    %.0f %% of a core (%.2f ms CPU per accepted update), RSS %.1f MB working, "
              "peak %.1f MB; %llu versions\n",
              100 * j["coordinator_cpu_share"].get<double>(), j["coordinator_cpu_ms_per_update"].get<double>(),
              w1.rss_bytes / 1e6, coord.max_rss_bytes() / 1e6,
              static_cast<unsigned long long>(s.last_version - s.first_version));
  std::printf("  refusals       %s; sessions ended early %lld %s\n", refusals.dump().c_str(),
              static_cast<long long>(s.disconnected), errors.dump().c_str());
  if (!a.attack.empty())
    std::printf("  attack         %s x%d from %d addresses: %lld connections (%lld closed by the coordinator, "
                "held p50 %.1f s, max %.1f s), %lld joins, %lld leases taken, %lld refused\n",
                a.attack.c_str(), a.attackers, a.attack_addresses, static_cast<long long>(s.attack_connections),
                static_cast<long long>(s.attack_closed), quantile(s.attack_hold_s, 0.5),
                quantile(s.attack_hold_s, 1.0), static_cast<long long>(s.attack_joins),
                static_cast<long long>(s.attack_leases), static_cast<long long>(s.attack_refused));
  if (node)
    std::printf("  real node      %.2f groups/s, compute fraction %.1f %%, lease round trip p50 %.1f ms, "
                "p99 %.1f ms (exit %d)\n",
                j["real_node_groups_per_s"].get<double>(), 100 * real.value("compute_fraction", 0.0),
                real.value("lease_rtt_p50_ms", 0.0), real.value("lease_rtt_p99_ms", 0.0), node_rc.value_or(-1));
  const std::string line = j.dump();
  if (!a.json_out.empty()) std::ofstream(a.json_out) << line << "\n";
  if (a.dir.empty()) fs::remove_all(dir);
  return 0;
}

}  // namespace

void add_swarm_bench(CLI::App& bench) {
  auto a = std::make_shared<SwarmArgs>();
  auto* cmd = bench.add_subcommand(
      "swarm", "One coordinator and N simulated peers over loopback TCP: handshakes/s, lease and Ack "
               "latency, updates/s, coordinator CPU and RSS per peer, refusals; attacks; a real node beside");
  cmd->add_option("--peers", a->peers, "Simulated peers")->capture_default_str();
  cmd->add_option("--seconds", a->seconds, "Length of the work phase")->capture_default_str();
  cmd->add_option("--think-s", a->think_s, "Seconds a simulated peer 'computes' per lease (±20 %)")->capture_default_str();
  cmd->add_option("--prompts-per-lease", a->prompts_per_lease, "Prompts a simulated peer asks for")->capture_default_str();
  cmd->add_option("--prompts-per-step", a->prompts_per_step, "Prompts per step (0: two leases per peer, at least 8)")
      ->capture_default_str();
  cmd->add_option("-G,--group-size", a->group_size, "Completions per prompt")->capture_default_str();
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Completion length cap")->capture_default_str();
  cmd->add_option("--codec", a->codec, "Gradient codec: fp8 | raw | topk")->capture_default_str();
  grpo::add_model_shape_options(*cmd, a->shape);  // the random-init model (default: the demo's)
  cmd->add_option("--weights", a->weights,
                  "What peers fetch per version: none | manifest (the blobs from a mirror) | channel "
                  "(the blobs from the coordinator too)")
      ->capture_default_str();
  cmd->add_option("--addresses", a->addresses, "Loopback source addresses the peers spread over (127.10.x.y)")
      ->capture_default_str();
  cmd->add_option("--connect-concurrency", a->connect_concurrency, "Handshakes in flight at once")
      ->capture_default_str();
  cmd->add_option("--idle-s", a->idle_s, "Seconds all peers sit connected and idle before work")->capture_default_str();
  cmd->add_option("--ledger-sync", a->ledger_sync, "Ledger commits: full (fsync) | normal")->capture_default_str();
  cmd->add_flag("--real-node", a->real_node, "Run a real `cohort node` beside the swarm (1 thread)");
  cmd->add_option("--attack", a->attack, "half-open | slowloris | storm | vanish | vanish-close");
  cmd->add_option("--attackers", a->attackers, "Concurrent attack loops")->capture_default_str();
  cmd->add_option("--attack-addresses", a->attack_addresses, "Source addresses of the attack (127.20.x.y)")
      ->capture_default_str();
  cmd->add_option("--attack-lead-s", a->attack_lead_s, "Seconds the attack runs before the work phase")
      ->capture_default_str();
  cmd->add_option("--extra-config", a->extra_config,
                  "TOML appended to the round's configuration, after its [network] table (keys land "
                  "there until a new table begins), e.g. 'max_connections_per_ip = 4'");
  cmd->add_option("--dir", a->dir, "Keep the run here (default: a temporary folder, removed)");
  cmd->add_option("--json-out", a->json_out, "Write the JSON report here too");
  cmd->callback([a] {
    if (const int rc = run_swarm(*a); rc != 0) throw Error("bench swarm failed", rc);
  });
}

}  // namespace cohort::bench
