// The round settings both roles agree on (exchange/round_settings.h): what the coordinator writes
// the node reads back field for field, and every malformed value is refused naming its field.
#include "exchange/round_settings.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

namespace cohort::exchange {
namespace {

RoundSpec sample_spec() {
  RoundSpec r;
  r.round_id = "r-1";
  r.model_name = "runs/demo/base";
  r.grpo.group_size = 6;
  r.grpo.sampling.max_new_tokens = 24;
  r.grpo.sampling.temperature = 0.9;
  r.grpo.sampling.top_p = 0.95;
  r.grpo.sampling.top_k = 7;
  r.grpo.loss.loss = grpo::LossType::dr_grpo;
  r.grpo.loss.epsilon_low = 0.1;
  r.grpo.loss.epsilon_high = 0.28;
  r.grpo.loss.importance = grpo::ImportanceLevel::sequence;
  r.grpo.scale = grpo::AdvantageScale::none;
  r.grpo.micro_batch = 4;
  r.grpo.mask_truncated = true;
  r.grpo.task.name = "countdown";
  r.grpo.task.numbers = 4;
  r.grpo.task.max_number = 50;
  r.grpo.task.format_weight = 0.2;
  r.grpo.task.seed = 99;
  r.grpo.task.held_out_percent = 5;
  r.model_config_json = grpo::ModelConfig{}.to_json();
  r.staleness_bound = 2;
  r.codec = wire::CODEC_RAW;
  return r;
}

TEST(RoundSettings, WhatTheCoordinatorWritesTheNodeReadsBack) {
  const RoundSpec in = sample_spec();
  const RoundSpec out = read_round_settings(make_round_settings(in));
  EXPECT_EQ(out.round_id, in.round_id);
  EXPECT_EQ(out.grpo.group_size, 6);
  EXPECT_EQ(out.grpo.sampling.max_new_tokens, 24);
  EXPECT_DOUBLE_EQ(out.grpo.sampling.temperature, 0.9);
  EXPECT_DOUBLE_EQ(out.grpo.sampling.top_p, 0.95);
  EXPECT_EQ(out.grpo.sampling.top_k, 7);
  EXPECT_EQ(out.grpo.loss.loss, grpo::LossType::dr_grpo);
  EXPECT_DOUBLE_EQ(out.grpo.loss.epsilon_low, 0.1);
  EXPECT_DOUBLE_EQ(out.grpo.loss.epsilon_high, 0.28);
  EXPECT_EQ(out.grpo.loss.importance, grpo::ImportanceLevel::sequence);
  EXPECT_EQ(out.grpo.loss.max_completion_length, 24);
  EXPECT_EQ(out.grpo.scale, grpo::AdvantageScale::none);
  EXPECT_EQ(out.grpo.micro_batch, 4);
  EXPECT_TRUE(out.grpo.mask_truncated);
  EXPECT_EQ(out.grpo.task.name, "countdown");
  EXPECT_EQ(out.grpo.task.numbers, 4);
  EXPECT_EQ(out.grpo.task.max_number, 50);
  EXPECT_DOUBLE_EQ(out.grpo.task.format_weight, 0.2);
  EXPECT_EQ(out.grpo.task.seed, 99u);
  EXPECT_EQ(out.grpo.task.held_out_percent, 5);
  EXPECT_EQ(out.model.hidden_size, grpo::ModelConfig{}.hidden_size);
  EXPECT_EQ(out.staleness_bound, 2u);
  EXPECT_EQ(out.codec, wire::CODEC_RAW);
  EXPECT_FALSE(out.dataset);
  EXPECT_TRUE(out.tokenizer_files.empty());
}

TEST(RoundSettings, DatasetAndTokenizerFilesTravelByNameAndDigest) {
  RoundSpec in = sample_spec();
  const std::string hex(64, 'a');
  in.dataset = SharedFile{"gsm8k.jsonl", hex};
  in.tokenizer_files = {{"tokenizer.json", std::string(64, 'b')},
                        {"tokenizer_config.json", std::string(64, 'c')}};
  in.system_prompt = "r1";
  const RoundSpec out = read_round_settings(make_round_settings(in));
  ASSERT_TRUE(out.dataset);
  EXPECT_EQ(out.dataset->name, "gsm8k.jsonl");
  EXPECT_EQ(out.dataset->blake2b, hex);
  EXPECT_EQ(out.grpo.task.reward, "math");
  ASSERT_EQ(out.tokenizer_files.size(), 2u);
  EXPECT_EQ(out.tokenizer_files[1].blake2b, std::string(64, 'c'));
  EXPECT_EQ(out.system_prompt, "r1");
}

// Each case spoils one field; the refusal must name it.
TEST(RoundSettings, EveryMalformedValueIsRefusedNamingItsField) {
  const std::vector<std::pair<std::string, std::function<void(wire::RoundSettings&)>>> cases = {
      {"round_id", [](auto& s) { s.clear_round_id(); }},
      {"group_size", [](auto& s) { s.set_group_size(1); }},
      {"max_new_tokens", [](auto& s) { s.set_max_new_tokens(0); }},
      {"temperature", [](auto& s) { s.set_temperature(std::numeric_limits<double>::quiet_NaN()); }},
      {"temperature", [](auto& s) { s.set_temperature(0); }},
      {"top_p", [](auto& s) { s.set_top_p(1.5); }},
      {"loss_aggregation", [](auto& s) { s.set_loss_aggregation("ppo"); }},
      {"clip_eps_low", [](auto& s) { s.set_clip_eps_low(-0.1); }},
      {"clip_eps_high",
       [](auto& s) { s.set_clip_eps_high(std::numeric_limits<double>::infinity()); }},
      {"kl_beta", [](auto& s) { s.set_kl_beta(-0.04); }},
      {"kl_beta", [](auto& s) { s.set_kl_beta(std::numeric_limits<double>::quiet_NaN()); }},
      {"gradient_codec", [](auto& s) { s.set_gradient_codec(static_cast<wire::Codec>(77)); }},
      {"task_settings", [](auto& s) { s.clear_task_settings(); }},
      {"task_settings.name", [](auto& s) { s.mutable_task_settings()->set_name("chess"); }},
      {"task_settings.numbers", [](auto& s) { s.mutable_task_settings()->set_numbers(9); }},
      {"task_settings.max_number", [](auto& s) { s.mutable_task_settings()->set_max_number(1); }},
      {"task_settings.held_out_percent",
       [](auto& s) { s.mutable_task_settings()->set_held_out_percent(0); }},
      {"task_settings.format_weight",
       [](auto& s) { s.mutable_task_settings()->set_format_weight(-1); }},
      {"task_settings.reward", [](auto& s) { s.mutable_task_settings()->set_reward("free"); }},
      {"model_config_json", [](auto& s) { s.set_model_config_json("{not json"); }},
      {"model_config_json", [](auto& s) { s.clear_model_config_json(); }},
      {"advantage_scale",
       [](auto& s) { s.set_advantage_scale(wire::ADVANTAGE_SCALE_UNSPECIFIED); }},
      {"importance", [](auto& s) { s.set_importance(static_cast<wire::ImportanceLevel>(9)); }},
      {"tokenizer_files[0].name",
       [](auto& s) { s.add_tokenizer_files()->set_name("../../etc/passwd"); }},
      {"tokenizer_files[0].blake2b",
       [](auto& s) {
         auto* f = s.add_tokenizer_files();
         f->set_name("tokenizer.json");
         f->set_blake2b("short");
       }},
  };
  const wire::RoundSettings good = make_round_settings(sample_spec());
  for (const auto& [field, spoil] : cases) {
    wire::RoundSettings s = good;
    spoil(s);
    try {
      (void)read_round_settings(s);
      ADD_FAILURE() << field << ": accepted";
    } catch (const SettingsError& e) {
      EXPECT_EQ(e.field(), field);
      EXPECT_NE(std::string(e.what()).find("'" + field + "'"), std::string::npos) << e.what();
      EXPECT_EQ(e.exit_code(), 1);
    }
  }
}

TEST(RoundSettings, ArithRangesAreTheTasksOwn) {
  RoundSpec in = sample_spec();
  in.grpo.task.name = "arith";
  in.grpo.task.digits = 3;
  in.grpo.task.ops = "+*";
  wire::RoundSettings s = make_round_settings(in);
  EXPECT_EQ(read_round_settings(s).grpo.task.ops, "+*");
  s.mutable_task_settings()->set_digits(10);
  EXPECT_THROW((void)read_round_settings(s), SettingsError);
  s.mutable_task_settings()->set_digits(3);
  s.mutable_task_settings()->set_ops("+/");
  EXPECT_THROW((void)read_round_settings(s), SettingsError);
}

// The benchmark-only reward travels with a built-in task, so that node and coordinator score
// alike; the task's own verifier (no reward field) stays the default.
TEST(RoundSettings, BenchmarkRewardTravelsWithABuiltInTask) {
  RoundSpec in = sample_spec();
  in.grpo.task.name = "arith";
  EXPECT_EQ(read_round_settings(make_round_settings(in)).grpo.task.reward, "math");
  in.grpo.task.reward = "bench-length";
  EXPECT_EQ(read_round_settings(make_round_settings(in)).grpo.task.reward, "bench-length");
}

}  // namespace
}  // namespace cohort::exchange
