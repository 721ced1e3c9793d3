// Robust aggregation rules against values worked out by hand, and the bound each robust rule
// puts on what a minority of Byzantine updates can do (the mean has none).
#include "coordinator/aggregation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/check.h"

namespace cohort::coordinator {
namespace {

std::vector<float> run(const AggregationConfig& c, const std::vector<std::vector<float>>& xs,
                       AggregationStats* stats = nullptr) {
  std::vector<const float*> ptrs;
  for (const auto& x : xs) ptrs.push_back(x.data());
  std::vector<float> out(xs.empty() ? 0 : xs[0].size(), 123.0f);
  AggregationStats s = aggregate(c, ptrs, out.size(), out.data());
  if (stats) *stats = s;
  return out;
}

TEST(Aggregation, MeanIsTheCoordinateMean) {
  auto out = run({.rule = AggregationRule::mean}, {{1, 2, -3}, {3, 4, 3}, {5, 0, 6}});
  EXPECT_FLOAT_EQ(out[0], 3.0f);
  EXPECT_FLOAT_EQ(out[1], 2.0f);
  EXPECT_FLOAT_EQ(out[2], 2.0f);
}

TEST(Aggregation, TrimmedMeanDropsTheExtremesOfEachCoordinate) {
  // n = 5, f = 0.2: one value dropped at each end of every coordinate.
  auto out = run({.rule = AggregationRule::trimmed_mean, .trim_fraction = 0.2},
                 {{1, 10}, {2, -100}, {3, 20}, {4, 30}, {1000, 40}});
  EXPECT_FLOAT_EQ(out[0], 3.0f);   // {1, 2, 3, 4, 1000} → mean of {2, 3, 4}
  EXPECT_FLOAT_EQ(out[1], 20.0f);  // {−100, 10, 20, 30, 40} → mean of {10, 20, 30}
}

TEST(Aggregation, MedianOddAndEven) {
  auto odd = run({.rule = AggregationRule::median}, {{5, -1}, {1, -2}, {3, 7}});
  EXPECT_FLOAT_EQ(odd[0], 3.0f);
  EXPECT_FLOAT_EQ(odd[1], -1.0f);
  auto even = run({.rule = AggregationRule::median}, {{5}, {1}, {3}, {100}});
  EXPECT_FLOAT_EQ(even[0], 4.0f);  // (3 + 5) / 2
}

TEST(Aggregation, CenteredClipMatchesTheIterationByHand) {
  // 1-D, x = {0, 0, 0, 10}, τ = 1, start at the median 0.
  // L = 1: the outlier is 10 away, weight 0.1: v = 0 + (0.1 · 10) / 4 = 0.25.
  // L = 2: honest points 0.25 away (weight 1), outlier 9.75 away (weight 1/9.75):
  //        v = 0.25 + (3 · (−0.25) + 1) / 4 = 0.3125.
  AggregationConfig c{.rule = AggregationRule::centered_clip, .clip_radius = 1.0, .clip_iterations = 1};
  AggregationStats s;
  EXPECT_FLOAT_EQ(run(c, {{0}, {0}, {0}, {10}}, &s)[0], 0.25f);
  EXPECT_EQ(s.clipped, 1u);
  c.clip_iterations = 2;
  EXPECT_FLOAT_EQ(run(c, {{0}, {0}, {0}, {10}})[0], 0.3125f);
}

TEST(Aggregation, CenteredClipAutomaticRadiusIgnoresALoneOutlier) {
  // Two identical honest updates and one far away: the centre is the honest point, the median
  // distance is 0, so the outlier gets no weight at all.
  AggregationStats s;
  auto out = run({.rule = AggregationRule::centered_clip}, {{1, 2}, {1, 2}, {-500, 900}}, &s);
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  EXPECT_FLOAT_EQ(out[1], 2.0f);
  EXPECT_EQ(s.radius, 0.0);
}

TEST(Aggregation, RobustRulesBoundAByzantineMinority) {
  // 5 honest updates near (1, -1, 0.5) and 2 attackers at ±1e6: every robust rule stays inside
  // the honest range of each coordinate; the mean is dragged away by orders of magnitude.
  std::vector<std::vector<float>> xs = {{1.0f, -1.0f, 0.5f}, {1.1f, -0.9f, 0.4f}, {0.9f, -1.1f, 0.6f},
                                        {1.05f, -1.05f, 0.55f}, {0.95f, -0.95f, 0.45f},
                                        {1e6f, -1e6f, 1e6f}, {1e6f, 1e6f, -1e6f}};
  const std::vector<std::pair<float, float>> honest = {{0.9f, 1.1f}, {-1.1f, -0.9f}, {0.4f, 0.6f}};
  for (AggregationConfig c : {AggregationConfig{.rule = AggregationRule::median},
                              AggregationConfig{.rule = AggregationRule::trimmed_mean, .trim_fraction = 0.3},
                              AggregationConfig{.rule = AggregationRule::centered_clip}}) {
    auto out = run(c, xs);
    for (size_t j = 0; j < 3; ++j) {
      EXPECT_GE(out[j], honest[j].first - 1e-3f) << aggregation_rule_name(c.rule) << " coordinate " << j;
      EXPECT_LE(out[j], honest[j].second + 1e-3f) << aggregation_rule_name(c.rule) << " coordinate " << j;
    }
  }
  auto mean = run({.rule = AggregationRule::mean}, xs);
  EXPECT_GT(std::abs(mean[0]), 1e5f);
}

TEST(Aggregation, NoUpdatesGivesZero) {
  std::vector<float> out(4, 7.0f);
  aggregate({.rule = AggregationRule::median}, {}, out.size(), out.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

TEST(Aggregation, NamesRoundTripAndUnknownNamesAreRefused) {
  for (auto r : {AggregationRule::mean, AggregationRule::trimmed_mean, AggregationRule::median,
                 AggregationRule::centered_clip})
    EXPECT_EQ(parse_aggregation_rule(aggregation_rule_name(r)), r);
  EXPECT_THROW(parse_aggregation_rule("krum"), Error);
  std::vector<float> x = {1}, out(1);
  const float* p = x.data();
  EXPECT_THROW(aggregate({.rule = AggregationRule::trimmed_mean, .trim_fraction = 0.5}, {&p, 1}, 1, out.data()),
               Error);
}

}  // namespace
}  // namespace cohort::coordinator
