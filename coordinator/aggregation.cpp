#include "coordinator/aggregation.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/check.h"

namespace cohort::coordinator {

AggregationRule parse_aggregation_rule(const std::string& name) {
  if (name == "mean") return AggregationRule::mean;
  if (name == "trimmed_mean") return AggregationRule::trimmed_mean;
  if (name == "median") return AggregationRule::median;
  if (name == "centered_clip") return AggregationRule::centered_clip;
  throw Error("unknown aggregation rule '" + name + "' (mean | trimmed_mean | median | centered_clip)");
}

std::string aggregation_rule_name(AggregationRule rule) {
  switch (rule) {
    case AggregationRule::mean: return "mean";
    case AggregationRule::trimmed_mean: return "trimmed_mean";
    case AggregationRule::median: return "median";
    case AggregationRule::centered_clip: return "centered_clip";
  }
  return "?";
}

namespace {

// Per coordinate: sort the n values (n is the number of updates in a step: small) and reduce.
template <typename Reduce>
void coordinate_wise(std::span<const float* const> xs, size_t count, float* out, Reduce reduce) {
  std::vector<float> v(xs.size());
  for (size_t j = 0; j < count; ++j) {
    for (size_t i = 0; i < xs.size(); ++i) v[i] = xs[i][j];
    std::sort(v.begin(), v.end());
    out[j] = reduce(v);
  }
}

float median_of_sorted(const std::vector<float>& v) {
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : static_cast<float>((double(v[n / 2 - 1]) + v[n / 2]) / 2);
}

double distance(const float* a, const float* b, size_t count) {
  double sq = 0;
  for (size_t j = 0; j < count; ++j) {
    const double d = double(a[j]) - b[j];
    sq += d * d;
  }
  return std::sqrt(sq);
}

}  // namespace

AggregationStats aggregate(const AggregationConfig& config, std::span<const float* const> xs,
                           size_t count, float* out) {
  AggregationStats stats;
  stats.updates = xs.size();
  std::fill(out, out + count, 0.0f);
  const size_t n = xs.size();
  if (n == 0) return stats;
  switch (config.rule) {
    case AggregationRule::mean: {
      std::vector<double> acc(count, 0.0);
      for (const float* x : xs)
        for (size_t j = 0; j < count; ++j) acc[j] += x[j];
      for (size_t j = 0; j < count; ++j) out[j] = static_cast<float>(acc[j] / double(n));
      break;
    }
    case AggregationRule::trimmed_mean: {
      if (!(config.trim_fraction >= 0 && config.trim_fraction < 0.5))
        throw Error("trim_fraction must be in [0, 0.5)");
      const size_t k = static_cast<size_t>(std::floor(config.trim_fraction * double(n)));
      coordinate_wise(xs, count, out, [k](const std::vector<float>& v) {
        double s = 0;
        for (size_t i = k; i < v.size() - k; ++i) s += v[i];
        return static_cast<float>(s / double(v.size() - 2 * k));
      });
      break;
    }
    case AggregationRule::median:
      coordinate_wise(xs, count, out, median_of_sorted);
      break;
    case AggregationRule::centered_clip: {
      if (config.clip_iterations < 1) throw Error("clip_iterations must be at least 1");
      if (config.clip_radius < 0) throw Error("clip_radius must be >= 0");
      // Start from the coordinate-wise median: a centre a minority cannot drag far.
      coordinate_wise(xs, count, out, median_of_sorted);
      std::vector<double> dist(n);
      for (size_t i = 0; i < n; ++i) dist[i] = distance(xs[i], out, count);
      double tau = config.clip_radius;
      if (tau == 0) {
        std::vector<double> d = dist;
        std::sort(d.begin(), d.end());
        tau = n % 2 ? d[n / 2] : (d[n / 2 - 1] + d[n / 2]) / 2;
      }
      stats.radius = tau;
      std::vector<double> step(count);
      for (int it = 0; it < config.clip_iterations; ++it) {
        std::fill(step.begin(), step.end(), 0.0);
        stats.clipped = 0;
        for (size_t i = 0; i < n; ++i) {
          const double d = it == 0 ? dist[i] : distance(xs[i], out, count);
          double w = 1.0;
          if (d > tau) {
            w = tau / d;
            ++stats.clipped;
          }
          for (size_t j = 0; j < count; ++j) step[j] += w * (double(xs[i][j]) - out[j]);
        }
        for (size_t j = 0; j < count; ++j) out[j] = static_cast<float>(out[j] + step[j] / double(n));
      }
      break;
    }
  }
  return stats;
}

}  // namespace cohort::coordinator
