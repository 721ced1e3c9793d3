// The lease scheduler: which prompt groups of which steps are pending, leased or done, and who
// gets how many. A pure state machine — no sockets, no ledger, no clock of its own: every call
// that depends on time is given `now` (monotonic seconds) and `now_ms` (wall, for deadlines), so
// tests drive it step by step in microseconds. The coordinator records what it returns.
//
//   LeaseScheduler s({.steps = 20, .groups_per_step = 32, .staleness_bound = 1, ...});
//   s.peer_connected("ab12..", now);
//   if (auto lease = s.issue("ab12..", /*max_prompts=*/0, now, now_ms))
//   ledger.record_lease(lease->rec); s.complete(lease_id, now);              // its groups are
//   done; step_complete(step) may turn true for (auto& e : s.expire_due(now_ms)) ...  // deadlines
//   passed: prompts back in the pool
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/ledger.h"

namespace cohort::coordinator {

struct SchedulerConfig {
  int64_t steps = 20;
  int64_t groups_per_step = 32;  // prompts (groups) per step
  uint32_t staleness_bound = 1;  // leases are issued for steps version+1 .. version+1+S
  double lease_timeout_s = 120;   // a lease not delivered by then goes back to the pool
  double reconnect_grace_s = 10;  // a disconnected peer's leases wait this long for it
  int min_peers = 1;              // no lease before this many peers are connected
  // Backup leases: when nothing is pending, a lease out for this many times its expected duration
  // (at least backup_min_s) is issued again to an idle peer that has delivered before; the first
  // update completes its groups (0: never).
  double backup_factor = 2;
  double backup_min_s = 1;
  // The floor for a holder that has never delivered: its first lease includes fetching the
  // weights (a snapshot for a joiner), which the coordinator cannot see when a mirror serves them.
  double backup_min_new_s = 10;
};

// A lease out to a peer: its ledger record and its groups' positions inside the step.
struct ActiveLease {
  LeaseRecord rec;
  std::vector<int> groups;
  double issued_mono = 0;
  // A lease and its backup (the same groups issued again while the first holder was overdue) name
  // each other here: whichever is delivered first completes the groups and supersedes the other.
  std::string partner;
  bool backup = false;
  // Its update is in and waits for an audit by a validator (hold_for_audit): no longer the
  // peer's to hold, never backed up, kept when the peer disconnects.
  bool delivered = false;
};

// A lease that left the active set without an update: why, for the ledger and the log.
struct ClosedLease {
  std::string lease_id;
  std::string peer;
  size_t groups = 0;
  std::string state;  // expired | returned
  std::string reason;
};

class LeaseScheduler {
 public:
  explicit LeaseScheduler(SchedulerConfig cfg, uint64_t version = 0);

  // ---- peers
  void peer_connected(const std::string& peer, double advertised_throughput = 0);
  // The last session of `peer` ended: its leases get reconnect_grace_s (deadline shortened);
  // returns the leases whose deadline changed (to record).
  std::vector<LeaseRecord> peer_disconnected(const std::string& peer, int64_t now_ms);
  void peer_working(const std::string& peer);  // it asked for work: counts in the shares
  [[nodiscard]] int connected() const { return connected_; }
  [[nodiscard]] double throughput(const std::string& peer) const;  // groups/s, 0 unmeasured
  // How long moving one lease's data took this peer: its update's stream (upload) or a weight
  // fetch (download), measured by the sessions. Leases are sized so that their compute covers
  // it (lease_size).
  void upload_measured(const std::string& peer, double seconds);
  void download_measured(const std::string& peer, double seconds);
  [[nodiscard]] bool peer_is_connected(const std::string& peer) const;

  // ---- leases
  // A lease for `peer` from the oldest step in the staleness window with pending groups, sized
  // by guided self-scheduling (see lease_size). A peer that has never delivered, once some peer
  // has, takes from the window's newest step first, never groups that such a peer let go, and
  // such peers hold at most half of the window's groups together. With nothing pending, a backup
  // of the most
  // overdue lease (oldest step first; see backup_factor) if `peer` has delivered before and none
  // of its own. nullopt when none can be issued now (round finished, fewer than min_peers
  // connected so far, nothing pending in the window and nothing overdue).
  std::optional<ActiveLease> issue(const std::string& peer, uint32_t max_prompts, double now,
                                   int64_t now_ms);
  // The lease's groups are done (its update was accepted). Updates the peer's measured
  // throughput. Returns the lease as it was; its partner (a backup, or the lease it backed up),
  // now superseded, leaves the active set and is reported in `superseded`.
  ActiveLease complete(const std::string& lease_id, double now,
                       std::optional<ClosedLease>* superseded = nullptr);
  // Back to the pool, with the reason recorded (no-op for an unknown id). The groups of a lease
  // with a partner stay with the partner.
  std::optional<ClosedLease> close(const std::string& lease_id, const std::string& state,
                                   const std::string& reason);
  // The lease's update is in, waiting for an audit by a validator: marked delivered, its deadline
  // moved to `until_ms` if that is later (no-op for an unknown id).
  void hold_for_audit(const std::string& lease_id, int64_t until_ms);
  // The active leases `peer` holds (not those delivered and waiting for an audit) (a work request names what it still computes).
  [[nodiscard]] std::vector<std::string> leases_of(const std::string& peer) const;
  std::vector<ClosedLease> expire_due(int64_t now_ms);
  // Re-adopts a lease that was active when the coordinator stopped (resume). False when it no
  // longer fits (its step was applied or its groups are taken).
  bool adopt(const LeaseRecord& rec, double now);
  [[nodiscard]] const ActiveLease* find(const std::string& lease_id) const;
  [[nodiscard]] size_t active() const { return leases_.size(); }
  [[nodiscard]] bool started() const { return started_; }

  // ---- steps
  // Marks groups done for a replayed update (resume): no lease bookkeeping.
  void mark_done(int64_t step, const std::vector<uint64_t>& prompt_indices);
  [[nodiscard]] bool step_complete(int64_t step) const;
  // The step was applied: version becomes `step`, its state is dropped.
  void step_applied(int64_t step);
  [[nodiscard]] uint64_t version() const { return version_; }
  [[nodiscard]] bool finished() const { return version_ >= static_cast<uint64_t>(cfg_.steps); }
  // Groups done in each open step, for the status page.
  [[nodiscard]] std::map<int64_t, int> open_steps() const;
  [[nodiscard]] uint64_t prompt_index(int64_t step, int pos) const;
  [[nodiscard]] const SchedulerConfig& config() const { return cfg_; }

  // Guided self-scheduling: a peer gets its throughput share of the groups still pending in the
  // step, so leases shrink as the step's pool drains and the peers finish it together instead
  // of waiting on one that took a large lease late. Bounds: at most its share of a whole step,
  // at least half of that (every lease costs one full-size update on the wire), and while its
  // throughput is unmeasured a probe of at most an eighth of a step. A peer whose link is slow
  // gets leases of at least (upload + download seconds) × throughput groups, even beyond its
  // share: a peer that asks ahead then moves one lease's data while computing the next, and
  // its link hides behind its compute.
  [[nodiscard]] int64_t lease_size(const std::string& peer, int64_t pending,
                                   uint32_t max_prompts) const;

 private:
  enum class Group : uint8_t { pending, leased, done };
  struct Step {
    std::vector<Group> groups;
    // Pending again after a key that never delivered let them go: for peers that deliver only,
    // so churning keys cannot take the same groups again and again.
    std::vector<bool> reserved;
    int done = 0;
    int pending = 0;  // groups in Group::pending (a full step is skipped without a scan)
  };
  struct Peer {
    double throughput = 0;  // groups per second, measured (EMA)
    double advertised = 0;
    int sessions = 0;
    bool working = false;
    double last_delivery = 0;  // a pipelined peer starts its next lease when it delivers one
    double upload_s = 0, download_s = 0;  // per lease, measured (EMA)
  };
  Step& step(int64_t s);
  [[nodiscard]] double share_of(const std::string& peer) const;
  [[nodiscard]] bool any_measured() const;  // a connected peer has delivered
  [[nodiscard]] ActiveLease new_lease(const std::string& peer, int64_t step, double now,
                                      int64_t now_ms) const;
  std::optional<ActiveLease> issue_backup(const std::string& peer, uint32_t max_prompts,
                                          double now, int64_t now_ms);

  SchedulerConfig cfg_;
  uint64_t version_ = 0;
  bool started_ = false;
  int connected_ = 0;
  std::map<int64_t, Step> steps_;
  std::map<std::string, ActiveLease> leases_;
  std::map<std::string, Peer> peers_;
};

}  // namespace cohort::coordinator
