#include "exchange/round_settings.h"

#include <cmath>

#include "protocol/bytes.h"
#include "protocol/digest.h"

namespace cohort::exchange {
namespace {

std::string hex_of(const std::string& raw) {
  return protocol::to_hex(
      protocol::ByteView(reinterpret_cast<const uint8_t*>(raw.data()), raw.size()));
}

std::string raw_of_hex(const std::string& hex) {
  const std::optional<protocol::Bytes> b = protocol::from_hex(hex);
  COHORT_CHECK(b && b->size() == protocol::kDigestLen,
               "a shared file's digest must be 64 hex digits");
  return std::string(b->begin(), b->end());
}

void put_file(const SharedFile& f, wire::SharedFile& out) {
  out.set_name(f.name);
  out.set_blake2b(raw_of_hex(f.blake2b));
}

// A file name only: no folder, no "..", printable, so a node never reads or prints anything
// the coordinator did not mean.
SharedFile read_file(const wire::SharedFile& f, const std::string& field) {
  const std::string& n = f.name();
  if (n.empty() || n.size() > 255 || n == "." || n == ".." || n.find('/') != std::string::npos)
    throw SettingsError(field + ".name", "must be a plain file name");
  for (char c : n)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      throw SettingsError(field + ".name", "holds a control character");
  if (f.blake2b().size() != protocol::kDigestLen)
    throw SettingsError(field + ".blake2b", "must be 32 bytes");
  return {n, hex_of(f.blake2b())};
}

template <typename T>
T in_range(T v, T lo, T hi, const char* field) {
  if (!(v >= lo && v <= hi))
    throw SettingsError(field, "is " + std::to_string(v) + ", outside " + std::to_string(lo) +
                                   ".." + std::to_string(hi));
  return v;
}

double finite(double v, const char* field) {
  if (!std::isfinite(v)) throw SettingsError(field, "is not a finite number");
  return v;
}

}  // namespace

wire::RoundSettings make_round_settings(const RoundSpec& r) {
  const grpo::GrpoConfig& g = r.grpo;
  wire::RoundSettings s;
  s.set_round_id(r.round_id);
  s.set_model(r.model_name);
  s.set_task(r.dataset ? "jsonl:" + r.dataset->name : g.task.name);
  s.set_group_size(static_cast<uint32_t>(g.group_size));
  s.set_max_new_tokens(static_cast<uint32_t>(g.sampling.max_new_tokens));
  s.set_temperature(g.sampling.temperature);
  s.set_top_p(g.sampling.top_p);
  s.set_top_k(static_cast<uint32_t>(g.sampling.top_k));
  s.set_loss_aggregation(grpo::loss_type_name(g.loss.loss));
  s.set_clip_eps_low(g.loss.epsilon_low);
  s.set_clip_eps_high(g.loss.epsilon_high);
  s.set_kl_beta(g.loss.beta);
  s.set_staleness_bound(r.staleness_bound);
  s.set_gradient_codec(r.codec);
  s.set_policy_dtype(r.policy_dtype);
  auto* t = s.mutable_task_settings();
  t->set_name(r.dataset ? "jsonl" : g.task.name);
  t->set_digits(static_cast<uint32_t>(g.task.digits));
  t->set_ops(g.task.ops);
  t->set_numbers(static_cast<uint32_t>(g.task.numbers));
  t->set_max_number(static_cast<uint32_t>(g.task.max_number));
  t->set_format_weight(g.task.format_weight);
  t->set_seed(g.task.seed);
  t->set_held_out_percent(static_cast<uint32_t>(g.task.held_out_percent));
  if (r.dataset) {
    put_file(*r.dataset, *t->mutable_dataset());
    // Peers index the same shuffled training split: it depends on the file, the task seed and
    // whether a held-out share is cut from it (no eval file) or not.
    t->set_dataset_split(g.task.eval_dataset.empty() ? wire::DATASET_SPLIT_HELD_OUT
                                                     : wire::DATASET_SPLIT_WHOLE);
    t->set_reward(g.task.reward);
  } else if (g.task.reward == "bench-length") {
    t->set_reward(g.task.reward);
  }
  s.set_model_config_json(r.model_config_json);
  COHORT_CHECK(g.scale != grpo::AdvantageScale::batch,
               "batch-scaled advantages cannot be split across peers");
  s.set_advantage_scale(g.scale == grpo::AdvantageScale::none ? wire::ADVANTAGE_SCALE_NONE
                                                              : wire::ADVANTAGE_SCALE_GROUP);
  s.set_importance(g.loss.importance == grpo::ImportanceLevel::sequence
                       ? wire::IMPORTANCE_LEVEL_SEQUENCE
                       : wire::IMPORTANCE_LEVEL_TOKEN);
  s.set_micro_batch(static_cast<uint32_t>(g.micro_batch));
  s.set_mask_truncated(g.mask_truncated);
  for (const auto& f : r.tokenizer_files) put_file(f, *s.add_tokenizer_files());
  if (!r.tokenizer_files.empty()) s.set_system_prompt(r.system_prompt);
  return s;
}

RoundSpec read_round_settings(const wire::RoundSettings& s) {
  RoundSpec r;
  r.round_id = s.round_id();
  if (r.round_id.empty() || r.round_id.size() > 256)
    throw SettingsError("round_id", "must be 1..256 bytes");
  r.model_name = s.model();
  grpo::GrpoConfig& g = r.grpo;
  g.group_size = static_cast<int>(in_range<uint32_t>(s.group_size(), 2, 1024, "group_size"));
  g.sampling.max_new_tokens =
      static_cast<int>(in_range<uint32_t>(s.max_new_tokens(), 1, 65536, "max_new_tokens"));
  g.sampling.temperature = finite(s.temperature(), "temperature");
  if (!(g.sampling.temperature > 0)) throw SettingsError("temperature", "must be above 0");
  g.sampling.top_p = finite(s.top_p(), "top_p");
  if (!(g.sampling.top_p > 0 && g.sampling.top_p <= 1))
    throw SettingsError("top_p", "must be in (0, 1]");
  g.sampling.top_k = static_cast<int>(in_range<uint32_t>(s.top_k(), 0, 1u << 24, "top_k"));
  try {
    g.loss.loss = grpo::parse_loss_type(s.loss_aggregation());
  } catch (const Error& e) {
    throw SettingsError("loss_aggregation", std::string("is invalid: ") + e.what());
  }
  g.loss.epsilon_low = finite(s.clip_eps_low(), "clip_eps_low");
  if (!(g.loss.epsilon_low >= 0 && g.loss.epsilon_low < 1))
    throw SettingsError("clip_eps_low", "must be in [0, 1)");
  g.loss.epsilon_high = finite(s.clip_eps_high(), "clip_eps_high");
  if (!(g.loss.epsilon_high >= 0)) throw SettingsError("clip_eps_high", "must not be negative");
  g.loss.beta = finite(s.kl_beta(), "kl_beta");
  if (!(g.loss.beta >= 0 && g.loss.beta <= 10)) throw SettingsError("kl_beta", "must be in [0, 10]");
  g.loss.max_completion_length = g.sampling.max_new_tokens;
  r.staleness_bound = s.staleness_bound();
  if (s.gradient_codec() != wire::CODEC_RAW && s.gradient_codec() != wire::CODEC_FP8_E4M3_BLOCK &&
      s.gradient_codec() != wire::CODEC_TOPK_Q4)
    throw SettingsError("gradient_codec", "is " + std::to_string(s.gradient_codec()) +
                                              ", a codec this node does not have");
  r.codec = s.gradient_codec();
  if (s.policy_dtype() != wire::DTYPE_UNSPECIFIED && s.policy_dtype() != wire::DTYPE_F32 &&
      s.policy_dtype() != wire::DTYPE_BF16)
    throw SettingsError("policy_dtype", "is " + std::to_string(s.policy_dtype()) +
                                            ", not F32 or BF16");
  r.policy_dtype = s.policy_dtype() == wire::DTYPE_BF16 ? wire::DTYPE_BF16 : wire::DTYPE_F32;

  if (!s.has_task_settings()) throw SettingsError("task_settings", "is missing");
  const wire::TaskSettings& t = s.task_settings();
  grpo::TaskSpec& task = g.task;
  task.name = t.name();
  task.format_weight = finite(t.format_weight(), "task_settings.format_weight");
  if (task.format_weight < 0)
    throw SettingsError("task_settings.format_weight", "must not be negative");
  task.seed = t.seed();
  task.held_out_percent = static_cast<int>(
      in_range<uint32_t>(t.held_out_percent(), 1, 50, "task_settings.held_out_percent"));
  if (t.name() != "jsonl") {
    if (!t.reward().empty() && t.reward() != "bench-length")
      throw SettingsError("task_settings.reward", "is '" + t.reward().substr(0, 32) +
                                                      "', expected empty or bench-length");
    if (!t.reward().empty()) task.reward = t.reward();
  }
  if (t.name() == "arith") {
    task.digits = static_cast<int>(in_range<uint32_t>(t.digits(), 1, 9, "task_settings.digits"));
    task.ops = t.ops();
    if (task.ops.empty() || task.ops.size() > 3 ||
        task.ops.find_first_not_of("+-*") != std::string::npos)
      throw SettingsError("task_settings.ops", "must be a non-empty subset of \"+-*\"");
  } else if (t.name() == "countdown") {
    task.numbers = static_cast<int>(in_range<uint32_t>(t.numbers(), 2, 6, "task_settings.numbers"));
    task.max_number =
        static_cast<int>(in_range<uint32_t>(t.max_number(), 2, 999, "task_settings.max_number"));
  } else if (t.name() == "jsonl") {
    if (!t.has_dataset())
      throw SettingsError("task_settings.dataset", "is missing for a jsonl task");
    r.dataset = read_file(t.dataset(), "task_settings.dataset");
    if (t.reward() != "math")
      throw SettingsError("task_settings.reward",
                          "is '" + t.reward().substr(0, 32) + "', expected math");
    task.reward = t.reward();
    if (t.dataset_split() == wire::DATASET_SPLIT_WHOLE) {
      // The coordinator evaluates on a separate file the node never reads.
      task.eval_dataset = "(coordinator's)";
      task.load_eval = false;
    } else if (t.dataset_split() != wire::DATASET_SPLIT_HELD_OUT) {
      throw SettingsError("task_settings.dataset_split", "must be HELD_OUT or WHOLE");
    }
  } else {
    throw SettingsError("task_settings.name",
                        "is '" + t.name().substr(0, 32) + "', expected arith, countdown or jsonl");
  }

  r.model_config_json = s.model_config_json();
  if (r.model_config_json.empty()) throw SettingsError("model_config_json", "is missing");
  try {
    r.model = grpo::ModelConfig::from_json(r.model_config_json);
    r.model.validate();
  } catch (const std::exception& e) {
    throw SettingsError("model_config_json",
                        std::string("is not a valid model config: ") + e.what());
  }
  switch (s.advantage_scale()) {
    case wire::ADVANTAGE_SCALE_GROUP:
      g.scale = grpo::AdvantageScale::group;
      break;
    case wire::ADVANTAGE_SCALE_NONE:
      g.scale = grpo::AdvantageScale::none;
      break;
    default:
      throw SettingsError("advantage_scale", "must be GROUP or NONE");
  }
  switch (s.importance()) {
    case wire::IMPORTANCE_LEVEL_TOKEN:
      g.loss.importance = grpo::ImportanceLevel::token;
      break;
    case wire::IMPORTANCE_LEVEL_SEQUENCE:
      g.loss.importance = grpo::ImportanceLevel::sequence;
      break;
    default:
      throw SettingsError("importance", "must be TOKEN or SEQUENCE");
  }
  g.micro_batch = static_cast<int>(in_range<uint32_t>(s.micro_batch(), 0, 1u << 20, "micro_batch"));
  g.mask_truncated = s.mask_truncated();
  for (int i = 0; i < s.tokenizer_files_size(); ++i)
    r.tokenizer_files.push_back(
        read_file(s.tokenizer_files(i), "tokenizer_files[" + std::to_string(i) + "]"));
  if (!r.tokenizer_files.empty()) {
    bool has_json = false;
    for (const auto& f : r.tokenizer_files) has_json |= f.name == "tokenizer.json";
    if (!has_json) throw SettingsError("tokenizer_files", "must name tokenizer.json");
    r.system_prompt = s.system_prompt();
    if (r.system_prompt.size() > 65536)
      throw SettingsError("system_prompt", "is longer than 64 KiB");
  }
  return r;
}

}  // namespace cohort::exchange
