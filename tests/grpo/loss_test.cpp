// The GRPO objective against an independent scalar reference, finite differences in double
// precision, and the distributed identity (Σ shard sums / Σ units = full-batch loss).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "grpo/loss.h"

namespace cohort::grpo {
namespace {

// Plain loops, written straight from the formulas in loss.h, independent of the tensor code.
double reference_loss(const std::vector<std::vector<double>>& lp,
                      const std::vector<std::vector<double>>& old,
                      const std::vector<std::vector<double>>& ref,
                      const std::vector<double>& adv, const std::vector<std::vector<int>>& mask,
                      const LossConfig& c) {
  const size_t n = lp.size();
  double total = 0, tokens = 0;
  std::vector<double> seq_loss(n, 0), seq_len(n, 0);
  for (size_t i = 0; i < n; ++i) {
    double seq_lr = 0, len = 0;
    for (size_t t = 0; t < lp[i].size(); ++t)
      if (mask[i][t]) seq_lr += lp[i][t] - old[i][t], len += 1;
    seq_lr /= std::max(len, 1.0);
    for (size_t t = 0; t < lp[i].size(); ++t) {
      if (!mask[i][t]) continue;
      double rho = c.importance == ImportanceLevel::token ? std::exp(lp[i][t] - old[i][t])
                                                          : std::exp(seq_lr);
      double clipped = std::min(std::max(rho, 1 - c.epsilon_low), 1 + c.epsilon_high);
      double l = -std::min(rho * adv[i], clipped * adv[i]);
      if (c.beta != 0) {
        double d = ref[i][t] - lp[i][t];
        l += c.beta * (std::exp(d) - d - 1);
      }
      seq_loss[i] += l;
      seq_len[i] += 1;
      total += l;
      tokens += 1;
    }
  }
  switch (c.loss) {
    case LossType::grpo: {
      double s = 0;
      for (size_t i = 0; i < n; ++i) s += seq_loss[i] / std::max(seq_len[i], 1.0);
      return s / double(n);
    }
    case LossType::bnpo:
    case LossType::dapo: return total / tokens;
    case LossType::dr_grpo: return total / (double(n) * double(c.max_completion_length));
  }
  return 0;
}

struct Case {
  std::vector<std::vector<double>> lp, old, ref;
  std::vector<double> adv;
  std::vector<std::vector<int>> mask;
};

Case make_case(int n, int c, uint64_t seed) {
  torch::manual_seed(seed);
  Case k;
  auto lp = -torch::rand({n, c}, torch::kDouble) * 2 - 0.05;
  auto old = lp + torch::randn({n, c}, torch::kDouble) * 0.3;  // ratios well outside the clip
  auto ref = lp + torch::randn({n, c}, torch::kDouble) * 0.5;
  auto adv = torch::randn({n}, torch::kDouble);
  for (int i = 0; i < n; ++i) {
    k.lp.emplace_back(), k.old.emplace_back(), k.ref.emplace_back(), k.mask.emplace_back();
    const int len = 1 + (i * 3) % c;  // ragged completions
    for (int t = 0; t < c; ++t) {
      k.lp[i].push_back(lp[i][t].item<double>());
      k.old[i].push_back(old[i][t].item<double>());
      k.ref[i].push_back(ref[i][t].item<double>());
      k.mask[i].push_back(t < len ? 1 : 0);
    }
    k.adv.push_back(adv[i].item<double>());
  }
  return k;
}

torch::Tensor to_tensor(const std::vector<std::vector<double>>& v) {
  std::vector<torch::Tensor> rows;
  for (const auto& r : v) rows.push_back(torch::tensor(r, torch::kDouble));
  return torch::stack(rows);
}
torch::Tensor mask_tensor(const std::vector<std::vector<int>>& v) {
  std::vector<torch::Tensor> rows;
  for (const auto& r : v) rows.push_back(torch::tensor(std::vector<double>(r.begin(), r.end()), torch::kDouble));
  return torch::stack(rows);
}

std::vector<LossConfig> all_configs() {
  std::vector<LossConfig> out;
  for (auto loss : {LossType::grpo, LossType::bnpo, LossType::dapo, LossType::dr_grpo})
    for (auto level : {ImportanceLevel::token, ImportanceLevel::sequence})
      for (double beta : {0.0, 0.04}) {
        LossConfig c;
        c.loss = loss;
        c.importance = level;
        c.beta = beta;
        c.epsilon_low = 0.2;
        c.epsilon_high = 0.28;
        c.max_completion_length = 7;
        out.push_back(c);
      }
  return out;
}

TEST(GrpoLoss, MatchesScalarReferenceForEveryVariant) {
  Case k = make_case(6, 7, 3);
  for (const auto& c : all_configs()) {
    auto sums = grpo_loss_sums(to_tensor(k.lp), to_tensor(k.old), to_tensor(k.ref),
                               torch::tensor(k.adv, torch::kDouble), mask_tensor(k.mask), c);
    const double got = sums.loss_sum.item<double>() / sums.units;
    EXPECT_NEAR(got, reference_loss(k.lp, k.old, k.ref, k.adv, k.mask, c), 1e-12)
        << "loss " << int(c.loss) << " level " << int(c.importance) << " beta " << c.beta;
  }
}

TEST(GrpoLoss, HandComputedSingleToken) {
  // One sequence, one token: ρ = e^{0.5} ≈ 1.6487 > 1 + ε, A = 2 → clipped term 1.2·2 active.
  LossConfig c;
  c.loss = LossType::grpo;
  auto lp = torch::tensor({{-0.5}}, torch::kDouble), old = torch::tensor({{-1.0}}, torch::kDouble);
  auto sums = grpo_loss_sums(lp, old, {}, torch::tensor({2.0}, torch::kDouble),
                             torch::ones({1, 1}, torch::kDouble), c);
  EXPECT_NEAR(sums.loss_sum.item<double>(), -2.4, 1e-12);
  EXPECT_EQ(sums.units, 1.0);
  EXPECT_EQ(sums.clipped_tokens, 1.0);
  // Negative advantage: min picks the unclipped ρ·A = −1.6487·... → loss = +ρ·|A|.
  auto neg = grpo_loss_sums(lp, old, {}, torch::tensor({-2.0}, torch::kDouble),
                            torch::ones({1, 1}, torch::kDouble), c);
  EXPECT_NEAR(neg.loss_sum.item<double>(), 2.0 * std::exp(0.5), 1e-12);
  EXPECT_EQ(neg.clipped_tokens, 0.0);
}

TEST(GrpoLoss, GradientMatchesFiniteDifferences) {
  Case k = make_case(4, 5, 11);
  for (const auto& c : all_configs()) {
    auto lp = to_tensor(k.lp).requires_grad_(true);
    auto old = to_tensor(k.old), ref = to_tensor(k.ref), mask = mask_tensor(k.mask);
    auto adv = torch::tensor(k.adv, torch::kDouble);
    auto f = [&](const torch::Tensor& x) {
      auto s = grpo_loss_sums(x, old, ref, adv, mask, c);
      return s.loss_sum / s.units;
    };
    f(lp).backward();
    auto grad = lp.grad().clone();
    const double h = 1e-6;
    for (int i = 0; i < 4; ++i)
      for (int t = 0; t < 5; ++t) {
        auto plus = lp.detach().clone(), minus = lp.detach().clone();
        plus[i][t] += h;
        minus[i][t] -= h;
        const double fd = (f(plus).item<double>() - f(minus).item<double>()) / (2 * h);
        EXPECT_NEAR(grad[i][t].item<double>(), fd, 1e-6)
            << "loss " << int(c.loss) << " level " << int(c.importance) << " at " << i << "," << t;
      }
  }
}

TEST(GrpoLoss, ShardSumsEqualFullBatch) {
  Case k = make_case(9, 6, 5);
  for (const auto& c : all_configs()) {
    auto lp = to_tensor(k.lp), old = to_tensor(k.old), ref = to_tensor(k.ref);
    auto mask = mask_tensor(k.mask);
    auto adv = torch::tensor(k.adv, torch::kDouble);
    auto full = grpo_loss_sums(lp, old, ref, adv, mask, c);
    double sum = 0, units = 0;
    for (auto [b, n] : {std::pair{0, 2}, {2, 6}, {8, 1}}) {
      auto s = grpo_loss_sums(lp.narrow(0, b, n), old.narrow(0, b, n), ref.narrow(0, b, n),
                              adv.narrow(0, b, n), mask.narrow(0, b, n), c);
      sum += s.loss_sum.item<double>();
      units += s.units;
    }
    EXPECT_NEAR(sum / units, full.loss_sum.item<double>() / full.units, 1e-12);
  }
}

TEST(GroupAdvantages, ScalesAsSpecified) {
  std::vector<float> r{1, 0, 0, 1, 2, 2, 2, 2};
  auto g = group_advantages(r, 4, AdvantageScale::group, 0.0);
  const double sd = std::sqrt(1.0 / 3.0);  // unbiased std of {1,0,0,1}
  EXPECT_NEAR(g[0], 0.5 / sd, 1e-6);
  EXPECT_NEAR(g[1], -0.5 / sd, 1e-6);
  for (int i = 4; i < 8; ++i) EXPECT_EQ(g[i], 0.0f);  // zero-variance group: no signal
  auto none = group_advantages(r, 4, AdvantageScale::none);
  EXPECT_NEAR(none[0], 0.5, 1e-6);
  auto batch = group_advantages(r, 4, AdvantageScale::batch, 0.0);
  double mean = 1.25, ss = 0;
  for (float v : r) ss += (v - mean) * (v - mean);
  EXPECT_NEAR(batch[0], 0.5 / std::sqrt(ss / 7.0), 1e-6);  // group-centred, batch-scaled
}

}  // namespace
}  // namespace cohort::grpo
