// Complete steps applied on the compute executor in order, then recorded: the new version
// published, checkpoints, held-out evaluations on their own threads.
#include <spdlog/spdlog.h>

#include "coordinator/coordinator_impl.h"
#include "grpo/trainer.h"

namespace cohort::coordinator {

bool Coordinator::Impl::checkpoint_due(int64_t step) const {
  return step % cfg.checkpoint_interval == 0 || step >= cfg.steps;
}

void Coordinator::Impl::record_checkpoint(int64_t step, const std::string& path) {
  Ledger::Transaction tx(*ledger);
  ledger->record_checkpoint(step, path, unix_ms());
  ledger->prune_bodies(step);
  tx.commit();
}

void Coordinator::Impl::step_applied(const Policy::Applied& a, bool replaying) {
  const StepRecord& r = a.record;
  sched->step_applied(r.step);
  // The coordinator's audit budget (validators): refilled each step, a little saved up at most.
  coordinator_audit_credit =
      std::min(coordinator_audit_credit + cfg.coordinator_audits_per_step,
               std::max(1.0, 2 * cfg.coordinator_audits_per_step));
  work_may_be_available();  // the staleness window moved on: a new step's groups
  published.push_back(a.published);
  const size_t keep = std::max<size_t>(2, cfg.staleness_bound + 2);
  while (published.size() > keep) published.pop_front();
  ledger->record_step(r);
  spdlog::info(
      "step {}/{}: reward {:.3f} acc {:.3f} loss {:+.4f} |g| {:.3f} ({} updates, {:.0f} units){}",
      r.step, cfg.steps, r.reward_mean, r.accuracy, r.loss, r.grad_norm, r.updates, r.units,
      replaying ? " [replayed]" : "");
  if (r.step >= cfg.steps) {
    finished = true;
    spdlog::info("coordinator: round {} complete ({} steps)", cfg.round_id, cfg.steps);
    spdlog::info(
        "coordinator: audits {}: {} decided by validators alone, {} spot checks, {} disagreements "
        "settled, {} without a validator; the coordinator's own audit compute {:.2f} s",
        audits, audits_by_validators, spot_checks, disagreements, audit_fallbacks,
        coordinator_audit_s);
  }
}

// Applies every complete step in order, one at a time, while the sessions go on.
asio::awaitable<void> Coordinator::Impl::apply_ready_steps() {
  if (applying) co_return;
  applying = true;
  try {
    while (!finished && sched->step_complete(static_cast<int64_t>(sched->version()) + 1)) {
      const int64_t step = static_cast<int64_t>(sched->version()) + 1;
      applying_step = step;
      const auto apply = [this, step] { return policy->apply(step, false); };
      Policy::Applied a = co_await on_compute(apply);
      step_applied(a, false);
      if (checkpoint_due(step)) {
        const auto write = [this, step] { return policy->write_checkpoint(step); };
        const std::string path = co_await on_compute(write);
        record_checkpoint(step, path);
      }
      if (cfg.eval_every > 0 && (step % cfg.eval_every == 0 || step >= cfg.steps)) {
        const auto snapshot = [this] { return policy->snapshot(); };
        auto snap = co_await on_compute(snapshot);
        start_eval(step, std::move(snap));
      }
    }
  } catch (const std::exception& e) {
    // The model side failed (disk full, out of memory): stop rather than go on inconsistent;
    // `serve` on the same data directory resumes from the ledger.
    spdlog::error("coordinator: applying step {} failed: {}; stopping", applying_step, e.what());
    fatal = e.what();
    io.stop();
  }
  applying = false;
  applying_step = 0;
}

// Held-out evaluation on a snapshot of the weights, on its own thread: the round goes on while
// it runs. The result is recorded on the network thread; the coordinator waits for it at exit.
void Coordinator::Impl::start_eval(int64_t step, std::shared_ptr<grpo::Model> snap) {
  ++evals_running;
  evals.emplace_back([this, snap, step] {
    double accuracy = -1;
    std::string error;
    try {
      accuracy =
          grpo::evaluate(*snap, *tok, *task, cfg.eval_n, cfg.grpo.sampling.max_new_tokens).accuracy;
    } catch (const std::exception& e) {
      error = e.what();
    }
    asio::post(io, [this, step, accuracy, error] {
      --evals_running;
      if (!error.empty()) {
        spdlog::error("step {}: held-out evaluation failed: {}", step, error);
        return;
      }
      ledger->record_eval(step, accuracy, cfg.eval_n, unix_ms());
      spdlog::info("step {}: held-out accuracy {:.3f} (n={})", step, accuracy, cfg.eval_n);
    });
  });
}

}  // namespace cohort::coordinator
