// The Prometheus exposition of a status document: families, values, and label escaping of the
// names peers choose for themselves (untrusted text).
#include "coordinator/metrics.h"

#include <gtest/gtest.h>

#include "common/check.h"

namespace cohort::coordinator {
namespace {

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0;
}

TEST(Metrics, StatusBecomesPrometheusText) {
  const std::string status = R"({
    "version": 7, "steps_total": 20, "finished": false, "uptime_s": 12.5, "active_leases": 3,
    "connected": 2, "banned": 1, "audits": 4, "leases_started": true,
    "validation": {"validators": true, "by_validators": 9, "spot_checks": 1, "disagreements": 2,
                   "fallbacks": 0, "waiting": 1, "out": 3, "coordinator_audit_s": 0.5},
    "steps": [{"step": 6, "reward_mean": 0.1}, {"step": 7, "reward_mean": 0.25, "accuracy": 0.5,
               "loss": -0.01, "grad_norm": 1.5, "updates": 3, "aggregate_s": 0.02,
               "optimizer_s": 0.003, "publish_s": 0.01}],
    "evals": [{"step": 5, "accuracy": 0.4}],
    "refusals": {"bad_reward": 2, "connection:not_admitted": 1},
    "peers": {"0123456789abcdef0123": {"name": "evil\"\nname\\", "accepted": 5, "refused": 2,
                                       "throughput_groups_per_s": 3.25, "validations": 6}}
  })";
  const std::string t = prometheus_text(status);
  EXPECT_TRUE(has_line(t, "# TYPE cohort_policy_version gauge")) << t;
  EXPECT_TRUE(has_line(t, "cohort_policy_version 7")) << t;
  EXPECT_TRUE(has_line(t, "cohort_round_finished 0")) << t;
  EXPECT_TRUE(has_line(t, "cohort_peers_connected 2")) << t;
  EXPECT_TRUE(has_line(t, "cohort_leases_started 1")) << t;
  EXPECT_TRUE(has_line(t, "cohort_banned_peers 1")) << t;
  EXPECT_TRUE(has_line(t, "cohort_validator_audits_total{decided_by=\"validator\"} 9")) << t;
  EXPECT_TRUE(has_line(t, "cohort_validator_audits_total{decided_by=\"disagreement\"} 2")) << t;
  EXPECT_TRUE(has_line(t, "cohort_audits_waiting{state=\"out\"} 3")) << t;
  EXPECT_TRUE(has_line(t, "cohort_coordinator_audit_seconds_total 0.5")) << t;
  EXPECT_TRUE(has_line(t, "cohort_peer_validations_total{peer=\"0123456789abcdef\",name=\"evil\\\"\\nname\\\\\"} 6")) << t;
  EXPECT_TRUE(has_line(t, "cohort_step_reward_mean 0.25")) << t;  // the last step, not the first
  EXPECT_TRUE(has_line(t, "cohort_step_seconds{phase=\"publish\"} 0.01")) << t;
  EXPECT_TRUE(has_line(t, "cohort_heldout_accuracy 0.4")) << t;
  EXPECT_TRUE(has_line(t, "cohort_refusals_total{kind=\"update\",reason=\"bad_reward\"} 2")) << t;
  EXPECT_TRUE(has_line(t, "cohort_refusals_total{kind=\"connection\",reason=\"not_admitted\"} 1")) << t;
  // Quote, newline and backslash escaped; the peer id shortened to 16 hex digits.
  EXPECT_TRUE(has_line(t, "cohort_peer_updates_total{peer=\"0123456789abcdef\",name=\"evil\\\"\\nname\\\\\","
                          "result=\"accepted\"} 5"))
      << t;
  EXPECT_TRUE(has_line(t, "cohort_peer_throughput_groups_per_second{peer=\"0123456789abcdef\",name=\"evil\\\"\\nname\\\\\"} 3.25"))
      << t;
  // Every sample line is one line: no raw newline from a peer's name splits it.
  for (size_t pos = 0; (pos = t.find("cohort_peer_updates_total{", pos)) != std::string::npos; ++pos)
    EXPECT_NE(t.substr(pos, t.find('\n', pos) - pos).find("} "), std::string::npos);
}

TEST(Metrics, EmptyRoundHasNoStepFamilies) {
  const std::string t = prometheus_text(R"({"version": 0})");
  EXPECT_TRUE(has_line(t, "cohort_policy_version 0")) << t;
  EXPECT_EQ(t.find("cohort_step_loss"), std::string::npos) << t;
}

TEST(Metrics, NotJsonIsAnError) { EXPECT_THROW(prometheus_text("{nope"), Error); }

}  // namespace
}  // namespace cohort::coordinator
