// The peer node's state and its parts' entry points, shared by the files that implement it
// (internal: only node/*.cpp include it). The network thread (one io_context per session) owns the
// session state; the compute thread owns what work() touches; they meet only through Computing.
//
//   node.cpp  run (reconnects, exit codes), round setup, the compute thread, the summary
//   link.cpp  the session with the coordinator as coroutines: join, work requests, asking ahead,
//             weights, updates and Acks, heartbeats
//   work.cpp  one lease on the device group into a signed update
#pragma once

#include <asio/thread_pool.hpp>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/check.h"
#include "exchange/gradient_wire.h"
#include "grpo/trainer.h"
#include "node/device_group.h"
#include "node/lease_split.h"
#include "node/link.h"
#include "node/node.h"
#include "node/volunteer.h"
#include "node/weight_sync.h"
#include "protocol/identity.h"
#include "protocol/signed_update.h"

namespace cohort::node {

using protocol::PeerId;
using Clock = std::chrono::steady_clock;

// Ends the session for good (no reconnect): the round is over, the node is not wanted, or it
// cannot work in this round. code 0 is a normal end; others become the process's exit code.
class RoundOver : public Error {
 public:
  RoundOver(int code, const std::string& why) : Error(why, code) {}
};

// SIGINT or SIGTERM arrived: leave the round gracefully.
bool stop_requested();

class Node {
 public:
  explicit Node(NodeOptions o) : opt_(std::move(o)) {}
  void run();

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
    std::optional<protocol::SealedUpdate> update;
    std::optional<wire::AuditReport> report;  // an audit lease's (posted before `done`)
    std::exception_ptr error;
  };

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
  bool lazy_loaded_ = false;  // Fault::lazy: the first weights are loaded, no later ones
  exchange::ParamLayout layout_;
  std::unique_ptr<exchange::GradientEncoder> encoder_;
  std::unique_ptr<WeightSync> sync_;
  // Volunteer controls: --when-idle's watch (nullptr without it), what the status line shows
  // (written on the network thread, read by the line's own thread), and the work this session
  // got acknowledged (the coordinator credits exactly that).
  std::unique_ptr<IdleWatch> idle_;
  mutable std::mutex status_mutex_;
  StatusInfo status_;
  double credit_tokens_ = 0;
  int64_t credit_groups_ = 0;
  // Of the last computed lease, written on the compute thread before it posts `done`.
  double last_generated_ = 0, last_tokens_per_s_ = 0;
  double shown_tokens_per_s_ = 0;  // last_tokens_per_s_ once the network thread saw it done
  // Rounds with a KL term: the reference policy is fetched once per process into the device group.
  bool reference_loaded_ = false;
  wire::DType policy_dtype_ = wire::DTYPE_F32;
  // Computed updates not yet acknowledged, in order; kept across a lost link.
  struct Pending {
    protocol::SealedUpdate update;
    uint64_t deadline_unix_ms = 0;
    std::string update_lease_id;
    double completion_tokens = 0;  // what the coordinator credits once it accepts the update
    int groups = 0;
  };
  std::deque<Pending> pending_;
  // Audit reports computed as a validator, not yet acknowledged (sent before pending updates).
  std::deque<wire::AuditReport> reports_;
  int64_t audits_done_ = 0;
  int64_t sybil_keys_ = 1;  // Fault::sybil: identities used so far
  // Leases given back, with why: sent with the next WorkRequest. work() leaves its reason in
  // given_back_; the network thread moves it here once the compute is done.
  std::vector<std::pair<std::string, std::string>> returned_;
  std::string given_back_;
  int64_t leases_done_ = 0, leases_failed_ = 0, samples_ = 0, groups_ = 0, updates_sent_ = 0;
  double compute_s_ = 0, bytes_sent_ = 0;
  // Where the time outside compute goes: waiting for a lease, fetching or loading weights, for
  // an Ack, and for the link's ask-ahead after a lease was computed.
  double lease_wait_s_ = 0, weights_s_ = 0, ack_wait_s_ = 0, ahead_wait_s_ = 0;
  // Of weights_s_, the first lease's weights (a joining node's snapshot), a cost paid once.
  double join_weights_s_ = -1;
  // For asking ahead just in time: this node's compute seconds per group and the link's seconds
  // to ask for a lease and fetch its weights (moving averages; 0 until measured).
  double seconds_per_group_ = 0, link_seconds_ = 0;
  Clock::duration heartbeat_every_ = std::chrono::seconds(15);
  int64_t heartbeats_sent_ = 0;
  std::vector<double> lease_rtt_ms_;  // WorkRequest → WorkLease, requests answered with a lease
  double first_lease_ = -1, last_ack_ = -1;

  // node.cpp
  // Runs the lease on the compute thread; the network thread learns of its end through `c`.
  void start_compute(const wire::WorkLease& lease, std::shared_ptr<Computing> c);
  void setup(const wire::RoundSettings& s);
  void load(const StagedWeights& w);
  asio::awaitable<void> abuse_leases(CoordinatorLink& link);
  void write_summary();
  // Why the node should not take new work now ("" when it may): the volunteer paused it, or
  // --when-idle found the machine busy.
  std::string pause_reason() const;
  // Refreshes what the status line shows (network thread).
  void set_status(const std::string& state, const std::string& lease = "", int groups = 0);

  // link.cpp
  asio::awaitable<void> session(double& last_ok);
  // While a lease computes: deliver what is pending, ask ahead at `ask_at` (or as soon as the
  // lease is computed, if earlier), send a heartbeat every heartbeat_every_; return when the
  // compute thread is done.
  asio::awaitable<Ahead> run_link(CoordinatorLink& link, Computing& c, bool ask,
                                  Clock::time_point ask_at, const std::string& computing);
  asio::awaitable<void> leave(CoordinatorLink& link, const std::string& why);
  // Fetches the round's reference policy (ManifestRequest.reference) into the device group.
  asio::awaitable<void> fetch_reference(CoordinatorLink& link);
  // While paused (pause_reason): heartbeats keep the session, nothing is asked for; returns when
  // resumed or asked to stop.
  asio::awaitable<void> wait_while_paused(CoordinatorLink& link, double& last_ok);
  // Sends the computed updates in order, each removed once its Ack is in. After a lost link, an
  // update whose lease has expired meanwhile is dropped (its prompts went to another peer);
  // otherwise the coordinator's clock decides, and says why it refuses a late one.
  asio::awaitable<void> deliver_pending(CoordinatorLink& link, bool drop_expired = false);
  asio::awaitable<wire::AckReason> send_update(CoordinatorLink& link, const protocol::SealedUpdate& su);
  asio::awaitable<void> send_heartbeat(CoordinatorLink& link);
  // nullopt: no work yet (the coordinator answered "ask again").
  asio::awaitable<std::optional<wire::WorkLease>> ask_for_work(CoordinatorLink& link,
                                                               const std::string& holding);
  asio::awaitable<Ahead> ask_ahead(CoordinatorLink& link, const std::string& holding);

  // work.cpp
  // The lease's groups split across the local workers by measured throughput, rolled out,
  // scored and reduced into one gradient sum. A failing worker (or reduction) gives the lease
  // back: nullopt, and the coordinator re-issues it when this node asks for work again.
  // Runs on the compute thread.
  std::optional<protocol::SealedUpdate> work(const wire::WorkLease& lease);
  // An audit lease (the node as a validator, exchange/lease_audit.h): the audited update's lease
  // recomputed from its completions on worker 0, reported with the gradient as a count sketch.
  // Runs on the compute thread; throws cohort::Error on a malformed audit lease.
  wire::AuditReport validate(const wire::WorkLease& lease);
  // Fault tests (--collude-dir): leaves `grad` for the colluders, or (copycat) replaces it with
  // the one a colluder left.
  void share_with_colluders(std::vector<float>& grad) const;
};

}  // namespace cohort::node
