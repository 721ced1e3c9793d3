// Wiring of the peer node: a network thread runs each session with the coordinator as one
// coroutine (link.cpp); the lease's compute runs on a compute thread (work.cpp: the device group
// and its workers); while a lease computes, the session delivers the previous update, asks for
// the next lease just in time and fetches its weights (weight_sync.h), and sends heartbeats.
// Here: reconnecting with backoff, exit codes, round setup, handing leases to the compute thread.
#include <google/protobuf/util/message_differencer.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdio>
#include <random>
#include <thread>

#include "common/check.h"
#include "common/clock.h"
#include "common/quantile.h"
#include "common/runtime.h"
#include "exchange/blob_store.h"
#include "exchange/round_settings.h"
#include "node/node_impl.h"
#include "protocol/digest.h"

namespace cohort::node {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

// A local file the round names must be the coordinator's byte for byte; else the node would
// draw other prompts (dataset) or other token ids (tokenizer) than the round's.
void require_same_file(const exchange::SharedFile& want, const std::string& path,
                       const std::string& what, const std::string& option) {
  if (path.empty())
    throw RoundOver(3, "the round uses " + what + "; give this node its copy with " + option);
  if (!fs::exists(path)) throw RoundOver(3, what + " " + path + " does not exist");
  const std::string have = exchange::digest_hex(protocol::blake2b_256_file(path));
  if (have != want.blake2b)
    throw RoundOver(3, what + " mismatch: " + path + " has BLAKE2b-256 " + have +
                           " but the round's is " + want.blake2b + "; use the coordinator's file");
}

}  // namespace

bool stop_requested() { return g_stop != 0; }

void Node::run() {
  if (opt_.threads > 0) set_num_threads(opt_.threads);
  if (opt_.devices < 1) throw Error("--devices must be at least 1");
  if (!fs::exists(opt_.key_file)) {
    if (const fs::path dir = fs::path(opt_.key_file).parent_path(); !dir.empty())
      fs::create_directories(dir);
    protocol::Identity::generate().save(opt_.key_file);
    // The key is the volunteer's identity: their credit and record in every round follow it.
    spdlog::warn("node: created this node's identity key at {} — keep it (back it up): a lost key "
                 "is a lost identity, with its credit",
                 fs::absolute(opt_.key_file).string());
  }
  id_ = protocol::Identity::load(opt_.key_file);
  coordinator_ = PeerId::parse(opt_.coordinator_key);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  install_pause_signals();
  const PidFile pid_file(pid_file_for(opt_.key_file));
  spdlog::info("node {}: {} → {}:{}, {} device(s), max batch {}; pause with `cohort node pause --key "
               "{}` (or kill -USR1 {}), resume likewise",
               id_.id().fingerprint(), opt_.name, opt_.host, opt_.port, opt_.devices, opt_.max_batch,
               opt_.key_file, ::getpid());
  if (opt_.when_idle) {
    idle_ = std::make_unique<IdleWatch>(IdleOptions{.cpu_threshold = opt_.idle_threshold, .gpus = opt_.gpus});
    spdlog::info("node: --when-idle: works while other processes use at most {:.0f} % of the CPU{}",
                 100 * opt_.idle_threshold, opt_.gpus.empty() ? "" : " and no other process uses its GPUs");
  }
  // The status line: redrawn every second on a terminal; each log line clears it first.
  std::jthread status_line;
  if (opt_.status_line && ::isatty(STDERR_FILENO)) {
    spdlog::set_pattern("\r\033[K[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
    status_line = std::jthread([this](std::stop_token stop) {
      while (!stop.stop_requested()) {
        std::string line;
        {
          std::lock_guard lock(status_mutex_);
          line = format_status_line(status_);
        }
        std::fprintf(stderr, "\r%s\033[K", line.c_str());
        std::fflush(stderr);
        for (int i = 0; i < 10 && !stop.stop_requested(); ++i)
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      std::fprintf(stderr, "\r\033[K");
    });
  }
  set_status("connecting");
  if (opt_.max_upload_mbps > 0 || opt_.max_download_mbps > 0)
    spdlog::info("node: link capped at {} up, {} down",
                 opt_.max_upload_mbps > 0 ? fmt::format("{} Mbit/s", opt_.max_upload_mbps) : "no cap",
                 opt_.max_download_mbps > 0 ? fmt::format("{} Mbit/s", opt_.max_download_mbps) : "no cap");
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
      if (r.exit_code() == 0) spdlog::info("node: {}", r.what());
      rc = r.exit_code();
      why = r.what();
      break;
    } catch (const protocol::ProtocolError& e) {
      if (e.code() == protocol::ErrorCode::not_allowed && opt_.fault == Fault::sybil) {
        // One operator, many keys: a refused key is dropped for a fresh one, with what it held.
        id_ = protocol::Identity::generate();
        ++sybil_keys_;
        pending_.clear();
        reports_.clear();
        spdlog::warn("node: [fault sybil] key refused; back as {} (key {})", id_.id().fingerprint(),
                     sybil_keys_);
        backoff = 0.2;
        last_ok = mono_s();
        continue;
      }
      if (e.code() == protocol::ErrorCode::not_allowed ||
          e.code() == protocol::ErrorCode::pinned_key_mismatch) {
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
    if (stop_requested()) break;
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

std::string Node::pause_reason() const {
  if (pause_requested()) return "paused by you (resume: cohort node resume, or kill -USR2)";
  if (idle_ && idle_->busy()) return "paused while the machine is busy: " + idle_->why();
  return "";
}

void Node::set_status(const std::string& state, const std::string& lease, int groups) {
  std::lock_guard lock(status_mutex_);
  status_.state = state;
  status_.lease = lease;
  status_.lease_groups = groups;
  status_.tokens_per_s = shown_tokens_per_s_;
  status_.version = sync_ ? sync_->version() : 0;
  status_.bytes_up = bytes_sent_;
  status_.bytes_down = sync_ ? sync_->fetched_bytes() : 0;
  status_.credit_tokens = credit_tokens_;
  status_.credit_groups = credit_groups_;
}

// Runs the lease on the compute thread; the network thread learns of its end through `c`.
void Node::start_compute(const wire::WorkLease& lease, std::shared_ptr<Computing> c) {
  asio::post(compute_, [this, lease, c] {
    const double t0 = mono_s();
    std::optional<protocol::SealedUpdate> update;
    std::optional<wire::AuditReport> report;
    std::exception_ptr error;
    try {
      if (lease.has_audit())
        report = validate(lease);
      else
        update = work(lease);
    } catch (...) {
      error = std::current_exception();
    }
    const double seconds = mono_s() - t0;
    const auto ex = c->wake.get_executor();
    asio::post(ex, [c, report = std::move(report)]() mutable { c->report = std::move(report); });
    asio::post(ex, [c, has = update.has_value(), seconds] {
      c->computed = has;
      c->seconds = seconds;
      c->wake.cancel();
    });
    if (update && opt_.delay_ms > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(opt_.delay_ms));
    asio::post(ex, [c, update = std::move(update), error]() mutable {
      c->update = std::move(update);
      c->error = error;
      c->done = true;
      c->done_at = mono_s();
      c->wake.cancel();
    });
  });
}

void Node::setup(const wire::RoundSettings& s) {
  if (devices_) {
    // Field by field (serialized bytes need not be identical).
    if (!google::protobuf::util::MessageDifferencer::Equals(settings_, s))
      throw RoundOver(1, "the round's settings changed; restart the node");
    return;
  }
  exchange::RoundSpec spec;
  try {
    spec = exchange::read_round_settings(s);
  } catch (const exchange::SettingsError& e) {
    throw RoundOver(1, e.what());
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
      require_same_file(f, opt_.tokenizer_dir.empty() ? "" : (dir / f.name).string(),
                        "the model's " + f.name, "--tokenizer");
    tok_ = grpo::tokenizer_for_model(opt_.tokenizer_dir, mc, spec.system_prompt);
  } else {
    tok_ = grpo::make_tokenizer(mc.tokenizer.empty() ? "chars" : mc.tokenizer);
  }
  devices_ = opt_.gpus.empty()
                 ? make_cpu_device_group(mc, opt_.devices, grpo::parse_precision(opt_.precision))
                 : make_gpu_device_group(mc, opt_.gpus, grpo::parse_precision(opt_.precision));
  layout_ = exchange::ParamLayout(devices_->replica(0));
  encoder_ = std::make_unique<exchange::GradientEncoder>(layout_, spec.codec);
  sync_ = std::make_unique<WeightSync>(layout_, coordinator_, round_id_, spec.policy_dtype,
                                       opt_.mirrors);
  policy_dtype_ = spec.policy_dtype;
  spdlog::info("node: round {} task {} G={} model {} parameters", round_id_,
               cfg_.task.dataset.empty() ? cfg_.task.name : cfg_.task.dataset, cfg_.group_size,
               mc.parameter_count());
}

void Node::load(const StagedWeights& w) {
  sync_->load(
      w, [&](const std::string& name, const std::vector<float>& v) { devices_->load(name, v); });
}

void Node::write_summary() {
  if (opt_.summary_out.empty()) return;
  const double wall =
      (first_lease_ >= 0 && last_ack_ > first_lease_) ? last_ack_ - first_lease_ : 0;
  const double join_s = std::max(0.0, join_weights_s_);  // the first weights: a joiner's snapshot
  json j = {{"name", opt_.name},
            {"peer", id_.id().hex()},
            {"leases", leases_done_},
            {"audits", audits_done_},
            {"sybil_keys", sybil_keys_},
            {"groups", groups_},
            {"samples", samples_},
            {"compute_s", compute_s_},
            {"wall_s", wall},
            {"compute_fraction", wall > 0 ? compute_s_ / wall : 0.0},
            {"updates_sent", updates_sent_},
            {"leases_given_back", leases_failed_},
            {"bytes_per_update", updates_sent_ ? bytes_sent_ / updates_sent_ : 0.0},
            {"weights_fetched_bytes", sync_ ? sync_->fetched_bytes() : 0.0},
            {"weights_patch_bytes", sync_ ? sync_->stats().patch_bytes : 0.0},
            {"weights_snapshot_bytes", sync_ ? sync_->stats().snapshot_bytes : 0.0},
            {"weights_mirror_bytes", sync_ ? sync_->stats().mirror_bytes : 0.0},
            {"weights_patches", sync_ ? sync_->stats().patches : 0},
            {"weights_snapshots", sync_ ? sync_->stats().snapshots : 0},
            {"weights_patch_fallbacks", sync_ ? sync_->stats().patch_fallbacks : 0},
            {"mirrors_skipped", sync_ ? sync_->stats().mirrors_skipped : 0},
            {"lease_wait_s", lease_wait_s_},
            {"weights_s", weights_s_},
            {"join_weights_s", join_s},
            {"compute_fraction_joined", wall > join_s ? compute_s_ / (wall - join_s) : 0.0},
            {"ack_wait_s", ack_wait_s_},
            {"ahead_wait_s", ahead_wait_s_},
            {"heartbeats_sent", heartbeats_sent_},
            {"lease_rtt_p50_ms", quantile(lease_rtt_ms_, 0.5)},
            {"lease_rtt_p99_ms", quantile(lease_rtt_ms_, 0.99)}};
  std::ofstream(opt_.summary_out) << j.dump() << "\n";
}

Fault parse_fault(const std::string& name) {
  if (name.empty()) return Fault::none;
  if (name == "false-reward") return Fault::false_reward;
  if (name == "replay") return Fault::replay;
  if (name == "poison") return Fault::poison;
  if (name == "worker-throw") return Fault::worker_throw;
  if (name == "hoard") return Fault::hoard;
  if (name == "churn") return Fault::churn;
  if (name == "sign-flip") return Fault::sign_flip;
  if (name == "scaled") return Fault::scaled;
  if (name == "noise") return Fault::noise;
  if (name == "nan") return Fault::nan;
  if (name == "zero") return Fault::zero;
  if (name == "stop-only") return Fault::stop_only;
  if (name == "lazy") return Fault::lazy;
  if (name == "cherry-pick") return Fault::cherry_pick;
  if (name == "copycat") return Fault::copycat;
  if (name == "collude") return Fault::collude;
  if (name == "rubber-stamp") return Fault::rubber_stamp;
  if (name == "sybil") return Fault::sybil;
  throw Error("unknown --fault '" + name +
              "' (false-reward | replay | poison | worker-throw | hoard | churn | sign-flip | scaled | "
              "noise | nan | zero | stop-only | lazy | cherry-pick | copycat | collude | rubber-stamp | "
              "sybil)");
}

void run_node(const NodeOptions& options) {
  Node n(options);
  n.run();
}

}  // namespace cohort::node
