// How the coordinator combines the verified updates of one step into the gradient it applies.
// `mean` is the distributed form of grpo/ (Σ gradient sums / Σ units: exactly the full-batch
// gradient); the robust rules bound what a minority of Byzantine peers can do, at the price of
// that exactness. They work on each update's own mean gradient (its sum / its units).
//
//   AggregationConfig rule{.rule = AggregationRule::trimmed_mean, .trim_fraction = 0.25};
//   std::vector<float> g(count);
//   AggregationStats s = aggregate(rule, update_means, count, g.data());   // g: the step's gradient
#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace cohort::coordinator {

enum class AggregationRule {
  mean,           // Σ sums / Σ units (exact; the default)
  trimmed_mean,   // per coordinate: drop the ⌊f·n⌋ lowest and highest, average the rest
  median,         // per coordinate: the median (mean of the middle two for even n)
  centered_clip,  // Karimireddy et al. 2021: iterated clipping around a robust centre
};

struct AggregationConfig {
  AggregationRule rule = AggregationRule::mean;
  double trim_fraction = 0.2;  // trimmed_mean: fraction dropped at each end, in [0, 0.5)
  double clip_radius = 0;      // centered_clip: τ; 0 = the median distance of the updates to the centre
  int clip_iterations = 3;     // centered_clip: L
};

// "mean" | "trimmed_mean" | "median" | "centered_clip"; throws cohort::Error otherwise.
AggregationRule parse_aggregation_rule(const std::string& name);
std::string aggregation_rule_name(AggregationRule rule);

struct AggregationStats {
  size_t updates = 0;
  size_t clipped = 0;        // centered_clip: updates clipped in the last iteration
  double radius = 0;         // centered_clip: the τ used
};

// Robust combination of n per-update mean gradients (each `count` floats) into `out`.
// For `mean` the caller keeps the exact weighted form; calling it here gives the unweighted mean.
// n == 0 leaves `out` zero. Deterministic: no randomness, fixed reduction order.
AggregationStats aggregate(const AggregationConfig& config, std::span<const float* const> updates,
                           size_t count, float* out);

}  // namespace cohort::coordinator
