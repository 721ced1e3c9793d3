// The round config (coordinator/round_config.h) against its documentation: the example in
// docs/ROUND_CONFIG.md parses and states the code's defaults, and bad input is refused with the
// key's name.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "common/check.h"
#include "coordinator/round_config.h"

namespace cohort::coordinator {
namespace {

// The first ```toml block of docs/ROUND_CONFIG.md.
std::string documented_example() {
  std::ifstream in(std::string(COHORT_SOURCE_DIR) + "/docs/ROUND_CONFIG.md");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  const auto begin = doc.find("```toml\n");
  const auto end = doc.find("```", begin + 8);
  if (begin == std::string::npos || end == std::string::npos) return "";
  return doc.substr(begin + 8, end - begin - 8);
}

std::string refusal(const std::string& toml) {
  try {
    RoundConfig::parse("[model]\npath = \"m\"\n" + toml);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(RoundConfig, DocumentedExampleStatesTheDefaults) {
  const std::string example = documented_example();
  ASSERT_FALSE(example.empty());
  const RoundConfig doc = RoundConfig::parse(example, "docs/ROUND_CONFIG.md");
  const RoundConfig def = RoundConfig::parse("[model]\npath = \"runs/demo/base\"\n");
  // [round] and [network], except the example's own id and data_dir.
  EXPECT_EQ(doc.steps, def.steps);
  EXPECT_EQ(doc.grpo.prompts_per_step, def.grpo.prompts_per_step);
  EXPECT_EQ(doc.staleness_bound, def.staleness_bound);
  EXPECT_EQ(doc.lease_timeout_s, def.lease_timeout_s);
  EXPECT_EQ(doc.reconnect_grace_s, def.reconnect_grace_s);
  EXPECT_EQ(doc.min_peers, def.min_peers);
  EXPECT_EQ(doc.checkpoint_interval, def.checkpoint_interval);
  EXPECT_EQ(doc.eval_every, def.eval_every);
  EXPECT_EQ(doc.eval_n, def.eval_n);
  EXPECT_EQ(doc.linger_s, def.linger_s);
  EXPECT_EQ(doc.ledger_sync, def.ledger_sync);
  EXPECT_EQ(doc.listen, def.listen);
  EXPECT_EQ(doc.status_listen, def.status_listen);
  EXPECT_EQ(doc.max_peers, def.max_peers);
  EXPECT_EQ(doc.max_pending_handshakes, def.max_pending_handshakes);
  EXPECT_EQ(doc.max_connections_per_ip, def.max_connections_per_ip);
  EXPECT_EQ(doc.handshakes_per_ip_per_s, def.handshakes_per_ip_per_s);
  EXPECT_EQ(doc.handshake_burst_per_ip, def.handshake_burst_per_ip);
  EXPECT_EQ(doc.mirrors, def.mirrors);
  EXPECT_EQ(doc.policy_dtype, def.policy_dtype);
  EXPECT_EQ(doc.admission, def.admission);
  EXPECT_EQ(doc.codec, def.codec);
  EXPECT_EQ(doc.max_update_norm, def.max_update_norm);
  // [aggregation] and [verification].
  EXPECT_EQ(doc.aggregation.rule, def.aggregation.rule);
  EXPECT_EQ(doc.aggregation.trim_fraction, def.aggregation.trim_fraction);
  EXPECT_EQ(doc.aggregation.clip_radius, def.aggregation.clip_radius);
  EXPECT_EQ(doc.aggregation.clip_iterations, def.aggregation.clip_iterations);
  EXPECT_EQ(doc.recompute_fraction, def.recompute_fraction);
  EXPECT_EQ(doc.recompute_min_cosine, def.recompute_min_cosine);
  EXPECT_EQ(doc.ban_after, def.ban_after);
  EXPECT_EQ(doc.adaptive_trust, def.adaptive_trust);
  EXPECT_EQ(doc.trust_after, def.trust_after);
  EXPECT_EQ(doc.probe_lease_prompts, def.probe_lease_prompts);
  EXPECT_EQ(doc.validators, def.validators);
  EXPECT_EQ(doc.validator_check_fraction, def.validator_check_fraction);
  EXPECT_EQ(doc.coordinator_audits_per_step, def.coordinator_audits_per_step);
  EXPECT_EQ(doc.validator_timeout_s, def.validator_timeout_s);
  EXPECT_EQ(doc.validator_distinct_address, def.validator_distinct_address);
  EXPECT_EQ(doc.sketch_size, def.sketch_size);
  EXPECT_EQ(doc.typicality_z_max, def.typicality_z_max);
  EXPECT_EQ(doc.dump_gradients, def.dump_gradients);
  // [grpo] and [sampling].
  EXPECT_EQ(doc.grpo.group_size, def.grpo.group_size);
  EXPECT_EQ(doc.grpo.lr, def.grpo.lr);
  EXPECT_EQ(doc.grpo.max_grad_norm, def.grpo.max_grad_norm);
  EXPECT_EQ(doc.grpo.micro_batch, def.grpo.micro_batch);
  EXPECT_EQ(doc.grpo.mask_truncated, def.grpo.mask_truncated);
  EXPECT_EQ(doc.grpo.sampling.temperature, def.grpo.sampling.temperature);
  EXPECT_EQ(doc.grpo.sampling.top_p, def.grpo.sampling.top_p);
  EXPECT_EQ(doc.grpo.sampling.top_k, def.grpo.sampling.top_k);
  EXPECT_EQ(doc.grpo.sampling.max_new_tokens, def.grpo.sampling.max_new_tokens);
}

TEST(RoundConfig, RefusesUnknownKeysAndBadValuesByName) {
  EXPECT_NE(refusal("[round]\nmin_peer = 2\n").find("unknown key [round] min_peer"), std::string::npos);
  EXPECT_NE(refusal("[round]\nmin_peers = 0\n").find("min_peers must be at least 1"), std::string::npos);
  EXPECT_NE(refusal("[round]\nmin_peers = \"3\"\n").find("[round] min_peers has the wrong type"),
            std::string::npos);
  EXPECT_NE(refusal("[round]\nledger_sync = \"sometimes\"\n").find("ledger_sync"), std::string::npos);
  EXPECT_NE(refusal("[rounds]\n").find("unknown section [rounds]"), std::string::npos);
  EXPECT_EQ(refusal("[round]\nmin_peers = 3\n"), "");
  EXPECT_EQ(RoundConfig::parse("[model]\npath = \"m\"\n[round]\nmin_peers = 3\n").min_peers, 3);
  // The KL term: any beta in [0, 10] (nodes then hold the reference policy).
  EXPECT_EQ(refusal("[grpo]\nbeta = 0.04\n"), "");
  EXPECT_NE(refusal("[grpo]\nbeta = -1.0\n").find("beta must be in [0, 10]"), std::string::npos);
  // [card]: what the round card says beyond what the coordinator knows.
  EXPECT_EQ(refusal("[card]\naddresses = [\"203.0.113.7:7070\", \"[2001:db8::7]:7070\"]\nurl = \"http://round.example\"\n"), "");
  EXPECT_NE(refusal("[card]\naddresses = [\"203.0.113.7:70700\"]\n").find("[card] addresses"), std::string::npos);
  EXPECT_NE(refusal("[card]\naddresses = [\"2001:db8::7:7070\"]\n").find("IPv6 in brackets"), std::string::npos);
  EXPECT_NE(refusal("[card]\nurl = \"https://round.example\"\n").find("[card] url must start with http://"), std::string::npos);
  EXPECT_NE(refusal("[card]\naddresses = [\"no-port\"]\n").find("[card] addresses"), std::string::npos);
  EXPECT_NE(refusal("[card]\nurl = \"ftp://x\"\n").find("[card] url"), std::string::npos);
  std::string many = "[network]\nmirrors = [";
  for (int i = 0; i < 16; ++i) many += (i ? ", " : "") + std::string("\"http://m") + std::to_string(i) + "\"";
  EXPECT_NE(refusal(many + "]\n").find("[network] mirrors lists more than 15 mirrors"), std::string::npos);
  // Audits and the FP8 codec's error feedback do not mix; validators' bounds.
  for (const char* audits : {"recompute_fraction = 0.1", "adaptive_trust = true", "validators = true"}) {
    EXPECT_NE(refusal(std::string("[verification]\n") + audits + "\n").find("without error feedback"),
              std::string::npos) << audits;
    EXPECT_EQ(refusal(std::string("[grpo]\ngradient_codec = \"topk\"\n[verification]\n") + audits + "\n"), "")
        << audits;
  }
  EXPECT_NE(refusal("[grpo]\ngradient_codec = \"raw\"\n[verification]\nvalidators = true\nsketch_size = 1048576\n")
                .find("sketch_size must be in [256, 524288]"),
            std::string::npos);
  EXPECT_NE(refusal("[grpo]\ngradient_codec = \"raw\"\n[verification]\nvalidator_timeout_s = 601.0\n")
                .find("validator_timeout_s must be at most 600"),
            std::string::npos);
}

}  // namespace
}  // namespace cohort::coordinator
