#include "coordinator/ledger.h"

#include <sqlite3.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <initializer_list>
#include <set>
#include <sstream>
#include <variant>

#include "common/check.h"
#include "exchange/refusal.h"

namespace cohort::coordinator {
namespace {

using Value = std::variant<std::nullptr_t, int64_t, double, std::string>;
struct Blob { const std::string* s; };

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK)
      throw Error(std::string("ledger: ") + sqlite3_errmsg(db) + " in: " + sql);
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt& bind(int i, int64_t v) { sqlite3_bind_int64(st_, i, v); return *this; }
  Stmt& bind(int i, uint64_t v) { return bind(i, static_cast<int64_t>(v)); }
  Stmt& bind(int i, int v) { return bind(i, static_cast<int64_t>(v)); }
  Stmt& bind(int i, double v) { sqlite3_bind_double(st_, i, v); return *this; }
  Stmt& bind(int i, const std::string& v) {
    sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // Not copied (SQLITE_STATIC): a statement is bound and run within one expression, while the
  // caller's string lives; an update's stream can be hundreds of MB.
  Stmt& bind(int i, Blob b) {
    if (b.s->empty()) sqlite3_bind_null(st_, i);
    else sqlite3_bind_blob64(st_, i, b.s->data(), b.s->size(), SQLITE_STATIC);
    return *this;
  }
  bool step() {
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw Error(std::string("ledger: ") + sqlite3_errmsg(db_));
  }
  void run() { step(); }
  int64_t i64(int c) const { return sqlite3_column_int64(st_, c); }
  double f64(int c) const { return sqlite3_column_double(st_, c); }
  std::string text(int c) const {
    const void* p = sqlite3_column_blob(st_, c);
    int n = sqlite3_column_bytes(st_, c);
    return p ? std::string(static_cast<const char*>(p), n) : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
};

void exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "?";
    sqlite3_free(err);
    throw Error("ledger: " + m);
  }
}

// ALTER TABLE for each (name, type) the table lacks.
void add_missing_columns(sqlite3* db, const std::string& table,
                         std::initializer_list<std::pair<const char*, const char*>> columns) {
  std::set<std::string> have;
  for (Stmt s(db, ("PRAGMA table_info(" + table + ")").c_str()); s.step();) have.insert(s.text(1));
  for (const auto& [name, type] : columns)
    if (!have.contains(name))
      exec(db, ("ALTER TABLE " + table + " ADD COLUMN " + name + " " + type + ";").c_str());
}

constexpr const char* kSchema = R"(
CREATE TABLE IF NOT EXISTS peers(
  peer TEXT PRIMARY KEY, name TEXT, capabilities TEXT, first_seen_ms INTEGER, last_seen_ms INTEGER);
CREATE TABLE IF NOT EXISTS refusals(
  id INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT, address TEXT, reason TEXT, detail TEXT,
  at_ms INTEGER);
CREATE TABLE IF NOT EXISTS leases(
  lease_id TEXT PRIMARY KEY, step INTEGER, peer TEXT, prompts TEXT, policy_version INTEGER,
  issued_ms INTEGER, deadline_ms INTEGER, state TEXT, reason TEXT, closed_ms INTEGER);
CREATE TABLE IF NOT EXISTS updates(
  id INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT, sequence INTEGER, lease_id TEXT,
  step INTEGER, policy_version INTEGER, digest BLOB, accepted INTEGER, reason TEXT, detail TEXT,
  units REAL, tokens REAL, sequences INTEGER, reward_mean REAL, accuracy REAL, bytes INTEGER,
  received_ms INTEGER, body BLOB, signature BLOB, stream BLOB, completion_tokens REAL,
  groups INTEGER, audited INTEGER);
CREATE INDEX IF NOT EXISTS updates_step ON updates(step, accepted);
CREATE TABLE IF NOT EXISTS steps(
  step INTEGER PRIMARY KEY, version INTEGER, units REAL, updates INTEGER, reward_mean REAL,
  accuracy REAL, loss REAL, grad_norm REAL, aggregate_s REAL, optimizer_s REAL, publish_s REAL,
  applied_ms INTEGER, kl REAL);
CREATE TABLE IF NOT EXISTS checkpoints(step INTEGER PRIMARY KEY, path TEXT, created_ms INTEGER);
CREATE TABLE IF NOT EXISTS evals(step INTEGER PRIMARY KEY, accuracy REAL, n INTEGER, created_ms INTEGER);
)";

}  // namespace

std::string join_indices(const std::vector<uint64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s;
}

std::vector<uint64_t> split_indices(const std::string& s) {
  std::vector<uint64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) v.push_back(std::stoull(item));
  return v;
}

Ledger::Ledger(const std::string& path, LedgerSync sync) {
  if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) {
    std::string m = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    throw Error("ledger: cannot open " + path + ": " + m);
  }
  sqlite3_busy_timeout(db_, 5000);
  exec(db_, "PRAGMA journal_mode=WAL;");
  // FULL: every commit is fsynced, so an acknowledged update survives power loss too. NORMAL
  // (WAL): a commit survives a process crash (kill -9) but not an OS crash or power cut, where
  // the ledger rolls back to an earlier consistent state (the lost updates' leases are re-issued).
  exec(db_, sync == LedgerSync::full ? "PRAGMA synchronous=FULL;" : "PRAGMA synchronous=NORMAL;");
  exec(db_, kSchema);
  // Ledgers written by earlier versions lack the newer columns: before updates were streamed
  // (no `stream`: their bodies hold it all), before credits (no `completion_tokens`, `groups`:
  // those updates earn no credit, as nothing recorded what they verified), before audits were
  // recorded (`audited`), before the KL term (`steps.kl`).
  add_missing_columns(db_, "updates", {{"stream", "BLOB"}, {"completion_tokens", "REAL"},
                                       {"groups", "INTEGER"}, {"audited", "INTEGER"}});
  add_missing_columns(db_, "steps", {{"kl", "REAL"}});
}

Ledger::~Ledger() { sqlite3_close(db_); }

Ledger::Transaction::Transaction(Ledger& ledger) : ledger_(ledger) { exec(ledger_.db_, "BEGIN IMMEDIATE;"); }

void Ledger::Transaction::commit() {
  COHORT_CHECK(open_, "transaction committed twice");
  exec(ledger_.db_, "COMMIT;");
  open_ = false;
}

Ledger::Transaction::~Transaction() {
  if (open_) sqlite3_exec(ledger_.db_, "ROLLBACK;", nullptr, nullptr, nullptr);  // never throws
}

void Ledger::record_peer(const std::string& peer, const std::string& name, const std::string& caps,
                         int64_t now) {
  Stmt(db_,
       "INSERT INTO peers(peer,name,capabilities,first_seen_ms,last_seen_ms) VALUES(?,?,?,?,?) "
       "ON CONFLICT(peer) DO UPDATE SET name=excluded.name, capabilities=excluded.capabilities, "
       "last_seen_ms=excluded.last_seen_ms")
      .bind(1, peer).bind(2, name).bind(3, caps).bind(4, now).bind(5, now).run();
}

void Ledger::record_refusal(const std::string& peer, const std::string& address,
                            const std::string& reason, const std::string& detail, int64_t now) {
  Stmt(db_, "INSERT INTO refusals(peer,address,reason,detail,at_ms) VALUES(?,?,?,?,?)")
      .bind(1, peer).bind(2, address).bind(3, reason).bind(4, detail).bind(5, now).run();
}

void Ledger::record_lease(const LeaseRecord& l) {
  Stmt(db_,
       "INSERT OR REPLACE INTO leases(lease_id,step,peer,prompts,policy_version,issued_ms,"
       "deadline_ms,state,reason) VALUES(?,?,?,?,?,?,?,?,?)")
      .bind(1, l.lease_id).bind(2, l.step).bind(3, l.peer).bind(4, join_indices(l.prompts))
      .bind(5, l.policy_version).bind(6, l.issued_ms).bind(7, l.deadline_ms).bind(8, l.state)
      .bind(9, l.reason).run();
}

void Ledger::close_lease(const std::string& id, const std::string& state, const std::string& reason,
                         int64_t now) {
  Stmt(db_, "UPDATE leases SET state=?, reason=?, closed_ms=? WHERE lease_id=?")
      .bind(1, state).bind(2, reason).bind(3, now).bind(4, id).run();
}

int64_t Ledger::record_update(const UpdateRecord& u) {
  Stmt(db_,
       "INSERT INTO updates(peer,sequence,lease_id,step,policy_version,digest,accepted,reason,"
       "detail,units,tokens,sequences,reward_mean,accuracy,bytes,received_ms,body,signature,stream,"
       "completion_tokens,groups,audited) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
      .bind(1, u.peer).bind(2, u.sequence).bind(3, u.lease_id).bind(4, u.step)
      .bind(5, u.policy_version).bind(6, Blob{&u.digest}).bind(7, u.accepted ? 1 : 0)
      .bind(8, u.reason).bind(9, u.detail).bind(10, u.units).bind(11, u.tokens)
      .bind(12, u.sequences).bind(13, u.reward_mean).bind(14, u.accuracy).bind(15, u.bytes)
      .bind(16, u.received_ms).bind(17, Blob{&u.body}).bind(18, Blob{&u.signature})
      .bind(19, Blob{&u.stream}).bind(20, u.completion_tokens).bind(21, u.groups)
      .bind(22, u.audited ? 1 : 0).run();
  return sqlite3_last_insert_rowid(db_);
}

void Ledger::record_step(const StepRecord& s) {
  Stmt(db_,
       "INSERT OR REPLACE INTO steps(step,version,units,updates,reward_mean,accuracy,loss,grad_norm,"
       "aggregate_s,optimizer_s,publish_s,applied_ms,kl) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)")
      .bind(1, s.step).bind(2, s.version).bind(3, s.units).bind(4, s.updates)
      .bind(5, s.reward_mean).bind(6, s.accuracy).bind(7, s.loss).bind(8, s.grad_norm)
      .bind(9, s.aggregate_s).bind(10, s.optimizer_s).bind(11, s.publish_s).bind(12, s.applied_ms)
      .bind(13, s.kl).run();
}

void Ledger::record_checkpoint(int64_t step, const std::string& path, int64_t now) {
  Stmt(db_, "INSERT OR REPLACE INTO checkpoints(step,path,created_ms) VALUES(?,?,?)")
      .bind(1, step).bind(2, path).bind(3, now).run();
}

void Ledger::record_eval(int64_t step, double acc, int n, int64_t now) {
  Stmt(db_, "INSERT OR REPLACE INTO evals(step,accuracy,n,created_ms) VALUES(?,?,?,?)")
      .bind(1, step).bind(2, acc).bind(3, n).bind(4, now).run();
}

void Ledger::prune_bodies(int64_t step) {
  Stmt(db_,
       "UPDATE updates SET body=NULL, stream=NULL WHERE accepted=1 AND step<=? AND body IS NOT NULL")
      .bind(1, step).run();
}

std::optional<std::pair<int64_t, std::string>> Ledger::latest_checkpoint() const {
  Stmt s(db_, "SELECT step,path FROM checkpoints ORDER BY step DESC LIMIT 1");
  if (!s.step()) return std::nullopt;
  return std::make_pair(s.i64(0), s.text(1));
}

std::vector<UpdateRecord> Ledger::accepted_updates_after(int64_t step) const {
  Stmt s(db_,
         "SELECT id,peer,sequence,lease_id,step,policy_version,digest,units,tokens,sequences,"
         "reward_mean,accuracy,bytes,received_ms,body,signature,stream FROM updates "
         "WHERE accepted=1 AND step>? ORDER BY id");
  s.bind(1, step);
  std::vector<UpdateRecord> out;
  while (s.step()) {
    UpdateRecord u;
    u.id = s.i64(0);
    u.peer = s.text(1);
    u.sequence = static_cast<uint64_t>(s.i64(2));
    u.lease_id = s.text(3);
    u.step = s.i64(4);
    u.policy_version = static_cast<uint64_t>(s.i64(5));
    u.digest = s.text(6);
    u.accepted = true;
    u.reason = "ok";
    u.units = s.f64(7);
    u.tokens = s.f64(8);
    u.sequences = s.i64(9);
    u.reward_mean = s.f64(10);
    u.accuracy = s.f64(11);
    u.bytes = s.i64(12);
    u.received_ms = s.i64(13);
    u.body = s.text(14);
    u.signature = s.text(15);
    u.stream = s.text(16);
    out.push_back(std::move(u));
  }
  return out;
}

// The columns every lease query selects, read back by read_lease in this order.
#define LEASE_COLUMNS "SELECT lease_id,step,peer,prompts,policy_version,issued_ms,deadline_ms,state,reason "

static LeaseRecord read_lease(Stmt& s) {
  LeaseRecord l;
  l.lease_id = s.text(0);
  l.step = s.i64(1);
  l.peer = s.text(2);
  l.prompts = split_indices(s.text(3));
  l.policy_version = static_cast<uint64_t>(s.i64(4));
  l.issued_ms = s.i64(5);
  l.deadline_ms = s.i64(6);
  l.state = s.text(7);
  l.reason = s.text(8);
  return l;
}

std::vector<LeaseRecord> Ledger::leases_in_state(const std::string& state) const {
  Stmt s(db_,
         LEASE_COLUMNS "FROM leases WHERE state=? ORDER BY issued_ms");
  s.bind(1, state);
  std::vector<LeaseRecord> out;
  while (s.step()) out.push_back(read_lease(s));
  return out;
}

std::optional<LeaseRecord> Ledger::lease(const std::string& id) const {
  Stmt s(db_,
         LEASE_COLUMNS "FROM leases WHERE lease_id=?");
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return read_lease(s);
}

std::vector<Ledger::Seen> Ledger::accepted_digests() const {
  Stmt s(db_, "SELECT peer,sequence,digest FROM updates WHERE accepted=1");
  std::vector<Seen> out;
  while (s.step()) out.push_back({s.text(0), static_cast<uint64_t>(s.i64(1)), s.text(2)});
  return out;
}

std::map<std::string, int64_t> Ledger::misbehaviour_counts() const {
  // The one definition of misbehaviour (exchange/refusal.h), applied to the recorded reasons.
  Stmt s(db_, "SELECT peer, reason, COUNT(*) FROM updates WHERE accepted=0 GROUP BY peer, reason");
  std::map<std::string, int64_t> out;
  while (s.step())
    if (exchange::is_misbehaviour(s.text(1))) out[s.text(0)] += s.i64(2);
  // Misbehaviour outside updates: abuse of leases (coordinator/session.cpp).
  Stmt r(db_, "SELECT peer, COUNT(*) FROM refusals WHERE reason=? GROUP BY peer");
  r.bind(1, std::string(kLeaseAbuse));
  while (r.step()) out[r.text(0)] += r.i64(1);
  return out;
}

std::map<std::string, int64_t> Ledger::trust_streaks() const {
  // Walk each peer's updates in order: an accepted one extends the streak, a refusal for
  // misbehaviour (the shared definition) ends it; other refusals (stale, expired) leave it.
  Stmt s(db_, "SELECT peer, accepted, reason FROM updates ORDER BY id");
  std::map<std::string, int64_t> out;
  while (s.step()) {
    int64_t& n = out[s.text(0)];
    if (s.i64(1) == 1) ++n;
    else if (exchange::is_misbehaviour(s.text(2))) n = 0;
  }
  return out;
}

std::vector<StepRecord> Ledger::steps() const {
  Stmt s(db_,
         "SELECT step,version,units,updates,reward_mean,accuracy,loss,grad_norm,aggregate_s,"
         "optimizer_s,publish_s,applied_ms,COALESCE(kl, 0) FROM steps ORDER BY step");
  std::vector<StepRecord> out;
  while (s.step()) {
    StepRecord r;
    r.step = s.i64(0);
    r.version = static_cast<uint64_t>(s.i64(1));
    r.units = s.f64(2);
    r.updates = s.i64(3);
    r.reward_mean = s.f64(4);
    r.accuracy = s.f64(5);
    r.loss = s.f64(6);
    r.grad_norm = s.f64(7);
    r.aggregate_s = s.f64(8);
    r.optimizer_s = s.f64(9);
    r.publish_s = s.f64(10);
    r.applied_ms = s.i64(11);
    r.kl = s.f64(12);
    out.push_back(r);
  }
  return out;
}

std::string Ledger::status_json() const {
  using nlohmann::json;
  json j;
  // What the accepted updates of each step carried: their completions' mean length, and their
  // bytes on the wire (what the step cost the peers' uplinks).
  std::map<int64_t, std::pair<double, int64_t>> per_step;  // step -> (length, bytes)
  {
    Stmt s(db_,
           "SELECT step, SUM(completion_tokens) / NULLIF(SUM(sequences), 0), SUM(bytes) "
           "FROM updates WHERE accepted=1 GROUP BY step");
    while (s.step()) per_step[s.i64(0)] = {s.f64(1), s.i64(2)};
  }
  json steps = json::array();
  for (const auto& s : this->steps()) {
    const auto [length, bytes] = per_step[s.step];
    steps.push_back({{"step", s.step}, {"version", s.version}, {"units", s.units},
                     {"updates", s.updates}, {"reward_mean", s.reward_mean},
                     {"accuracy", s.accuracy}, {"loss", s.loss}, {"grad_norm", s.grad_norm},
                     {"aggregate_s", s.aggregate_s}, {"optimizer_s", s.optimizer_s},
                     {"publish_s", s.publish_s}, {"applied_ms", s.applied_ms},
                     {"completion_len", length}, {"bytes_up", bytes}, {"kl", s.kl}});
  }
  j["steps"] = steps;
  json peers = json::object();
  {
    Stmt s(db_, "SELECT peer,name,last_seen_ms FROM peers");
    while (s.step())
      peers[s.text(0)] = {{"name", s.text(1)},      {"accepted", 0},      {"refused", 0},
                          {"accepted_bytes", 0},    {"credit_tokens", 0}, {"credit_groups", 0},
                          {"last_seen_ms", s.i64(2)}, {"refused_reasons", json::object()}};
  }
  // Credit is only for work that passed every check: accepted updates' completion tokens and
  // prompt groups (a refused or superseded update earns nothing).
  double credit_tokens = 0;
  int64_t credit_groups = 0;
  {
    Stmt s(db_,
           "SELECT peer, SUM(accepted), SUM(1-accepted), "
           "SUM(CASE WHEN accepted=1 THEN bytes ELSE 0 END), "
           "SUM(CASE WHEN accepted=1 THEN COALESCE(completion_tokens, 0) ELSE 0 END), "
           "SUM(CASE WHEN accepted=1 THEN COALESCE(groups, 0) ELSE 0 END), MAX(received_ms), "
           "SUM(COALESCE(audited, 0)) FROM updates GROUP BY peer");
    while (s.step()) {
      auto& p = peers[s.text(0)];
      p["accepted"] = s.i64(1);
      p["refused"] = s.i64(2);
      p["accepted_bytes"] = s.i64(3);
      p["credit_tokens"] = s.f64(4);
      p["credit_groups"] = s.i64(5);
      p["last_seen_ms"] = std::max(p.value("last_seen_ms", int64_t{0}), s.i64(6));
      p["audited"] = s.i64(7);
      credit_tokens += s.f64(4);
      credit_groups += s.i64(5);
    }
  }
  // Refused updates by peer and reason; the totals by reason are their sums.
  std::map<std::string, int64_t> refused_by_reason;
  {
    Stmt r(db_, "SELECT peer, reason, COUNT(*) FROM updates WHERE accepted=0 GROUP BY peer, reason");
    while (r.step()) {
      peers[r.text(0)]["refused_reasons"][r.text(1)] = r.i64(2);
      refused_by_reason[r.text(1)] += r.i64(2);
    }
  }
  j["peers"] = peers;
  j["credits"] = {{"tokens", credit_tokens}, {"groups", credit_groups}};
  json reasons = json::object();
  {
    for (const auto& [reason, n] : refused_by_reason) reasons[reason] = n;
    Stmt r(db_, "SELECT reason, COUNT(*) FROM refusals GROUP BY reason");
    while (r.step()) reasons["connection:" + r.text(0)] = r.i64(1);
  }
  j["refusals"] = reasons;
  json evals = json::array();
  {
    Stmt s(db_, "SELECT step,accuracy,n FROM evals ORDER BY step");
    while (s.step()) evals.push_back({{"step", s.i64(0)}, {"accuracy", s.f64(1)}, {"n", s.i64(2)}});
  }
  j["evals"] = evals;
  json ckpts = json::array();
  {
    Stmt s(db_, "SELECT step,path FROM checkpoints ORDER BY step");
    while (s.step()) ckpts.push_back({{"step", s.i64(0)}, {"path", s.text(1)}});
  }
  j["checkpoints"] = ckpts;
  return j.dump();
}

}  // namespace cohort::coordinator
