#include "coordinator/coordinator.h"

#include <fcntl.h>
#include <sodium.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <random>
#include <cmath>
#include <csignal>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <unordered_map>

#include "common/check.h"
#include "coordinator/gradient_wire.h"
#include "coordinator/ledger.h"
#include "coordinator/metrics.h"
#include "grpo/checkpoint.h"
#include "grpo/safetensors.h"
#include "grpo/tokenizer.h"
#include "protocol/channel.h"
#include "protocol/digest.h"
#include "protocol/signed_update.h"
#include "protocol/tensor_codec.h"

namespace cohort::coordinator {

namespace fs = std::filesystem;
using nlohmann::json;
namespace wire = cohort::wire;
using protocol::Channel;
using protocol::PeerId;

namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
double mono_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string reason_name(wire::AckReason r) {
  std::string s = wire::AckReason_Name(r);
  if (s.rfind("ACK_", 0) == 0) s = s.substr(4);
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

std::pair<std::string, uint16_t> split_host_port(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) throw Error("address '" + s + "' must be HOST:PORT");
  int port = std::stoi(s.substr(colon + 1));
  if (port < 0 || port > 65535) throw Error("bad port in '" + s + "'");
  return {s.substr(0, colon), static_cast<uint16_t>(port)};
}

void fsync_path(const fs::path& p, bool dir) {
  int fd = ::open(p.c_str(), dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

volatile std::sig_atomic_t g_stop_signal = 0;
void on_signal(int sig) { g_stop_signal = sig; }

// A peer's free-text reason, as stored in the ledger: printable ASCII, at most 256 bytes.
std::string sanitize_reason(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 256)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

// A refusal: the Ack reason plus a sentence for people.
struct Refusal {
  wire::AckReason reason;
  std::string detail;
};

struct Lease {
  LeaseRecord rec;
  std::vector<int> groups;  // positions inside the step
  double issued_mono = 0;
};

struct StepState {
  int64_t step = 0;
  std::vector<int> state;  // 0 pending, 1 leased, 2 done
  int done = 0;
  std::vector<float> grad;  // `mean` only: Σ of the accepted updates' gradient sums (flat)
  // Robust rules only: each accepted update's own mean gradient (its sum / its units).
  std::vector<std::vector<float>> update_means;
  double units = 0, tokens = 0, loss = 0, reward_sum = 0, accuracy_sum = 0;
  int64_t rows = 0, updates = 0;
  double aggregate_s = 0;
};

struct PeerState {
  std::string name;
  double throughput = 0;   // groups per second, measured (EMA)
  double advertised = 0;   // completions per second from the join request
  int sessions = 0;
  bool working = false;    // has asked for work
  double last_delivery = 0;  // mono_s() of its last accepted update: a pipelined peer starts its next lease then
  int64_t accepted = 0, refused = 0;
};

struct Published {
  uint64_t version = 0;
  wire::SignedManifest manifest;
  std::map<protocol::Digest, std::shared_ptr<const std::string>> tensors;
  std::vector<std::pair<std::string, protocol::Digest>> names;  // parameter → its bytes' digest
};

constexpr size_t kChunkBytes = 1 << 20;

}  // namespace

std::string endpoint_path(const std::string& d) { return (fs::path(d) / "endpoint.json").string(); }
std::string ledger_path(const std::string& d) { return (fs::path(d) / "ledger.sqlite").string(); }

std::string status_json_from_ledger(const std::string& data_dir) {
  if (!fs::exists(ledger_path(data_dir))) throw Error("no ledger in " + data_dir);
  Ledger ledger(ledger_path(data_dir));
  return ledger.status_json();
}

struct Coordinator::Impl {
  RoundConfig cfg;
  protocol::Identity identity = protocol::Identity::generate();  // replaced by the key file in open()
  std::unique_ptr<Ledger> ledger;
  std::unique_ptr<grpo::Task> task;
  std::unique_ptr<grpo::Tokenizer> tok;
  std::unique_ptr<grpo::Model> model;
  // Audits of updates sampled on an older, still published version run on a copy of it.
  std::unique_ptr<grpo::Model> audit_model;
  uint64_t audit_version = UINT64_MAX;
  std::unique_ptr<torch::optim::AdamW> opt;
  ParamLayout layout;
  uint64_t version = 0;
  std::map<int64_t, StepState> open_steps;
  std::map<std::string, Lease> leases;  // active only
  std::unordered_map<std::string, PeerState> peers;
  protocol::ReplayGuard replays;
  std::deque<Published> published;
  std::set<PeerId> allowed;
  bool finished = false;
  bool started = false;  // min_peers reached once: leases are issued from then on
  int connected = 0;
  double started_mono = mono_s();
  asio::io_context io;
  std::unique_ptr<protocol::Server> server;
  std::unique_ptr<asio::ip::tcp::acceptor> http;
  uint64_t lease_counter = 0;
  std::mt19937_64 audit_rng{std::random_device{}()};  // which updates are recomputed: unpredictable
  int64_t audits = 0;
  std::vector<std::jthread> evals;  // held-out evaluations in flight (start_eval)
  int evals_running = 0;
  std::map<std::string, int64_t> misbehaviour;  // refusals for misbehaviour per peer (hex)
  std::set<std::string> banned;

  explicit Impl(RoundConfig c) : cfg(std::move(c)) {}

  // Files every peer must hold byte for byte, by settings key: the JSONL dataset and a Hugging
  // Face model's tokenizer files (their BLAKE2b-256, hex).
  std::map<std::string, std::string> file_digests;

  void shared_files() {
    auto digest = [](const std::string& path) {
      const protocol::Digest d = protocol::blake2b_256_file(path);
      return protocol::to_hex(protocol::ByteView(d.data(), d.size()));
    };
    if (!cfg.grpo.task.dataset.empty()) file_digests["task.dataset.blake2b"] = digest(cfg.grpo.task.dataset);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      const fs::path p = fs::path(cfg.model_path) / f;
      if (fs::exists(p)) file_digests[std::string(f) + ".blake2b"] = digest(p.string());
    }
  }

  int64_t step_groups() const { return cfg.grpo.prompts_per_step; }
  uint64_t prompt_index(int64_t step, int pos) const {
    return static_cast<uint64_t>(step - 1) * cfg.grpo.prompts_per_step + pos;
  }

  // ---------------------------------------------------------------------------------------------
  // Start-up and resume

  void open() {
    fs::create_directories(cfg.data_dir);
    const std::string key = cfg.key_file.empty() ? (fs::path(cfg.data_dir) / "coordinator.key").string()
                                                 : cfg.key_file;
    if (!fs::exists(key)) {
      protocol::Identity::generate().save(key);
      spdlog::info("coordinator: new identity key {}", key);
    }
    identity = protocol::Identity::load(key);
    for (const auto& hex : cfg.allowlist) allowed.insert(PeerId::parse(hex));
    ledger = std::make_unique<Ledger>(ledger_path(cfg.data_dir), cfg.ledger_sync);
    task = grpo::make_task(cfg.grpo.task);
    model = grpo::load_model(cfg.model_path);
    tok = grpo::tokenizer_for_model(cfg.model_path, model->config(), cfg.system_prompt);
    shared_files();
    // Problems a peer would only meet mid-round are reported now.
    try {
      (void)grpo::encode_prompt(*tok, task->train_prompt(0));
    } catch (const Error& e) {
      throw Error(std::string("the first training prompt cannot be tokenized by the model's tokenizer: ") + e.what());
    }
    if (cfg.eval_every > 0) (void)task->eval_prompts(cfg.eval_n);
    layout = ParamLayout(*model);
    torch::optim::AdamWOptions o(cfg.grpo.lr);
    o.betas({cfg.grpo.adam_beta1, cfg.grpo.adam_beta2})
        .eps(cfg.grpo.adam_eps)
        .weight_decay(cfg.grpo.weight_decay);
    opt = std::make_unique<torch::optim::AdamW>(model->parameters(), o);

    if (auto ck = ledger->latest_checkpoint()) {
      const auto& [step, path] = *ck;
      grpo::load_weights(*model, (fs::path(path) / "model.safetensors").string());
      torch::load(*opt, (fs::path(path) / "optimizer.pt").string());
      version = static_cast<uint64_t>(step);
      spdlog::info("coordinator: resumed from checkpoint {} (version {})", path, version);
    }
    misbehaviour = ledger->misbehaviour_counts();
    for (const auto& [p, n] : misbehaviour)
      if (cfg.ban_after > 0 && n >= cfg.ban_after) banned.insert(p);
    if (!banned.empty()) spdlog::info("coordinator: {} banned peer(s) in the ledger", banned.size());
    for (const auto& s : ledger->accepted_digests()) {
      auto pid = PeerId::parse(s.peer);
      protocol::Digest d{};
      if (s.digest.size() == d.size()) std::memcpy(d.data(), s.digest.data(), d.size());
      replays.remember(pid, s.sequence, d);
    }
    replay_ledger();
    // Leases that were out when the coordinator stopped stay out until their deadline, so a
    // peer that reconnects can still deliver them.
    for (auto& rec : ledger->leases_in_state("active")) {
      if (rec.step <= static_cast<int64_t>(version)) {
        ledger->close_lease(rec.lease_id, "expired", "step already applied", now_ms());
        continue;
      }
      StepState& st = step_state(rec.step);
      Lease l;
      l.rec = rec;
      l.issued_mono = mono_s();
      bool ok = true;
      for (uint64_t idx : rec.prompts) {
        int pos = static_cast<int>(idx - prompt_index(rec.step, 0));
        if (pos < 0 || pos >= step_groups() || st.state[pos] != 0) ok = false;
        l.groups.push_back(pos);
      }
      if (!ok) {
        ledger->close_lease(rec.lease_id, "expired", "inconsistent after restart", now_ms());
        continue;
      }
      for (int pos : l.groups) st.state[pos] = 1;
      leases[rec.lease_id] = std::move(l);
    }
    publish();
    if (version >= static_cast<uint64_t>(cfg.steps)) finished = true;
  }

  // Re-applies the accepted updates the last checkpoint does not contain, in acceptance order.
  void replay_ledger() {
    auto updates = ledger->accepted_updates_after(static_cast<int64_t>(version));
    if (updates.empty()) return;
    size_t replayed = 0;
    for (const auto& u : updates) {
      auto rec = ledger->lease(u.lease_id);
      if (!rec) throw Error("ledger: accepted update " + std::to_string(u.id) + " names unknown lease");
      if (u.body.empty())
        throw Error("ledger: accepted update " + std::to_string(u.id) + " of step " +
                    std::to_string(u.step) + " has no body and no checkpoint covers it");
      wire::SignedUpdate su;
      su.set_body(u.body);
      wire::GradientUpdate full = protocol::decode_update(su);
      Lease l;
      l.rec = *rec;
      for (uint64_t idx : rec->prompts) l.groups.push_back(static_cast<int>(idx - prompt_index(rec->step, 0)));
      std::vector<float> grad(layout.total);
      std::string why;
      if (!decode_gradient(full, layout, grad, why))
        throw Error("ledger: stored update " + std::to_string(u.id) + " does not decode: " + why);
      absorb(l, u.units, u.tokens, full.loss(), u.reward_mean, u.accuracy, grad, 0.0);
      ++replayed;
      apply_ready_steps(/*replaying=*/true);
    }
    spdlog::info("coordinator: replayed {} accepted updates from the ledger; version {}", replayed, version);
  }

  StepState& step_state(int64_t step) {
    auto it = open_steps.find(step);
    if (it != open_steps.end()) return it->second;
    StepState& st = open_steps[step];
    st.step = step;
    st.state.assign(step_groups(), 0);
    return st;
  }

  // ---------------------------------------------------------------------------------------------
  // Weights publication

  void publish() {
    Published p;
    p.version = version;
    wire::WeightManifest m;
    m.set_round_id(cfg.round_id);
    m.set_policy_version(version);
    m.set_created_unix_ms(static_cast<uint64_t>(now_ms()));
    for (const auto& nt : model->named_parameters()) {
      auto t = nt.tensor.detach().contiguous().to(at::kFloat);
      auto bytes = std::make_shared<std::string>(reinterpret_cast<const char*>(t.data_ptr<float>()),
                                                 static_cast<size_t>(t.numel()) * sizeof(float));
      protocol::Digest d = protocol::blake2b_256(protocol::ByteView(
          reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()));
      auto* e = m.add_tensors();
      e->set_name(nt.name);
      e->set_dtype(wire::DTYPE_F32);
      for (auto s : t.sizes()) e->add_shape(static_cast<uint64_t>(s));
      e->set_blake2b(d.data(), d.size());
      e->set_size_bytes(bytes->size());
      p.tensors[d] = bytes;
      p.names.emplace_back(nt.name, d);
    }
    p.manifest = protocol::sign_manifest(m, identity);
    published.push_back(std::move(p));
    const size_t keep = std::max<size_t>(2, cfg.staleness_bound + 2);
    while (published.size() > keep) published.pop_front();
  }

  // 0 means the latest (ManifestRequest); else that version while it is still published.
  const Published& manifest_for(uint64_t v) const {
    if (v == 0) return published.back();
    for (const auto& p : published)
      if (p.version == v) return p;
    return published.back();
  }

  // ---------------------------------------------------------------------------------------------
  // Leases

  double share_of(const std::string& peer) const {
    auto estimate = [&](const PeerState& p) {
      if (p.throughput > 0) return p.throughput;
      double measured = 0;
      int n = 0;
      for (const auto& [k, q] : peers)
        if (q.throughput > 0 && q.sessions > 0) measured += q.throughput, ++n;
      return n ? measured / n : 1.0;
    };
    double total = 0;
    for (const auto& [k, p] : peers)
      if (p.sessions > 0 && p.working) total += estimate(p);
    auto it = peers.find(peer);
    if (it == peers.end() || total <= 0) return 1.0;
    return estimate(it->second) / total;
  }

  // Guided self-scheduling: a peer gets its throughput share of the groups still pending in the
  // step, so leases shrink as the step's pool drains and the peers finish it together instead of
  // waiting on one that took a large lease late. Bounds: at most its share of a whole step, at
  // least half of that (every lease costs one full-size update on the wire), and while its
  // throughput is unmeasured a probe of at most an eighth of a step: the first peer to join does
  // not take a whole step alone while the others are still starting.
  int64_t lease_size(const std::string& peer, int64_t pending, uint32_t max_prompts) const {
    const double share = share_of(peer);
    const int64_t full = std::max<int64_t>(1, std::llround(double(step_groups()) * share));
    const int64_t least = std::max<int64_t>(1, (full + 1) / 2);
    int64_t size = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(double(pending) * share)), least, full);
    if (auto it = peers.find(peer); it == peers.end() || it->second.throughput <= 0)
      size = std::min<int64_t>(size, std::max<int64_t>(1, (step_groups() + 7) / 8));
    if (max_prompts > 0) size = std::min<int64_t>(size, max_prompts);
    return std::min(size, pending);
  }

  std::optional<wire::WorkLease> try_issue(const std::string& peer, uint32_t max_prompts) {
    if (finished) return std::nullopt;
    if (!started) {
      if (connected < cfg.min_peers) return std::nullopt;
      started = true;
      spdlog::info("coordinator: {} peers connected (min_peers {}): leases start", connected, cfg.min_peers);
    }
    const int64_t last = std::min<int64_t>(cfg.steps, static_cast<int64_t>(version) + 1 + cfg.staleness_bound);
    for (int64_t s = static_cast<int64_t>(version) + 1; s <= last; ++s) {
      StepState& st = step_state(s);
      std::vector<int> pending;
      for (int i = 0; i < step_groups(); ++i)
        if (st.state[i] == 0) pending.push_back(i);
      if (pending.empty()) continue;
      const int64_t size = lease_size(peer, static_cast<int64_t>(pending.size()), max_prompts);
      Lease l;
      uint8_t rnd[6];
      randombytes_buf(rnd, sizeof rnd);
      char id[64];
      std::snprintf(id, sizeof id, "s%lld-%02x%02x%02x%02x%02x%02x", static_cast<long long>(s), rnd[0],
                    rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
      l.rec.lease_id = id;
      l.rec.step = s;
      l.rec.peer = peer;
      l.rec.policy_version = version;
      l.rec.issued_ms = now_ms();
      l.rec.deadline_ms = l.rec.issued_ms + static_cast<int64_t>(cfg.lease_timeout_s * 1000);
      l.issued_mono = mono_s();
      wire::WorkLease w;
      w.set_lease_id(l.rec.lease_id);
      w.set_round_id(cfg.round_id);
      w.set_policy_version(version);
      w.set_deadline_unix_ms(static_cast<uint64_t>(l.rec.deadline_ms));
      w.set_group_size(static_cast<uint32_t>(cfg.grpo.group_size));
      for (int64_t i = 0; i < size; ++i) {
        const int pos = pending[i];
        st.state[pos] = 1;
        l.groups.push_back(pos);
        const uint64_t idx = prompt_index(s, pos);
        l.rec.prompts.push_back(idx);
        w.add_prompt_indices(idx);
        w.add_seeds(prompt_seed(cfg.grpo.seed, idx));
      }
      ledger->record_lease(l.rec);
      leases[l.rec.lease_id] = std::move(l);
      ++lease_counter;
      return w;
    }
    return std::nullopt;
  }

  void expire(const std::string& lease_id, const std::string& state, const std::string& reason) {
    auto it = leases.find(lease_id);
    if (it == leases.end()) return;
    auto st = open_steps.find(it->second.rec.step);
    if (st != open_steps.end())
      for (int pos : it->second.groups)
        if (st->second.state[pos] == 1) st->second.state[pos] = 0;
    ledger->close_lease(lease_id, state, reason, now_ms());
    spdlog::info("coordinator: lease {} ({} groups, peer {}) {}: {}; its prompts go back to the pool",
                 lease_id, it->second.groups.size(), it->second.rec.peer.substr(0, 12), state, reason);
    leases.erase(it);
  }

  void sweep_leases() {
    const int64_t now = now_ms();
    std::vector<std::string> late;
    for (const auto& [id, l] : leases)
      if (now > l.rec.deadline_ms) late.push_back(id);
    for (const auto& id : late) expire(id, "expired", "deadline passed");
  }

  void peer_disconnected(const std::string& peer) {
    auto& p = peers[peer];
    p.sessions = std::max(0, p.sessions - 1);
    if (p.sessions > 0) return;
    p.working = false;
    // Give the peer a short grace to come back and deliver; then the sweep re-issues.
    const int64_t grace = now_ms() + static_cast<int64_t>(cfg.reconnect_grace_s * 1000);
    for (auto& [id, l] : leases)
      if (l.rec.peer == peer && l.rec.deadline_ms > grace) {
        l.rec.deadline_ms = grace;
        ledger->record_lease(l.rec);
      }
  }

  // ---------------------------------------------------------------------------------------------
  // Updates

  void refuse(const std::string& peer, const wire::GradientUpdate& h, const protocol::Digest& d,
              int64_t step, const Refusal& r, size_t bytes) {
    UpdateRecord u;
    u.peer = peer;
    u.sequence = h.sequence();
    u.lease_id = h.lease_id();
    u.step = step;
    u.policy_version = h.policy_version();
    u.digest.assign(reinterpret_cast<const char*>(d.data()), d.size());
    u.accepted = false;
    u.reason = reason_name(r.reason);
    u.detail = r.detail;
    u.bytes = static_cast<int64_t>(bytes);
    u.received_ms = now_ms();
    ledger->record_update(u);
    peers[peer].refused++;
    static const std::set<std::string> kMisbehaviour = {"bad_reward", "bad_norm", "malformed", "bad_signature",
                                                        "signer_mismatch", "recompute_mismatch"};
    if (kMisbehaviour.count(u.reason) && ++misbehaviour[peer] >= cfg.ban_after && cfg.ban_after > 0 &&
        banned.insert(peer).second) {
      ledger->record_refusal(peer, "", "banned",
                             fmt::format("{} updates refused for misbehaviour (ban_after = {})",
                                         misbehaviour[peer], cfg.ban_after),
                             now_ms());
      spdlog::warn("coordinator: peer {} banned after {} misbehaving updates", peer.substr(0, 12),
                   misbehaviour[peer]);
    }
    spdlog::warn("coordinator: refused update {} from {} ({}): {}", h.sequence(), peer.substr(0, 12),
                 u.reason, r.detail);
  }

  wire::Ack handle_update(const wire::SignedUpdate& su, const PeerId& channel_peer) {
    const std::string peer = channel_peer.hex();
    const size_t bytes = su.ByteSizeLong();
    wire::Ack ack;
    ack.set_policy_version(version);
    protocol::UpdatePolicy pol{.recipient = identity.id(), .current_version = version,
                               .staleness_bound = cfg.staleness_bound};
    protocol::VerifiedUpdate vr = protocol::verify_update(su, pol, channel_peer);
    ack.set_sequence(vr.header.sequence());
    ack.set_lease_id(vr.header.lease_id());
    auto fail = [&](int64_t step, Refusal r) {
      refuse(peer, vr.header, vr.digest, step, r, bytes);
      // A refused update frees its lease at once: the prompts go to someone else.
      if (auto l = leases.find(vr.header.lease_id()); l != leases.end() && l->second.rec.peer == peer)
        expire(l->first, "expired", "update refused: " + reason_name(r.reason));
      ack.set_reason(r.reason);
      ack.set_message(r.detail);
      return ack;
    };
    int64_t step_hint = 0;
    if (auto it = leases.find(vr.header.lease_id()); it != leases.end()) step_hint = it->second.rec.step;
    if (!vr) return fail(step_hint, {protocol::to_ack_reason(vr.verdict), vr.detail});
    if (replays.seen(channel_peer, vr.header.sequence(), vr.digest))
      return fail(step_hint, {wire::ACK_REPLAYED, "this (peer, sequence) or body was accepted before"});
    auto it = leases.find(vr.header.lease_id());
    if (it == leases.end()) {
      auto rec = ledger->lease(vr.header.lease_id());
      if (!rec) return fail(0, {wire::ACK_UNKNOWN_LEASE, "no lease " + vr.header.lease_id()});
      return fail(rec->step, {wire::ACK_LEASE_EXPIRED, "lease " + rec->lease_id + " is " + rec->state +
                                                           (rec->reason.empty() ? "" : " (" + rec->reason + ")")});
    }
    Lease& lease = it->second;
    if (lease.rec.peer != peer)
      return fail(lease.rec.step, {wire::ACK_UNKNOWN_LEASE, "lease belongs to another peer"});
    if (vr.header.round_id() != cfg.round_id)
      return fail(lease.rec.step, {wire::ACK_MALFORMED, "wrong round id"});

    const double t0 = mono_s();
    wire::GradientUpdate full;
    try {
      full = protocol::decode_update(su);
    } catch (const Error& e) {
      return fail(lease.rec.step, {wire::ACK_MALFORMED, e.what()});
    }
    // Every completion of every leased group, once, with a reward we recompute ourselves.
    double reward_mean = 0, accuracy = 0, tokens = 0, loss_tokens = 0;
    if (auto r = check_completions(full, lease, reward_mean, accuracy, tokens, loss_tokens))
      return fail(lease.rec.step, *r);
    const double expected_units = expected_units_for(full, loss_tokens);
    if (std::abs(full.units() - expected_units) > 0.5)
      return fail(lease.rec.step, {wire::ACK_MALFORMED, "units " + std::to_string(full.units()) +
                                                            " do not match the completions (" +
                                                            std::to_string(expected_units) + ")"});
    std::vector<float> grad(layout.total);
    std::string why;
    if (!decode_gradient(full, layout, grad, why)) {
      const bool nonfinite = why.rfind("non-finite", 0) == 0;
      return fail(lease.rec.step, {nonfinite ? wire::ACK_BAD_NORM : wire::ACK_MALFORMED, why});
    }
    if (cfg.max_update_norm > 0) {
      double sq = 0;
      for (float g : grad) sq += double(g) * g;
      const double norm = std::sqrt(sq) / std::max(1.0, expected_units);
      if (norm > cfg.max_update_norm)
        return fail(lease.rec.step, {wire::ACK_BAD_NORM, "mean-gradient norm " + std::to_string(norm) +
                                                             " exceeds " + std::to_string(cfg.max_update_norm)});
    }
    // A sampled share of updates is recomputed in full (the peer cannot know which): the
    // gradient of the reported completions under the weights they were sampled with.
    if (cfg.recompute_fraction > 0 &&
        std::uniform_real_distribution<double>(0, 1)(audit_rng) < cfg.recompute_fraction)
      if (grpo::Model* sampled = weights_of(vr.header.policy_version()))
        if (auto r = recompute_check(*sampled, full, lease, grad)) return fail(lease.rec.step, *r);
    // Durable before anything else: the Ack means the update is in the ledger.
    UpdateRecord u;
    u.peer = peer;
    u.sequence = vr.header.sequence();
    u.lease_id = lease.rec.lease_id;
    u.step = lease.rec.step;
    u.policy_version = vr.header.policy_version();
    u.digest.assign(reinterpret_cast<const char*>(vr.digest.data()), vr.digest.size());
    u.accepted = true;
    u.reason = "ok";
    u.units = full.units();
    u.tokens = tokens;
    u.sequences = static_cast<int64_t>(full.completions_size());
    u.reward_mean = reward_mean;
    u.accuracy = accuracy;
    u.bytes = static_cast<int64_t>(bytes);
    u.received_ms = now_ms();
    u.body = su.body();
    u.signature = su.signature();
    ledger->begin();
    ledger->record_update(u);
    ledger->close_lease(lease.rec.lease_id, "completed", "", u.received_ms);
    ledger->commit();
    replays.remember(channel_peer, u.sequence, vr.digest);

    auto& ps = peers[peer];
    ps.accepted++;
    // A peer that asks ahead holds a lease before it starts on it: time it from the later of the
    // lease's issue and the peer's previous delivery.
    const double elapsed = std::max(1e-3, mono_s() - std::max(lease.issued_mono, ps.last_delivery));
    const double thr = double(lease.groups.size()) / elapsed;
    ps.throughput = ps.throughput > 0 ? 0.5 * ps.throughput + 0.5 * thr : thr;
    ps.last_delivery = mono_s();

    Lease done = std::move(lease);
    leases.erase(it);
    absorb(done, u.units, tokens, full.loss(), reward_mean, accuracy, grad, mono_s() - t0);
    ack.set_reason(wire::ACK_OK);
    // The update is durable (committed above); the step it may complete is applied after the
    // Ack is on its way, so the peer goes on working while the optimizer runs.
    asio::post(io, [this] { apply_ready_steps(false); });
    return ack;
  }

  // The weights of policy version v: the live model for the current version, else a copy loaded
  // from the published tensors (kept for S + 2 versions, so every update that passed the
  // staleness check has them); nullptr if v is no longer published.
  grpo::Model* weights_of(uint64_t v) {
    if (v == version) return model.get();
    const Published* p = nullptr;
    for (const auto& q : published)
      if (q.version == v) p = &q;
    if (!p) return nullptr;
    if (!audit_model) audit_model = std::make_unique<grpo::Model>(model->config(), 1);
    if (audit_version != v) {
      at::NoGradGuard no_grad;
      for (const auto& [name, digest] : p->names) {
        at::Tensor* t = audit_model->find(name);
        const auto& bytes = *p->tensors.at(digest);
        COHORT_CHECK(t && static_cast<size_t>(t->numel()) * sizeof(float) == bytes.size());
        t->copy_(at::from_blob(const_cast<char*>(bytes.data()), t->sizes(), at::kFloat));
      }
      audit_version = v;
    }
    return audit_model.get();
  }

  // Recomputes the lease's gradient sum from the reported completions on the weights they were
  // sampled with (ratio 1) and compares its direction with the reported one. The codec (FP8 with
  // error feedback) keeps an honest update's cosine near 1.
  std::optional<Refusal> recompute_check(grpo::Model& sampled, const wire::GradientUpdate& u, const Lease& lease,
                                         const std::vector<float>& reported) {
    const double t0 = mono_s();
    const int g = cfg.grpo.group_size;
    std::map<std::pair<uint64_t, uint32_t>, const wire::CompletionDigest*> by_key;
    for (const auto& c : u.completions()) by_key[{c.prompt_index(), c.completion()}] = &c;
    std::vector<std::vector<int64_t>> prompt_ids, completions;
    std::vector<float> rewards;
    for (uint64_t idx : lease.rec.prompts) {
      prompt_ids.push_back(grpo::encode_prompt(*tok, task->train_prompt(idx)));
      for (int c = 0; c < g; ++c) {
        const auto* cd = by_key.at({idx, static_cast<uint32_t>(c)});  // check_completions saw all
        completions.emplace_back(cd->token_ids().begin(), cd->token_ids().end());
        rewards.push_back(cd->reward());
      }
    }
    grpo::Rollout r = grpo::layout(prompt_ids, g, completions, cfg.grpo.sampling.max_new_tokens, tok->pad_id());
    {
      at::NoGradGuard no_grad;
      r.logprobs = grpo::completion_logprobs(sampled, r, cfg.grpo.sampling.temperature) * r.completion_mask;
    }
    const auto adv = grpo::group_advantages(rewards, g, cfg.grpo.scale);
    auto clear_grads = [&] {
      for (auto p : sampled.parameters()) p.mutable_grad().reset();
    };
    clear_grads();
    grpo::accumulate_gradient(sampled, nullptr, r, adv, cfg.grpo);
    std::vector<float> ours(layout.total);
    flatten_grads(sampled, layout, ours);
    clear_grads();
    double dot = 0, a2 = 0, b2 = 0;
    for (size_t i = 0; i < ours.size(); ++i) {
      dot += double(ours[i]) * reported[i];
      a2 += double(ours[i]) * ours[i];
      b2 += double(reported[i]) * reported[i];
    }
    const double cosine = (a2 == 0 && b2 == 0) ? 1.0 : dot / std::max(1e-300, std::sqrt(a2 * b2));
    const double ratio = a2 > 0 ? std::sqrt(b2 / a2) : (b2 == 0 ? 1.0 : 1e300);
    ++audits;
    spdlog::info("coordinator: recomputed lease {} on v{} (current v{}) in {:.2f} s: cosine {:.6f}, norm ratio {:.6f}",
                 lease.rec.lease_id, u.policy_version(), version, mono_s() - t0, cosine, ratio);
    // The norm must agree too: a scaled honest gradient has cosine 1.
    if (cosine < cfg.recompute_min_cosine || ratio > 1.5 || ratio < 1 / 1.5)
      return Refusal{wire::ACK_RECOMPUTE_MISMATCH,
                     fmt::format("recomputed gradient differs: cosine {:.4f} (min {:.2f}), norm ratio {:.3f}",
                                 cosine, cfg.recompute_min_cosine, ratio)};
    return std::nullopt;
  }

  // Token-level aggregations count only the tokens that carry loss: with mask_truncated, those of
  // completions that ended with a stop token before max_new_tokens.
  double expected_units_for(const wire::GradientUpdate& u, double loss_tokens) const {
    switch (cfg.grpo.loss.loss) {
      case grpo::LossType::grpo:
      case grpo::LossType::dr_grpo: return double(u.completions_size());
      case grpo::LossType::bnpo:
      case grpo::LossType::dapo: return loss_tokens;
    }
    return 0;
  }

  std::optional<Refusal> check_completions(const wire::GradientUpdate& u, const Lease& lease,
                                           double& reward_mean, double& accuracy, double& tokens,
                                           double& loss_tokens) {
    const int g = cfg.grpo.group_size;
    std::map<uint64_t, std::vector<bool>> seen;
    for (uint64_t idx : lease.rec.prompts) seen[idx].assign(g, false);
    if (static_cast<size_t>(u.completions_size()) != lease.rec.prompts.size() * g)
      return Refusal{wire::ACK_MALFORMED, "expected " + std::to_string(lease.rec.prompts.size() * g) +
                                              " completions, got " + std::to_string(u.completions_size())};
    std::map<uint64_t, grpo::Prompt> prompts;
    double rsum = 0, asum = 0;
    tokens = 0;
    loss_tokens = 0;
    const std::vector<int64_t> stops = tok->stop_ids();
    for (const auto& c : u.completions()) {
      auto s = seen.find(c.prompt_index());
      if (s == seen.end() || c.completion() >= static_cast<uint32_t>(g) || s->second[c.completion()])
        return Refusal{wire::ACK_MALFORMED, "completion (" + std::to_string(c.prompt_index()) + ", " +
                                                std::to_string(c.completion()) + ") is not in the lease or repeats"};
      s->second[c.completion()] = true;
      if (c.token_ids_size() == 0 || c.token_ids_size() > cfg.grpo.sampling.max_new_tokens)
        return Refusal{wire::ACK_MALFORMED, "completion length out of range"};
      std::vector<int64_t> ids;
      std::string le;
      for (uint32_t t : c.token_ids()) {
        if (t >= static_cast<uint32_t>(model->config().vocab_size))
          return Refusal{wire::ACK_MALFORMED, "token id out of vocabulary"};
        ids.push_back(t);
        for (int b = 0; b < 4; ++b) le.push_back(static_cast<char>((t >> (8 * b)) & 0xff));
      }
      protocol::Digest d = protocol::blake2b_256(
          protocol::ByteView(reinterpret_cast<const uint8_t*>(le.data()), le.size()));
      if (c.blake2b().size() != d.size() || std::memcmp(c.blake2b().data(), d.data(), d.size()) != 0)
        return Refusal{wire::ACK_MALFORMED, "completion digest does not match its token ids"};
      auto p = prompts.find(c.prompt_index());
      if (p == prompts.end()) p = prompts.emplace(c.prompt_index(), task->train_prompt(c.prompt_index())).first;
      // The learning core's own scoring, one completion at a time.
      grpo::ScoredBatch one;
      one.prompts = {p->second};
      one.rollout.group_size = 1;
      one.rollout.completions = {ids};
      grpo::score_rollout(*tok, *task, one);
      const grpo::RewardBreakdown r = one.parts[0];
      const float reward = one.rewards[0];
      if (reward != c.reward())
        return Refusal{wire::ACK_BAD_REWARD, "prompt " + std::to_string(c.prompt_index()) + " completion " +
                                                 std::to_string(c.completion()) + " claims reward " +
                                                 std::to_string(c.reward()) + ", recomputed " +
                                                 std::to_string(reward)};
      rsum += reward;
      asum += r.accuracy;
      tokens += double(ids.size());
      // The sampler flags a completion truncated when it reached max_new_tokens without a stop.
      const bool truncated = static_cast<int>(ids.size()) == cfg.grpo.sampling.max_new_tokens &&
                             std::find(stops.begin(), stops.end(), ids.back()) == stops.end();
      if (!(cfg.grpo.mask_truncated && truncated)) loss_tokens += double(ids.size());
    }
    const double n = std::max(1, u.completions_size());
    reward_mean = rsum / n;
    accuracy = asum / n;
    return std::nullopt;
  }

  void absorb(const Lease& lease, double units, double tokens, double loss, double reward_mean,
              double accuracy, const std::vector<float>& grad, double decode_s) {
    const double t0 = mono_s();
    StepState& st = step_state(lease.rec.step);
    // `mean` keeps the running sum; a robust rule needs each update's own mean instead.
    if (cfg.aggregation.rule == AggregationRule::mean) {
      if (st.grad.empty()) st.grad.assign(layout.total, 0.0f);
      for (size_t i = 0; i < grad.size(); ++i) st.grad[i] += grad[i];
    } else {
      const float inv = units > 0 ? static_cast<float>(1.0 / units) : 0.0f;
      auto& m = st.update_means.emplace_back(grad.size());
      for (size_t i = 0; i < grad.size(); ++i) m[i] = grad[i] * inv;
    }
    for (int pos : lease.groups) {
      COHORT_CHECK(st.state[pos] != 2, "a prompt group counted twice");
      st.state[pos] = 2;
      ++st.done;
    }
    const double rows = double(lease.groups.size()) * cfg.grpo.group_size;
    st.units += units;
    st.tokens += tokens;
    st.loss += loss;
    st.reward_sum += reward_mean * rows;
    st.accuracy_sum += accuracy * rows;
    st.rows += static_cast<int64_t>(rows);
    st.updates++;
    st.aggregate_s += decode_s + (mono_s() - t0);
  }

  // ---------------------------------------------------------------------------------------------
  // Steps

  void apply_ready_steps(bool replaying) {
    while (!finished) {
      const int64_t s = static_cast<int64_t>(version) + 1;
      auto it = open_steps.find(s);
      if (it == open_steps.end() || it->second.done < step_groups()) return;
      apply_step(it->second, replaying);
      open_steps.erase(it);
    }
  }

  void apply_step(StepState& st, bool replaying) {
    const double t0 = mono_s();
    const double units = std::max(st.units, 1.0);
    // The step's mean gradient: Σ sums / Σ units (exact), or a robust rule over the updates.
    std::vector<float> mean(layout.total);
    if (cfg.aggregation.rule == AggregationRule::mean) {
      const float u = static_cast<float>(units);
      for (size_t i = 0; i < mean.size(); ++i) mean[i] = st.grad[i] / u;
    } else {
      std::vector<const float*> xs;
      for (const auto& m : st.update_means) xs.push_back(m.data());
      const AggregationStats a = aggregate(cfg.aggregation, xs, layout.total, mean.data());
      if (!replaying)
        spdlog::info("step {}: {} of {} updates{}", st.step, aggregation_rule_name(cfg.aggregation.rule),
                     a.updates,
                     cfg.aggregation.rule == AggregationRule::centered_clip
                         ? fmt::format(" ({} clipped at radius {:.3g})", a.clipped, a.radius)
                         : std::string());
    }
    auto params = model->parameters();
    opt->zero_grad();
    {
      at::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) {
        const auto& slot = layout.slots[i];
        params[i].mutable_grad() =
            at::from_blob(mean.data() + slot.offset, params[i].sizes(), at::kFloat).clone();
      }
    }
    if (cfg.dump_gradients && !replaying) {
      std::vector<grpo::NamedTensor> gs;
      for (size_t i = 0; i < params.size(); ++i)
        gs.push_back({layout.slots[i].name, params[i].grad().clone()});
      fs::create_directories(fs::path(cfg.data_dir) / "gradients");
      char name[64];
      std::snprintf(name, sizeof name, "step-%06lld.safetensors", static_cast<long long>(st.step));
      grpo::write_safetensors((fs::path(cfg.data_dir) / "gradients" / name).string(), gs);
    }
    double norm = 0;
    if (cfg.grpo.max_grad_norm > 0) {
      norm = torch::nn::utils::clip_grad_norm_(params, cfg.grpo.max_grad_norm);
    } else {
      for (auto& p : params) norm += p.grad().pow(2).sum().item<double>();
      norm = std::sqrt(norm);
    }
    if (std::isfinite(norm)) opt->step();  // as GrpoTrainer: a non-finite gradient skips the update
    ++version;
    const double t1 = mono_s();
    publish();
    const double t2 = mono_s();

    StepRecord r;
    r.step = st.step;
    r.version = version;
    r.units = st.units;
    r.updates = st.updates;
    r.reward_mean = st.rows ? st.reward_sum / st.rows : 0;
    r.accuracy = st.rows ? st.accuracy_sum / st.rows : 0;
    r.loss = st.loss / units;
    r.grad_norm = norm;
    r.aggregate_s = st.aggregate_s;
    r.optimizer_s = t1 - t0;
    r.publish_s = t2 - t1;
    r.applied_ms = now_ms();
    ledger->record_step(r);
    spdlog::info("step {}/{}: reward {:.3f} acc {:.3f} loss {:+.4f} |g| {:.3f} ({} updates, {:.0f} units){}",
                 st.step, cfg.steps, r.reward_mean, r.accuracy, r.loss, norm, st.updates, st.units,
                 replaying ? " [replayed]" : "");

    const bool last = st.step >= cfg.steps;
    // Replayed steps are checkpointed too: a crash may have come between a step and its checkpoint.
    if (st.step % cfg.checkpoint_interval == 0 || last) checkpoint(st.step);
    if (!replaying && cfg.eval_every > 0 && (st.step % cfg.eval_every == 0 || last)) start_eval(st.step);
    if (last) {
      finished = true;
      spdlog::info("coordinator: round {} complete ({} steps)", cfg.round_id, cfg.steps);
    }
  }

  // Held-out evaluation on a snapshot of the weights, on its own thread: the round goes on
  // (peers keep getting leases and the next steps apply) while it runs. The result is recorded
  // on the io thread; the coordinator does not exit before every evaluation has finished.
  void start_eval(int64_t step) {
    auto snap = std::make_shared<grpo::Model>(model->config(), 0);
    {
      at::NoGradGuard no_grad;
      auto src = model->parameters(), dst = snap->parameters();
      for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
    }
    ++evals_running;
    evals.emplace_back([this, snap, step] {
      double accuracy = -1;
      std::string error;
      try {
        accuracy = grpo::evaluate(*snap, *tok, *task, cfg.eval_n, cfg.grpo.sampling.max_new_tokens).accuracy;
      } catch (const std::exception& e) {
        error = e.what();
      }
      asio::post(io, [this, step, accuracy, error] {
        --evals_running;
        if (!error.empty()) {
          spdlog::error("step {}: held-out evaluation failed: {}", step, error);
          return;
        }
        ledger->record_eval(step, accuracy, cfg.eval_n, now_ms());
        spdlog::info("step {}: held-out accuracy {:.3f} (n={})", step, accuracy, cfg.eval_n);
      });
    });
  }

  void checkpoint(int64_t step) {
    char name[64];
    std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(step));
    const fs::path root = fs::path(cfg.data_dir) / "checkpoints";
    const fs::path final_dir = root / name;
    const fs::path tmp = root / (std::string(".tmp-") + name);
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    grpo::save_model(tmp.string(), *model);
    // A checkpoint opens like the model folder it came from (as `cohort train --out` writes it).
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
      if (fs::exists(fs::path(cfg.model_path) / f)) fs::copy_file(fs::path(cfg.model_path) / f, tmp / f);
    torch::save(*opt, (tmp / "optimizer.pt").string());
    json state = {{"round_id", cfg.round_id}, {"step", step}, {"version", version},
                  {"lr", cfg.grpo.lr}, {"scheduler", "constant"}};
    grpo::write_file_atomic((tmp / "state.json").string(), state.dump(2));
    for (const auto& e : fs::directory_iterator(tmp)) fsync_path(e.path(), false);
    fsync_path(tmp, true);
    fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);
    fsync_path(root, true);
    ledger->begin();
    ledger->record_checkpoint(step, final_dir.string(), now_ms());
    ledger->prune_bodies(step);
    ledger->commit();
  }

  // ---------------------------------------------------------------------------------------------
  // Sessions

  wire::RoundSettings settings() const {
    wire::RoundSettings s;
    const auto& g = cfg.grpo;
    s.set_round_id(cfg.round_id);
    s.set_model(cfg.model_path);
    s.set_task(g.task.name);
    s.set_group_size(static_cast<uint32_t>(g.group_size));
    s.set_max_new_tokens(static_cast<uint32_t>(g.sampling.max_new_tokens));
    s.set_temperature(g.sampling.temperature);
    s.set_top_p(g.sampling.top_p);
    s.set_top_k(static_cast<uint32_t>(g.sampling.top_k));
    static const char* kLoss[] = {"grpo", "bnpo", "dapo", "dr_grpo"};
    s.set_loss_aggregation(kLoss[static_cast<int>(g.loss.loss)]);
    s.set_clip_eps_low(g.loss.epsilon_low);
    s.set_clip_eps_high(g.loss.epsilon_high);
    s.set_kl_beta(g.loss.beta);
    s.set_staleness_bound(cfg.staleness_bound);
    s.set_gradient_codec(cfg.codec == GradientCodec::fp8 ? wire::CODEC_FP8_E4M3_BLOCK : wire::CODEC_RAW);
    auto& x = *s.mutable_extra();
    x["model_config"] = model->config().to_json();
    x["task.digits"] = std::to_string(g.task.digits);
    x["task.ops"] = g.task.ops;
    x["task.numbers"] = std::to_string(g.task.numbers);
    x["task.max_number"] = std::to_string(g.task.max_number);
    x["task.format_weight"] = std::to_string(g.task.format_weight);
    x["task.seed"] = std::to_string(g.task.seed);
    x["task.held_out_percent"] = std::to_string(g.task.held_out_percent);
    x["advantage_scale"] = g.scale == grpo::AdvantageScale::none ? "none" : "group";
    x["importance"] = g.loss.importance == grpo::ImportanceLevel::sequence ? "sequence" : "token";
    x["micro_batch"] = std::to_string(g.micro_batch);
    x["mask_truncated"] = g.mask_truncated ? "1" : "0";
    if (!g.task.dataset.empty()) {
      // Peers index the same shuffled training split: it depends on the file, the task seed and
      // whether a held-out share is cut from it (no eval file) or not.
      x["task.dataset"] = fs::path(g.task.dataset).filename().string();
      x["task.dataset.split"] = g.task.eval_dataset.empty() ? "held_out" : "whole";
      x["task.reward"] = g.task.reward;
    }
    if (file_digests.count("tokenizer.json.blake2b")) x["prompt.system"] = cfg.system_prompt;
    for (const auto& [key, hex] : file_digests) x[key] = hex;
    return s;
  }

  asio::awaitable<void> send_tensors(Channel& ch, const wire::TensorRequest& req) {
    for (const auto& want : req.blake2b()) {
      std::shared_ptr<const std::string> bytes;
      protocol::Digest d{};
      if (want.size() == d.size()) {
        std::memcpy(d.data(), want.data(), d.size());
        for (const auto& p : published)
          if (auto it = p.tensors.find(d); it != p.tensors.end()) bytes = it->second;
      }
      if (!bytes) {
        wire::Envelope e;
        e.mutable_error()->set_code(wire::ACK_VERSION_MISMATCH);
        e.mutable_error()->set_message("tensor no longer published; fetch the manifest again");
        co_await ch.send(e);
        co_return;
      }
      for (size_t off = 0; off < bytes->size() || off == 0; off += kChunkBytes) {
        wire::Envelope e;
        auto* c = e.mutable_tensor_chunk();
        c->set_blake2b(want);
        c->set_offset(off);
        c->set_total_bytes(bytes->size());
        c->set_data(bytes->data() + off, std::min(kChunkBytes, bytes->size() - off));
        co_await ch.send(e);
        if (bytes->empty()) break;
      }
    }
  }

  asio::awaitable<void> session(Channel ch) {
    const std::string peer = ch.peer().hex();
    bool counted = false;
    asio::steady_timer timer(co_await asio::this_coro::executor);
    try {
      wire::Envelope first = co_await ch.receive();
      if (!first.has_join_request()) throw Error("first message must be a join request");
      const auto& jr = first.join_request();
      ledger->record_peer(peer, jr.display_name(), jr.capabilities().ShortDebugString(), now_ms());
      auto& ps = peers[peer];
      ps.name = jr.display_name();
      ps.advertised = jr.capabilities().measured_throughput();
      ps.sessions++;
      counted = true;
      ++connected;
      spdlog::info("coordinator: peer {} ({}) joined with {} device(s)", peer.substr(0, 12),
                   jr.display_name(), jr.capabilities().devices_size());
      {
        wire::Envelope r;
        r.set_reply_to(first.id());
        auto* rep = r.mutable_join_reply();
        rep->set_admitted(true);
        *rep->mutable_settings() = settings();
        rep->set_policy_version(version);
        rep->set_heartbeat_interval_ms(static_cast<uint32_t>(cfg.idle_timeout_s * 1000 / 4));
        co_await ch.send(r);
      }
      for (;;) {
        wire::Envelope env = co_await ch.receive();
        wire::Envelope out;
        out.set_reply_to(env.id());
        if (env.has_manifest_request()) {
          *out.mutable_manifest() = manifest_for(env.manifest_request().policy_version()).manifest;
          co_await ch.send(out);
        } else if (env.has_tensor_request()) {
          co_await send_tensors(ch, env.tensor_request());
        } else if (env.has_work_request()) {
          peers[peer].working = true;
          // A peer names the leases it is still computing (it resends a pending update before
          // asking), so any other lease it holds will never come: e.g. one issued just before a
          // coordinator crash that never reached it. Re-issue those now, not at their deadline.
          const auto& wr = env.work_request();
          for (const auto& r : wr.returned())
            if (auto it = leases.find(r.lease_id()); it != leases.end() && it->second.rec.peer == peer)
              expire(r.lease_id(), "returned", "given back: " + sanitize_reason(r.reason()));
          const std::set<std::string> holding(wr.holding().begin(), wr.holding().end());
          std::vector<std::string> lost;
          for (const auto& [id, l] : leases)
            if (l.rec.peer == peer && !holding.count(id)) lost.push_back(id);
          for (const auto& id : lost) expire(id, "expired", "peer asked for new work without delivering it");
          // A peer asking ahead gets an answer at once: its update waits behind this reply.
          std::optional<wire::WorkLease> lease;
          const double give_up = mono_s() + (holding.empty() ? 1.0 : 0.0);
          while (!finished && !(lease = try_issue(peer, wr.max_prompts())) && mono_s() < give_up) {
            timer.expires_after(std::chrono::milliseconds(3));
            co_await timer.async_wait(asio::use_awaitable);
          }
          if (lease) {
            *out.mutable_work_lease() = *lease;
          } else if (finished) {
            out.mutable_leave()->set_reason("round complete");
          } else {
            out.mutable_ack()->set_reason(wire::ACK_OVERLOADED);
            out.mutable_ack()->set_message("no work yet; ask again");
            out.mutable_ack()->set_policy_version(version);
          }
          co_await ch.send(out);
        } else if (env.has_update()) {
          *out.mutable_ack() = handle_update(env.update(), ch.peer());
          co_await ch.send(out);
          if (banned.count(peer)) {
            wire::Envelope bye;
            bye.mutable_error()->set_code(wire::ACK_BANNED);
            bye.mutable_error()->set_message("banned: too many updates refused for misbehaviour");
            co_await ch.send(bye);
            throw Error("banned");
          }
        } else if (env.has_heartbeat()) {
          // Liveness only; TCP and lease deadlines do the rest.
        } else if (env.has_leave()) {
          spdlog::info("coordinator: peer {} left: {}", peer.substr(0, 12), env.leave().reason());
          std::vector<std::string> mine;
          for (const auto& [id, l] : leases)
            if (l.rec.peer == peer) mine.push_back(id);
          for (const auto& id : mine) expire(id, "returned", "peer left");
          break;
        } else {
          throw Error("unexpected message");
        }
      }
    } catch (const std::exception& e) {
      spdlog::info("coordinator: peer {} disconnected: {}", peer.substr(0, 12), e.what());
    }
    if (counted) {
      --connected;
      peer_disconnected(peer);
    }
    ch.close();
  }

  // ---------------------------------------------------------------------------------------------
  // HTTP status

  std::string live_status() {
    json j = json::parse(ledger->status_json());
    j["round_id"] = cfg.round_id;
    j["version"] = version;
    j["step"] = version;
    j["steps_total"] = cfg.steps;
    j["finished"] = finished;
    j["coordinator"] = identity.id().hex();
    j["uptime_s"] = mono_s() - started_mono;
    j["active_leases"] = leases.size();
    j["connected"] = connected;
    j["min_peers"] = cfg.min_peers;
    j["leases_started"] = started;  // false: waiting for min_peers
    j["banned"] = banned.size();
    j["audits"] = audits;
    j["aggregation"] = aggregation_rule_name(cfg.aggregation.rule);
    json open = json::object();
    for (const auto& [s, st] : open_steps) open[std::to_string(s)] = {{"done", st.done}, {"of", step_groups()}};
    j["open_steps"] = open;
    for (const auto& [k, p] : peers) {
      auto& e = j["peers"][k];
      e["connected"] = p.sessions > 0;
      e["throughput_groups_per_s"] = p.throughput;
    }
    return j.dump();
  }

  asio::awaitable<void> http_session(asio::ip::tcp::socket sock) {
    try {
      std::string buf;
      auto n = co_await asio::async_read_until(sock, asio::dynamic_buffer(buf, 8192), "\r\n\r\n",
                                               asio::use_awaitable);
      std::string line = buf.substr(0, std::min(n, buf.find("\r\n")));
      std::string body, status = "200 OK", type = "application/json";
      if (line.rfind("GET /status", 0) == 0 || line.rfind("GET / ", 0) == 0) {
        body = live_status();
      } else if (line.rfind("GET /metrics", 0) == 0) {
        body = prometheus_text(live_status());
        type = "text/plain; version=0.0.4";
      } else {
        status = "404 Not Found";
        body = R"({"error":"try GET /status or GET /metrics"})";
      }
      std::string resp = "HTTP/1.1 " + status + "\r\nContent-Type: " + type + "\r\nContent-Length: " +
                         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
      co_await asio::async_write(sock, asio::buffer(resp), asio::use_awaitable);
    } catch (const std::exception&) {
    }
  }

  asio::awaitable<void> http_loop() {
    for (;;) {
      asio::ip::tcp::socket sock(io);
      try {
        sock = co_await http->async_accept(asio::use_awaitable);
      } catch (const std::system_error&) {
        co_return;  // closed at shutdown
      }
      asio::co_spawn(io, http_session(std::move(sock)), asio::detached);
    }
  }

  asio::awaitable<void> housekeeping() {
    asio::steady_timer t(io);
    double finished_at = -1;
    for (;;) {
      t.expires_after(std::chrono::milliseconds(100));
      co_await t.async_wait(asio::use_awaitable);
      sweep_leases();
      if (g_stop_signal) {
        spdlog::info("coordinator: signal {}, stopping (serve again to resume)", int(g_stop_signal));
        break;
      }
      if (finished && evals_running == 0) {
        if (finished_at < 0) finished_at = mono_s();
        if (connected == 0 || mono_s() - finished_at > cfg.linger_s) break;
      }
    }
    if (server) server->stop();
    if (http) http->close();
    io.stop();
  }

  int serve() {
    open();
    auto [host, port] = split_host_port(cfg.listen);
    protocol::ChannelOptions opts;
    opts.limits.idle_timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg.idle_timeout_s * 1000));
    opts.admit = [this](const PeerId& id) {
      if (banned.count(id.hex())) {
        ledger->record_refusal(id.hex(), "", "banned", "connection from a banned identity", now_ms());
        spdlog::warn("coordinator: refused peer {}: banned", id.fingerprint());
        return false;
      }
      if (cfg.admission == Admission::open || allowed.count(id)) return true;
      ledger->record_refusal(id.hex(), "", "not_admitted", "identity not on the allowlist", now_ms());
      spdlog::warn("coordinator: refused peer {}: not on the allowlist", id.fingerprint());
      return false;
    };
    server = std::make_unique<protocol::Server>(
        io.get_executor(), asio::ip::tcp::endpoint(asio::ip::make_address(host), port), identity, opts,
        [this](Channel ch) { return session(std::move(ch)); });
    server->start();
    uint16_t status_port = 0;
    if (!cfg.status_listen.empty()) {
      auto [h, p] = split_host_port(cfg.status_listen);
      http = std::make_unique<asio::ip::tcp::acceptor>(io, asio::ip::tcp::endpoint(asio::ip::make_address(h), p));
      status_port = http->local_endpoint().port();
      asio::co_spawn(io, http_loop(), asio::detached);
    }
    json ep = {{"host", host}, {"port", server->port()}, {"status_port", status_port},
               {"coordinator_key", identity.id().hex()}, {"pid", ::getpid()}, {"round_id", cfg.round_id}};
    grpo::write_file_atomic(endpoint_path(cfg.data_dir), ep.dump());
    spdlog::info("coordinator: round {} on {}:{} (status http://{}:{}/status), key {}, version {}",
                 cfg.round_id, host, server->port(), host, status_port, identity.id().hex(), version);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    asio::co_spawn(io, housekeeping(), asio::detached);
    io.run();
    return finished ? 0 : (g_stop_signal ? 130 : 1);
  }
};

Coordinator::Coordinator(RoundConfig cfg) : impl_(std::make_unique<Impl>(std::move(cfg))) {}
Coordinator::~Coordinator() = default;
int Coordinator::serve() { return impl_->serve(); }

}  // namespace cohort::coordinator
