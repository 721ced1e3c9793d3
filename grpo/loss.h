// The GRPO objective (DeepSeekMath), with the variants users ask for, in the distributed form:
// a batch contributes the *sum* of its per-unit losses and the unit count its aggregation
// divides by, so that Σ sums / Σ units over any split of a batch into whole rows equals the
// loss (and, by linearity, the gradient) of the whole batch.
//
//   A_i = (r_i − mean(r)) / (std(r) + eps)               scale: group | batch | none
//   ρ_{i,t} = π_θ(o_{i,t}) / π_old(o_{i,t})               or the sequence-level ratio (GSPO)
//   ℓ_{i,t} = −min(ρ A_i, clip(ρ, 1−ε_low, 1+ε_high) A_i) + β·KL_{i,t}
//   KL = π_ref/π_θ − log(π_ref/π_θ) − 1                  (k3; β = 0 needs no reference)
//   grpo: mean_i mean_t ℓ    bnpo/dapo: Σ_{i,t} ℓ / Σ tokens    dr_grpo: Σ_{i,t} ℓ / (N·L_max)
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "grpo/grpo_config.h"

namespace cohort::grpo {

// Advantages for rewards laid out group by group (rows g·G .. g·G+G−1 share a prompt). The std
// is the unbiased one (as TRL's torch.std); eps keeps zero-variance groups at A = 0.
std::vector<float> group_advantages(std::span<const float> rewards, int group_size,
                                    AdvantageScale scale, double eps = 1e-4);

struct LossSums {
  at::Tensor loss_sum;  // scalar, differentiable: Σ of per-unit losses
  double units = 0;     // what the aggregation divides by (sequences or tokens)
  // Detached statistics, as sums so that they aggregate across shards like the loss.
  double tokens = 0;         // completion tokens
  double kl_sum = 0;         // Σ_t KL over tokens (0 when β = 0)
  double clipped_tokens = 0; // tokens whose clipped term is the active one
};

// logps: [N, C] log π_θ with grad; old_logps: [N, C] sampling policy; ref_logps: [N, C] or
// undefined when beta == 0; advantages: [N]; mask: [N, C] (1 on completion tokens).
LossSums grpo_loss_sums(const at::Tensor& logps, const at::Tensor& old_logps,
                        const at::Tensor& ref_logps, const at::Tensor& advantages,
                        const at::Tensor& mask, const LossConfig& cfg);

}  // namespace cohort::grpo
