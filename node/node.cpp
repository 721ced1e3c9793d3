// Wiring of the peer node: a network thread runs the session with the coordinator as one
// coroutine (node/link.h); the lease's compute runs on a compute thread (the device group and
// its workers); while a lease computes, the same coroutine delivers the previous update, asks for
// the next lease just in time and fetches its weights (node/weight_sync.h), and sends heartbeats.
// Updates are built by node/update_builder.h; leases are computed by node/lease_work.h.
#include "node/node.h"

#include <google/protobuf/util/message_differencer.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <asio/thread_pool.hpp>
#include <csignal>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>

#include "common/check.h"
#include "common/clock.h"
#include "common/runtime.h"
#include "exchange/gradient_wire.h"
#include "exchange/round_settings.h"
#include "grpo/tokenizer.h"
#include "node/device_group.h"
#include "node/lease_split.h"
#include "node/lease_work.h"
#include "node/link.h"
#include "node/update_builder.h"
#include "node/weight_sync.h"
#include "protocol/channel.h"
#include "protocol/digest.h"

namespace cohort::node {

namespace fs = std::filesystem;
using nlohmann::json;
using protocol::PeerId;
using Clock = std::chrono::steady_clock;

namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

// Ends the session for good (no reconnect): the round is over, the node is not wanted, or it
// cannot work in this round. code 0 is a normal end; others become the process's exit code.
struct RoundOver {
  int code;
  std::string why;
};

// A local file the round names must be the coordinator's byte for byte; else the node would
// draw other prompts (dataset) or other token ids (tokenizer) than the round's.
void require_same_file(const exchange::SharedFile& want, const std::string& path, const std::string& what,
                       const std::string& option) {
  if (path.empty()) throw RoundOver{3, "the round uses " + what + "; give this node its copy with " + option};
  if (!fs::exists(path)) throw RoundOver{3, what + " " + path + " does not exist"};
  const protocol::Digest d = protocol::blake2b_256_file(path);
  const std::string have = protocol::to_hex(protocol::ByteView(d.data(), d.size()));
  if (have != want.blake2b)
    throw RoundOver{3, what + " mismatch: " + path + " has BLAKE2b-256 " + have + " but the round's is " +
                           want.blake2b + "; use the coordinator's file"};
}

}  // namespace

class Node {
 public:
  explicit Node(NodeOptions o) : opt_(std::move(o)) {}

  void run() {
    if (opt_.threads > 0) set_num_threads(opt_.threads);
    if (opt_.devices < 1) throw Error("--devices must be at least 1");
    if (!fs::exists(opt_.key_file)) {
      protocol::Identity::generate().save(opt_.key_file);
      spdlog::info("node: new identity key {}", opt_.key_file);
    }
    id_ = protocol::Identity::load(opt_.key_file);
    coordinator_ = PeerId::parse(opt_.coordinator_key);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    spdlog::info("node {}: {} → {}:{}, {} device(s), max batch {}", id_.id().fingerprint(), opt_.name, opt_.host,
                 opt_.port, opt_.devices, opt_.max_batch);
    double backoff = 0.2;
    double last_ok = mono_s();
    std::mt19937_64 rng(std::random_device{}());
    int rc = 0;
    std::string why;
    for (;;) {
      try {
        asio::io_context io;
        std::exception_ptr ended;
        asio::co_spawn(io, session(last_ok), [&](std::exception_ptr e) { ended = e; });
        io.run();
        if (ended) std::rethrow_exception(ended);
        backoff = 0.2;
        rc = 0;
        break;
      } catch (const RoundOver& r) {
        if (r.code == 0) spdlog::info("node: {}", r.why);
        rc = r.code;
        why = r.why;
        break;
      } catch (const protocol::ProtocolError& e) {
        if (e.code() == protocol::ErrorCode::kNotAllowed || e.code() == protocol::ErrorCode::kPinnedKeyMismatch) {
          rc = 2;
          why = std::string("refused by the coordinator: ") + e.what();
          break;
        }
        spdlog::warn("node: connection lost: {}", e.what());
      } catch (const Error& e) {
        spdlog::warn("node: {}", e.what());
      } catch (const std::system_error& e) {
        spdlog::warn("node: connection failed: {}", e.what());
      }
      if (mono_s() - last_ok < 1.0) backoff = 0.2;  // the session had got going: start over
      if (g_stop) break;
      if (opt_.give_up_s > 0 && mono_s() - last_ok > opt_.give_up_s) {
        rc = 1;
        why = fmt::format("no coordinator for {:.0f} s, giving up", opt_.give_up_s);
        break;
      }
      // Exponential backoff with jitter: peers that lost the coordinator together do not
      // come back together.
      const double wait = backoff * std::uniform_real_distribution<double>(0.5, 1.5)(rng);
      spdlog::info("node: reconnecting in {:.2f} s", wait);
      std::this_thread::sleep_for(std::chrono::duration<double>(wait));
      backoff = std::min(backoff * 2, opt_.max_backoff_s);
    }
    compute_.join();
    write_summary();
    if (rc != 0) throw Error(why, rc);
  }

 private:
  // A lease asked for ahead (or "none yet"), with the weights of its version fetched but not
  // loaded: the replicas are still computing with the current ones.
  struct Ahead {
    std::optional<wire::WorkLease> lease;
    std::optional<StagedWeights> weights;
    bool round_over = false;
    std::string round_over_reason;
  };

  // One lease on the compute thread, as the network thread sees it. The compute thread posts
  // `computed` (the update is built) and `done` (after any test delay) to the network thread and
  // wakes it; nothing else is shared.
  struct Computing {
    explicit Computing(asio::any_io_executor ex) : wake(ex) {}
    asio::steady_timer wake;
    bool computed = false, done = false;
    double seconds = 0;  // compute time of a computed lease
    double done_at = 0;  // mono_s() when the network thread learnt it was done
    std::optional<wire::SignedUpdate> update;
    std::exception_ptr error;
  };

  asio::awaitable<void> session(double& last_ok) {
    protocol::Channel ch =
        co_await protocol::Channel::connect(opt_.host, opt_.port, id_, {.expected_peer = coordinator_});
    last_ok = mono_s();
    ChannelLink link(ch);
    wire::Envelope join;
    auto* jr = join.mutable_join_request();
    jr->set_display_name(opt_.name);
    auto* caps = jr->mutable_capabilities();
    for (const auto& d : devices_ ? devices_->describe()
                                  : opt_.gpus.empty() ? describe_cpu_devices(opt_.devices) : describe_gpu_devices(opt_.gpus))
      *caps->add_devices() = d;
    caps->set_host_memory_bytes(caps->devices_size() ? caps->devices(0).memory_bytes() * caps->devices_size() : 0);
    caps->set_software_version("cohort " COHORT_NODE_VERSION);
    caps->add_codecs(wire::CODEC_RAW);
    caps->add_codecs(wire::CODEC_FP8_E4M3_BLOCK);
    caps->set_fp8(false);
    co_await link.send(join);
    const wire::Envelope reply = co_await link.receive();
    if (!reply.has_join_reply()) throw Error("expected a join reply");
    const auto& rep = reply.join_reply();
    if (!rep.admitted()) throw RoundOver{2, "not admitted: " + rep.message()};
    setup(rep.settings());
    // The coordinator closes a connection silent for four of these; older ones send none.
    heartbeat_every_ = std::chrono::milliseconds(rep.heartbeat_interval_ms() ? rep.heartbeat_interval_ms() : 15'000);

    if (!pending_.empty()) {
      spdlog::info("node: delivering {} update(s) computed before the link dropped", pending_.size());
      co_await deliver_pending(link, /*drop_expired=*/true);
    }

    std::optional<Ahead> next;  // the lease asked for ahead, with its weights staged
    for (;;) {
      last_ok = mono_s();
      const bool at_limit =
          opt_.max_leases > 0 && leases_done_ + static_cast<int64_t>(pending_.size()) >= opt_.max_leases;
      if (g_stop || at_limit || (next && next->round_over)) {
        const double t0 = mono_s();
        co_await deliver_pending(link);
        ack_wait_s_ += mono_s() - t0;
        if (g_stop) {
          co_await leave(link, "signal");  // also returns a lease asked for ahead
          throw RoundOver{0, "left the round (signal)"};
        }
        if (next && next->round_over) throw RoundOver{0, next->round_over_reason};
        if (leases_done_ >= opt_.max_leases) {
          co_await leave(link, "lease limit reached");
          throw RoundOver{0, "left the round (lease limit)"};
        }
      }
      if (!next || !next->lease) {
        next.reset();
        const double t0 = mono_s();
        co_await deliver_pending(link);
        const double asked = mono_s();
        ack_wait_s_ += asked - t0;
        std::optional<wire::WorkLease> got = co_await ask_for_work(link, {});
        lease_wait_s_ += mono_s() - asked;
        if (!got) continue;  // no work yet; ask again
        if (first_lease_ < 0) first_lease_ = asked;
        next = Ahead{.lease = std::move(got)};
      }
      const wire::WorkLease lease = std::move(*next->lease);
      std::optional<StagedWeights> staged = std::move(next->weights);
      next.reset();
      const double fetch0 = mono_s();
      // Staged while the previous lease computed (or what the coordinator published instead).
      if (!staged && !sync_->holds(lease.policy_version())) staged = co_await sync_->fetch(link, lease.policy_version());
      if (staged) load(*staged);
      weights_s_ += mono_s() - fetch0;

      // The next lease is asked for just in time, shortly before this one should be done (by this
      // node's measured seconds per group): a lease held unstarted behind another is work the
      // other peers cannot take, and the step it belongs to waits for it.
      const bool last =
          opt_.max_leases > 0 && leases_done_ + static_cast<int64_t>(pending_.size()) + 1 >= opt_.max_leases;
      const bool ask = opt_.ask_ahead && !last;
      Clock::time_point ask_at = Clock::now();
      if (ask) {
        const double expected = seconds_per_group_ * lease.prompt_indices_size();
        // Lead time: twice the link's usual round (ask + weights), and a third of the expected
        // compute, which varies with completion lengths and with what else runs on the machine.
        const double lead = std::max({0.05, 2.0 * link_seconds_, expected / 3});
        ask_at += std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(std::max(0.0, expected - lead)));
      }
      auto c = std::make_shared<Computing>(co_await asio::this_coro::executor);
      start_compute(lease, c);
      std::optional<Ahead> ahead;
      std::exception_ptr link_error;
      try {
        ahead = co_await run_link(link, *c, ask, ask_at, lease.lease_id());
      } catch (...) {
        link_error = std::current_exception();
      }
      while (!c->done) {  // the link failed first: keep what is being computed
        c->wake.expires_after(std::chrono::seconds(3600));
        asio::error_code ec;
        co_await c->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
      if (c->error) std::rethrow_exception(c->error);
      if (c->update) {
        const double spg = c->seconds / std::max(1, lease.prompt_indices_size());
        seconds_per_group_ = seconds_per_group_ > 0 ? 0.7 * seconds_per_group_ + 0.3 * spg : spg;
        pending_.push_back({std::move(*c->update), lease.deadline_unix_ms(), lease.lease_id()});
      } else {  // given back: named in the next WorkRequest
        returned_.emplace_back(lease.lease_id(), std::exchange(given_back_, {}));
      }
      if (link_error) std::rethrow_exception(link_error);
      ahead_wait_s_ += mono_s() - c->done_at;  // the link still busy (asking ahead) after the compute
      next = std::move(ahead);
    }
  }

  // Runs the lease on the compute thread; the network thread learns of its end through `c`.
  void start_compute(const wire::WorkLease& lease, std::shared_ptr<Computing> c) {
    asio::post(compute_, [this, lease, c] {
      const double t0 = mono_s();
      std::optional<wire::SignedUpdate> update;
      std::exception_ptr error;
      try {
        update = work(lease);
      } catch (...) {
        error = std::current_exception();
      }
      const double seconds = mono_s() - t0;
      const auto ex = c->wake.get_executor();
      asio::post(ex, [c, has = update.has_value(), seconds] {
        c->computed = has;
        c->seconds = seconds;
        c->wake.cancel();
      });
      if (update && opt_.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(opt_.delay_ms));
      asio::post(ex, [c, update = std::move(update), error]() mutable {
        c->update = std::move(update);
        c->error = error;
        c->done = true;
        c->done_at = mono_s();
        c->wake.cancel();
      });
    });
  }

  // While a lease computes: deliver what is pending, ask ahead at `ask_at` (or as soon as the
  // lease is computed, if earlier), send a heartbeat every heartbeat_every_; return when the
  // compute thread is done.
  asio::awaitable<Ahead> run_link(CoordinatorLink& link, Computing& c, bool ask, Clock::time_point ask_at,
                                  const std::string& computing) {
    co_await deliver_pending(link);
    Ahead a;
    bool asked = !ask;
    // A lease given back goes back with the next WorkRequest: ask now, not just in time.
    if (!asked && !returned_.empty()) ask_at = Clock::now();
    auto beat = Clock::now() + heartbeat_every_;
    for (;;) {
      if (!asked && (c.computed || (!c.done && Clock::now() >= ask_at))) {
        const double t0 = mono_s();
        a = co_await ask_ahead(link, computing);
        link_seconds_ = link_seconds_ > 0 ? 0.7 * link_seconds_ + 0.3 * (mono_s() - t0) : mono_s() - t0;
        asked = true;
        continue;
      }
      if (c.done) co_return a;
      if (Clock::now() >= beat) {
        co_await send_heartbeat(link);
        beat += heartbeat_every_;
        continue;
      }
      c.wake.expires_at(asked ? beat : std::min(beat, ask_at));
      asio::error_code ec;  // cancelled: the compute thread has news
      co_await c.wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  asio::awaitable<void> leave(CoordinatorLink& link, const std::string& why) {
    wire::Envelope e;
    e.mutable_leave()->set_reason(why);
    try {
      co_await link.send(e);
    } catch (const std::exception&) {
    }
  }

  // Sends the computed updates in order, each removed once its Ack is in. After a lost link, an
  // update whose lease has expired meanwhile is dropped (its prompts went to another peer);
  // otherwise the coordinator's clock decides, and says why it refuses a late one.
  asio::awaitable<void> deliver_pending(CoordinatorLink& link, bool drop_expired = false) {
    while (!pending_.empty()) {
      const Pending& p = pending_.front();
      if (drop_expired && static_cast<uint64_t>(unix_ms()) >= p.deadline_unix_ms) {
        spdlog::warn("node: dropping the update of lease {}: the lease expired before it could be delivered",
                     p.update_lease_id);
      } else {
        const wire::AckReason r = co_await send_update(link, p.update);
        if (r == wire::ACK_OK && opt_.fault == Fault::replay) {
          spdlog::warn("node: [fault] sending the same update again");
          co_await send_update(link, p.update);
        }
        last_ack_ = mono_s();
      }
      pending_.pop_front();
    }
  }

  asio::awaitable<wire::AckReason> send_update(CoordinatorLink& link, const wire::SignedUpdate& su) {
    wire::Envelope e;
    *e.mutable_update() = su;
    co_await link.send(std::move(e));
    const wire::Envelope a = co_await link.receive();
    if (!a.has_ack()) throw Error("expected an ack");
    const auto& ack = a.ack();
    bytes_sent_ += static_cast<double>(su.ByteSizeLong());
    ++updates_sent_;
    if (ack.reason() == wire::ACK_OK) {
      ++leases_done_;
    } else {
      spdlog::warn("node: update {} refused: {} ({})", ack.sequence(), wire::AckReason_Name(ack.reason()),
                   ack.message());
    }
    co_return ack.reason();
  }

  asio::awaitable<void> send_heartbeat(CoordinatorLink& link) {
    wire::Envelope e;
    auto* h = e.mutable_heartbeat();
    h->set_sent_unix_ms(static_cast<uint64_t>(unix_ms()));
    h->set_policy_version(sync_->version());
    h->set_status("computing");
    co_await link.send(std::move(e));
    ++heartbeats_sent_;
  }

  // nullopt: no work yet (the coordinator answered "ask again").
  asio::awaitable<std::optional<wire::WorkLease>> ask_for_work(CoordinatorLink& link, const std::string& holding) {
    wire::Envelope req;
    auto* wr = req.mutable_work_request();
    wr->set_max_prompts(opt_.max_batch);
    wr->set_policy_version(sync_->version());
    if (!holding.empty()) wr->add_holding(holding);
    for (const auto& [id, why] : returned_) {
      auto* r = wr->add_returned();
      r->set_lease_id(id);
      r->set_reason(why);
    }
    co_await link.send(std::move(req));
    returned_.clear();
    const wire::Envelope env = co_await link.receive();
    if (env.has_leave()) throw RoundOver{0, "round over: " + env.leave().reason()};
    if (env.has_ack()) co_return std::nullopt;
    if (!env.has_work_lease()) throw Error("expected a lease");
    co_return env.work_lease();
  }

  asio::awaitable<Ahead> ask_ahead(CoordinatorLink& link, const std::string& holding) {
    Ahead a;
    try {
      a.lease = co_await ask_for_work(link, holding);
    } catch (const RoundOver& r) {
      a.round_over = true;  // reported after the current lease is delivered
      a.round_over_reason = r.why;
      co_return a;
    }
    if (a.lease && !sync_->holds(a.lease->policy_version()))
      a.weights = co_await sync_->fetch(link, a.lease->policy_version());
    co_return a;
  }

  void setup(const wire::RoundSettings& s) {
    if (devices_) {
      // Field by field (serialized bytes need not be identical).
      if (!google::protobuf::util::MessageDifferencer::Equals(settings_, s))
        throw RoundOver{1, "the round's settings changed; restart the node"};
      return;
    }
    exchange::RoundSpec spec;
    try {
      spec = exchange::read_round_settings(s);
    } catch (const exchange::SettingsError& e) {
      throw RoundOver{1, e.what()};
    }
    settings_ = s;
    round_id_ = spec.round_id;
    cfg_ = spec.grpo;
    if (spec.dataset) {
      require_same_file(*spec.dataset, opt_.dataset, "dataset " + spec.dataset->name, "--dataset");
      cfg_.task.dataset = opt_.dataset;
    }
    task_ = grpo::make_task(cfg_.task);
    const grpo::ModelConfig& mc = spec.model;
    if (!spec.tokenizer_files.empty()) {
      // A Hugging Face model: its tokenizer files come from the node's own copy of the folder.
      const fs::path dir = opt_.tokenizer_dir;
      for (const auto& f : spec.tokenizer_files)
        require_same_file(f, opt_.tokenizer_dir.empty() ? "" : (dir / f.name).string(), "the model's " + f.name,
                          "--tokenizer");
      tok_ = grpo::tokenizer_for_model(opt_.tokenizer_dir, mc, spec.system_prompt);
    } else {
      tok_ = grpo::make_tokenizer(mc.tokenizer.empty() ? "chars" : mc.tokenizer);
    }
    devices_ = opt_.gpus.empty() ? make_cpu_device_group(mc, opt_.devices, grpo::parse_precision(opt_.precision))
                                 : make_gpu_device_group(mc, opt_.gpus, grpo::parse_precision(opt_.precision));
    layout_ = exchange::ParamLayout(devices_->replica(0));
    encoder_ = std::make_unique<exchange::GradientEncoder>(layout_, spec.codec);
    sync_ = std::make_unique<WeightSync>(layout_, coordinator_, round_id_);
    spdlog::info("node: round {} task {} G={} model {} parameters", round_id_,
                 cfg_.task.dataset.empty() ? cfg_.task.name : cfg_.task.dataset, cfg_.group_size,
                 mc.parameter_count());
  }

  void load(const StagedWeights& w) {
    sync_->load(w, [&](const std::string& name, const std::vector<float>& v) { devices_->load(name, v); });
  }

  // The lease's groups split across the local workers by measured throughput, rolled out,
  // scored and reduced into one gradient sum. A failing worker (or reduction) gives the lease
  // back: nullopt, and the coordinator re-issues it when this node asks for work again.
  // Runs on the compute thread.
  std::optional<wire::SignedUpdate> work(const wire::WorkLease& lease) {
    const double t0 = mono_s();
    const int n = lease.prompt_indices_size();
    if (n == 0 || lease.seeds_size() != n || lease.group_size() != static_cast<uint32_t>(cfg_.group_size))
      throw Error("malformed lease");
    if (!speed_) {
      std::vector<double> memory;
      for (const auto& d : devices_->describe()) memory.push_back(static_cast<double>(d.memory_bytes()));
      speed_ = std::make_unique<WorkerThroughput>(memory);
    }
    const std::vector<GroupRange> split = split_lease(n, speed_->weights());
    LeaseContext ctx{*task_, *tok_, cfg_, layout_};
    if (opt_.fault == Fault::worker_throw && !fault_fired_) {
      ctx.fail_worker = devices_->size() - 1;
      fault_fired_ = true;
    }
    LeaseGradient g;
    try {
      g = compute_lease(*devices_, ctx, {lease.prompt_indices().data(), static_cast<size_t>(n)},
                        {lease.seeds().data(), static_cast<size_t>(n)}, split);
    } catch (const WorkerError& e) {
      spdlog::error("node {}: lease {} given back: {}", opt_.name, lease.lease_id(), e.what());
      ++leases_failed_;
      given_back_ = e.what();
      return std::nullopt;
    } catch (const CollectiveError& e) {
      const std::string why =
          std::string("reduction failed (") + collective_failure_name(e.failure()) + "): " + e.what();
      spdlog::error("node {}: lease {} given back: {}", opt_.name, lease.lease_id(), why);
      ++leases_failed_;
      given_back_ = why;
      return std::nullopt;
    }
    int64_t rows = 0, generated = 0;
    double rsum = 0;
    for (int w = 0; w < devices_->size(); ++w) {
      const auto& share = g.shares[static_cast<size_t>(w)];
      if (share.groups.size() > 0)
        speed_->record(w, static_cast<double>(share.batch.rollout.generated_tokens), share.seconds);
      generated += share.batch.rollout.generated_tokens;
      rows += static_cast<int64_t>(share.batch.rewards.size());
      for (float r : share.batch.rewards) rsum += r;
    }
    sequence_ = std::max<uint64_t>(sequence_ + 1, static_cast<uint64_t>(unix_ms()) * 1000);
    const UpdateBuilder builder{.round_id = round_id_, .identity = id_, .coordinator = coordinator_,
                                .group_size = cfg_.group_size, .fault = opt_.fault};
    wire::SignedUpdate su = builder.build(lease, sync_->version(), sequence_, g, *encoder_, mono_s() - t0);
    const double compute = mono_s() - t0;
    compute_s_ += compute;
    samples_ += rows;
    groups_ += n;
    std::string shares;
    for (const WorkerShare& share : g.shares) {
      if (!shares.empty()) shares += '|';
      shares += std::to_string(share.groups.size());
    }
    spdlog::info("node {}: v{} lease {} {} groups{} {:.0f} tok/s reward {:.2f} ({:.2f} s)", opt_.name,
                 sync_->version(), lease.lease_id(), n, g.shares.size() > 1 ? " (workers " + shares + ")" : std::string(),
                 double(generated) / std::max(compute, 1e-9), rows ? rsum / double(rows) : 0.0, compute);
    return su;
  }

  void write_summary() {
    if (opt_.summary_out.empty()) return;
    const double wall = (first_lease_ >= 0 && last_ack_ > first_lease_) ? last_ack_ - first_lease_ : 0;
    json j = {{"name", opt_.name}, {"peer", id_.id().hex()}, {"leases", leases_done_},
              {"groups", groups_}, {"samples", samples_}, {"compute_s", compute_s_},
              {"wall_s", wall}, {"compute_fraction", wall > 0 ? compute_s_ / wall : 0.0},
              {"updates_sent", updates_sent_}, {"leases_given_back", leases_failed_},
              {"bytes_per_update", updates_sent_ ? bytes_sent_ / updates_sent_ : 0.0},
              {"weights_fetched_bytes", sync_ ? sync_->fetched_bytes() : 0.0}, {"lease_wait_s", lease_wait_s_},
              {"weights_s", weights_s_}, {"ack_wait_s", ack_wait_s_}, {"ahead_wait_s", ahead_wait_s_},
              {"heartbeats_sent", heartbeats_sent_}};
    std::ofstream(opt_.summary_out) << j.dump() << "\n";
  }

  NodeOptions opt_;
  protocol::Identity id_ = protocol::Identity::generate();
  PeerId coordinator_;
  asio::thread_pool compute_{1};  // the lease's compute; the device group's workers below it
  uint64_t sequence_ = 0;
  wire::RoundSettings settings_;
  std::string round_id_;
  grpo::GrpoConfig cfg_;
  std::unique_ptr<grpo::Task> task_;
  std::unique_ptr<grpo::Tokenizer> tok_;
  std::unique_ptr<DeviceGroup> devices_;
  std::unique_ptr<WorkerThroughput> speed_;  // per worker, for splitting leases
  bool fault_fired_ = false;
  exchange::ParamLayout layout_;
  std::unique_ptr<exchange::GradientEncoder> encoder_;
  std::unique_ptr<WeightSync> sync_;
  // Computed updates not yet acknowledged, in order; kept across a lost link.
  struct Pending {
    wire::SignedUpdate update;
    uint64_t deadline_unix_ms = 0;
    std::string update_lease_id;
  };
  std::deque<Pending> pending_;
  // Leases given back, with why: sent with the next WorkRequest. work() leaves its reason in
  // given_back_; the network thread moves it here once the compute is done.
  std::vector<std::pair<std::string, std::string>> returned_;
  std::string given_back_;
  int64_t leases_done_ = 0, leases_failed_ = 0, samples_ = 0, groups_ = 0, updates_sent_ = 0;
  double compute_s_ = 0, bytes_sent_ = 0;
  // Where the time outside compute goes: waiting for a lease, fetching or loading weights, for
  // an Ack, and for the link's ask-ahead after a lease was computed.
  double lease_wait_s_ = 0, weights_s_ = 0, ack_wait_s_ = 0, ahead_wait_s_ = 0;
  // For asking ahead just in time: this node's compute seconds per group and the link's seconds
  // to ask for a lease and fetch its weights (moving averages; 0 until measured).
  double seconds_per_group_ = 0, link_seconds_ = 0;
  Clock::duration heartbeat_every_ = std::chrono::seconds(15);
  int64_t heartbeats_sent_ = 0;
  double first_lease_ = -1, last_ack_ = -1;
};

Fault parse_fault(const std::string& name) {
  if (name.empty()) return Fault::none;
  if (name == "false-reward") return Fault::false_reward;
  if (name == "replay") return Fault::replay;
  if (name == "poison") return Fault::poison;
  if (name == "worker-throw") return Fault::worker_throw;
  throw Error("unknown --fault '" + name + "' (false-reward | replay | poison | worker-throw)");
}

void run_node(const NodeOptions& options) {
  Node n(options);
  n.run();
}

}  // namespace cohort::node
