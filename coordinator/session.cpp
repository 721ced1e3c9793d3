// A peer's session on the network thread: join and settings, work requests answered with leases,
// the signed manifest and tensor chunks of published versions, updates handed to updates.cpp,
// heartbeats, leaving. docs/PROTOCOL.md ("Session") specifies the state machine.
#include <spdlog/spdlog.h>

#include <cstring>

#include "common/text.h"
#include "coordinator/coordinator_impl.h"
#include "exchange/seeds.h"

namespace cohort::coordinator {

namespace {
constexpr size_t kChunkBytes = 1 << 20;  // tensor chunk payload (docs/PROTOCOL.md)
}  // namespace

std::optional<wire::WorkLease> Coordinator::Impl::try_issue(const std::string& peer,
                                                            uint32_t max_prompts) {
  if (finished) return std::nullopt;
  // A key without a record yet (adaptive trust) works on probe leases: a Sybil's fresh keys are
  // checked on small work before they take large shares.
  if (cfg.adaptive_trust && cfg.probe_lease_prompts > 0 && trust_streak[peer] < cfg.trust_after)
    max_prompts = max_prompts == 0 ? cfg.probe_lease_prompts
                                   : std::min(max_prompts, cfg.probe_lease_prompts);
  const bool was_started = sched->started();
  std::optional<ActiveLease> l = sched->issue(peer, max_prompts, mono_s(), unix_ms());
  if (!was_started && sched->started())
    spdlog::info("coordinator: {} peers connected (min_peers {}): leases start", sched->connected(),
                 cfg.min_peers);
  if (!l) return std::nullopt;
  ledger->record_lease(l->rec);
  if (l->backup)
    spdlog::info("coordinator: lease {} ({} groups) to peer {} backs up lease {}, overdue",
                 l->rec.lease_id, l->groups.size(), peer.substr(0, 12), l->partner);
  wire::WorkLease w;
  w.set_lease_id(l->rec.lease_id);
  w.set_round_id(cfg.round_id);
  w.set_policy_version(l->rec.policy_version);
  w.set_deadline_unix_ms(static_cast<uint64_t>(l->rec.deadline_ms));
  w.set_group_size(static_cast<uint32_t>(cfg.grpo.group_size));
  for (uint64_t idx : l->rec.prompts) {
    w.add_prompt_indices(idx);
    w.add_seeds(exchange::prompt_seed(cfg.grpo.seed, idx));
  }
  return w;
}

void Coordinator::Impl::close_lease(const std::string& lease_id, const std::string& state,
                                    const std::string& reason) {
  if (auto c = sched->close(lease_id, state, reason)) log_closed(*c);
}

void Coordinator::Impl::log_closed(const ClosedLease& c) {
  ledger->close_lease(c.lease_id, c.state, c.reason, unix_ms());
  spdlog::info("coordinator: lease {} ({} groups, peer {}) {}: {}{}", c.lease_id, c.groups,
               c.peer.substr(0, 12), c.state, c.reason,
               c.state == "superseded" ? "" : "; its prompts go back to the pool");
  work_may_be_available();
}

asio::awaitable<void> Coordinator::Impl::send_blob(Channel& ch, const wire::BlobRequest& req) {
  std::optional<uint64_t> size;
  protocol::Digest d{};
  if (req.blake2b().size() == d.size()) {
    std::memcpy(d.data(), req.blake2b().data(), d.size());
    for (const auto& p : published)
      if (p->content.blobs.contains(d)) size = blob_store->size(d);
    if (policy_reference && policy_reference->content.blobs.contains(d)) size = blob_store->size(d);
  }
  if (!size || req.offset() > *size) {
    wire::Envelope e;
    e.mutable_error()->set_code(wire::ACK_VERSION_MISMATCH);
    e.mutable_error()->set_message(size ? "blob offset past its end"
                                        : "blob no longer published; fetch the manifest again");
    co_await ch.send(e);
    co_return;
  }
  // Read a chunk at a time (a blob may be hundreds of MB): what the session holds is one chunk.
  for (uint64_t off = req.offset(); off < *size || off == req.offset(); off += kChunkBytes) {
    wire::Envelope e;
    auto* c = e.mutable_blob_chunk();
    c->set_blake2b(req.blake2b());
    c->set_offset(off);
    c->set_total_bytes(*size);
    if (off < *size) c->set_data(blob_store->read(d, off, kChunkBytes));
    co_await ch.send(e);
    if (off >= *size) break;
  }
}

asio::awaitable<std::string> Coordinator::Impl::receive_stream(Channel& ch, uint64_t bytes) {
  if (bytes > max_stream_bytes)
    throw Error("an update announces a stream of " + std::to_string(bytes) +
                " bytes; this round's updates hold at most " + std::to_string(max_stream_bytes));
  std::string stream;
  // Grows as bytes arrive: the announced length is only a claim.
  stream.reserve(std::min<uint64_t>(bytes, protocol::kUpdateChunkBytes));
  while (stream.size() < bytes) {
    wire::Envelope env = co_await ch.receive();
    if (!env.has_update_chunk()) throw Error("expected the update's next chunk");
    const auto& c = env.update_chunk();
    if (c.offset() != stream.size() || c.data().empty() ||
        c.data().size() > protocol::kUpdateChunkBytes || c.data().size() > bytes - stream.size())
      throw Error("update chunk at " + std::to_string(c.offset()) + " (" +
                  std::to_string(c.data().size()) + " bytes) does not continue the stream at " +
                  std::to_string(stream.size()) + " of " + std::to_string(bytes));
    stream.append(c.data());
  }
  co_return stream;
}

const Published& Coordinator::Impl::manifest_for(uint64_t v) const {
  for (const auto& p : published)
    if (v != 0 && p->version == v) return *p;
  return *published.back();  // 0 (latest) or a version no longer published
}

asio::awaitable<wire::Envelope> Coordinator::Impl::answer_work_request(
    const std::string& peer, const wire::WorkRequest& wr) {
  sched->peer_working(peer);
  // A peer names the leases it is still computing, so any other lease it holds will never
  // come (e.g. one issued just before a coordinator crash that never reached it), and those it
  // gives back come with a reason: both go back to the pool now, not at their deadline.
  for (const auto& r : wr.returned())
    if (const ActiveLease* l = sched->find(r.lease_id()); l && l->rec.peer == peer)
      close_lease(r.lease_id(), "returned", "given back: " + printable(r.reason(), kMaxPeerText));
  auto refuse_abuse = [&](wire::AckReason reason, const std::string& why) {
    ledger->record_refusal(peer, "", std::string(Ledger::kLeaseAbuse), why, unix_ms());
    count_misbehaviour(peer);
    spdlog::warn("coordinator: work request from {} refused: {}", peer.substr(0, 12), why);
    wire::Envelope out;
    out.mutable_ack()->set_reason(reason);
    out.mutable_ack()->set_message(why);
    out.mutable_ack()->set_policy_version(sched->version());
    return out;
  };
  // `holding` may name only leases this peer was issued (active, or closed since: a lease that
  // expired while it computed is honest); anything else is made up, and no lease is issued.
  if (static_cast<size_t>(wr.holding_size()) > kMaxLeasesHeld)
    co_return refuse_abuse(wire::ACK_UNKNOWN_LEASE,
                           fmt::format("holding names {} leases; a peer holds at most {}",
                                       wr.holding_size(), kMaxLeasesHeld));
  auto issued_to_peer = [&](const std::string& id) {
    if (const ActiveLease* l = sched->find(id)) return l->rec.peer == peer;
    if (auto a = audit_sent_to.find(id); a != audit_sent_to.end()) return a->second == peer;
    const auto rec = ledger->lease(id);  // closed since
    return rec && rec->peer == peer;
  };
  const std::set<std::string> holding(wr.holding().begin(), wr.holding().end());
  for (const auto& id : holding)
    if (!issued_to_peer(id))
      co_return refuse_abuse(wire::ACK_UNKNOWN_LEASE,
                             "holding names lease " + printable(id, 80) + ", never issued to you");
  int dropped = 0;
  for (const auto& id : sched->leases_of(peer))
    if (!holding.count(id)) {
      close_lease(id, "expired", "peer asked for new work without delivering it");
      ++dropped;
    }
  // Leases taken and let go without an update or a reason, again and again, stall the steps they
  // belong to and grow the ledger: past a few in a row (an honest node drops at most the one or
  // two a crash cut off) each further request is refused as misbehaviour.
  if (dropped > 0 && (undelivered[peer] += dropped) > kMaxUndelivered)
    co_return refuse_abuse(
        wire::ACK_UNKNOWN_LEASE,
        fmt::format("{} leases in a row let go without an update or a reason (at most {})",
                    undelivered[peer], kMaxUndelivered));
  // What one peer may hold: the lease it computes and the next one it asks ahead for. A node
  // following the protocol never asks while it holds both (it asks ahead once per lease); asking
  // anyway is how a hoarder keeps the step's groups from everyone else.
  if (sched->leases_of(peer).size() >= kMaxLeasesHeld)
    co_return refuse_abuse(
        wire::ACK_OVERLOADED,
        fmt::format("you hold {} leases; deliver or return one before asking for more",
                    kMaxLeasesHeld));
  // A peer asking ahead is answered at once: its update waits behind this reply. Otherwise the
  // request waits up to a second for work: woken when a lease closes or a step is applied, and
  // every 100 ms, when a backup lease may have come due.
  std::optional<wire::WorkLease> lease;
  // Shared with waiting_for_work: a session ended mid-wait leaves a live timer there, not a
  // dangling one.
  const auto timer = std::make_shared<asio::steady_timer>(io);
  const double give_up = mono_s() + (holding.empty() ? 1.0 : 0.0);
  // An audit waiting for a validator comes first: the update it checks holds up its step.
  while (!finished && !(lease = take_audit(peer)) && !(lease = try_issue(peer, wr.max_prompts())) &&
         mono_s() < give_up) {
    timer->expires_after(std::chrono::milliseconds(100));
    waiting_for_work.insert(timer);
    asio::error_code ec;  // cancelled: work may have appeared
    co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    waiting_for_work.erase(timer);
  }
  wire::Envelope out;
  if (lease) {
    *out.mutable_work_lease() = *lease;
  } else if (finished) {
    out.mutable_leave()->set_reason("round complete");
  } else {
    out.mutable_ack()->set_reason(wire::ACK_OVERLOADED);
    out.mutable_ack()->set_message("no work yet; ask again");
    out.mutable_ack()->set_policy_version(sched->version());
  }
  co_return out;
}

asio::awaitable<void> Coordinator::Impl::session(Channel ch) {
  const std::string peer = ch.peer().hex();
  bool counted = false;
  try {
    wire::Envelope first = co_await ch.receive();
    if (!first.has_join_request()) throw Error("first message must be a join request");
    const auto& jr = first.join_request();
    // Peer-supplied text is diagnostic only: escaped and capped wherever it is written.
    const std::string name = printable(jr.display_name(), kMaxDisplayName);
    ledger->record_peer(
        peer, name, printable(jr.capabilities().ShortDebugString(), 4 * kMaxPeerText), unix_ms());
    if (sched->connected() >= cfg.max_peers && !sched->peer_is_connected(peer)) {
      // Full: a clear answer, and the node tries again later (its backoff spreads the retries).
      wire::Envelope r;
      r.set_reply_to(first.id());
      auto* rep = r.mutable_join_reply();
      rep->set_admitted(false);
      rep->set_reason(wire::ACK_OVERLOADED);
      rep->set_message(fmt::format("the round is full ({} peers connected, max_peers {}); try again later",
                                   sched->connected(), cfg.max_peers));
      co_await ch.send(r);
      throw Error("refused: the round is full (max_peers)");
    }
    sched->peer_connected(peer, jr.capabilities().measured_throughput());
    counted = true;
    peer_address[peer] = ch.remote_endpoint().address().to_string();
    spdlog::info("coordinator: peer {} ({}) joined with {} device(s)", peer.substr(0, 12), name,
                 jr.capabilities().devices_size());
    {
      wire::Envelope r;
      r.set_reply_to(first.id());
      auto* rep = r.mutable_join_reply();
      rep->set_admitted(true);
      *rep->mutable_settings() = settings;
      rep->set_policy_version(sched->version());
      rep->set_heartbeat_interval_ms(static_cast<uint32_t>(cfg.idle_timeout_s * 1000 / 4));
      co_await ch.send(r);
    }
    // A version's weights come as several blob requests: their time is summed and reported as
    // one download when the peer asks for something else.
    double download_s = 0;
    for (;;) {
      wire::Envelope env = co_await ch.receive();
      wire::Envelope out;
      if (download_s > 0 && !env.has_blob_request()) {
        sched->download_measured(peer, download_s);
        download_s = 0;
      }
      if (env.has_manifest_request()) {
        const auto reference = policy_reference;
        if (env.manifest_request().reference() && !reference) {
          out.mutable_error()->set_code(wire::ACK_MALFORMED);
          out.mutable_error()->set_message("this round has no reference policy (kl_beta = 0)");
        } else {
          *out.mutable_manifest() = env.manifest_request().reference()
                                        ? reference->manifest
                                        : manifest_for(env.manifest_request().policy_version()).manifest;
        }
      } else if (env.has_blob_request()) {
        const double t0 = mono_s();
        co_await send_blob(ch, env.blob_request());
        download_s += mono_s() - t0;
        continue;
      } else if (env.has_work_request()) {
        out = co_await answer_work_request(peer, env.work_request());
      } else if (env.has_update()) {
        auto arrived = std::make_shared<ArrivedUpdate>();
        arrived->header = std::move(*env.mutable_update());
        const double t0 = mono_s();
        arrived->stream = co_await receive_stream(ch, arrived->header.stream_bytes());
        sched->upload_measured(peer, mono_s() - t0);
        // A named pointer of the parameter's own type: no converted temporary in the co_await
        // (GCC 12 may destroy such a temporary twice, coordinator_impl.h).
        *out.mutable_ack() = co_await handle_update(arrived, ch.peer());
      } else if (env.has_audit_report()) {
        *out.mutable_ack() = audit_report_arrived(peer, env.audit_report());
      } else if (env.has_heartbeat()) {
        continue;  // liveness only: it resets the channel's idle timer
      } else if (env.has_leave()) {
        spdlog::info("coordinator: peer {} left: {}", peer.substr(0, 12),
                     printable(env.leave().reason(), kMaxPeerText));
        for (const auto& id : sched->leases_of(peer)) close_lease(id, "returned", "peer left");
        break;
      } else {
        throw Error("unexpected message");
      }
      out.set_reply_to(env.id());
      co_await ch.send(out);
      if (banned.count(peer)) {
        wire::Envelope bye;
        bye.mutable_error()->set_code(wire::ACK_BANNED);
        bye.mutable_error()->set_message("banned: too many refusals for misbehaviour");
        co_await ch.send(bye);
        throw Error("banned");
      }
    }
  } catch (const std::exception& e) {
    spdlog::info("coordinator: peer {} disconnected: {}", peer.substr(0, 12),
                 printable(e.what(), kMaxPeerText));
  }
  if (counted)
    for (const LeaseRecord& rec : sched->peer_disconnected(peer, unix_ms()))
      ledger->record_lease(rec);
  // Audits out with this peer as validator go to another (a reconnecting node asks afresh).
  for (auto it = audits_out.begin(); it != audits_out.end();)
    if (it->second->validator == peer && !it->second->report) {
      it->second->validator.clear();
      audits_waiting.push_front(it->second);
      it = audits_out.erase(it);
      work_may_be_available();
    } else {
      ++it;
    }
  ch.close();
}

}  // namespace cohort::coordinator
