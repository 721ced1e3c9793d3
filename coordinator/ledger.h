// The coordinator's durable record in SQLite (WAL): peers, leases, every update accepted or
// refused with its reason, applied steps, checkpoints and evaluations. Accepted update bodies
// are kept until a checkpoint covers them, which is what lets a restart after `kill -9` replay
// exactly the accepted updates the last checkpoint does not contain.
//
//   Ledger ledger(data_dir + "/ledger.sqlite");
//   ledger.record_update(rec);                // before the Ack leaves: durable first
//   for (auto& u : ledger.accepted_updates_after(step)) ...
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;

namespace cohort::coordinator {

// When a commit is durable: `full` fsyncs every commit (survives power loss); `normal` (WAL)
// survives a process crash such as kill -9, and after a power cut rolls back to an earlier
// consistent state.
enum class LedgerSync { full, normal };

struct LeaseRecord {
  std::string lease_id;
  int64_t step = 0;
  std::string peer;                 // hex
  std::vector<uint64_t> prompts;    // prompt indices
  uint64_t policy_version = 0;
  int64_t issued_ms = 0, deadline_ms = 0;
  std::string state = "active";     // active | completed | expired | returned
  std::string reason;
};

struct UpdateRecord {
  int64_t id = 0;
  std::string peer;                 // hex
  uint64_t sequence = 0;
  std::string lease_id;
  int64_t step = 0;                 // step the lease belongs to (0 when unknown)
  uint64_t policy_version = 0;
  std::string digest;               // 32 raw bytes
  bool accepted = false;
  std::string reason;               // "ok" or the refusal reason (docs/OPERATOR.md lists them)
  std::string detail;
  double units = 0, tokens = 0;
  int64_t sequences = 0;
  double reward_mean = 0, accuracy = 0;
  int64_t bytes = 0;
  int64_t received_ms = 0;
  std::string body, signature;      // accepted updates only: the signed header ...
  std::string stream;               // ... and its stream (completions and tensors)
  // The verified work it carried, its author's credit when accepted: completion tokens (every
  // one sampled, loss-carrying or not) and prompt groups.
  double completion_tokens = 0;
  int64_t groups = 0;
  bool audited = false;  // recomputed in full (and re-sampled) before it was accepted or refused
};

struct StepRecord {
  int64_t step = 0;
  uint64_t version = 0;
  double units = 0;
  int64_t updates = 0;
  double reward_mean = 0, accuracy = 0, loss = 0, grad_norm = 0;
  double kl = 0;  // mean k3 KL to the reference per loss token (0 when beta = 0)
  double aggregate_s = 0, optimizer_s = 0, publish_s = 0;
  int64_t applied_ms = 0;
};

class Ledger {
 public:
  // Opens or creates; throws cohort::Error.
  explicit Ledger(const std::string& path, LedgerSync sync = LedgerSync::full);
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // A write transaction: BEGIN IMMEDIATE now, COMMIT by commit(), ROLLBACK when it leaves scope
  // without one (an exception mid-update leaves the ledger as it was, and the next transaction
  // starts cleanly).
  //
  //   Ledger::Transaction tx(ledger);
  //   ledger.record_update(u); ledger.close_lease(...);
  //   tx.commit();
  class [[nodiscard]] Transaction {
   public:
    explicit Transaction(Ledger& ledger);
    ~Transaction();
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    void commit();

   private:
    Ledger& ledger_;
    bool open_ = true;
  };

  void record_peer(const std::string& peer, const std::string& name, const std::string& caps,
                   int64_t now_ms);
  void record_refusal(const std::string& peer, const std::string& address,
                      const std::string& reason, const std::string& detail, int64_t now_ms);
  void record_lease(const LeaseRecord& lease);
  void close_lease(const std::string& lease_id, const std::string& state, const std::string& reason,
                   int64_t now_ms);
  int64_t record_update(const UpdateRecord& update);  // returns the row id
  void record_step(const StepRecord& step);
  void record_checkpoint(int64_t step, const std::string& path, int64_t now_ms);
  void record_eval(int64_t step, double accuracy, int n, int64_t now_ms);
  // Drops the bodies of accepted updates the checkpoint at `step` contains.
  void prune_bodies(int64_t step);

  [[nodiscard]] std::optional<std::pair<int64_t, std::string>> latest_checkpoint() const;
  [[nodiscard]] std::vector<UpdateRecord> accepted_updates_after(int64_t step) const;  // by id
  [[nodiscard]] std::vector<LeaseRecord> leases_in_state(const std::string& state) const;
  [[nodiscard]] std::optional<LeaseRecord> lease(const std::string& lease_id) const;
  // Every accepted (peer, sequence, digest), for the replay guard after a restart.
  struct Seen { std::string peer; uint64_t sequence; std::string digest; };
  [[nodiscard]] std::vector<Seen> accepted_digests() const;
  [[nodiscard]] std::vector<StepRecord> steps() const;
  // The `refusals` reason of a work request refused for abusing leases (misbehaviour).
  static constexpr std::string_view kLeaseAbuse = "lease_abuse";
  // Per peer, refused updates whose reason is misbehaviour (exchange::is_misbehaviour) plus
  // refusals recorded as kLeaseAbuse: what bans are counted from after a restart.
  [[nodiscard]] std::map<std::string, int64_t> misbehaviour_counts() const;
  // Per peer, its accepted updates since its last refusal for misbehaviour: the streak adaptive
  // trust is computed from (update_checks.h, audit_probability), rebuilt after a restart.
  [[nodiscard]] std::map<std::string, int64_t> trust_streaks() const;

  // Status JSON pieces, as JSON text (nlohmann stays out of this header).
  [[nodiscard]] std::string status_json() const;

  [[nodiscard]] sqlite3* handle() const { return db_; }

 private:
  sqlite3* db_ = nullptr;
};

// Comma-separated prompt indices, as stored in the leases table.
std::string join_indices(const std::vector<uint64_t>& v);
std::vector<uint64_t> split_indices(const std::string& s);

}  // namespace cohort::coordinator
