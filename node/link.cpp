// The node's session with the coordinator, as coroutines on the network thread
// (docs/PROTOCOL.md, "Session"): join, work requests, a lease asked for ahead while the current
// one computes, weights staged for it, updates delivered in order and their Acks, heartbeats.
#include <spdlog/spdlog.h>

#include "common/check.h"
#include "common/clock.h"
#include "common/text.h"
#include "node/node_impl.h"

namespace cohort::node {

asio::awaitable<void> Node::session(double& last_ok) {
  protocol::Channel ch = co_await protocol::Channel::connect(
      opt_.host, opt_.port, id_,
      {.expected_peer = coordinator_,
       .max_send_bytes_per_s = opt_.max_upload_mbps * 1e6 / 8,
       .max_receive_bytes_per_s = opt_.max_download_mbps * 1e6 / 8});
  ChannelLink link(ch);
  wire::Envelope join;
  auto* jr = join.mutable_join_request();
  jr->set_display_name(opt_.name);
  auto* caps = jr->mutable_capabilities();
  for (const auto& d : devices_            ? devices_->describe()
                       : opt_.gpus.empty() ? describe_cpu_devices(opt_.devices)
                                           : describe_gpu_devices(opt_.gpus))
    *caps->add_devices() = d;
  caps->set_host_memory_bytes(
      caps->devices_size() ? caps->devices(0).memory_bytes() * caps->devices_size() : 0);
  caps->set_software_version("cohort " COHORT_NODE_VERSION);
  caps->add_codecs(wire::CODEC_RAW);
  caps->add_codecs(wire::CODEC_FP8_E4M3_BLOCK);
  caps->add_codecs(wire::CODEC_TOPK_Q4);
  caps->set_fp8(false);
  co_await link.send(join);
  const wire::Envelope reply = co_await link.receive();
  if (!reply.has_join_reply()) throw Error("expected a join reply");
  const auto& rep = reply.join_reply();
  // A full round is a passing state: try again with backoff. Any other refusal is final.
  if (!rep.admitted() && rep.reason() == wire::ACK_OVERLOADED)
    throw Error("not admitted now: " + rep.message());
  if (!rep.admitted()) throw RoundOver(2, "not admitted: " + rep.message());
  last_ok = mono_s();  // admitted: a full round's refusals keep the backoff growing
  setup(rep.settings());
  // The coordinator closes a connection silent for four of these; older ones send none.
  heartbeat_every_ =
      std::chrono::milliseconds(rep.heartbeat_interval_ms() ? rep.heartbeat_interval_ms() : 15'000);

  if (cfg_.loss.beta > 0 && !reference_loaded_) co_await fetch_reference(link);

  if (!pending_.empty()) {
    spdlog::info("node: delivering {} update(s) computed before the link dropped", pending_.size());
    co_await deliver_pending(link, /*drop_expired=*/true);
  }

  if (opt_.fault == Fault::hoard || opt_.fault == Fault::churn) co_await abuse_leases(link);

  std::optional<Ahead> next;  // the lease asked for ahead, with its weights staged
  for (;;) {
    last_ok = mono_s();
    const bool at_limit = opt_.max_leases > 0 &&
                          leases_done_ + static_cast<int64_t>(pending_.size()) >= opt_.max_leases;
    if (stop_requested() || at_limit || (next && next->round_over)) {
      const double t0 = mono_s();
      co_await deliver_pending(link);
      ack_wait_s_ += mono_s() - t0;
      if (stop_requested()) {
        co_await leave(link, "signal");  // also returns a lease asked for ahead
        throw RoundOver(0, "left the round (signal)");
      }
      if (next && next->round_over) throw RoundOver(0, next->round_over_reason);
      if (leases_done_ >= opt_.max_leases) {
        co_await leave(link, "lease limit reached");
        throw RoundOver(0, "left the round (lease limit)");
      }
    }
    if ((!next || !next->lease) && !pause_reason().empty()) {
      // Paused: the leases in hand were finished; deliver them, keep the session, take nothing.
      next.reset();
      co_await deliver_pending(link);
      co_await wait_while_paused(link, last_ok);
      continue;
    }
    if (!next || !next->lease) {
      next.reset();
      set_status("waiting for work");
      const double t0 = mono_s();
      co_await deliver_pending(link);
      const double asked = mono_s();
      ack_wait_s_ += asked - t0;
      std::optional<wire::WorkLease> got = co_await ask_for_work(link, {});
      lease_wait_s_ += mono_s() - asked;
      if (!got) continue;  // no work yet; ask again
      if (first_lease_ < 0) first_lease_ = asked;
      next = Ahead{.lease = std::move(got)};
    }
    const wire::WorkLease lease = std::move(*next->lease);
    std::optional<StagedWeights> staged = std::move(next->weights);
    next.reset();
    const double fetch0 = mono_s();
    // Staged while the previous lease computed (or what the coordinator published instead).
    if (!staged && !sync_->holds(lease.policy_version()))
      staged = co_await sync_->fetch(link, lease.policy_version());
    // A lazy peer (fault test) keeps the first weights it loaded.
    if (staged && !(opt_.fault == Fault::lazy && lazy_loaded_)) {
      load(*staged);
      lazy_loaded_ = true;
    }
    staged.reset();  // loaded into the replicas: not held while they compute
    weights_s_ += mono_s() - fetch0;
    if (join_weights_s_ < 0) join_weights_s_ = mono_s() - fetch0;  // the first lease's: a snapshot

    // The next lease is asked for just in time, shortly before this one should be done (by this
    // node's measured seconds per group): a lease held unstarted behind another is work the
    // other peers cannot take, and the step it belongs to waits for it.
    const bool last = opt_.max_leases > 0 &&
                      leases_done_ + static_cast<int64_t>(pending_.size()) + 1 >= opt_.max_leases;
    const bool ask = opt_.ask_ahead && !last && pause_reason().empty();
    Clock::time_point ask_at = Clock::now();
    if (ask) {
      const double expected = seconds_per_group_ * lease.prompt_indices_size();
      // Lead time: twice the link's usual round (ask + weights), and a third of the expected
      // compute, which varies with completion lengths and with what else runs on the machine.
      const double lead = std::max({0.05, 2.0 * link_seconds_, expected / 3});
      ask_at += std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(std::max(0.0, expected - lead)));
    }
    auto c = std::make_shared<Computing>(co_await asio::this_coro::executor);
    set_status("working", lease.lease_id(), lease.prompt_indices_size());
    start_compute(lease, c);
    std::optional<Ahead> ahead;
    std::exception_ptr link_error;
    try {
      ahead = co_await run_link(link, *c, ask, ask_at, lease.lease_id());
    } catch (...) {
      link_error = std::current_exception();
    }
    while (!c->done) {  // the link failed first: keep what is being computed
      c->wake.expires_after(std::chrono::seconds(3600));
      asio::error_code ec;
      co_await c->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (c->error) std::rethrow_exception(c->error);
    if (c->report) {
      reports_.push_back(std::move(*c->report));
    } else if (c->update) {
      const double spg = c->seconds / std::max(1, lease.prompt_indices_size());
      seconds_per_group_ = seconds_per_group_ > 0 ? 0.7 * seconds_per_group_ + 0.3 * spg : spg;
      shown_tokens_per_s_ = last_tokens_per_s_;
      pending_.push_back({std::move(*c->update), lease.deadline_unix_ms(), lease.lease_id(),
                          last_generated_, lease.prompt_indices_size()});
    } else {  // given back: named in the next WorkRequest
      returned_.emplace_back(lease.lease_id(), std::exchange(given_back_, {}));
    }
    if (link_error) std::rethrow_exception(link_error);
    ahead_wait_s_ += mono_s() - c->done_at;  // the link still busy (asking ahead) after the compute
    next = std::move(ahead);
  }
}

// While a lease computes: deliver what is pending, ask ahead at `ask_at` (or as soon as the
// lease is computed, if earlier), send a heartbeat every heartbeat_every_; return when the
// compute thread is done.
asio::awaitable<Node::Ahead> Node::run_link(CoordinatorLink& link, Computing& c, bool ask,
                                            Clock::time_point ask_at,
                                            const std::string& computing) {
  co_await deliver_pending(link);
  Ahead a;
  bool asked = !ask;
  // A lease given back goes back with the next WorkRequest: ask now, not just in time.
  if (!asked && !returned_.empty()) ask_at = Clock::now();
  auto beat = Clock::now() + heartbeat_every_;
  for (;;) {
    if (!asked && (c.computed || (!c.done && Clock::now() >= ask_at))) {
      if (!pause_reason().empty()) {  // paused since the lease started: no lease ahead
        asked = true;
        continue;
      }
      const double t0 = mono_s();
      a = co_await ask_ahead(link, computing);
      link_seconds_ =
          link_seconds_ > 0 ? 0.7 * link_seconds_ + 0.3 * (mono_s() - t0) : mono_s() - t0;
      asked = true;
      continue;
    }
    if (c.done) co_return a;
    if (Clock::now() >= beat) {
      co_await send_heartbeat(link);
      beat += heartbeat_every_;
      continue;
    }
    c.wake.expires_at(asked ? beat : std::min(beat, ask_at));
    asio::error_code ec;  // cancelled: the compute thread has news
    co_await c.wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

asio::awaitable<void> Node::fetch_reference(CoordinatorLink& link) {
  const double t0 = mono_s();
  // Its own fetcher, dropped at the end with its copy of the published bytes: the replicas hold
  // the reference then.
  auto sync = std::make_unique<WeightSync>(layout_, coordinator_, round_id_, policy_dtype_,
                                           opt_.mirrors, /*reference=*/true);
  const StagedWeights w = co_await sync->fetch(link, 0);
  sync->load(w, [&](const std::string& name, const std::vector<float>& v) {
    devices_->load_reference(name, v);
  });
  reference_loaded_ = true;
  weights_s_ += mono_s() - t0;
  spdlog::info("node: reference policy loaded for the KL term (beta {}): {:.1f} MB in {:.2f} s",
               cfg_.loss.beta, sync->fetched_bytes() / 1e6, mono_s() - t0);
}

asio::awaitable<void> Node::wait_while_paused(CoordinatorLink& link, double& last_ok) {
  const std::string why = pause_reason();
  spdlog::info("node: {}; the session stays open", why);
  set_status(why);
  asio::steady_timer tick(co_await asio::this_coro::executor);
  auto beat = Clock::now() + heartbeat_every_;
  while (!stop_requested() && !pause_reason().empty()) {
    tick.expires_after(std::chrono::milliseconds(200));
    co_await tick.async_wait(asio::use_awaitable);
    if (Clock::now() >= beat) {
      co_await send_heartbeat(link);
      beat = Clock::now() + heartbeat_every_;
      last_ok = mono_s();  // the link works: a pause is not time without a coordinator
    }
  }
  if (!stop_requested()) spdlog::info("node: resumed");
}

asio::awaitable<void> Node::leave(CoordinatorLink& link, const std::string& why) {
  wire::Envelope e;
  e.mutable_leave()->set_reason(why);
  try {
    co_await link.send(e);
  } catch (const std::exception&) {
  }
}

// Sends the computed updates in order, each removed once its Ack is in. After a lost link, an
// update whose lease has expired meanwhile is dropped (its prompts went to another peer);
// otherwise the coordinator's clock decides, and says why it refuses a late one.
asio::awaitable<void> Node::deliver_pending(CoordinatorLink& link, bool drop_expired) {
  while (!reports_.empty()) {
    wire::Envelope e;
    *e.mutable_audit_report() = reports_.front();
    co_await link.send(std::move(e));
    const wire::Envelope a = co_await link.receive();
    if (!a.has_ack()) throw Error("expected an ack for the audit report");
    if (a.ack().reason() == wire::ACK_OK)
      ++audits_done_;
    else
      spdlog::warn("node: audit report {} not taken: {} ({})", a.ack().lease_id(),
                   wire::AckReason_Name(a.ack().reason()), printable(a.ack().message(), 256));
    reports_.pop_front();
  }
  while (!pending_.empty()) {
    const Pending& p = pending_.front();
    if (drop_expired && static_cast<uint64_t>(unix_ms()) >= p.deadline_unix_ms) {
      spdlog::warn(
          "node: dropping the update of lease {}: the lease expired before it could be delivered",
          p.update_lease_id);
    } else {
      const wire::AckReason r = co_await send_update(link, p.update);
      if (r == wire::ACK_OK) {
        credit_tokens_ += p.completion_tokens;
        credit_groups_ += p.groups;
      }
      if (r == wire::ACK_OK && opt_.fault == Fault::replay) {
        spdlog::warn("node: [fault] sending the same update again");
        co_await send_update(link, p.update);
      }
      last_ack_ = mono_s();
    }
    pending_.pop_front();
  }
}

// The update (send_sealed_update), then the Ack.
asio::awaitable<wire::AckReason> Node::send_update(CoordinatorLink& link,
                                                   const protocol::SealedUpdate& su) {
  co_await send_sealed_update(link, su);
  const wire::Envelope a = co_await link.receive();
  if (a.has_error())
    throw Error("the coordinator refused the update: " + printable(a.error().message(), 256));
  if (!a.has_ack()) throw Error("expected an ack");
  const auto& ack = a.ack();
  bytes_sent_ += static_cast<double>(su.wire_bytes());
  ++updates_sent_;
  if (ack.reason() == wire::ACK_OK) {
    ++leases_done_;
  } else {
    spdlog::warn("node: update {} refused: {} ({})", ack.sequence(),
                 wire::AckReason_Name(ack.reason()), ack.message());
  }
  co_return ack.reason();
}

asio::awaitable<void> Node::send_heartbeat(CoordinatorLink& link) {
  wire::Envelope e;
  auto* h = e.mutable_heartbeat();
  h->set_sent_unix_ms(static_cast<uint64_t>(unix_ms()));
  h->set_policy_version(sync_->version());
  h->set_status(pause_reason().empty() ? "computing" : "paused");
  co_await link.send(std::move(e));
  ++heartbeats_sent_;
}

// The lease-abuse faults an independent client found (benchmarks and tests only): ask for work in
// a loop, naming every lease received so far (hoard) or a lease that does not exist (churn),
// computing nothing, until the coordinator ends the session.
asio::awaitable<void> Node::abuse_leases(CoordinatorLink& link) {
  std::vector<std::string> held;
  asio::steady_timer pause(co_await asio::this_coro::executor);
  for (int64_t asked = 0;; ++asked) {
    wire::Envelope req;
    auto* wr = req.mutable_work_request();
    if (opt_.fault == Fault::hoard)
      for (const auto& id : held) wr->add_holding(id);
    else
      wr->add_holding("x");
    co_await link.send(std::move(req));
    const wire::Envelope env = co_await link.receive();
    if (env.has_work_lease()) held.push_back(env.work_lease().lease_id());
    if (env.has_leave()) throw RoundOver(0, "round over: " + env.leave().reason());
    if (asked % 50 == 0)
      spdlog::warn("node: [fault {}] {} requests, {} leases held; last answer: {}",
                   opt_.fault == Fault::hoard ? "hoard" : "churn", asked + 1, held.size(),
                   env.has_ack() ? env.ack().message() : "a lease");
    pause.expires_after(std::chrono::milliseconds(10));
    co_await pause.async_wait(asio::use_awaitable);
  }
}

// nullopt: no work yet (the coordinator answered "ask again").
asio::awaitable<std::optional<wire::WorkLease>> Node::ask_for_work(CoordinatorLink& link,
                                                                   const std::string& holding) {
  wire::Envelope req;
  auto* wr = req.mutable_work_request();
  wr->set_max_prompts(opt_.max_batch);
  wr->set_policy_version(sync_->version());
  if (!holding.empty()) wr->add_holding(holding);
  for (const auto& [id, why] : returned_) {
    auto* r = wr->add_returned();
    r->set_lease_id(id);
    r->set_reason(why);
  }
  const double t0 = mono_s();
  co_await link.send(std::move(req));
  returned_.clear();
  const wire::Envelope env = co_await link.receive();
  if (env.has_leave()) throw RoundOver(0, "round over: " + env.leave().reason());
  if (env.has_ack()) co_return std::nullopt;
  if (!env.has_work_lease()) throw Error("expected a lease");
  lease_rtt_ms_.push_back(1e3 * (mono_s() - t0));
  co_return env.work_lease();
}

asio::awaitable<Node::Ahead> Node::ask_ahead(CoordinatorLink& link, const std::string& holding) {
  Ahead a;
  try {
    a.lease = co_await ask_for_work(link, holding);
  } catch (const RoundOver& r) {
    a.round_over = true;  // reported after the current lease is delivered
    a.round_over_reason = r.what();
    co_return a;
  }
  if (a.lease && !sync_->holds(a.lease->policy_version()))
    a.weights = co_await sync_->fetch(link, a.lease->policy_version());
  co_return a;
}

}  // namespace cohort::node
