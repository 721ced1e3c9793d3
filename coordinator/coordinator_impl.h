// The coordinator's state and its parts' entry points, shared by the files that implement it
// (internal: only coordinator/*.cpp include it). The network thread owns everything here but
// `policy`, which only the compute executor touches, and `checker`, which is read-only.
//
//   coordinator.cpp  serve, housekeeping: the wiring of threads, sockets and timers
//   recovery.cpp     start-up: keys, ledger, resume from a checkpoint, replay of accepted updates
//   session.cpp      a peer's session: join, work requests and leases, weights, tensor chunks
//   updates.cpp      an update from arrival to Ack: checks, audit, ledger, absorb
//   steps.cpp        applying complete steps, checkpoints, held-out evaluations
//   status.cpp       the status document, over HTTP
#pragma once

#include <array>
#include <asio/thread_pool.hpp>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/async.h"
#include "common/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/ledger.h"
#include "coordinator/policy.h"
#include "coordinator/scheduler.h"
#include "coordinator/status_http.h"
#include "coordinator/update_checks.h"
#include "exchange/gradient_wire.h"
#include "exchange/round_card.h"
#include "grpo/tasks.h"
#include "grpo/tokenizer.h"
#include "protocol/channel.h"
#include "protocol/signed_update.h"

namespace cohort::grpo {
class Model;
}

namespace cohort::coordinator {

using exchange::Refusal;
using protocol::Channel;
using protocol::PeerId;

// Peer-supplied text kept in logs, the ledger and pages (common/text.h escapes the rest).
inline constexpr size_t kMaxDisplayName = 64;
inline constexpr size_t kMaxPeerText = 256;
// Leases one peer may hold at once: the one it computes and the next it asks ahead for.
inline constexpr size_t kMaxLeasesHeld = 2;
// Leases a peer may let go in a row (asking for new work without naming them, no update, no
// reason) before each further such request is refused as misbehaviour.
inline constexpr int kMaxUndelivered = 3;
// Updates checked at once on the compute executor: peers can deliver faster than it decodes, and
// each one waiting there holds a decoded, model-sized gradient (2 GB at 0.5 B parameters).
inline constexpr int kMaxChecking = 2;

// An update as it arrived: the signed header and the stream its UpdateChunks carried.
struct ArrivedUpdate {
  wire::SignedUpdate header;
  std::string stream;
};

// The files of a Hugging Face model folder every node must hold byte for byte (when present):
// named in the round settings, listed in the round card.
inline constexpr std::array<const char*, 2> kSharedTokenizerFiles = {"tokenizer.json",
                                                                     "tokenizer_config.json"};

// An audit handed to a validator peer (validation.cpp): the audit lease it is sent as, the update
// it checks, and what came back. Lives on the network thread.
struct AuditJob {
  std::string id;              // the audit lease's id ("audit-<n>")
  std::string author;          // the audited update's peer (hex) and connection address
  std::string author_address;
  std::string update_lease;    // the audited lease
  wire::WorkLease task;        // as sent to the validator
  std::string validator;       // "" while waiting for one
  double opened = 0, sent = 0;  // mono_s()
  std::optional<wire::AuditReport> report;
  bool closed = false;         // decided without (more from) a validator: a late report is stale
  std::shared_ptr<asio::steady_timer> wake;  // the update's coroutine waits on it
};

// What the executor found in an update's body and gradient (updates.cpp).
struct Checked {
  std::optional<Refusal> refusal;
  UpdateFacts facts;
  std::vector<float> grad;          // dense: every codec, audits, robust rules
  exchange::SparseGradient sparse;  // top-k under the mean rule (Policy::folds_sparse)
  bool is_sparse = false;
  double loss = 0, kl_sum = 0;
  double seconds = 0;
  double audit_s = 0;  // the coordinator's own audit, when it ran one here
  // For a validator's audit: the update without its tensors (completions and header fields).
  std::shared_ptr<wire::GradientUpdate> meta;
};

// An update acknowledged while a validator audits it (updates.cpp, finish_audited).
struct PendingAudit {
  std::string peer;
  PeerId channel_peer;
  protocol::VerifiedUpdate vr;
  LeaseRecord lease;
  std::shared_ptr<ArrivedUpdate> in;
  size_t bytes = 0;
  std::shared_ptr<const Published> sampled_on;
  std::shared_ptr<AuditJob> job;
  Checked checked;
};

struct Coordinator::Impl {
  RoundConfig cfg;
  protocol::Identity identity =
      protocol::Identity::generate();  // replaced by the key file in open()
  std::unique_ptr<Ledger> ledger;
  std::unique_ptr<grpo::Task> task;
  std::unique_ptr<grpo::Tokenizer> tok;
  std::unique_ptr<Policy> policy;          // compute executor only (once open() is done)
  std::unique_ptr<UpdateChecker> checker;  // read-only, any thread
  std::unique_ptr<LeaseScheduler> sched;   // network thread only
  wire::RoundSettings settings;
  protocol::ReplayGuard replays;
  std::deque<std::shared_ptr<const Published>> published;
  // Rounds with a KL term: the reference policy's manifest and blobs (set once in open()).
  std::shared_ptr<const Published> policy_reference;
  // The blob store the published versions live in, for the HTTP threads (set once in open()).
  std::shared_ptr<const exchange::BlobStore> blob_store;
  uint64_t policy_params = 0;  // the model's parameter count
  std::set<PeerId> allowed;
  std::map<std::string, int64_t> misbehaviour;  // refusals for misbehaviour per peer (hex)
  // Accepted updates per peer since its last refusal for misbehaviour (adaptive trust).
  std::map<std::string, int64_t> trust_streak;
  // Leases a peer let go without delivering or returning them since its last accepted update
  // (closed when it asked for new work without naming them).
  std::map<std::string, int> undelivered;
  std::set<std::string> banned;
  // The timers of work requests waiting for work, woken when some may have appeared (a lease
  // closed, a step applied; work_may_be_available).
  std::set<std::shared_ptr<asio::steady_timer>> waiting_for_work;
  // Updates in the compute executor's queue for their checks (each decodes into a model-sized
  // buffer that lives until the update is absorbed); more wait here, woken as checks finish.
  int checking = 0;
  std::deque<std::shared_ptr<asio::steady_timer>> waiting_to_check;  // first come, first checked
  bool finished = false;
  bool applying = false;  // a step is being applied on the executor
  int64_t applying_step = 0;
  int64_t audits = 0;  // updates recomputed in full
  // The most stream bytes one update may announce: every tensor RAW plus every completion a
  // whole step could hold. What a session buffers per update in flight (its wire size).
  uint64_t max_stream_bytes = 0;
  double started_mono = mono_s();
  asio::io_context io;
  asio::thread_pool compute{1};
  std::unique_ptr<protocol::Server> server;
  std::unique_ptr<StatusHttpServer> http;
  std::mt19937_64 audit_rng{std::random_device{}()};  // which updates are recomputed: unpredictable
  std::vector<std::jthread> evals;                    // held-out evaluations in flight
  int evals_running = 0;

  std::string fatal;  // why the model side failed, if it did

  // Validators ([verification] validators, validation.cpp): audits waiting for a validator (first
  // come, first taken), those out with one by audit lease id, each peer's connection address,
  // and the coordinator's own audit budget (coordinator_audits_per_step a step, spent by spot
  // checks; fallbacks and disagreements spend it too, below zero if need be).
  std::deque<std::shared_ptr<AuditJob>> audits_waiting;
  std::map<std::string, std::shared_ptr<AuditJob>> audits_out;
  // Every audit lease sent, with the validator it went to (for the round): a node asking ahead
  // while it computes one names it in `holding`, also once it was decided without its report.
  std::map<std::string, std::string> audit_sent_to;
  std::map<std::string, std::string> peer_address;
  double coordinator_audit_credit = 0;
  int64_t next_audit_id = 0;
  // Per peer: audits it recomputed as a validator and whose reports held (network thread).
  std::map<std::string, int64_t> validations;
  // Audits by where they were recomputed: a validator alone, the coordinator as a spot check or
  // to settle a disagreement, the coordinator because no validator took it in time.
  int64_t audits_by_validators = 0, spot_checks = 0, disagreements = 0, audit_fallbacks = 0;
  double coordinator_audit_s = 0;  // the coordinator's compute on audits (all of them)

  // The files every node needs (dataset, tokenizer files), pinned in the blob store (open()), and
  // the signed round card naming them (serve(), once the ports are bound), for GET /round.
  std::vector<exchange::CardFile> round_files;
  mutable std::mutex card_mutex;
  std::string round_card;

  explicit Impl(RoundConfig c) : cfg(std::move(c)) {}
  ~Impl() { compute.join(); }

  // Runs f on the compute executor; the awaiting coroutine resumes on the network thread (f's
  // result or exception is handed back there). Pass a named lambda (common/async.h).
  template <typename F>
  auto on_compute(const F& f) -> asio::awaitable<decltype(f())> {
    return run_on(compute.get_executor(), f);
  }

  // recovery.cpp: start-up and resume, before serving (nothing runs concurrently yet).
  void open();
  // Re-applies the accepted updates the last checkpoint does not contain, in acceptance order.
  void replay_ledger();
  wire::RoundSettings make_settings() const;

  // round_card.cpp
  void put_round_files();
  // The card's text, signed; `peer_address` and `http_base` as the outside sees them.
  std::string make_round_card(const std::string& peer_address, const std::string& http_base) const;
  void publish_round_card(const std::string& host, uint16_t port, uint16_t status_port);

  // steps.cpp
  bool checkpoint_due(int64_t step) const;
  void record_checkpoint(int64_t step, const std::string& path);
  void step_applied(const Policy::Applied& a, bool replaying);
  // Applies every complete step in order, one at a time, while the sessions go on.
  asio::awaitable<void> apply_ready_steps();
  // Held-out evaluation on a snapshot of the weights, on its own thread: the round goes on while
  // it runs. The result is recorded on the network thread; the coordinator waits for it at exit.
  void start_eval(int64_t step, std::shared_ptr<grpo::Model> snap);

  // session.cpp
  std::optional<wire::WorkLease> try_issue(const std::string& peer, uint32_t max_prompts);
  void close_lease(const std::string& lease_id, const std::string& state,
                   const std::string& reason);
  void log_closed(const ClosedLease& c);
  void work_may_be_available() {
    for (const auto& t : waiting_for_work) t->cancel();
  }

  // A refusal for misbehaviour counted against `peer` (already recorded by the caller); bans the
  // peer once it reaches ban_after.
  void count_misbehaviour(const std::string& peer);

  // updates.cpp
  void refuse(const std::string& peer, const wire::GradientUpdate& h, const protocol::Digest& d,
              int64_t step, const Refusal& r, size_t bytes, bool audited = false);
  // Where a lease stands for this update, checked before the body is and again after (it may
  // have expired or been given back meanwhile): the refusal and the step to record it under.
  std::optional<std::pair<int64_t, Refusal>> lease_refusal(const protocol::VerifiedUpdate& vr,
                                                           const PeerId& channel_peer);
  // Checks in order of cost: signature and header (executor); replay, lease and round (here); the
  // body — completions re-scored, counts, reward statistics, loss, the decoded gradient and its
  // norm, and for a sampled share a full recomputation (executor); the lease once more; then the
  // ledger records it before the Ack leaves.
  // The stream is read on the executor, then moved into the ledger record (not copied).
  asio::awaitable<wire::Ack> handle_update(std::shared_ptr<ArrivedUpdate> in, PeerId channel_peer);
  // The accepted update into the ledger, its lease completed, its gradient to its step.
  void accept_update(const std::string& peer, const PeerId& channel_peer,
                     const protocol::VerifiedUpdate& vr, const LeaseRecord& lease, Checked& c,
                     ArrivedUpdate& in, size_t bytes, bool audited);
  // An update acknowledged while a validator audits it: counted or refused once the audit decides.
  asio::awaitable<void> finish_audited(std::shared_ptr<PendingAudit> p);

  // validation.cpp
  // An audit of `full` (its completions; its tensors are not needed) for a validator: queued,
  // peers asking for work are woken.
  std::shared_ptr<AuditJob> open_audit(const std::string& author, const LeaseRecord& lease,
                                       const wire::GradientUpdate& full);
  // Whether `peer` may validate `job`: not its author, not banned, not at the author's address
  // (validator_distinct_address).
  bool may_validate(const std::string& peer, const AuditJob& job);
  // The first waiting audit `peer` may take, as a WorkLease; nullopt when none.
  std::optional<wire::WorkLease> take_audit(const std::string& peer);
  // Waits until the job's report is in, validator_timeout_s has passed, or no connected peer may
  // take it (the job is then closed: a late report is stale).
  asio::awaitable<void> await_audit(std::shared_ptr<AuditJob> job);
  // A validator's report: kept for the update waiting on it, acknowledged.
  wire::Ack audit_report_arrived(const std::string& peer, const wire::AuditReport& r);
  // The verdict of an audit done by a validator (or by the coordinator when none reported):
  // spot checks and disagreements recomputed here; a validator whose report the coordinator's
  // own recomputation contradicts is refused (bad_audit). Returns the update's refusal, if any.
  asio::awaitable<std::optional<Refusal>> decide_audit(
      std::shared_ptr<AuditJob> job, std::shared_ptr<const Published> sampled_on,
      std::shared_ptr<const wire::GradientUpdate> meta, std::shared_ptr<const std::vector<float>> grad,
      LeaseRecord lease);

  // session.cpp
  // One blob from the blob store as BlobChunks (a chunk read at a time), or an Error when no
  // served version lists it.
  asio::awaitable<void> send_blob(Channel& ch, const wire::BlobRequest& req);
  // The UpdateChunks that follow an update's header; throws (ending the session) on chunks out
  // of order or a stream over max_stream_bytes.
  asio::awaitable<std::string> receive_stream(Channel& ch, uint64_t bytes);
  const Published& manifest_for(uint64_t v) const;
  asio::awaitable<wire::Envelope> answer_work_request(const std::string& peer,
                                                      const wire::WorkRequest& wr);
  asio::awaitable<void> session(Channel ch);

  // status.cpp: the live status document (network thread); the HTTP threads' entry point.
  std::string live_status();
  HttpResponse http_get(const HttpRequest& req);
  HttpResponse http_blob(const HttpRequest& req);

  // coordinator.cpp: timers (lease deadlines, signals, the end of the round) and the wiring.
  asio::awaitable<void> housekeeping();
  void serve();
};

}  // namespace cohort::coordinator
