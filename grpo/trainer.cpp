#include "grpo/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common/check.h"
#include "common/clock.h"
#include "common/progress.h"

namespace cohort::grpo {

using at::Tensor;

void score_rollout(const Tokenizer& tok, const Task& task, ScoredBatch& b) {
  const int64_t n = static_cast<int64_t>(b.rollout.completions.size());
  const int g = b.rollout.group_size;
  b.rewards.assign(n, 0.0f);
  b.parts.assign(n, {});
  for (int64_t i = 0; i < n; ++i) {
    b.parts[i] = score_completion(tok, task, b.prompts[i / g], b.rollout.completions[i]);
    b.rewards[i] = static_cast<float>(b.parts[i].total);
  }
}

ScoredBatch rollout_and_score(const Model& policy, const Tokenizer& tok, const Task& task,
                              const std::vector<Prompt>& prompts, const GrpoConfig& cfg,
                              uint64_t seed) {
  ScoredBatch b;
  b.prompts = prompts;
  std::vector<std::vector<int64_t>> ids;
  ids.reserve(prompts.size());
  for (const auto& p : prompts) ids.push_back(encode_prompt(tok, p));
  SamplingParams sp = cfg.sampling;
  sp.seed = seed;
  if (sp.stop_tokens.empty()) sp.stop_tokens = tok.stop_ids();
  if (!sp.stop_strings.empty() && sp.stop_decoder == nullptr) sp.stop_decoder = &tok;
  b.rollout = generate(policy, ids, cfg.group_size, sp, tok.pad_id());
  score_rollout(tok, task, b);
  b.advantages = group_advantages(b.rewards, cfg.group_size, cfg.scale);
  if (cfg.mask_truncated) mask_truncated_rows(b.rollout);
  return b;
}

void mask_truncated_rows(Rollout& r) {
  for (size_t i = 0; i < r.truncated.size(); ++i)
    if (r.truncated[i]) r.completion_mask[static_cast<int64_t>(i)].zero_();
}

Rollout slice_rows(const Rollout& r, int64_t begin, int64_t count) {
  Rollout s;
  s.tokens = r.tokens.narrow(0, begin, count);
  s.positions = r.positions.narrow(0, begin, count);
  s.key_valid = r.key_valid.narrow(0, begin, count);
  s.completion_mask = r.completion_mask.narrow(0, begin, count);
  s.logprobs = r.logprobs.narrow(0, begin, count);
  s.prompt_len = r.prompt_len;
  s.group_size = r.group_size;
  s.completions.assign(r.completions.begin() + begin, r.completions.begin() + begin + count);
  s.truncated.assign(r.truncated.begin() + begin, r.truncated.begin() + begin + count);
  for (const auto& c : s.completions) s.generated_tokens += static_cast<int64_t>(c.size());
  return s;
}

Tensor completion_logprobs(const Model& model, const Rollout& r, double temperature) {
  const int64_t p = r.prompt_len, c = r.completion_mask.size(1);
  // Position P−1+t predicts completion token t; the last position predicts nothing.
  auto h = model.hidden(r.tokens.narrow(1, 0, p + c - 1), r.positions.narrow(1, 0, p + c - 1),
                        r.key_valid.narrow(1, 0, p + c - 1))
               .narrow(1, p - 1, c);
  auto logits = model.lm_head(h);
  if (temperature > 0 && temperature != 1.0) logits = logits / temperature;
  auto targets = r.tokens.narrow(1, p, c).unsqueeze(-1).to(logits.device());
  return logits.log_softmax(-1).gather(-1, targets).squeeze(-1);
}

LossSums accumulate_gradient(const Model& policy, const Model* reference, const Rollout& rollout,
                             std::span<const float> advantages, const GrpoConfig& cfg) {
  const int64_t n = rollout.tokens.size(0);
  COHORT_CHECK(static_cast<int64_t>(advantages.size()) == n);
  const int64_t mb = cfg.micro_batch > 0 ? cfg.micro_batch : n;
  LossConfig lc = cfg.loss;
  if (lc.max_completion_length <= 0) lc.max_completion_length = cfg.sampling.max_new_tokens;
  // Rollouts live on the host; what the loss reads follows the policy to its device.
  const at::Device device = policy.device();
  auto adv_all = at::from_blob(const_cast<float*>(advantages.data()), {n}, at::kFloat)
                     .to(device, /*non_blocking=*/false, /*copy=*/true);
  LossSums total;
  double loss_value = 0;
  for (int64_t begin = 0; begin < n; begin += mb) {
    const int64_t count = std::min(mb, n - begin);
    Rollout rows = slice_rows(rollout, begin, count);
    Tensor ref;
    if (lc.beta != 0.0) {
      COHORT_CHECK(reference != nullptr, "beta != 0 needs a reference model");
      at::NoGradGuard no_grad;
      ref = completion_logprobs(*reference, rows, cfg.sampling.temperature);
    }
    auto logps = completion_logprobs(policy, rows, cfg.sampling.temperature);
    // Applied here too (on a copy: rows are views of the caller's rollout) so that callers that
    // sample on their own, as the node does with per-lease seeds, get the same loss.
    Tensor mask = rows.completion_mask;
    if (cfg.mask_truncated) {
      mask = mask.clone();
      for (int64_t i = 0; i < count; ++i)
        if (static_cast<size_t>(i) < rows.truncated.size() && rows.truncated[static_cast<size_t>(i)])
          mask[i].zero_();
    }
    auto sums = grpo_loss_sums(logps, rows.logprobs.to(device), ref, adv_all.narrow(0, begin, count),
                               mask.to(device), lc);
    sums.loss_sum.backward();
    loss_value += sums.loss_sum.item<double>();
    total.units += sums.units;
    total.tokens += sums.tokens;
    total.kl_sum += sums.kl_sum;
    total.clipped_tokens += sums.clipped_tokens;
  }
  total.loss_sum = at::scalar_tensor(loss_value, at::kDouble);
  return total;
}

void reward_statistics(const ScoredBatch& b, int g, StepStats& s) {
  const size_t n = b.rewards.size();
  if (n == 0) return;
  double sum = 0, sq = 0, acc = 0, fmt = 0, len = 0, len_sq = 0, trunc = 0;
  double len_correct = 0, n_correct = 0;
  s.completion_len_min = s.completion_len_max = double(b.rollout.completions[0].size());
  for (size_t i = 0; i < n; ++i) {
    sum += b.rewards[i];
    sq += double(b.rewards[i]) * b.rewards[i];
    acc += b.parts[i].accuracy;
    fmt += b.parts[i].format;
    const double l = double(b.rollout.completions[i].size());
    len += l;
    len_sq += l * l;
    s.completion_len_min = std::min(s.completion_len_min, l);
    s.completion_len_max = std::max(s.completion_len_max, l);
    if (b.parts[i].accuracy > 0) {
      len_correct += l;
      n_correct += 1;
    }
    trunc += b.rollout.truncated[i] ? 1 : 0;
  }
  s.completion_len_std = std::sqrt(std::max(0.0, len_sq / n - (len / n) * (len / n)));
  s.completion_len_correct = n_correct > 0 ? len_correct / n_correct : 0;
  s.reward_mean = sum / n;
  s.reward_std = std::sqrt(std::max(0.0, sq / n - s.reward_mean * s.reward_mean));
  s.accuracy = acc / n;
  s.format = fmt / n;
  s.completion_len = len / n;
  s.truncated_frac = trunc / n;
  int zero = 0, groups = 0;
  for (size_t i = 0; i < n; i += g, ++groups) {
    bool same = true;
    for (int j = 1; j < g; ++j) same = same && b.rewards[i + j] == b.rewards[i];
    zero += same ? 1 : 0;
  }
  s.zero_std_frac = groups ? double(zero) / groups : 0;
}

GrpoTrainer::GrpoTrainer(Model& policy, const Tokenizer& tok, const Task& task, GrpoConfig cfg)
    : policy_(policy), tok_(tok), task_(task), cfg_(std::move(cfg)) {
  if (cfg_.group_size < 2) throw Error("group size must be at least 2 (advantages are relative)");
  if (cfg_.prompts_per_step < 1) throw Error("prompts per step must be at least 1");
  if (cfg_.loss.beta != 0.0) {
    reference_ = std::make_unique<Model>(policy.config(), 0);
    reference_->to(policy.device());
    reference_->copy_from(policy);
    reference_->set_precision(policy.precision());
  }
  torch::optim::AdamWOptions opts(cfg_.lr);
  opts.betas({cfg_.adam_beta1, cfg_.adam_beta2}).eps(cfg_.adam_eps).weight_decay(cfg_.weight_decay);
  optimizer_ = std::make_unique<torch::optim::AdamW>(policy_.parameters(), opts);
}

GrpoTrainer::~GrpoTrainer() = default;

StepStats GrpoTrainer::step() {
  StepStats s;
  s.step = ++step_;
  const double t0 = mono_s();
  std::vector<Prompt> prompts;
  const uint64_t first = static_cast<uint64_t>(step_ - 1) * cfg_.prompts_per_step;
  for (int i = 0; i < cfg_.prompts_per_step; ++i) prompts.push_back(task_.train_prompt(first + i));
  ScoredBatch b = rollout_and_score(policy_, tok_, task_, prompts, cfg_,
                                    cfg_.seed * 1000003ull + static_cast<uint64_t>(step_));
  const double t1 = mono_s();
  reward_statistics(b, cfg_.group_size, s);

  optimizer_->zero_grad();
  LossSums sums = accumulate_gradient(policy_, reference_.get(), b.rollout, b.advantages, cfg_);
  const double units = std::max(sums.units, 1.0);
  auto params = policy_.parameters();
  {
    at::NoGradGuard no_grad;
    for (auto& p : params)
      if (p.grad().defined()) p.grad().div_(units);
  }
  double norm = 0;
  if (cfg_.max_grad_norm > 0) {
    norm = torch::nn::utils::clip_grad_norm_(params, cfg_.max_grad_norm);
  } else {
    for (auto& p : params)
      if (p.grad().defined()) norm += p.grad().pow(2).sum().item<double>();
    norm = std::sqrt(norm);
  }
  if (std::isfinite(norm)) {
    optimizer_->step();
  }  // a non-finite gradient skips the update (llm.c's guard); the stats show it
  const double t2 = mono_s();

  s.loss = sums.loss_sum.item<double>() / units;
  s.kl = sums.tokens > 0 ? sums.kl_sum / sums.tokens : 0;
  s.clip_frac = sums.tokens > 0 ? sums.clipped_tokens / sums.tokens : 0;
  s.grad_norm = norm;
  s.gen_s = t1 - t0;
  s.train_s = t2 - t1;
  s.step_s = t2 - t0;
  s.tokens_per_s = double(b.rollout.generated_tokens) / std::max(s.step_s, 1e-9);
  return s;
}

EvalResult evaluate(const Model& model, const Tokenizer& tok, const Task& task, int n,
                    int max_new_tokens, int batch_size) {
  const double t0 = mono_s();
  auto prompts = task.eval_prompts(n);
  EvalResult r;
  r.n = n;
  SamplingParams sp;
  sp.temperature = 0.0;
  sp.max_new_tokens = max_new_tokens;
  sp.stop_tokens = tok.stop_ids();
  for (int begin = 0; begin < n; begin += batch_size) {
    const int count = std::min(batch_size, n - begin);
    ScoredBatch b;
    b.prompts.assign(prompts.begin() + begin, prompts.begin() + begin + count);
    std::vector<std::vector<int64_t>> ids;
    for (const auto& p : b.prompts) ids.push_back(encode_prompt(tok, p));
    b.rollout = generate(model, ids, 1, sp, tok.pad_id());
    score_rollout(tok, task, b);
    for (int i = 0; i < count; ++i) {
      r.accuracy += b.parts[i].accuracy;
      r.format += b.parts[i].format;
      r.completion_len += double(b.rollout.completions[i].size());
    }
  }
  r.accuracy /= n;
  r.format /= n;
  r.completion_len /= n;
  r.seconds = mono_s() - t0;
  return r;
}

namespace {
// A wrong answer near the right one: one digit changed (keeps the format, breaks the answer).
std::string corrupt_answer(const std::string& completion, uint64_t& state) {
  std::string s = completion;
  std::vector<size_t> digits;
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] >= '0' && s[i] <= '9') digits.push_back(i);
  if (digits.empty()) return s;
  state = state * 6364136223846793005ull + 1442695040888963407ull;
  const size_t at = digits[(state >> 33) % digits.size()];
  state = state * 6364136223846793005ull + 1442695040888963407ull;
  const char d = static_cast<char>('0' + (s[at] - '0' + 1 + (state >> 33) % 9) % 10);
  s[at] = d;
  return s;
}
}  // namespace

PretrainResult pretrain(Model& model, const Tokenizer& tok, const Task& task,
                        const PretrainConfig& cfg, bool show_progress) {
  torch::optim::AdamWOptions opts(cfg.lr);
  opts.weight_decay(0.0);
  torch::optim::AdamW opt(model.parameters(), opts);
  PretrainResult result;
  Progress bar("pretrain", cfg.steps);
  uint64_t noise_state = cfg.seed * 0x9E3779B97F4A7C15ull + 7;
  // Warm-up prompts come from a stream disjoint from GRPO's (offset far into the index space).
  uint64_t index = 1ull << 40;
  for (int step = 1; step <= cfg.steps; ++step) {
    std::vector<std::vector<int64_t>> prompts, completions;
    for (int i = 0; i < cfg.batch_size; ++i) {
      Prompt p = task.train_prompt(index++);
      std::string ref = task.reference_completion(p);
      noise_state = noise_state * 6364136223846793005ull + 1442695040888963407ull;
      if (cfg.label_noise > 0 && double(noise_state >> 11) / double(1ull << 53) < cfg.label_noise)
        ref = corrupt_answer(ref, noise_state);
      auto ids = tok.encode(ref);
      ids.push_back(tok.eos_id());
      prompts.push_back(encode_prompt(tok, p));
      completions.push_back(std::move(ids));
    }
    Rollout r = layout(prompts, 1, completions, cfg.max_new_tokens, tok.pad_id());
    opt.zero_grad();
    auto logps = completion_logprobs(model, r, 1.0);
    const Tensor mask = r.completion_mask.to(logps.device());
    auto loss = -(logps * mask).sum() / mask.sum();
    loss.backward();
    opt.step();
    result.steps = step;
    result.final_loss = loss.item<double>();
    const bool eval_now = cfg.eval_every > 0 && (step % cfg.eval_every == 0 || step == cfg.steps);
    if (eval_now) {
      result.eval = evaluate(model, tok, task, cfg.eval_n, cfg.max_new_tokens);
      if (cfg.stop_at_accuracy > 0 && result.eval.accuracy >= cfg.stop_at_accuracy) break;
    }
    if (show_progress)
      bar.update(step, "loss " + std::to_string(result.final_loss).substr(0, 6) + "  acc " +
                           std::to_string(result.eval.accuracy).substr(0, 5));
  }
  return result;
}

}  // namespace cohort::grpo
