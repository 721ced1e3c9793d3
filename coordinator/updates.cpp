// An update from arrival to Ack. The network thread checks what it owns (replay, lease, round);
// the compute executor checks the rest (signature, body, gradient, audit); the ledger records it
// before the Ack leaves, and its gradient joins its step on the executor.
#include <spdlog/spdlog.h>

#include <cstring>

#include "common/check.h"
#include "common/text.h"
#include "coordinator/coordinator_impl.h"
#include "exchange/gradient_wire.h"
#include "exchange/refusal.h"

namespace cohort::coordinator {


void Coordinator::Impl::refuse(const std::string& peer, const wire::GradientUpdate& h,
                               const protocol::Digest& d, int64_t step, const Refusal& r,
                               size_t bytes, bool audited) {
  UpdateRecord u;
  u.peer = peer;
  u.sequence = h.sequence();
  u.lease_id = printable(h.lease_id(), kMaxPeerText);
  u.step = step;
  u.policy_version = h.policy_version();
  u.digest.assign(reinterpret_cast<const char*>(d.data()), d.size());
  u.accepted = false;
  u.reason = exchange::reason_name(r.reason);
  u.detail = printable(r.detail, 4 * kMaxPeerText);
  u.bytes = static_cast<int64_t>(bytes);
  u.received_ms = unix_ms();
  u.audited = audited;
  ledger->record_update(u);
  if (exchange::is_misbehaviour(r.reason)) count_misbehaviour(peer);
  spdlog::warn("coordinator: refused update {} from {} ({}): {}", h.sequence(), peer.substr(0, 12),
               u.reason, u.detail);
}

void Coordinator::Impl::count_misbehaviour(const std::string& peer) {
  trust_streak[peer] = 0;  // trust starts over: every update is audited again (adaptive trust)
  if (++misbehaviour[peer] >= cfg.ban_after && cfg.ban_after > 0 && banned.insert(peer).second) {
    ledger->record_refusal(peer, "", "banned",
                           fmt::format("{} refusals for misbehaviour (ban_after = {})",
                                       misbehaviour[peer], cfg.ban_after),
                           unix_ms());
    spdlog::warn("coordinator: peer {} banned after {} refusals for misbehaviour",
                 peer.substr(0, 12), misbehaviour[peer]);
    // Its leases go back to the pool now, not at their deadline or after a reconnect grace.
    for (const auto& id : sched->leases_of(peer)) close_lease(id, "expired", "peer banned");
  }
}

// Where a lease stands for this update, checked before the body is and again after (it may
// have expired or been given back meanwhile): the refusal and the step to record it under.
std::optional<std::pair<int64_t, Refusal>> Coordinator::Impl::lease_refusal(
    const protocol::VerifiedUpdate& vr, const PeerId& channel_peer) {
  using R = std::pair<int64_t, Refusal>;
  if (replays.seen(channel_peer, vr.header.sequence(), vr.digest))
    return R{0,
             {wire::ACK_REPLAYED,
              "this body was accepted before, or its sequence is not above the last "
              "accepted from this peer"}};
  const ActiveLease* l = sched->find(vr.header.lease_id());
  if (!l) {
    auto rec = ledger->lease(vr.header.lease_id());
    if (!rec)
      return R{
          0,
          {wire::ACK_UNKNOWN_LEASE, "no lease " + printable(vr.header.lease_id(), kMaxPeerText)}};
    return R{rec->step,
             {wire::ACK_LEASE_EXPIRED, "lease " + rec->lease_id + " is " + rec->state +
                                           (rec->reason.empty() ? "" : " (" + rec->reason + ")")}};
  }
  if (l->rec.peer != channel_peer.hex())
    return R{l->rec.step, {wire::ACK_UNKNOWN_LEASE, "lease belongs to another peer"}};
  if (l->delivered)
    return R{l->rec.step,
             {wire::ACK_REPLAYED, "this lease's update is in, waiting for its audit"}};
  if (vr.header.round_id() != cfg.round_id)
    return R{l->rec.step, {wire::ACK_MALFORMED, "wrong round id"}};
  return std::nullopt;
}

// Checks in order of cost: signature and header (executor); replay, lease and round (here); the
// body — completions re-scored, counts, reward statistics, loss, the decoded gradient and its
// norm, and for a sampled share a full recomputation (executor); the lease once more; then the
// ledger records it before the Ack leaves.
asio::awaitable<wire::Ack> Coordinator::Impl::handle_update(
    std::shared_ptr<ArrivedUpdate> in, PeerId channel_peer) {
  const std::string peer = channel_peer.hex();
  const size_t bytes = in->header.ByteSizeLong() + in->stream.size();
  wire::Ack ack;
  const protocol::UpdatePolicy pol{.recipient = identity.id(),
                                   .current_version = sched->version(),
                                   .staleness_bound = cfg.staleness_bound};
  const auto verify = [in, pol, channel_peer] {
    return protocol::verify_update(in->header, pol, channel_peer, in->stream);
  };
  const protocol::VerifiedUpdate vr = co_await on_compute(verify);
  ack.set_sequence(vr.header.sequence());
  ack.set_lease_id(printable(vr.header.lease_id(), kMaxPeerText));
  bool audited = false;
  auto fail = [&](int64_t step, const Refusal& r) {
    refuse(peer, vr.header, vr.digest, step, r, bytes, audited);
    // A refused update frees its lease at once: the prompts go to someone else.
    if (const ActiveLease* l = sched->find(vr.header.lease_id()); l && l->rec.peer == peer)
      close_lease(vr.header.lease_id(), "expired",
                  "update refused: " + exchange::reason_name(r.reason));
    ack.set_reason(r.reason);
    ack.set_message(r.detail);
    ack.set_policy_version(sched->version());
    return ack;
  };
  if (!vr) co_return fail(0, {protocol::to_ack_reason(vr.verdict), vr.detail});
  if (auto r = lease_refusal(vr, channel_peer)) co_return fail(r->first, r->second);
  const LeaseRecord lease = sched->find(vr.header.lease_id())->rec;

  // A sampled share of updates is recomputed in full (the peer cannot know which): the
  // gradient of the reported completions under the weights they were sampled with.
  // With adaptive trust the share follows the peer's record (audit_probability).
  std::shared_ptr<const Published> sampled_on;
  const double p_audit = audit_probability(trust_streak[peer], cfg.adaptive_trust, cfg.trust_after,
                                           cfg.recompute_fraction);
  if (p_audit > 0 && std::uniform_real_distribution<double>(0, 1)(audit_rng) < p_audit)
    for (const auto& p : published)
      if (p->version == vr.header.policy_version()) sampled_on = p;
  audited = sampled_on != nullptr;
  // Audited by a validator peer: the checks below stop before the recomputation.
  const bool by_validator = audited && cfg.validators;
  const auto check = [this, in, lease, sampled_on, by_validator] {
    Checked out;
    const double t0 = mono_s();
    wire::GradientUpdate full;
    try {
      full = protocol::decode_update(in->header, in->stream);
    } catch (const std::exception& e) {
      out.refusal = Refusal{wire::ACK_MALFORMED, e.what()};
      return out;
    }
    CheckedBody body = checker->check(full, lease.prompts);
    out.facts = body.facts;
    out.loss = full.loss();
    out.kl_sum = full.kl_sum();
    if ((out.refusal = body.refusal)) return out;
    // Top-k under the mean rule: the kept entries only (the norm of the kept values is the
    // update's norm); an audit compares dense gradients.
    if (policy->folds_sparse() && !sampled_on) {
      out.is_sparse = true;
      if ((out.refusal = policy->decode_sparse(full, out.sparse))) return out;
      out.refusal = check_norm(out.sparse.value, out.facts.units, cfg.max_update_norm);
      out.seconds = mono_s() - t0;
      return out;
    }
    if ((out.refusal = policy->decode(full, out.grad))) return out;
    if ((out.refusal = check_norm(out.grad, out.facts.units, cfg.max_update_norm))) return out;
    if (by_validator) {
      full.clear_tensors();
      out.meta = std::make_shared<wire::GradientUpdate>(std::move(full));
    } else if (sampled_on) {
      const double a0 = mono_s();
      out.refusal = policy->audit(*sampled_on, full, lease.prompts, out.grad);
      out.audit_s = mono_s() - a0;
    }
    out.seconds = mono_s() - t0;
    return out;
  };
  // A bounded queue on the executor: the update's compact stream waits here, in arrival order,
  // not a decoded copy. A finished check wakes the first waiter.
  if (checking >= kMaxChecking || !waiting_to_check.empty()) {
    const auto t = std::make_shared<asio::steady_timer>(io);
    waiting_to_check.push_back(t);
    while (checking >= kMaxChecking || waiting_to_check.front() != t) {
      t->expires_at(asio::steady_timer::time_point::max());
      asio::error_code ec;  // cancelled: its turn may have come
      co_await t->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    waiting_to_check.pop_front();
  }
  ++checking;
  if (checking < kMaxChecking && !waiting_to_check.empty()) waiting_to_check.front()->cancel();
  Checked c = co_await on_compute(check);
  --checking;
  if (!waiting_to_check.empty()) waiting_to_check.front()->cancel();
  if (sampled_on) ++audits;
  coordinator_audit_s += c.audit_s;
  if (c.refusal) co_return fail(lease.step, *c.refusal);
  if (auto r = lease_refusal(vr, channel_peer)) co_return fail(r->first, r->second);
  if (by_validator) {
    // Audited by a validator: acknowledged now as received and checked, and held out of its step
    // until the audit decides (finish_audited). A peer waiting for its Ack could not take an
    // audit itself: at the end of a step every peer would wait on every other.
    auto pending = std::make_shared<PendingAudit>(PendingAudit{.peer = peer,
                                                               .channel_peer = channel_peer,
                                                               .vr = vr,
                                                               .lease = lease,
                                                               .in = in,
                                                               .bytes = bytes,
                                                               .sampled_on = sampled_on});
    pending->checked = std::move(c);
    // Not held while the audit is out (4 bytes a parameter per pending update): decoded again
    // from the compact stream, which the ledger keeps anyway, once the audit has decided.
    std::vector<float>().swap(pending->checked.grad);
    replays.remember(channel_peer, vr.header.sequence(), vr.digest);  // a copy is a replay now
    sched->hold_for_audit(lease.lease_id, unix_ms() + static_cast<int64_t>(
                                                         1000 * (cfg.validator_timeout_s + cfg.lease_timeout_s)));
    pending->job = open_audit(peer, lease, *pending->checked.meta);
    asio::co_spawn(io, finish_audited(pending), asio::detached);
    ack.set_reason(wire::ACK_OK);
    ack.set_message("received; its audit by a validator decides whether it counts");
    ack.set_policy_version(sched->version());
    co_return ack;
  }
  accept_update(peer, channel_peer, vr, lease, c, *in, bytes, audited);
  ack.set_reason(wire::ACK_OK);
  ack.set_policy_version(sched->version());
  co_return ack;
}

// The accepted update into the ledger (durable before anything else), its lease completed, its
// gradient queued for its step on the executor, and the steps it may complete applied.
void Coordinator::Impl::accept_update(const std::string& peer, const PeerId& channel_peer,
                                      const protocol::VerifiedUpdate& vr, const LeaseRecord& lease,
                                      Checked& c, ArrivedUpdate& in, size_t bytes, bool audited) {
  UpdateRecord u;
  u.peer = peer;
  u.sequence = vr.header.sequence();
  u.lease_id = lease.lease_id;
  u.step = lease.step;
  u.policy_version = vr.header.policy_version();
  u.digest.assign(reinterpret_cast<const char*>(vr.digest.data()), vr.digest.size());
  u.accepted = true;
  u.reason = "ok";
  u.units = c.facts.units;
  u.tokens = c.facts.loss_tokens;
  u.sequences = c.facts.sequences;
  u.completion_tokens = c.facts.tokens;
  u.groups = static_cast<int64_t>(lease.prompts.size());
  u.audited = audited;
  u.reward_mean = c.facts.reward_mean;
  u.accuracy = c.facts.accuracy;
  u.bytes = static_cast<int64_t>(bytes);
  u.received_ms = unix_ms();
  u.body = in.header.body();
  u.signature = in.header.signature();
  u.stream = std::move(in.stream);  // the checks on the executor are done with it
  const double recorded0 = mono_s();
  {
    Ledger::Transaction tx(*ledger);
    ledger->record_update(u);
    ledger->close_lease(lease.lease_id, "completed", "", u.received_ms);
    tx.commit();
  }
  const double handling_s = c.seconds + (mono_s() - recorded0);  // the step's `aggregate_s`
  replays.remember(channel_peer, u.sequence, vr.digest);
  ++trust_streak[peer];
  std::optional<ClosedLease> superseded;
  sched->complete(lease.lease_id, mono_s(), &superseded);
  if (superseded) log_closed(*superseded);
  undelivered.erase(peer);
  // Queued on the executor before any step application that could need it (one thread, FIFO).
  asio::post(compute, [this, step = lease.step, grad = std::move(c.grad),
                       sparse = std::move(c.sparse), is_sparse = c.is_sparse,
                       k = Contribution{.units = u.units,
                                        .tokens = u.tokens,
                                        .loss = c.loss,
                                        .reward_mean = u.reward_mean,
                                        .accuracy = u.accuracy,
                                        .kl_sum = c.kl_sum,
                                        .rows = u.sequences,
                                        .decode_s = handling_s}]() mutable {
    if (is_sparse)
      policy->absorb(step, k, sparse);
    else
      policy->absorb(step, k, std::move(grad));
  });
  // The step it may complete is applied after the Ack is on its way.
  asio::co_spawn(io, apply_ready_steps(), asio::detached);
}

// An update acknowledged while its audit was out with a validator: the verdict, then the update
// counted (accept_update) or refused, its lease's prompts back in the pool.
asio::awaitable<void> Coordinator::Impl::finish_audited(std::shared_ptr<PendingAudit> p) {
  co_await await_audit(p->job);
  const std::shared_ptr<ArrivedUpdate> in = p->in;
  const auto decode = [this, in] {
    std::vector<float> g;
    const wire::GradientUpdate full = protocol::decode_update(in->header, in->stream);
    const std::optional<Refusal> r = policy->decode(full, g);
    COHORT_CHECK(!r, "an update decoded once decodes again");
    return g;
  };
  auto grad = std::make_shared<std::vector<float>>(co_await on_compute(decode));
  const std::shared_ptr<const std::vector<float>> reported = grad;
  const std::shared_ptr<const wire::GradientUpdate> meta = p->checked.meta;
  const std::shared_ptr<AuditJob> job = p->job;
  const std::shared_ptr<const Published> sampled_on = p->sampled_on;
  const LeaseRecord lease = p->lease;
  std::optional<Refusal> verdict = co_await decide_audit(job, sampled_on, meta, reported, lease);
  p->checked.grad = std::move(*grad);
  const ActiveLease* l = sched->find(lease.lease_id);
  if (!verdict && !(l && l->rec.peer == p->peer))
    verdict = Refusal{wire::ACK_LEASE_EXPIRED,
                      "lease " + lease.lease_id + " closed while its update waited for its audit"};
  if (verdict) {
    refuse(p->peer, p->vr.header, p->vr.digest, lease.step, *verdict, p->bytes, /*audited=*/true);
    if (l && l->rec.peer == p->peer)
      close_lease(lease.lease_id, "expired", "update refused: " + exchange::reason_name(verdict->reason));
    co_return;
  }
  accept_update(p->peer, p->channel_peer, p->vr, lease, p->checked, *p->in, p->bytes,
                /*audited=*/true);
}

}  // namespace cohort::coordinator
