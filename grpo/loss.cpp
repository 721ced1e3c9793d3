#include "grpo/loss.h"

#include <torch/torch.h>

#include <cmath>

#include "common/check.h"

namespace cohort::grpo {

using at::Tensor;

namespace {
double unbiased_std(std::span<const float> x, double mean) {
  if (x.size() < 2) return 0.0;
  double ss = 0;
  for (float v : x) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / double(x.size() - 1));
}
double mean_of(std::span<const float> x) {
  double s = 0;
  for (float v : x) s += v;
  return x.empty() ? 0.0 : s / double(x.size());
}
}  // namespace

std::vector<float> group_advantages(std::span<const float> rewards, int group_size,
                                    AdvantageScale scale, double eps) {
  COHORT_CHECK(group_size >= 1 && rewards.size() % group_size == 0,
               "rewards must hold whole groups");
  std::vector<float> adv(rewards.size());
  const double batch_std = unbiased_std(rewards, mean_of(rewards));
  for (size_t g = 0; g < rewards.size(); g += group_size) {
    auto group = rewards.subspan(g, group_size);
    const double mean = mean_of(group);
    double denom = 1.0;
    if (scale == AdvantageScale::group) denom = unbiased_std(group, mean) + eps;
    if (scale == AdvantageScale::batch) denom = batch_std + eps;
    // A zero-variance group has zero centred rewards: its advantages are 0, whatever eps is.
    for (int i = 0; i < group_size; ++i)
      adv[g + i] = denom > 0 ? static_cast<float>((group[i] - mean) / denom) : 0.0f;
  }
  return adv;
}

LossSums grpo_loss_sums(const Tensor& logps, const Tensor& old_logps, const Tensor& ref_logps,
                        const Tensor& advantages, const Tensor& mask, const LossConfig& cfg) {
  COHORT_CHECK(logps.sizes() == mask.sizes() && old_logps.sizes() == mask.sizes());
  COHORT_CHECK(advantages.dim() == 1 && advantages.size(0) == logps.size(0));
  if (cfg.beta != 0.0 && !ref_logps.defined())
    throw Error("beta != 0 needs reference log-probabilities");
  const auto m = mask.to(logps.scalar_type());
  const auto seq_tokens = m.sum(-1);  // [N]
  const auto log_ratio = logps - old_logps.to(logps.scalar_type());

  Tensor coef1;
  if (cfg.importance == ImportanceLevel::sequence) {
    auto seq_log_ratio = (log_ratio * m).sum(-1) / seq_tokens.clamp_min(1.0);
    coef1 = seq_log_ratio.exp().unsqueeze(-1);  // [N, 1], shared by the sequence's tokens
  } else {
    coef1 = log_ratio.exp();
  }
  const auto coef2 = coef1.clamp(1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high);
  const auto a = advantages.to(logps.scalar_type()).unsqueeze(-1);
  auto per_token = -at::min(coef1 * a, coef2 * a);  // [N, C] or [N, 1]
  Tensor kl;
  if (cfg.beta != 0.0) {
    auto d = ref_logps.to(logps.scalar_type()) - logps;
    kl = d.exp() - d - 1.0;
    per_token = per_token + cfg.beta * kl;
  }
  per_token = per_token * m;  // broadcasts the sequence-level case over tokens

  LossSums out;
  const int64_t n = logps.size(0);
  switch (cfg.loss) {
    case LossType::grpo:
      out.loss_sum = (per_token.sum(-1) / seq_tokens.clamp_min(1.0)).sum();
      break;
    case LossType::bnpo:
    case LossType::dapo:
      out.loss_sum = per_token.sum();
      break;
    case LossType::dr_grpo:
      COHORT_CHECK(cfg.max_completion_length > 0);
      out.loss_sum = per_token.sum() / double(cfg.max_completion_length);
      break;
  }
  {
    at::NoGradGuard no_grad;
    out.tokens = m.sum().item<double>();
    out.units = loss_units(cfg.loss, double(n), out.tokens);
    if (kl.defined()) out.kl_sum = (kl * m).sum().item<double>();
    auto c1 = coef1.detach().expand_as(m);
    auto low = (c1 < 1.0 - cfg.epsilon_low) & (a < 0);
    auto high = (c1 > 1.0 + cfg.epsilon_high) & (a > 0);
    out.clipped_tokens = ((low | high).to(m.scalar_type()) * m).sum().item<double>();
  }
  return out;
}

}  // namespace cohort::grpo
