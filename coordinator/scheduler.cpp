#include "coordinator/scheduler.h"

#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "common/check.h"

namespace cohort::coordinator {

namespace {
// The measured quantities (throughput, link seconds) as an even moving average; the first
// measurement is taken as it is.
void blend(double& average, double sample) {
  average = average > 0 ? 0.5 * average + 0.5 * sample : sample;
}
}  // namespace

LeaseScheduler::LeaseScheduler(SchedulerConfig cfg, uint64_t version)
    : cfg_(cfg), version_(version) {
  COHORT_CHECK(cfg_.groups_per_step > 0 && cfg_.steps >= 0);
}

uint64_t LeaseScheduler::prompt_index(int64_t step, int pos) const {
  return static_cast<uint64_t>(step - 1) * static_cast<uint64_t>(cfg_.groups_per_step) +
         static_cast<uint64_t>(pos);
}

LeaseScheduler::Step& LeaseScheduler::step(int64_t s) {
  auto it = steps_.find(s);
  if (it != steps_.end()) return it->second;
  Step& st = steps_[s];
  st.groups.assign(static_cast<size_t>(cfg_.groups_per_step), Group::pending);
  st.reserved.assign(static_cast<size_t>(cfg_.groups_per_step), false);
  st.pending = cfg_.groups_per_step;
  return st;
}

void LeaseScheduler::peer_connected(const std::string& peer, double advertised) {
  Peer& p = peers_[peer];
  p.advertised = advertised;
  p.sessions++;
  ++connected_;
}

std::vector<LeaseRecord> LeaseScheduler::peer_disconnected(const std::string& peer,
                                                           int64_t now_ms) {
  std::vector<LeaseRecord> changed;
  auto it = peers_.find(peer);
  if (it == peers_.end() || it->second.sessions == 0) return changed;
  --connected_;
  Peer& p = it->second;
  if (--p.sessions > 0) return changed;
  p.working = false;
  // A short grace to come back and deliver; then expire_due re-issues. A peer that never
  // delivered gets none: a key that takes a lease and hangs up, again and again, would otherwise
  // hold the step's groups for the grace each time.
  const int64_t grace =
      now_ms + (p.throughput > 0 ? static_cast<int64_t>(cfg_.reconnect_grace_s * 1000) : 0);
  for (auto& [id, l] : leases_)
    if (l.rec.peer == peer && !l.delivered && l.rec.deadline_ms > grace) {
      l.rec.deadline_ms = grace;
      changed.push_back(l.rec);
    }
  return changed;
}

void LeaseScheduler::peer_working(const std::string& peer) { peers_[peer].working = true; }

double LeaseScheduler::throughput(const std::string& peer) const {
  auto it = peers_.find(peer);
  return it == peers_.end() ? 0 : it->second.throughput;
}

bool LeaseScheduler::any_measured() const {
  for (const auto& [k, q] : peers_)
    if (q.throughput > 0 && q.sessions > 0) return true;
  return false;
}

bool LeaseScheduler::peer_is_connected(const std::string& peer) const {
  auto it = peers_.find(peer);
  return it != peers_.end() && it->second.sessions > 0;
}

double LeaseScheduler::share_of(const std::string& peer) const {
  // An unmeasured peer is estimated at the mean of the measured connected ones (1 if none is),
  // and does not count in the others' shares while any peer is measured: connected keys that
  // asked once and never deliver (or have yet to) do not shrink the leases of those that do.
  double measured = 0;
  int n = 0;
  for (const auto& [k, q] : peers_)
    if (q.throughput > 0 && q.sessions > 0) measured += q.throughput, ++n;
  auto estimate = [&](const Peer& p) {
    return p.throughput > 0 ? p.throughput : (n ? measured / n : 1.0);
  };
  double total = 0;
  for (const auto& [k, p] : peers_)
    if (p.sessions > 0 && p.working && (p.throughput > 0 || n == 0)) total += estimate(p);
  auto it = peers_.find(peer);
  if (it == peers_.end() || total <= 0) return 1.0;
  if (it->second.throughput <= 0 && n > 0) total += estimate(it->second);  // as if it were measured
  return std::min(1.0, estimate(it->second) / total);
}

void LeaseScheduler::upload_measured(const std::string& peer, double seconds) {
  blend(peers_[peer].upload_s, seconds);
}

void LeaseScheduler::download_measured(const std::string& peer, double seconds) {
  blend(peers_[peer].download_s, seconds);
}

int64_t LeaseScheduler::lease_size(const std::string& peer, int64_t pending,
                                   uint32_t max_prompts) const {
  const double share = share_of(peer);
  int64_t full = std::max<int64_t>(1, std::llround(double(cfg_.groups_per_step) * share));
  int64_t least = std::max<int64_t>(1, (full + 1) / 2);
  if (auto it = peers_.find(peer); it != peers_.end() && it->second.throughput > 0) {
    const Peer& p = it->second;
    const auto covering = static_cast<int64_t>(std::ceil((p.upload_s + p.download_s) * p.throughput));
    least = std::max(least, covering);
    full = std::max(full, least);
  }
  int64_t size =
      std::clamp<int64_t>(static_cast<int64_t>(std::ceil(double(pending) * share)), least, full);
  if (throughput(peer) <= 0)
    size = std::min<int64_t>(size, std::max<int64_t>(1, (cfg_.groups_per_step + 7) / 8));
  if (max_prompts > 0) size = std::min<int64_t>(size, max_prompts);
  return std::max<int64_t>(0, std::min(size, pending));
}

ActiveLease LeaseScheduler::new_lease(const std::string& peer, int64_t s, double now,
                                      int64_t now_ms) const {
  ActiveLease l;
  uint8_t rnd[6];
  randombytes_buf(rnd, sizeof rnd);
  char id[64];
  std::snprintf(id, sizeof id, "s%lld-%02x%02x%02x%02x%02x%02x", static_cast<long long>(s), rnd[0],
                rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
  l.rec.lease_id = id;
  l.rec.step = s;
  l.rec.peer = peer;
  l.rec.policy_version = version_;
  l.rec.issued_ms = now_ms;
  l.rec.deadline_ms = now_ms + static_cast<int64_t>(cfg_.lease_timeout_s * 1000);
  l.issued_mono = now;
  return l;
}

std::optional<ActiveLease> LeaseScheduler::issue(const std::string& peer, uint32_t max_prompts,
                                                 double now, int64_t now_ms) {
  if (finished()) return std::nullopt;
  if (!started_) {
    if (connected_ < cfg_.min_peers) return std::nullopt;
    started_ = true;
  }
  const int64_t first = static_cast<int64_t>(version_) + 1;
  const int64_t last = std::min<int64_t>(cfg_.steps, first + cfg_.staleness_bound);
  // Keys that have never delivered (new peers, and anyone who takes leases and drops them), once
  // some peer has delivered: at most half of the window's groups together, newest step first, and
  // never a group such a key let go (Step::reserved). Churning keys then take each group at most
  // once, and the steps that move the round on stay with peers that deliver (BOINC's quota for
  // new hosts).
  int64_t unmeasured_room = std::numeric_limits<int64_t>::max();
  const bool reverse = throughput(peer) <= 0 && any_measured();
  if (reverse) {
    int64_t held = 0;
    for (const auto& [id, l] : leases_)
      if (throughput(l.rec.peer) <= 0) held += static_cast<int64_t>(l.groups.size());
    unmeasured_room = std::max<int64_t>(1, (last - first + 1) * cfg_.groups_per_step / 2) - held;
    if (unmeasured_room <= 0) return std::nullopt;
  }
  for (int64_t k = 0; k <= last - first; ++k) {
    const int64_t s = reverse ? last - k : first + k;
    Step& st = step(s);
    if (st.pending == 0) continue;
    std::vector<int> pending;
    for (int i = 0; i < cfg_.groups_per_step; ++i)
      if (st.groups[static_cast<size_t>(i)] == Group::pending &&
          !(reverse && st.reserved[static_cast<size_t>(i)]))
        pending.push_back(i);
    if (pending.empty()) continue;
    const int64_t size = std::min(
        unmeasured_room, lease_size(peer, static_cast<int64_t>(pending.size()), max_prompts));
    ActiveLease l = new_lease(peer, s, now, now_ms);
    for (int64_t i = 0; i < size; ++i) {
      const int pos = pending[static_cast<size_t>(i)];
      st.groups[static_cast<size_t>(pos)] = Group::leased;
      --st.pending;
      l.groups.push_back(pos);
      l.rec.prompts.push_back(prompt_index(s, pos));
    }
    leases_[l.rec.lease_id] = l;
    return l;
  }
  return issue_backup(peer, max_prompts, now, now_ms);
}

// A peer that vanished with a lease (or is much slower than it looked) would hold its step until
// the lease's deadline while the others idle: an idle peer that has delivered before takes the
// same groups, and whichever update comes first counts (MapReduce's backup tasks).
std::optional<ActiveLease> LeaseScheduler::issue_backup(const std::string& peer,
                                                        uint32_t max_prompts, double now,
                                                        int64_t now_ms) {
  if (cfg_.backup_factor <= 0 || throughput(peer) <= 0) return std::nullopt;
  // What an unmeasured holder is expected to manage: the median of the measured connected peers.
  std::vector<double> measured;
  for (const auto& [k, q] : peers_)
    if (q.throughput > 0 && q.sessions > 0) measured.push_back(q.throughput);
  std::nth_element(measured.begin(), measured.begin() + static_cast<std::ptrdiff_t>(measured.size() / 2),
                   measured.end());
  const double typical = measured[measured.size() / 2];  // non-empty: `peer` is measured
  const ActiveLease* best = nullptr;
  double best_ratio = 0;
  const Peer none;
  for (const auto& [id, l] : leases_) {
    if (l.rec.peer == peer || !l.partner.empty() || l.delivered) continue;  // at most two holders
    if (max_prompts > 0 && l.groups.size() > max_prompts) continue;
    const auto h = peers_.find(l.rec.peer);
    const Peer& holder = h == peers_.end() ? none : h->second;
    const double thr = holder.throughput > 0 ? holder.throughput : typical;
    const double expected = double(l.groups.size()) / thr + holder.upload_s + holder.download_s;
    // A peer that asks ahead starts a lease when it delivers the one before.
    const double age = now - std::max(l.issued_mono, holder.last_delivery);
    const double floor = holder.throughput > 0 ? cfg_.backup_min_s : cfg_.backup_min_new_s;
    const double ratio = age / std::max(cfg_.backup_factor * expected, floor);
    if (ratio < 1) continue;
    if (!best || l.rec.step < best->rec.step || (l.rec.step == best->rec.step && ratio > best_ratio)) {
      best = &l;
      best_ratio = ratio;
    }
  }
  if (!best) return std::nullopt;
  ActiveLease b = new_lease(peer, best->rec.step, now, now_ms);
  b.groups = best->groups;
  b.rec.prompts = best->rec.prompts;
  b.partner = best->rec.lease_id;
  b.backup = true;
  leases_[best->rec.lease_id].partner = b.rec.lease_id;
  leases_[b.rec.lease_id] = b;
  return b;
}

ActiveLease LeaseScheduler::complete(const std::string& lease_id, double now,
                                     std::optional<ClosedLease>* superseded) {
  auto it = leases_.find(lease_id);
  COHORT_CHECK(it != leases_.end(), "completing a lease that is not active");
  ActiveLease l = std::move(it->second);
  leases_.erase(it);
  if (auto p = leases_.find(l.partner); !l.partner.empty() && p != leases_.end()) {
    ClosedLease c{p->first, p->second.rec.peer, p->second.groups.size(), "superseded",
                  (l.backup ? "its backup lease " : "the lease it backed up, ") + lease_id +
                      ", delivered the same groups first"};
    leases_.erase(p);
    if (superseded) *superseded = std::move(c);
  }
  Step& st = step(l.rec.step);
  for (int pos : l.groups) {
    COHORT_CHECK(st.groups[static_cast<size_t>(pos)] == Group::leased,
                 "a prompt group counted twice");
    st.groups[static_cast<size_t>(pos)] = Group::done;
    ++st.done;
  }
  // A peer that asks ahead holds a lease before it starts on it: time it from the later of the
  // lease's issue and the peer's previous delivery.
  Peer& p = peers_[l.rec.peer];
  const double elapsed = std::max(1e-3, now - std::max(l.issued_mono, p.last_delivery));
  const double thr = double(l.groups.size()) / elapsed;
  blend(p.throughput, thr);
  p.last_delivery = now;
  return l;
}

std::optional<ClosedLease> LeaseScheduler::close(const std::string& lease_id,
                                                 const std::string& state,
                                                 const std::string& reason) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return std::nullopt;
  if (auto p = leases_.find(it->second.partner); !it->second.partner.empty() && p != leases_.end())
    p->second.partner.clear();  // the groups stay leased, to the partner
  else if (auto st = steps_.find(it->second.rec.step); st != steps_.end()) {
    const bool dropped_by_new_key = throughput(it->second.rec.peer) <= 0;
    for (int pos : it->second.groups)
      if (st->second.groups[static_cast<size_t>(pos)] == Group::leased) {
        st->second.groups[static_cast<size_t>(pos)] = Group::pending;
        if (dropped_by_new_key) st->second.reserved[static_cast<size_t>(pos)] = true;
        ++st->second.pending;
      }
  }
  ClosedLease c{lease_id, it->second.rec.peer, it->second.groups.size(), state, reason};
  leases_.erase(it);
  return c;
}

std::vector<std::string> LeaseScheduler::leases_of(const std::string& peer) const {
  std::vector<std::string> out;
  for (const auto& [id, l] : leases_)
    if (l.rec.peer == peer && !l.delivered) out.push_back(id);
  return out;
}

void LeaseScheduler::hold_for_audit(const std::string& lease_id, int64_t until_ms) {
  if (auto it = leases_.find(lease_id); it != leases_.end()) {
    it->second.delivered = true;
    it->second.rec.deadline_ms = std::max(it->second.rec.deadline_ms, until_ms);
  }
}

std::vector<ClosedLease> LeaseScheduler::expire_due(int64_t now_ms) {
  std::vector<std::string> late;
  for (const auto& [id, l] : leases_)
    if (now_ms > l.rec.deadline_ms) late.push_back(id);
  std::vector<ClosedLease> out;
  for (const auto& id : late) out.push_back(*close(id, "expired", "deadline passed"));
  return out;
}

bool LeaseScheduler::adopt(const LeaseRecord& rec, double now) {
  if (rec.step <= static_cast<int64_t>(version_) || rec.step > cfg_.steps || rec.prompts.empty())
    return false;
  Step& st = step(rec.step);
  ActiveLease l;
  l.rec = rec;
  l.issued_mono = now;
  for (uint64_t idx : rec.prompts) {
    const uint64_t first = prompt_index(rec.step, 0);
    if (idx < first || idx - first >= static_cast<uint64_t>(cfg_.groups_per_step)) return false;
    const int pos = static_cast<int>(idx - first);
    if (st.groups[static_cast<size_t>(pos)] != Group::pending) return false;
    if (std::find(l.groups.begin(), l.groups.end(), pos) != l.groups.end()) return false;
    l.groups.push_back(pos);
  }
  for (int pos : l.groups) st.groups[static_cast<size_t>(pos)] = Group::leased;
  st.pending -= static_cast<int>(l.groups.size());
  leases_[rec.lease_id] = std::move(l);
  return true;
}

const ActiveLease* LeaseScheduler::find(const std::string& lease_id) const {
  auto it = leases_.find(lease_id);
  return it == leases_.end() ? nullptr : &it->second;
}

void LeaseScheduler::mark_done(int64_t s, const std::vector<uint64_t>& prompts) {
  Step& st = step(s);
  for (uint64_t idx : prompts) {
    const int pos = static_cast<int>(idx - prompt_index(s, 0));
    COHORT_CHECK(pos >= 0 && pos < cfg_.groups_per_step &&
                     st.groups[static_cast<size_t>(pos)] != Group::done,
                 "a replayed prompt group counted twice");
    if (st.groups[static_cast<size_t>(pos)] == Group::pending) --st.pending;
    st.groups[static_cast<size_t>(pos)] = Group::done;
    ++st.done;
  }
}

bool LeaseScheduler::step_complete(int64_t s) const {
  auto it = steps_.find(s);
  return it != steps_.end() && it->second.done >= cfg_.groups_per_step;
}

void LeaseScheduler::step_applied(int64_t s) {
  COHORT_CHECK(s == static_cast<int64_t>(version_) + 1, "steps are applied in order");
  steps_.erase(s);
  version_ = static_cast<uint64_t>(s);
}

std::map<int64_t, int> LeaseScheduler::open_steps() const {
  std::map<int64_t, int> out;
  for (const auto& [s, st] : steps_) out[s] = st.done;
  return out;
}

}  // namespace cohort::coordinator
