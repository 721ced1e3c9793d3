// Start-up: identity key, ledger, task and tokenizer, the model side; resume from the latest
// checkpoint, replay the accepted updates it does not contain, re-adopt leases still out.
#include <spdlog/spdlog.h>

#include <cstring>
#include <filesystem>

#include "coordinator/coordinator_impl.h"
#include "exchange/blob_store.h"
#include "exchange/round_settings.h"
#include "grpo/scoring.h"
#include "protocol/digest.h"

namespace cohort::coordinator {

namespace fs = std::filesystem;

void Coordinator::Impl::open() {
  fs::create_directories(cfg.data_dir);
  const std::string key =
      cfg.key_file.empty() ? (fs::path(cfg.data_dir) / "coordinator.key").string() : cfg.key_file;
  if (!fs::exists(key)) {
    protocol::Identity::generate().save(key);
    spdlog::info("coordinator: new identity key {}", key);
  }
  identity = protocol::Identity::load(key);
  for (const auto& hex : cfg.allowlist) allowed.insert(PeerId::parse(hex));
  ledger = std::make_unique<Ledger>(ledger_path(cfg.data_dir), cfg.ledger_sync);
  task = grpo::make_task(cfg.grpo.task);
  const grpo::ModelConfig mc =
      grpo::ModelConfig::load((fs::path(cfg.model_path) / "config.json").string());
  tok = grpo::tokenizer_for_model(cfg.model_path, mc, cfg.system_prompt);
  policy = std::make_unique<Policy>(cfg, identity, *task, *tok);
  checker = std::make_unique<UpdateChecker>(
      UpdateChecker::Context{*task, *tok, cfg.grpo, policy->model_config().vocab_size});
  settings = make_settings();
  {
    const auto& l = policy->layout();
    const uint64_t completions = uint64_t(cfg.grpo.prompts_per_step) * cfg.grpo.group_size *
                                 (uint64_t(cfg.grpo.sampling.max_new_tokens) * 5 + 128);
    max_stream_bytes = std::min<uint64_t>(protocol::kMaxStreamBytes,
                                          4 * l.total + 512 * l.slots.size() + completions + 4096);
  }
  // Problems a peer would only meet mid-round are reported now.
  try {
    (void)grpo::encode_prompt(*tok, task->train_prompt(0));
  } catch (const Error& e) {
    throw Error(
        std::string("the first training prompt cannot be tokenized by the model's tokenizer: ") +
        e.what());
  }
  if (cfg.eval_every > 0) (void)task->eval_prompts(cfg.eval_n);

  uint64_t version = 0;
  if (auto ck = ledger->latest_checkpoint()) {
    version = static_cast<uint64_t>(ck->first);
    policy->resume(ck->second, version);
    spdlog::info("coordinator: resumed from checkpoint {} (version {})", ck->second, version);
  }
  sched =
      std::make_unique<LeaseScheduler>(SchedulerConfig{.steps = cfg.steps,
                                                       .groups_per_step = cfg.grpo.prompts_per_step,
                                                       .staleness_bound = cfg.staleness_bound,
                                                       .lease_timeout_s = cfg.lease_timeout_s,
                                                       .reconnect_grace_s = cfg.reconnect_grace_s,
                                                       .min_peers = cfg.min_peers,
                                                       .backup_factor = cfg.backup_factor},
                                       version);
  misbehaviour = ledger->misbehaviour_counts();
  trust_streak = ledger->trust_streaks();
  for (const auto& [p, n] : misbehaviour)
    if (cfg.ban_after > 0 && n >= cfg.ban_after) banned.insert(p);
  if (!banned.empty()) spdlog::info("coordinator: {} banned peer(s) in the ledger", banned.size());
  for (const auto& s : ledger->accepted_digests()) {
    protocol::Digest d{};
    if (s.digest.size() == d.size()) std::memcpy(d.data(), s.digest.data(), d.size());
    replays.remember(PeerId::parse(s.peer), s.sequence, d);
  }
  put_round_files();  // pinned before the first publication prunes the store
  published.push_back(policy->publish());
  blob_store = policy->blob_store();
  policy_reference = policy->reference();
  policy_params = policy->layout().total;
  replay_ledger();
  // Leases that were out when the coordinator stopped stay out until their deadline, so a
  // peer that reconnects can still deliver them.
  for (auto& rec : ledger->leases_in_state("active"))
    if (!sched->adopt(rec, mono_s()))
      ledger->close_lease(rec.lease_id, "expired",
                          rec.step <= static_cast<int64_t>(sched->version())
                              ? "step already applied"
                              : "inconsistent after restart",
                          unix_ms());
  finished = sched->finished();
}

// Re-applies the accepted updates the last checkpoint does not contain, in acceptance order.
void Coordinator::Impl::replay_ledger() {
  const auto updates = ledger->accepted_updates_after(static_cast<int64_t>(sched->version()));
  if (updates.empty()) return;
  for (const auto& u : updates) {
    auto rec = ledger->lease(u.lease_id);
    if (!rec)
      throw Error("ledger: accepted update " + std::to_string(u.id) + " names unknown lease");
    if (u.body.empty())
      throw Error("ledger: accepted update " + std::to_string(u.id) + " of step " +
                  std::to_string(u.step) + " has no body and no checkpoint covers it");
    wire::SignedUpdate su;
    su.set_body(u.body);
    const wire::GradientUpdate full = protocol::decode_update(su, u.stream);
    const protocol::Digest sd = protocol::blake2b_256(protocol::as_bytes(u.stream));
    if (full.stream_bytes() != u.stream.size() ||
        (!u.stream.empty() &&
         full.stream_blake2b() != std::string(reinterpret_cast<const char*>(sd.data()), sd.size())))
      throw Error("ledger: stored update " + std::to_string(u.id) +
                  "'s stream is not the one its signed header names");
    std::vector<float> grad;
    if (auto r = policy->decode(full, grad))
      throw Error("ledger: stored update " + std::to_string(u.id) +
                  " does not decode: " + r->detail);
    policy->absorb(rec->step,
                   {.units = u.units,
                    .tokens = u.tokens,
                    .loss = full.loss(),
                    .reward_mean = u.reward_mean,
                    .accuracy = u.accuracy,
                    .kl_sum = full.kl_sum(),
                    .rows = u.sequences},
                   std::move(grad));
    sched->mark_done(rec->step, rec->prompts);
    while (!sched->finished() && sched->step_complete(static_cast<int64_t>(sched->version()) + 1)) {
      const int64_t step = static_cast<int64_t>(sched->version()) + 1;
      step_applied(policy->apply(step, /*replaying=*/true), /*replaying=*/true);
      // Replayed steps are checkpointed too: a crash may have come between a step and its
      // checkpoint.
      if (checkpoint_due(step)) record_checkpoint(step, policy->write_checkpoint(step));
    }
  }
  spdlog::info("coordinator: replayed {} accepted updates from the ledger; version {}",
               updates.size(), sched->version());
}

wire::RoundSettings Coordinator::Impl::make_settings() const {
  exchange::RoundSpec r;
  r.round_id = cfg.round_id;
  r.model_name = cfg.model_path;
  r.grpo = cfg.grpo;
  r.model_config_json = policy->model_config().to_json();
  r.staleness_bound = cfg.staleness_bound;
  r.policy_dtype = policy->dtype();
  r.codec = cfg.codec == GradientCodec::fp8    ? wire::CODEC_FP8_E4M3_BLOCK
            : cfg.codec == GradientCodec::topk ? wire::CODEC_TOPK_Q4
                                               : wire::CODEC_RAW;
  auto digest = [](const std::string& path) {
    return exchange::digest_hex(protocol::blake2b_256_file(path));
  };
  // Files every peer must hold byte for byte: the JSONL dataset and a Hugging Face model's
  // tokenizer files.
  if (!cfg.grpo.task.dataset.empty())
    r.dataset = exchange::SharedFile{fs::path(cfg.grpo.task.dataset).filename().string(),
                                     digest(cfg.grpo.task.dataset)};
  for (const char* f : kSharedTokenizerFiles)
    if (const fs::path p = fs::path(cfg.model_path) / f; fs::exists(p))
      r.tokenizer_files.push_back({f, digest(p.string())});
  r.system_prompt = cfg.system_prompt;
  return exchange::make_round_settings(r);
}

}  // namespace cohort::coordinator
