// Audits by validator peers ([verification] validators; docs/OPERATOR.md "Validators"). An update
// drawn for an audit waits while a peer the coordinator picks — never its author, never one at the
// author's address — recomputes its lease from the completions (exchange/lease_audit.h, the code
// the coordinator's own audit runs) and reports what it found, the gradient as a count sketch
// under a key drawn for this audit. The coordinator sketches the reported gradient with the same
// key and judges the update on the report. It recomputes the lease itself only to settle a
// disagreement (then the validator or the author lied, and its own recomputation says which), as
// a spot check of a share of the reports that agreed (a validator colluding with the author), or
// when no validator reported in time: its audit compute is a bounded share of one peer's, however
// many peers there are.
#include <spdlog/spdlog.h>

#include <sodium.h>

#include <cmath>

#include "common/text.h"
#include "coordinator/coordinator_impl.h"
#include "exchange/seeds.h"
#include "exchange/sketch.h"

namespace cohort::coordinator {

std::shared_ptr<AuditJob> Coordinator::Impl::open_audit(const std::string& author,
                                                        const LeaseRecord& lease,
                                                        const wire::GradientUpdate& full) {
  auto job = std::make_shared<AuditJob>();
  job->id = fmt::format("audit-{}", ++next_audit_id);
  job->author = author;
  job->author_address = peer_address[author];
  job->update_lease = lease.lease_id;
  job->opened = mono_s();
  job->wake = std::make_shared<asio::steady_timer>(io);
  wire::WorkLease& w = job->task;
  w.set_lease_id(job->id);
  w.set_round_id(cfg.round_id);
  w.set_policy_version(full.policy_version());
  w.set_group_size(static_cast<uint32_t>(cfg.grpo.group_size));
  for (uint64_t idx : lease.prompts) {
    w.add_prompt_indices(idx);
    w.add_seeds(exchange::prompt_seed(cfg.grpo.seed, idx));
  }
  wire::AuditTask* t = w.mutable_audit();
  t->set_compute_precision(full.compute_precision());
  t->set_sampling_device(full.sampling_device());
  for (const auto& c : full.completions()) {
    wire::CompletionDigest* d = t->add_completions();
    *d = c;
    d->clear_logprob_sum();  // what the validator must recompute, not echo
  }
  uint64_t key = 0;  // unpredictable: validators see keys, authors must never guess the next
  randombytes_buf(&key, sizeof key);
  t->set_sketch_seed(key);
  t->set_sketch_size(cfg.sketch_size);
  audits_waiting.push_back(job);
  work_may_be_available();
  return job;
}

bool Coordinator::Impl::may_validate(const std::string& peer, const AuditJob& job) {
  if (peer == job.author || banned.count(peer)) return false;
  const std::string& address = peer_address[peer];
  return !(cfg.validator_distinct_address && !address.empty() && address == job.author_address);
}

std::optional<wire::WorkLease> Coordinator::Impl::take_audit(const std::string& peer) {
  if (!cfg.validators) return std::nullopt;
  for (auto it = audits_waiting.begin(); it != audits_waiting.end(); ++it) {
    const auto& job = *it;
    if (!may_validate(peer, *job)) continue;
    job->validator = peer;
    job->sent = mono_s();
    job->task.set_deadline_unix_ms(
        static_cast<uint64_t>(unix_ms() + static_cast<int64_t>(cfg.validator_timeout_s * 1000)));
    auto taken = job;
    audits_waiting.erase(it);
    audits_out[taken->id] = taken;
    audit_sent_to[taken->id] = peer;
    spdlog::info("coordinator: audit {} of lease {} (peer {}) to validator {}", taken->id,
                 taken->update_lease, taken->author.substr(0, 12), peer.substr(0, 12));
    return taken->task;
  }
  return std::nullopt;
}

asio::awaitable<void> Coordinator::Impl::await_audit(std::shared_ptr<AuditJob> job) {
  // From when it was opened: a validator taking it late has what is left.
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(cfg.validator_timeout_s));
  // Waiting for a validator only while one could come: a connected peer allowed to take it.
  const auto someone_could = [&] {
    if (!job->validator.empty()) return true;
    for (const auto& [peer, address] : peer_address)
      if (sched->peer_is_connected(peer) && may_validate(peer, *job)) return true;
    return false;
  };
  while (!job->report && !finished && std::chrono::steady_clock::now() < deadline &&
         someone_could()) {
    // Re-checked at least every second: peers come and go.
    job->wake->expires_at(std::min(deadline, std::chrono::steady_clock::now() + std::chrono::seconds(1)));
    asio::error_code ec;  // cancelled: the report is in
    co_await job->wake->async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  job->closed = true;
  std::erase(audits_waiting, job);
  audits_out.erase(job->id);
}

wire::Ack Coordinator::Impl::audit_report_arrived(const std::string& peer,
                                                  const wire::AuditReport& r) {
  wire::Ack ack;
  ack.set_lease_id(printable(r.lease_id(), kMaxPeerText));
  ack.set_policy_version(sched->version());
  const auto it = audits_out.find(r.lease_id());
  if (it == audits_out.end() || it->second->validator != peer) {
    ack.set_reason(wire::ACK_LEASE_EXPIRED);
    ack.set_message("no audit " + printable(r.lease_id(), 80) +
                    " is out with you (decided without your report, or never yours)");
    return ack;
  }
  const auto job = it->second;
  audits_out.erase(it);
  job->report = r;
  job->wake->cancel();
  ack.set_reason(wire::ACK_OK);
  return ack;
}

namespace {

// A validator's report, checked for shape (a malformed one is the validator's fault), as the
// findings judge_audit compares with the update.
std::optional<std::string> report_shape(const wire::AuditReport& r, const wire::WorkLease& task) {
  const auto n = static_cast<size_t>(task.audit().completions_size());
  if (r.completions() != n || static_cast<size_t>(r.logprob_sums_size()) != n)
    return fmt::format("the report covers {} completions ({} log-probability sums), the audit {}",
                       r.completions(), r.logprob_sums_size(), n);
  if (static_cast<uint32_t>(r.sketch_size()) != task.audit().sketch_size())
    return fmt::format("the sketch has {} buckets, the audit asked for {}", r.sketch_size(),
                       task.audit().sketch_size());
  if (r.resampled() > n || r.resampled_same() > r.resampled())
    return std::string("re-sampled counts out of range");
  if (!std::isfinite(r.norm()) || r.norm() < 0 || !std::isfinite(r.kl_sum()) ||
      !std::isfinite(r.tokens()) || r.tokens() < 0)
    return std::string("norm, KL sum and tokens must be finite and >= 0");
  for (float x : r.sketch())
    if (!std::isfinite(x)) return std::string("the sketch holds a non-finite value");
  for (float x : r.logprob_sums())
    if (!std::isfinite(x)) return std::string("a log-probability sum is not finite");
  return std::nullopt;
}

}  // namespace

asio::awaitable<std::optional<Refusal>> Coordinator::Impl::decide_audit(
    std::shared_ptr<AuditJob> job, std::shared_ptr<const Published> sampled_on,
    std::shared_ptr<const wire::GradientUpdate> meta, std::shared_ptr<const std::vector<float>> grad,
    LeaseRecord lease) {
  const std::string validator = job->report ? job->validator : std::string();
  auto blame_validator = [&](const std::string& why) {
    ledger->record_refusal(validator, peer_address[validator], "bad_audit",
                           printable(why, 4 * kMaxPeerText), unix_ms());
    spdlog::warn("coordinator: validator {} refused on {}: {}", validator.substr(0, 12), job->id, why);
    count_misbehaviour(validator);
  };
  // What the validator's report says of the update (when there is a usable report).
  bool judged = false;
  std::optional<Refusal> by_validator;
  if (!job->report) {
    ++audit_fallbacks;
    spdlog::info("coordinator: no validator reported on {} after {:.1f} s{}: the coordinator audits it",
                 job->id, mono_s() - job->opened,
                 job->validator.empty() ? " (no validator took it)" : " (its validator did not report)");
  } else if (const auto bad = report_shape(*job->report, job->task)) {
    blame_validator("malformed audit report: " + *bad);
    ++audit_fallbacks;
  } else {
    const wire::AuditReport& rep = *job->report;
    // The reported gradient through the same keyed sketch, on the executor (model-sized work).
    const uint64_t key = job->task.audit().sketch_seed();
    const uint32_t k = job->task.audit().sketch_size();
    const auto sketch_reported = [grad, key, k] {
      double b2 = 0;
      for (float x : *grad) b2 += double(x) * x;
      return std::make_pair(exchange::count_sketch(*grad, key, k), std::sqrt(b2));
    };
    const auto [reported_sketch, reported_norm] = co_await on_compute(sketch_reported);
    const std::vector<float> theirs(rep.sketch().begin(), rep.sketch().end());
    const std::vector<float> sums(rep.logprob_sums().begin(), rep.logprob_sums().end());
    double tokens = 0;  // counted here, not taken from the validator
    for (const auto& c : meta->completions()) tokens += c.token_ids_size();
    const AuditFindings f{
        .completions = rep.completions(),
        .resampled = rep.resampled(),
        .resampled_same = rep.resampled_same(),
        .logprob_sums = sums,
        .typicality_z = rep.typicality_z(),
        .outside_support = rep.outside_support(),
        .tokens = tokens,
        .kl_sum = rep.kl_sum(),
        .cosine = exchange::cosine(theirs, reported_sketch),
        .norm_ratio = norm_ratio(reported_norm, rep.norm())};
    const AuditLimits limits{.min_cosine = cfg.recompute_min_cosine,
                             .typicality_z_max = cfg.typicality_z_max,
                             .kl_term = cfg.grpo.loss.beta > 0};
    by_validator = judge_audit(f, *meta, lease.prompts, cfg.grpo.group_size, limits);
    judged = true;
    spdlog::info(
        "coordinator: validator {} on {} (lease {}): sketch cosine {:.4f}, norm ratio {:.4f}, "
        "re-sampled {}/{}, typicality z {:.2f}, {:.2f} s: {}",
        validator.substr(0, 12), job->id, job->update_lease, f.cosine, f.norm_ratio,
        rep.resampled_same(), rep.resampled(), rep.typicality_z(), rep.seconds(),
        by_validator ? exchange::reason_name(by_validator->reason) : std::string("agrees"));
  }
  // A disagreement is settled here: either the author or the validator lied. An agreement is
  // spot-checked while the budget allows (a validator colluding with the author agrees too).
  const bool spot = judged && !by_validator && coordinator_audit_credit >= 1 &&
                    std::uniform_real_distribution<double>(0, 1)(audit_rng) <
                        cfg.validator_check_fraction;
  if (judged && !by_validator && !spot) {
    ++audits_by_validators;
    ++validations[validator];
    co_return std::nullopt;
  }
  if (judged) {
    if (by_validator)
      ++disagreements;
    else
      ++spot_checks;
  }
  const auto own_audit = [this, sampled_on, meta, grad, lease] {
    const double t0 = mono_s();
    std::optional<Refusal> r = policy->audit(*sampled_on, *meta, lease.prompts, *grad);
    return std::make_pair(r, mono_s() - t0);
  };
  const auto [own, seconds] = co_await on_compute(own_audit);
  coordinator_audit_s += seconds;
  coordinator_audit_credit -= 1;
  if (!judged) co_return own;
  if (own.has_value() != by_validator.has_value())
    blame_validator(own ? fmt::format("reported that lease {} is sound; the coordinator finds it "
                                      "{}: {}",
                                      job->update_lease, exchange::reason_name(own->reason),
                                      own->detail)
                        : fmt::format("reported lease {} {} ({}); the coordinator's recomputation "
                                      "finds it sound",
                                      job->update_lease, exchange::reason_name(by_validator->reason),
                                      by_validator->detail));
  else
    ++validations[validator];
  co_return own;
}

}  // namespace cohort::coordinator
