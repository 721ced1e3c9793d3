#include "node/node.h"

#include <google/protobuf/util/message_differencer.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <future>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <utility>

#include "common/check.h"
#include "common/runtime.h"
#include "coordinator/gradient_wire.h"
#include "grpo/tokenizer.h"
#include "grpo/trainer.h"
#include "node/device_group.h"
#include "node/lease_split.h"
#include "node/lease_work.h"
#include "protocol/channel.h"
#include "protocol/digest.h"
#include "protocol/signed_update.h"

namespace cohort::node {

namespace fs = std::filesystem;
using nlohmann::json;
using coordinator::GradientEncoder;
using coordinator::ParamLayout;
using protocol::BlockingChannel;
using protocol::PeerId;

namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
double mono_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Thrown when the coordinator says the round is over or the node is not wanted.
struct RoundOver {
  int code;
  std::string why;
};

std::string extra(const wire::RoundSettings& s, const std::string& key) {
  auto it = s.extra().find(key);
  if (it == s.extra().end()) throw Error("round settings lack '" + key + "'");
  return it->second;
}
std::string extra_or(const wire::RoundSettings& s, const std::string& key, const std::string& fallback) {
  auto it = s.extra().find(key);
  return it == s.extra().end() ? fallback : it->second;
}

// A local file the round names must be the coordinator's byte for byte; else the node would
// draw other prompts (dataset) or other token ids (tokenizer) than the round's.
void require_same_file(const wire::RoundSettings& s, const std::string& key, const std::string& path,
                       const std::string& what, const std::string& option) {
  const std::string want = extra_or(s, key, "");
  if (want.empty()) return;
  if (path.empty())
    throw RoundOver{3, "the round uses " + what + "; give this node its copy with " + option};
  if (!fs::exists(path)) throw RoundOver{3, what + " " + path + " does not exist"};
  const protocol::Digest d = protocol::blake2b_256_file(path);
  const std::string have = protocol::to_hex(protocol::ByteView(d.data(), d.size()));
  if (have != want)
    throw RoundOver{3, what + " mismatch: " + path + " has BLAKE2b-256 " + have +
                           " but the round's is " + want + "; use the coordinator's file"};
}

grpo::GrpoConfig config_from(const wire::RoundSettings& s) {
  grpo::GrpoConfig c;
  c.task.name = s.task();
  c.task.digits = std::stoi(extra(s, "task.digits"));
  c.task.ops = extra(s, "task.ops");
  c.task.numbers = std::stoi(extra(s, "task.numbers"));
  c.task.max_number = std::stoi(extra(s, "task.max_number"));
  c.task.format_weight = std::stod(extra(s, "task.format_weight"));
  c.task.seed = std::stoull(extra(s, "task.seed"));
  c.task.held_out_percent = std::stoi(extra(s, "task.held_out_percent"));
  c.group_size = static_cast<int>(s.group_size());
  if (c.group_size < 2 || c.group_size > 1024) throw Error("group size out of range");
  c.sampling.max_new_tokens = static_cast<int>(s.max_new_tokens());
  c.sampling.temperature = s.temperature();
  c.sampling.top_p = s.top_p();
  c.sampling.top_k = static_cast<int>(s.top_k());
  c.loss.loss = grpo::parse_loss_type(s.loss_aggregation());
  c.loss.epsilon_low = s.clip_eps_low();
  c.loss.epsilon_high = s.clip_eps_high();
  c.loss.beta = s.kl_beta();
  if (c.loss.beta != 0) throw Error("this node cannot compute β != 0 (no reference model)");
  c.loss.max_completion_length = c.sampling.max_new_tokens;
  c.scale = grpo::parse_advantage_scale(extra(s, "advantage_scale"));
  c.loss.importance = grpo::parse_importance_level(extra(s, "importance"));
  c.micro_batch = std::stoi(extra(s, "micro_batch"));
  c.mask_truncated = extra_or(s, "mask_truncated", "0") == "1";
  if (s.extra().count("task.dataset")) {
    c.task.reward = extra(s, "task.reward");
    const std::string split = extra(s, "task.dataset.split");
    if (split != "held_out" && split != "whole") throw Error("unknown dataset split '" + split + "'");
    // "whole": the coordinator evaluates on a separate file the node never reads.
    if (split == "whole") {
      c.task.eval_dataset = "(coordinator's)";
      c.task.load_eval = false;
    }
  }
  return c;
}

class Node {
 public:
  explicit Node(NodeOptions o) : opt_(std::move(o)) {}

  int run() {
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
    spdlog::info("node {}: {} → {}:{}, {} device(s), max batch {}", id_.id().fingerprint(), opt_.name,
                 opt_.host, opt_.port, opt_.devices, opt_.max_batch);
    double backoff = 0.2;
    double last_ok = mono_s();
    std::mt19937_64 rng(std::random_device{}());
    int rc = 0;
    for (;;) {
      try {
        BlockingChannel ch = BlockingChannel::connect(opt_.host, opt_.port, id_,
                                                      {.expected_peer = coordinator_});
        backoff = 0.2;
        last_ok = mono_s();
        session(ch);
        rc = 0;
        break;
      } catch (const RoundOver& r) {
        spdlog::info("node: {}", r.why);
        rc = r.code;
        break;
      } catch (const protocol::ProtocolError& e) {
        if (e.code() == protocol::ErrorCode::kNotAllowed ||
            e.code() == protocol::ErrorCode::kPinnedKeyMismatch) {
          spdlog::error("node: refused by the coordinator: {}", e.what());
          rc = 2;
          break;
        }
        spdlog::warn("node: connection lost: {}", e.what());
      } catch (const Error& e) {
        spdlog::warn("node: {}", e.what());
      } catch (const std::system_error& e) {
        spdlog::warn("node: connection failed: {}", e.what());
      }
      if (g_stop) {
        rc = 0;
        break;
      }
      if (opt_.give_up_s > 0 && mono_s() - last_ok > opt_.give_up_s) {
        spdlog::error("node: no coordinator for {:.0f} s, giving up", opt_.give_up_s);
        rc = 1;
        break;
      }
      // Exponential backoff with jitter: peers that lost the coordinator together do not
      // come back together.
      const double wait = backoff * std::uniform_real_distribution<double>(0.5, 1.5)(rng);
      spdlog::info("node: reconnecting in {:.2f} s", wait);
      std::this_thread::sleep_for(std::chrono::duration<double>(wait));
      backoff = std::min(backoff * 2, opt_.max_backoff_s);
    }
    write_summary();
    return rc;
  }

 private:
  uint64_t next_id() { return ++envelope_id_; }

  // The tensors of one policy version that differ from what the replicas hold, fetched and
  // checked against their signed digests but not yet loaded.
  struct StagedWeights {
    uint64_t version = 0;
    struct Tensor {
      std::string digest;
      std::vector<std::string> names;  // parameters with these bytes (tied weights share one)
      std::vector<float> values;
    };
    std::vector<Tensor> tensors;
  };

  // A lease asked for ahead (or "none yet"), with the weights of its version fetched but not
  // loaded: the replicas are still computing with the current ones.
  struct Ahead {
    std::optional<wire::WorkLease> lease;
    std::optional<StagedWeights> weights;
    bool round_over = false;
    std::string round_over_reason;
  };


  void session(BlockingChannel& ch) {
    wire::Envelope join;
    join.set_id(next_id());
    auto* jr = join.mutable_join_request();
    jr->set_display_name(opt_.name);
    auto* caps = jr->mutable_capabilities();
    for (const auto& d : devices_           ? devices_->describe()
                         : opt_.gpus.empty() ? describe_cpu_devices(opt_.devices)
                                             : describe_gpu_devices(opt_.gpus))
      *caps->add_devices() = d;
    caps->set_host_memory_bytes(caps->devices_size() ? caps->devices(0).memory_bytes() * caps->devices_size() : 0);
    caps->set_software_version("cohort " COHORT_NODE_VERSION);
    caps->add_codecs(wire::CODEC_RAW);
    caps->add_codecs(wire::CODEC_FP8_E4M3_BLOCK);
    caps->set_fp8(false);
    ch.send(join);
    wire::Envelope reply = ch.receive();
    if (!reply.has_join_reply()) throw Error("expected a join reply");
    const auto& rep = reply.join_reply();
    if (!rep.admitted()) throw RoundOver{2, "not admitted: " + rep.message()};
    setup(rep.settings());
    // The coordinator closes a connection silent for four of these; older ones send none.
    heartbeat_every_ = std::chrono::milliseconds(rep.heartbeat_interval_ms() ? rep.heartbeat_interval_ms() : 15'000);

    if (!pending_.empty()) {
      spdlog::info("node: delivering {} update(s) computed before the link dropped", pending_.size());
      deliver_pending(ch, /*drop_expired=*/true);
    }

    // Pipelined: while lease i is computed here, another thread (the link) delivers update i-1
    // (and waits for its Ack), asks for lease i+1 and fetches its weights, and keeps the
    // connection alive with heartbeats however long the lease takes. The channel is used by one
    // thread at a time: the future's get() orders them.
    std::optional<Ahead> next;  // the lease asked for ahead, with its weights staged
    for (;;) {
      const bool at_limit =
          opt_.max_leases > 0 && leases_done_ + static_cast<int64_t>(pending_.size()) >= opt_.max_leases;
      if (g_stop || at_limit || (next && next->round_over)) {
        const double t0 = mono_s();
        deliver_pending(ch);
        ack_wait_s_ += mono_s() - t0;
        if (g_stop) {
          leave(ch, "signal");  // also returns a lease asked for ahead
          throw RoundOver{0, "left the round (signal)"};
        }
        if (next && next->round_over) throw RoundOver{0, next->round_over_reason};
        if (leases_done_ >= opt_.max_leases) {
          leave(ch, "lease limit reached");
          throw RoundOver{0, "left the round (lease limit)"};
        }
      }
      if (!next || !next->lease) {
        next.reset();
        const double t0 = mono_s();
        deliver_pending(ch);
        const double asked = mono_s();
        ack_wait_s_ += asked - t0;
        std::optional<wire::WorkLease> got = ask_for_work(ch, {});
        lease_wait_s_ += mono_s() - asked;
        spdlog::debug("node {}: waited {:.3f} s for work at v{}", opt_.name, mono_s() - asked, version_);
        if (!got) continue;  // no work yet; ask again
        if (first_lease_ < 0) first_lease_ = asked;
        next = Ahead{.lease = std::move(got)};
      }
      const wire::WorkLease lease = std::move(*next->lease);
      std::optional<StagedWeights> staged = std::move(next->weights);
      next.reset();
      const double fetch0 = mono_s();
      // Staged by the link for this lease's version (or what the coordinator published instead).
      if (staged)
        load(*staged);
      else
        ensure_weights(ch, lease.policy_version());
      weights_s_ += mono_s() - fetch0;

      // The next lease is asked for just in time, shortly before this one should be done (by this
      // node's measured seconds per group): a lease held unstarted behind another is work the
      // other peers cannot take, and the step it belongs to waits for it.
      LinkClock clock;
      const bool last = opt_.max_leases > 0 &&
                        leases_done_ + static_cast<int64_t>(pending_.size()) + 1 >= opt_.max_leases;
      clock.ask = opt_.ask_ahead && !last;
      if (clock.ask) {
        const double expected = seconds_per_group_ * lease.prompt_indices_size();
        // Lead time: twice the link's usual round (ask + weights), and a third of the expected
        // compute, which varies with completion lengths and with what else runs on the machine.
        const double lead = std::max({0.05, 2.0 * link_seconds_, expected / 3});
        clock.ask_at = std::chrono::steady_clock::now() +
                       std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                           std::chrono::duration<double>(std::max(0.0, expected - lead)));
      }
      std::future<Ahead> link = std::async(std::launch::async, [&] { return run_link(ch, clock, lease.lease_id()); });
      std::optional<wire::SignedUpdate> computed;
      const double compute0 = mono_s();
      try {
        computed = work(lease);
      } catch (...) {
        clock.release();
        link.wait();
        throw;
      }
      if (computed) {
        clock.computed();
        const double spg = (mono_s() - compute0) / std::max(1, lease.prompt_indices_size());
        seconds_per_group_ = seconds_per_group_ > 0 ? 0.7 * seconds_per_group_ + 0.3 * spg : spg;
      }
      if (computed && opt_.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(opt_.delay_ms));
      clock.release();
      const double wait0 = mono_s();
      try {
        next = link.get();
      } catch (...) {  // the link dropped: keep what was computed for the next session
        if (computed) pending_.push_back({std::move(*computed), lease.deadline_unix_ms(), lease.lease_id()});
        throw;
      }
      ahead_wait_s_ += mono_s() - wait0;
      if (computed)
        pending_.push_back({std::move(*computed), lease.deadline_unix_ms(), lease.lease_id()});
      else  // given back: named in the next WorkRequest (the link thread, which reads the list, is done)
        returned_.emplace_back(lease.lease_id(), std::exchange(given_back_, {}));
    }
  }

  void leave(BlockingChannel& ch, const std::string& why) {
    wire::Envelope e;
    e.set_id(next_id());
    e.mutable_leave()->set_reason(why);
    try {
      ch.send(e);
    } catch (const std::exception&) {
    }
  }

  // Sends the computed updates in order, each removed once its Ack is in. After a lost link, an
  // update whose lease has expired meanwhile is dropped (its prompts went to another peer);
  // otherwise the coordinator's clock decides, and says why it refuses a late one.
  void deliver_pending(BlockingChannel& ch, bool drop_expired = false) {
    while (!pending_.empty()) {
      const Pending& p = pending_.front();
      if (drop_expired && static_cast<uint64_t>(now_ms()) >= p.deadline_unix_ms) {
        spdlog::warn("node: dropping the update of lease {}: the lease expired before it could be delivered",
                     p.update_lease_id);
      } else {
        const wire::AckReason r = send_update(ch, p.update);
        if (r == wire::ACK_OK && opt_.fault == "replay") {
          spdlog::warn("node: [fault] sending the same update again");
          send_update(ch, p.update);
        }
        last_ack_ = mono_s();
      }
      pending_.pop_front();
    }
  }

  wire::AckReason send_update(BlockingChannel& ch, const wire::SignedUpdate& su) {
    wire::Envelope e;
    e.set_id(next_id());
    *e.mutable_update() = su;
    ch.send(e);
    wire::Envelope a = ch.receive();
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
    return ack.reason();
  }

  // What the link thread does while a lease is computed: ask ahead at `ask_at` (or as soon as
  // the lease is computed, if earlier), send a heartbeat every heartbeat_every_, and return once
  // the compute thread releases it.
  struct LinkClock {
    bool ask = false;
    std::chrono::steady_clock::time_point ask_at;
    std::mutex m;
    std::condition_variable cv;
    bool is_computed = false, is_released = false;
    void computed() { set(is_computed); }
    void release() { set(is_released); }  // after computed(); alone: no lease asked ahead

   private:
    void set(bool& flag) {
      {
        std::lock_guard lk(m);
        flag = true;
      }
      cv.notify_all();
    }
  };

  Ahead run_link(BlockingChannel& ch, LinkClock& clock, const std::string& computing) {
    deliver_pending(ch);
    Ahead a;
    bool asked = !clock.ask;
    // A lease given back goes back with the next WorkRequest: ask now, not just in time, so the
    // coordinator re-issues it without waiting for this lease.
    if (!asked && !returned_.empty()) clock.ask_at = std::chrono::steady_clock::now();
    auto beat = std::chrono::steady_clock::now() + heartbeat_every_;
    for (;;) {
      std::unique_lock lk(clock.m);
      const auto until = asked ? beat : std::min(beat, clock.ask_at);
      clock.cv.wait_until(lk, until, [&] { return clock.is_released || (!asked && clock.is_computed); });
      const bool ask_now = !asked && (clock.is_computed || std::chrono::steady_clock::now() >= clock.ask_at);
      const bool released = clock.is_released;
      lk.unlock();
      if (ask_now) {
        const double t0 = mono_s();
        a = ask_ahead(ch, computing);
        link_seconds_ = link_seconds_ > 0 ? 0.7 * link_seconds_ + 0.3 * (mono_s() - t0) : mono_s() - t0;
        asked = true;
        continue;
      }
      if (released) return a;
      if (std::chrono::steady_clock::now() >= beat) {
        send_heartbeat(ch);
        beat += heartbeat_every_;
      }
    }
  }

  void send_heartbeat(BlockingChannel& ch) {
    wire::Envelope e;
    e.set_id(next_id());
    auto* h = e.mutable_heartbeat();
    h->set_sent_unix_ms(static_cast<uint64_t>(now_ms()));
    h->set_policy_version(version_);
    h->set_status("computing");
    ch.send(e);
    ++heartbeats_sent_;
  }

  // nullopt: no work yet (the coordinator answered "ask again").
  std::optional<wire::WorkLease> ask_for_work(BlockingChannel& ch, const std::string& holding) {
    wire::Envelope req;
    req.set_id(next_id());
    req.mutable_work_request()->set_max_prompts(opt_.max_batch);
    req.mutable_work_request()->set_policy_version(version_);
    if (!holding.empty()) req.mutable_work_request()->add_holding(holding);
    for (const auto& [id, why] : returned_) {
      auto* r = req.mutable_work_request()->add_returned();
      r->set_lease_id(id);
      r->set_reason(why);
    }
    ch.send(req);
    returned_.clear();
    wire::Envelope env = ch.receive();
    if (env.has_leave()) throw RoundOver{0, "round over: " + env.leave().reason()};
    if (env.has_ack()) return std::nullopt;
    if (!env.has_work_lease()) throw Error("expected a lease");
    return env.work_lease();
  }

  Ahead ask_ahead(BlockingChannel& ch, const std::string& holding) {
    Ahead a;
    try {
      a.lease = ask_for_work(ch, holding);
    } catch (const RoundOver& r) {
      a.round_over = true;  // reported after the current lease is delivered
      a.round_over_reason = r.why;
      return a;
    }
    if (a.lease && !(have_weights_ && version_ == a.lease->policy_version()))
      a.weights = fetch_weights(ch, a.lease->policy_version());
    return a;
  }

  void setup(const wire::RoundSettings& s) {
    if (devices_) {
      // Field by field (map order in serialized bytes is unspecified).
      if (!google::protobuf::util::MessageDifferencer::Equals(settings_, s))
        throw RoundOver{1, "the round's settings changed; restart the node"};
      return;
    }
    settings_ = s;
    round_id_ = s.round_id();
    cfg_ = config_from(s);
    grpo::ModelConfig mc = grpo::ModelConfig::from_json(extra(s, "model_config"));
    mc.validate();
    if (s.extra().count("task.dataset")) {
      require_same_file(s, "task.dataset.blake2b", opt_.dataset, "dataset " + extra(s, "task.dataset"),
                        "--dataset");
      cfg_.task.dataset = opt_.dataset;
    }
    task_ = grpo::make_task(cfg_.task);
    if (s.extra().count("tokenizer.json.blake2b")) {
      // A Hugging Face model: its tokenizer files come from the node's own copy of the folder.
      const fs::path dir = opt_.tokenizer_dir;
      require_same_file(s, "tokenizer.json.blake2b", opt_.tokenizer_dir.empty() ? "" : (dir / "tokenizer.json").string(),
                        "the model's tokenizer.json", "--tokenizer");
      require_same_file(s, "tokenizer_config.json.blake2b", (dir / "tokenizer_config.json").string(),
                        "the model's tokenizer_config.json", "--tokenizer");
      tok_ = grpo::tokenizer_for_model(opt_.tokenizer_dir, mc, extra(s, "prompt.system"));
    } else {
      tok_ = grpo::make_tokenizer(mc.tokenizer.empty() ? "chars" : mc.tokenizer);
    }
    devices_ = opt_.gpus.empty()
                   ? make_cpu_device_group(mc, opt_.devices, grpo::parse_precision(opt_.precision))
                   : make_gpu_device_group(mc, opt_.gpus, grpo::parse_precision(opt_.precision));
    layout_ = ParamLayout(devices_->replica(0));
    encoder_ = std::make_unique<GradientEncoder>(layout_, s.gradient_codec() == wire::CODEC_RAW
                                                              ? wire::CODEC_RAW
                                                              : wire::CODEC_FP8_E4M3_BLOCK);
    spdlog::info("node: round {} task {} G={} model {} parameters", round_id_,
                 cfg_.task.dataset.empty() ? cfg_.task.name : cfg_.task.dataset, cfg_.group_size,
                 mc.parameter_count());
  }

  void ensure_weights(BlockingChannel& ch, uint64_t wanted) {
    if (have_weights_ && version_ == wanted) return;
    load(fetch_weights(ch, wanted));
  }

  void load(const StagedWeights& w) {
    for (const auto& t : w.tensors)
      for (const auto& name : t.names) {
        devices_->load(name, t.values);
        held_[name] = t.digest;
      }
    version_ = w.version;
    have_weights_ = true;
  }

  // Fetches the manifest, then only the tensors whose digest differs from what the replicas
  // hold; every tensor is checked against its signed digest before it is kept. Reads held_,
  // which only load() writes: safe beside a computing lease.
  StagedWeights fetch_weights(BlockingChannel& ch, uint64_t wanted) {
    wire::Envelope req;
    req.set_id(next_id());
    req.mutable_manifest_request()->set_policy_version(wanted);
    ch.send(req);
    wire::Envelope env = ch.receive();
    if (!env.has_manifest()) throw Error("expected a manifest");
    wire::WeightManifest m = protocol::verify_manifest(env.manifest(), coordinator_);
    if (m.round_id() != round_id_) throw Error("manifest of another round");
    if (static_cast<size_t>(m.tensors_size()) != layout_.slots.size())
      throw Error("manifest does not match the model");
    std::map<std::string, std::vector<const wire::ManifestEntry*>> by_digest;
    for (size_t i = 0; i < layout_.slots.size(); ++i) {
      const auto& e = m.tensors(static_cast<int>(i));
      const auto& slot = layout_.slots[i];
      std::vector<int64_t> shape(e.shape().begin(), e.shape().end());
      if (e.name() != slot.name || e.dtype() != wire::DTYPE_F32 || shape != slot.shape ||
          e.size_bytes() != slot.numel * sizeof(float) || e.blake2b().size() != protocol::kDigestLen)
        throw Error("manifest entry " + e.name() + " does not match the model");
      auto held = held_.find(e.name());
      if (held == held_.end() || held->second != e.blake2b()) by_digest[e.blake2b()].push_back(&e);
    }
    StagedWeights out;
    out.version = m.policy_version();
    if (out.version != wanted)
      spdlog::info("node: lease asked for version {}, coordinator published {}", wanted, out.version);
    if (by_digest.empty()) return out;
    wire::Envelope treq;
    treq.set_id(next_id());
    for (const auto& [d, es] : by_digest) treq.mutable_tensor_request()->add_blake2b(d);
    ch.send(treq);
    for (const auto& [d, es] : by_digest) {
      const uint64_t size = es.front()->size_bytes();
      std::vector<float> values(size / sizeof(float));
      uint64_t got = 0;
      while (got < size || (size == 0 && got == 0)) {
        wire::Envelope c = ch.receive();
        if (c.has_error()) throw Error("coordinator: " + c.error().message());
        if (!c.has_tensor_chunk()) throw Error("expected a tensor chunk");
        const auto& chunk = c.tensor_chunk();
        if (chunk.blake2b() != d || chunk.total_bytes() != size || chunk.offset() != got ||
            chunk.data().size() > size - got)
          throw Error("tensor chunk out of order or out of bounds");
        std::memcpy(reinterpret_cast<char*>(values.data()) + got, chunk.data().data(), chunk.data().size());
        got += chunk.data().size();
        if (size == 0) break;
      }
      protocol::Digest actual = protocol::blake2b_256(
          protocol::ByteView(reinterpret_cast<const uint8_t*>(values.data()), size));
      if (std::string(reinterpret_cast<const char*>(actual.data()), actual.size()) != d)
        throw Error("tensor " + es.front()->name() + " does not match its signed digest");
      StagedWeights::Tensor t{.digest = d, .names = {}, .values = std::move(values)};
      for (const auto* e : es) t.names.push_back(e->name());
      out.tensors.push_back(std::move(t));
      fetched_bytes_ += static_cast<double>(size);
    }
    return out;
  }

  // The lease's groups split across the local workers by measured throughput, rolled out,
  // scored and reduced into one gradient sum. A failing worker (or reduction) gives the lease
  // back: nullopt, and the coordinator re-issues the lease when this node asks for work again
  // (it expires a lease its holder asks past).
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
    if (opt_.fault == "worker-throw" && !fault_fired_) {
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
      const std::string why = std::string("reduction failed (") + collective_failure_name(e.failure()) + "): " + e.what();
      spdlog::error("node {}: lease {} given back: {}", opt_.name, lease.lease_id(), why);
      ++leases_failed_;
      given_back_ = why;
      return std::nullopt;
    }
    for (int w = 0; w < devices_->size(); ++w)
      if (g.shares[w].groups.size() > 0)
        speed_->record(w, static_cast<double>(g.shares[w].batch.rollout.generated_tokens), g.shares[w].seconds);

    wire::GradientUpdate u;
    u.set_round_id(round_id_);
    u.set_lease_id(lease.lease_id());
    u.set_policy_version(version_);
    sequence_ = std::max<uint64_t>(sequence_ + 1, static_cast<uint64_t>(now_ms()) * 1000);
    u.set_sequence(sequence_);
    u.set_timestamp_unix_ms(static_cast<uint64_t>(now_ms()));
    u.set_recipient(coordinator_.bytes().data(), coordinator_.bytes().size());
    double rsum = 0, rsq = 0, rmin = 1e300, rmax = -1e300;
    int64_t rows = 0, generated = 0;
    for (const WorkerShare& share : g.shares) {
      const auto& b = share.batch;
      generated += b.rollout.generated_tokens;
      for (size_t r = 0; r < b.rewards.size(); ++r) {
        const int gi = static_cast<int>(r) / cfg_.group_size;
        auto* c = u.add_completions();
        c->set_prompt_index(lease.prompt_indices(share.groups.begin + gi));
        c->set_completion(static_cast<uint32_t>(r % cfg_.group_size));
        std::string le;
        for (int64_t t : b.rollout.completions[r]) {
          c->add_token_ids(static_cast<uint32_t>(t));
          for (int k = 0; k < 4; ++k) le.push_back(static_cast<char>((uint64_t(t) >> (8 * k)) & 0xff));
        }
        auto d = protocol::blake2b_256(protocol::ByteView(reinterpret_cast<const uint8_t*>(le.data()), le.size()));
        c->set_blake2b(d.data(), d.size());
        float reward = b.rewards[r];
        if (opt_.fault == "false-reward" && rows == 0) reward += 1.0f;  // a lie the coordinator must catch
        c->set_reward(reward);
        rsum += b.rewards[r];
        rsq += double(b.rewards[r]) * b.rewards[r];
        rmin = std::min<double>(rmin, b.rewards[r]);
        rmax = std::max<double>(rmax, b.rewards[r]);
        ++rows;
      }
    }
    u.set_units(static_cast<uint64_t>(std::llround(g.units)));
    u.set_sequences(static_cast<uint64_t>(rows));
    u.set_tokens(static_cast<uint64_t>(std::llround(g.tokens)));
    auto* rs = u.mutable_rewards();
    rs->set_count(static_cast<uint64_t>(rows));
    rs->set_mean(rows ? rsum / rows : 0);
    rs->set_std(rows ? std::sqrt(std::max(0.0, rsq / rows - (rsum / rows) * (rsum / rows))) : 0);
    rs->set_min(rows ? rmin : 0);
    rs->set_max(rows ? rmax : 0);
    u.set_loss(g.loss);
    if (opt_.fault == "poison") {  // honest rewards; the gradient reversed, scaled up and drowned in noise
      std::mt19937 rng(static_cast<uint32_t>(sequence_));
      std::normal_distribution<float> noise(0.0f, 10.0f);
      for (float& x : g.grad) x = -20.0f * x + noise(rng);
    }
    encoder_->encode(g.grad, *u.mutable_tensors());
    const double compute = mono_s() - t0;
    u.set_compute_seconds(compute);
    compute_s_ += compute;
    samples_ += rows;
    groups_ += n;
    wire::SignedUpdate su = protocol::sign_update(std::move(u), id_);
    std::string shares;
    for (const WorkerShare& share : g.shares) {
      if (!shares.empty()) shares += '|';
      shares += std::to_string(share.groups.size());
    }
    spdlog::info("node {}: v{} lease {} {} groups{} {:.0f} tok/s reward {:.2f} ({:.2f} s)", opt_.name, version_,
                 lease.lease_id(), n, g.shares.size() > 1 ? " (workers " + shares + ")" : std::string(),
                 double(generated) / std::max(compute, 1e-9), rows ? rsum / rows : 0.0, compute);
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
              {"weights_fetched_bytes", fetched_bytes_}, {"lease_wait_s", lease_wait_s_},
              {"weights_s", weights_s_}, {"ack_wait_s", ack_wait_s_}, {"ahead_wait_s", ahead_wait_s_},
              {"heartbeats_sent", heartbeats_sent_}};
    std::ofstream(opt_.summary_out) << j.dump() << "\n";
  }

  NodeOptions opt_;
  protocol::Identity id_ = protocol::Identity::generate();
  PeerId coordinator_;
  uint64_t envelope_id_ = 0, sequence_ = 0, version_ = 0;
  bool have_weights_ = false;
  wire::RoundSettings settings_;
  std::string round_id_;
  grpo::GrpoConfig cfg_;
  std::unique_ptr<grpo::Task> task_;
  std::unique_ptr<grpo::Tokenizer> tok_;
  std::unique_ptr<DeviceGroup> devices_;
  std::unique_ptr<WorkerThroughput> speed_;  // per worker, for splitting leases
  bool fault_fired_ = false;
  ParamLayout layout_;
  std::unique_ptr<GradientEncoder> encoder_;
  std::map<std::string, std::string> held_;  // parameter → digest loaded
  // Computed updates not yet acknowledged, in order; kept across a lost link.
  struct Pending {
    wire::SignedUpdate update;
    uint64_t deadline_unix_ms = 0;
    std::string update_lease_id;
  };
  std::deque<Pending> pending_;
  // Leases given back, with why: sent with the next WorkRequest. work() leaves its reason in
  // given_back_ (the link thread may be reading returned_ meanwhile).
  std::vector<std::pair<std::string, std::string>> returned_;
  std::string given_back_;
  int64_t leases_done_ = 0, leases_failed_ = 0, samples_ = 0, groups_ = 0, updates_sent_ = 0;
  double compute_s_ = 0, bytes_sent_ = 0, fetched_bytes_ = 0;
  // Where the time outside compute goes: waiting for a lease, fetching or loading weights, for
  // an Ack, and for the link's ask-ahead after a lease was computed.
  double lease_wait_s_ = 0, weights_s_ = 0, ack_wait_s_ = 0, ahead_wait_s_ = 0;
  // For asking ahead just in time: this node's compute seconds per group and the link's seconds
  // to ask for a lease and fetch its weights (moving averages; 0 until measured).
  double seconds_per_group_ = 0, link_seconds_ = 0;
  std::chrono::milliseconds heartbeat_every_{15'000};
  int64_t heartbeats_sent_ = 0;
  double first_lease_ = -1, last_ack_ = -1;
};

}  // namespace

int run_node(const NodeOptions& options) {
  Node n(options);
  return n.run();
}

}  // namespace cohort::node
