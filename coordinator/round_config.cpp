#include "coordinator/round_config.h"

#include <toml++/toml.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/check.h"
#include "exchange/round_card.h"
#include "grpo/grpo_config.h"

namespace cohort::coordinator {
namespace {

// Reads typed keys of one TOML table and refuses keys nobody reads (typos must not pass).
class Section {
 public:
  Section(const toml::table* t, std::string name) : t_(t), name_(std::move(name)) {}

  template <typename T>
  void get(const char* key, T& out) {
    seen_.insert(key);
    if (!t_) return;
    const toml::node* n = t_->get(key);
    if (!n) return;
    if constexpr (std::is_same_v<T, bool>) {
      if (auto v = n->value_exact<bool>()) { out = *v; return; }
    } else if constexpr (std::is_integral_v<T>) {
      if (auto v = n->value_exact<int64_t>()) {
        if (*v < 0 && std::is_unsigned_v<T>) fail(key, "must not be negative");
        out = static_cast<T>(*v);
        return;
      }
    } else if constexpr (std::is_floating_point_v<T>) {
      if (auto v = n->value<double>()) { out = static_cast<T>(*v); return; }
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (auto v = n->value_exact<std::string>()) { out = *v; return; }
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      if (const toml::array* a = n->as_array()) {
        out.clear();
        for (const auto& e : *a) {
          auto s = e.value_exact<std::string>();
          if (!s) fail(key, "must be an array of strings");
          out.push_back(*s);
        }
        return;
      }
    }
    fail(key, "has the wrong type");
  }

  void finish() const {
    if (!t_) return;
    for (const auto& [k, v] : *t_)
      if (!seen_.count(std::string(k.str())))
        throw Error("round config: unknown key [" + name_ + "] " + std::string(k.str()));
  }
  [[noreturn]] void fail(const char* key, const std::string& why) const {
    throw Error("round config: [" + name_ + "] " + key + " " + why);
  }

 private:
  const toml::table* t_;
  std::string name_;
  std::set<std::string> seen_;
};

}  // namespace

RoundConfig RoundConfig::load(const std::string& path, bool check) {
  std::ifstream in(path);
  if (!in) throw Error("cannot read round config " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path, check);
}

RoundConfig RoundConfig::parse(const std::string& text, const std::string& origin, bool check) {
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << e;
    throw Error("round config: " + os.str());
  }
  static const std::set<std::string> kSections = {"round", "network", "admission", "model",
                                                  "task", "grpo", "sampling", "aggregation",
                                                  "verification", "card", "debug"};
  for (const auto& [k, v] : root) {
    if (!kSections.count(std::string(k.str())))
      throw Error("round config: unknown section [" + std::string(k.str()) + "]");
    if (!v.is_table()) throw Error("round config: [" + std::string(k.str()) + "] must be a table");
  }
  RoundConfig c;
  auto& g = c.grpo;
  g.prompts_per_step = 32;
  g.group_size = 8;
  g.lr = 1e-4;
  {
    Section s(root["round"].as_table(), "round");
    s.get("id", c.round_id);
    s.get("steps", c.steps);
    s.get("prompts_per_step", g.prompts_per_step);
    s.get("staleness_bound", c.staleness_bound);
    s.get("lease_timeout_s", c.lease_timeout_s);
    s.get("reconnect_grace_s", c.reconnect_grace_s);
    s.get("backup_factor", c.backup_factor);
    s.get("min_peers", c.min_peers);
    s.get("checkpoint_interval", c.checkpoint_interval);
    s.get("eval_every", c.eval_every);
    s.get("eval_n", c.eval_n);
    s.get("data_dir", c.data_dir);
    s.get("seed", g.seed);
    s.get("linger_s", c.linger_s);
    std::string sync = "full";
    s.get("ledger_sync", sync);
    s.finish();
    if (sync == "full") c.ledger_sync = LedgerSync::full;
    else if (sync == "normal") c.ledger_sync = LedgerSync::normal;
    else s.fail("ledger_sync", "must be \"full\" or \"normal\"");
  }
  {
    Section s(root["network"].as_table(), "network");
    s.get("listen", c.listen);
    s.get("status_listen", c.status_listen);
    s.get("idle_timeout_s", c.idle_timeout_s);
    s.get("key", c.key_file);
    s.get("mirrors", c.mirrors);
    s.get("max_peers", c.max_peers);
    s.get("max_pending_handshakes", c.max_pending_handshakes);
    s.get("max_connections_per_ip", c.max_connections_per_ip);
    s.get("handshakes_per_ip_per_s", c.handshakes_per_ip_per_s);
    s.get("handshake_burst_per_ip", c.handshake_burst_per_ip);
    s.finish();
    if (c.max_peers < 1) s.fail("max_peers", "must be at least 1");
    // The round card lists each file's sources: the coordinator's own base URL and every mirror,
    // at most 16 (exchange/round_card.h).
    if (c.mirrors.size() > 15) s.fail("mirrors", "lists more than 15 mirrors");
    if (c.max_pending_handshakes < 1) s.fail("max_pending_handshakes", "must be at least 1");
    if (c.max_connections_per_ip < 0) s.fail("max_connections_per_ip", "must be >= 0 (0: no bound)");
    if (!(c.handshakes_per_ip_per_s >= 0)) s.fail("handshakes_per_ip_per_s", "must be >= 0 (0: no bound)");
    if (!(c.handshake_burst_per_ip >= 1)) s.fail("handshake_burst_per_ip", "must be at least 1");
  }
  {
    Section s(root["card"].as_table(), "card");
    s.get("addresses", c.card.addresses);
    s.get("url", c.card.url);
    s.get("min_down_mbps", c.card.min_down_mbps);
    s.get("min_up_mbps", c.card.min_up_mbps);
    s.finish();
    for (const auto& a : c.card.addresses)
      if (!exchange::is_host_port(a))
        s.fail("addresses", "must hold HOST:PORT entries, port 1..65535, IPv6 in brackets (got '" + a + "')");
    // Nodes fetch the card's files from this base over plain HTTP (their bytes are checked against
    // the signed digests); a reverse proxy may serve https to browsers beside it.
    if (!c.card.url.empty() && !c.card.url.starts_with("http://"))
      s.fail("url", "must start with http:// (nodes fetch files over plain HTTP and check every byte)");
    if (!(c.card.min_down_mbps >= 0) || !(c.card.min_up_mbps >= 0))
      s.fail("min_down_mbps", "and min_up_mbps must be >= 0");
  }
  {
    Section s(root["admission"].as_table(), "admission");
    std::string mode = "open";
    s.get("mode", mode);
    s.get("allowlist", c.allowlist);
    s.finish();
    if (mode == "open") c.admission = Admission::open;
    else if (mode == "allowlist") c.admission = Admission::allowlist;
    else s.fail("mode", "must be \"open\" or \"allowlist\"");
  }
  {
    Section s(root["model"].as_table(), "model");
    s.get("path", c.model_path);
    s.get("system_prompt", c.system_prompt);
    s.get("policy_dtype", c.policy_dtype);
    s.finish();
    if (c.policy_dtype != "auto" && c.policy_dtype != "fp32" && c.policy_dtype != "bf16")
      s.fail("policy_dtype", "must be \"auto\", \"fp32\" or \"bf16\"");
  }
  {
    Section s(root["task"].as_table(), "task");
    s.get("name", g.task.name);
    s.get("digits", g.task.digits);
    s.get("ops", g.task.ops);
    s.get("numbers", g.task.numbers);
    s.get("max_number", g.task.max_number);
    s.get("format_weight", g.task.format_weight);
    s.get("seed", g.task.seed);
    s.get("held_out_percent", g.task.held_out_percent);
    s.get("dataset", g.task.dataset);
    s.get("eval_dataset", g.task.eval_dataset);
    s.get("reward", g.task.reward);
    s.finish();
  }
  {
    Section s(root["grpo"].as_table(), "grpo");
    std::string loss = "dapo", scale = "group", importance = "token", codec = "fp8";
    double eps_high = -1;
    s.get("group_size", g.group_size);
    s.get("lr", g.lr);
    s.get("weight_decay", g.weight_decay);
    s.get("adam_beta1", g.adam_beta1);
    s.get("adam_beta2", g.adam_beta2);
    s.get("adam_eps", g.adam_eps);
    s.get("max_grad_norm", g.max_grad_norm);
    s.get("loss", loss);
    s.get("scale", scale);
    s.get("importance", importance);
    s.get("epsilon", g.loss.epsilon_low);
    s.get("epsilon_high", eps_high);
    s.get("beta", g.loss.beta);
    s.get("micro_batch", g.micro_batch);
    s.get("gradient_codec", codec);
    s.get("max_update_norm", c.max_update_norm);
    s.get("mask_truncated", g.mask_truncated);
    s.finish();
    g.loss.loss = grpo::parse_loss_type(loss);
    g.scale = grpo::parse_advantage_scale(scale);
    g.loss.importance = grpo::parse_importance_level(importance);
    g.loss.epsilon_high = eps_high >= 0 ? eps_high : g.loss.epsilon_low;
    if (codec == "fp8") c.codec = GradientCodec::fp8;
    else if (codec == "raw") c.codec = GradientCodec::raw;
    else if (codec == "topk") c.codec = GradientCodec::topk;
    else s.fail("gradient_codec", "must be \"fp8\", \"raw\" or \"topk\"");
  }
  {
    Section s(root["sampling"].as_table(), "sampling");
    s.get("temperature", g.sampling.temperature);
    s.get("top_p", g.sampling.top_p);
    s.get("top_k", g.sampling.top_k);
    s.get("max_new_tokens", g.sampling.max_new_tokens);
    s.finish();
    g.loss.max_completion_length = g.sampling.max_new_tokens;
  }
  {
    Section s(root["aggregation"].as_table(), "aggregation");
    std::string rule = "mean";
    s.get("rule", rule);
    s.get("trim_fraction", c.aggregation.trim_fraction);
    s.get("clip_radius", c.aggregation.clip_radius);
    s.get("clip_iterations", c.aggregation.clip_iterations);
    s.finish();
    try {
      c.aggregation.rule = parse_aggregation_rule(rule);
    } catch (const Error& e) {
      s.fail("rule", e.what());
    }
  }
  {
    Section s(root["verification"].as_table(), "verification");
    s.get("recompute_fraction", c.recompute_fraction);
    s.get("recompute_min_cosine", c.recompute_min_cosine);
    s.get("ban_after", c.ban_after);
    s.get("adaptive_trust", c.adaptive_trust);
    s.get("trust_after", c.trust_after);
    s.get("validators", c.validators);
    s.get("validator_check_fraction", c.validator_check_fraction);
    s.get("coordinator_audits_per_step", c.coordinator_audits_per_step);
    s.get("validator_timeout_s", c.validator_timeout_s);
    s.get("validator_distinct_address", c.validator_distinct_address);
    s.get("sketch_size", c.sketch_size);
    s.get("typicality_z_max", c.typicality_z_max);
    s.get("probe_lease_prompts", c.probe_lease_prompts);
    s.finish();
  }
  {
    Section s(root["debug"].as_table(), "debug");
    s.get("dump_gradients", c.dump_gradients);
    s.finish();
  }
  if (check) c.validate();
  return c;
}

void RoundConfig::validate() const {
  auto bad = [](const std::string& m) { throw Error("round config: " + m); };
  if (round_id.empty() || round_id.size() > 64) bad("[round] id must be 1 to 64 characters");
  if (steps < 1) bad("[round] steps must be at least 1");
  if (grpo.prompts_per_step < 1) bad("[round] prompts_per_step must be at least 1");
  if (grpo.group_size < 2) bad("[grpo] group_size must be at least 2 (advantages are relative)");
  if (lease_timeout_s <= 0) bad("[round] lease_timeout_s must be positive");
  if (!(backup_factor == 0 || backup_factor >= 1))
    bad("[round] backup_factor must be 0 (no backup leases) or at least 1");
  if (checkpoint_interval < 1) bad("[round] checkpoint_interval must be at least 1");
  if (min_peers < 1) bad("[round] min_peers must be at least 1");
  if (!(idle_timeout_s >= 1)) bad("[network] idle_timeout_s must be at least 1");
  if (model_path.empty()) bad("[model] path is required (a folder with config.json + model.safetensors)");
  if (grpo.scale == grpo::AdvantageScale::batch)
    bad("[grpo] scale = \"batch\" needs the whole step's rewards on one peer; use \"group\" or \"none\"");
  if (!(grpo.loss.beta >= 0 && grpo.loss.beta <= 10))
    bad("[grpo] beta must be in [0, 10] (0: no KL term, no reference policy)");
  if (admission == Admission::allowlist && allowlist.empty())
    bad("[admission] mode = \"allowlist\" needs at least one key in allowlist");
  if (grpo.sampling.max_new_tokens < 1) bad("[sampling] max_new_tokens must be at least 1");
  // An audit compares the reported gradient with a recomputation of the lease alone. The FP8
  // codec's error feedback carries each node's private quantization residual into its next update:
  // an honest lease whose own gradient is small next to it (zero, when its groups all scored
  // alike) would be refused.
  if ((recompute_fraction > 0 || adaptive_trust || validators) && codec == GradientCodec::fp8)
    bad("[verification] audits need a gradient codec without error feedback: gradient_codec = "
        "\"fp8\" carries each node's private quantization residual into its next update, so an "
        "honest update whose lease gradient is small would be refused; use \"raw\" or \"topk\"");
  if (!(validator_check_fraction >= 0 && validator_check_fraction <= 1))
    bad("[verification] validator_check_fraction must be in [0, 1]");
  if (!(coordinator_audits_per_step >= 0))
    bad("[verification] coordinator_audits_per_step must be >= 0");
  if (!(validator_timeout_s > 0)) bad("[verification] validator_timeout_s must be positive");
  if (sketch_size < 256 || sketch_size > (1u << 19))
    bad("[verification] sketch_size must be in [256, 524288] (a report must fit a 4 MiB message)");
  if (!(validator_timeout_s <= 600))
    bad("[verification] validator_timeout_s must be at most 600 (the update's step waits for it)");
  if (!(typicality_z_max > 0)) bad("[verification] typicality_z_max must be positive");
  if (!(aggregation.trim_fraction >= 0 && aggregation.trim_fraction < 0.5))
    bad("[aggregation] trim_fraction must be in [0, 0.5)");
  if (aggregation.clip_radius < 0) bad("[aggregation] clip_radius must be >= 0 (0: automatic)");
  if (aggregation.clip_iterations < 1) bad("[aggregation] clip_iterations must be at least 1");
  if (!(recompute_fraction >= 0 && recompute_fraction <= 1))
    bad("[verification] recompute_fraction must be in [0, 1]");
  if (!(recompute_min_cosine >= -1 && recompute_min_cosine <= 1))
    bad("[verification] recompute_min_cosine must be in [-1, 1]");
  if (ban_after < 0) bad("[verification] ban_after must be >= 0 (0: never ban)");
  if (trust_after < 1) bad("[verification] trust_after must be at least 1");
  if (grpo.task.dataset.empty() && !grpo.task.eval_dataset.empty())
    bad("[task] eval_dataset needs dataset");
  if (!grpo.task.dataset.empty() && grpo.task.reward != "math")
    bad("[task] reward '" + grpo.task.reward + "' is not supported (supported: math)");
  if (grpo.task.dataset.empty() && grpo.task.reward != "math" && grpo.task.reward != "bench-length")
    bad("[task] reward '" + grpo.task.reward +
        "' is not supported for a built-in task (math, or bench-length for benchmarks only)");
  if (system_prompt.empty()) bad("[model] system_prompt must not be empty (\"r1\", \"default\" or a text)");
}

}  // namespace cohort::coordinator
