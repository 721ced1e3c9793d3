// The round card (exchange/round_card.h): the round's files pinned in the blob store, and the
// signed card that names them, written beside the ledger and served at GET /round.
#include <spdlog/spdlog.h>

#include <filesystem>

#include "common/file.h"
#include "coordinator/coordinator_impl.h"
#include "exchange/blob_store.h"
#include "grpo/safetensors.h"

namespace cohort::coordinator {

namespace fs = std::filesystem;

namespace {

// Bytes a worker device holds for a lease at precision p (a planning figure, docs/PEER.md): the
// model's parameters and their gradients in FP32 (bf16 and fp8 cast inside the linear layers, the
// parameters stay FP32), the flat FP32 gradient sum, the reference policy when beta > 0, and the
// activations autograd keeps for one micro-batch in the compute dtype (per layer and token: about
// 12 hidden-sized and 4 intermediate-sized tensors; the logits, FP32, three times over).
uint64_t memory_estimate(const grpo::ModelConfig& m, const grpo::GrpoConfig& g, uint64_t params,
                         const std::string& precision) {
  const double a = precision == "fp32" ? 4 : 2;  // activation bytes per element
  const double p = static_cast<double>(params);
  const double weights = p * 4 * (g.loss.beta > 0 ? 2 : 1);
  const double grads = p * 4 + p * 4;
  const double rows = g.micro_batch > 0 ? g.micro_batch : g.group_size;
  const double tokens =
      rows * static_cast<double>(std::min<int64_t>(m.max_position_embeddings,
                                                   g.sampling.max_new_tokens + 256));
  const double activations =
      tokens * (static_cast<double>(m.num_hidden_layers) *
                    (12.0 * static_cast<double>(m.hidden_size) + 4.0 * static_cast<double>(m.intermediate_size)) * a +
                3.0 * static_cast<double>(m.vocab_size) * 4);
  return static_cast<uint64_t>(weights + grads + activations);
}

}  // namespace

void Coordinator::Impl::put_round_files() {
  auto add = [this](const std::string& role, const std::string& path) {
    const std::string bytes = read_file(path);
    const protocol::Digest d = policy->put_round_file(bytes);
    round_files.push_back({role, fs::path(path).filename().string(), bytes.size(), exchange::digest_hex(d), {}});
  };
  if (!cfg.grpo.task.dataset.empty()) add("dataset", cfg.grpo.task.dataset);
  for (const char* f : kSharedTokenizerFiles)
    if (const fs::path p = fs::path(cfg.model_path) / f; fs::exists(p)) add("tokenizer", p.string());
}

std::string Coordinator::Impl::make_round_card(const std::string& peer_address,
                                               const std::string& http_base) const {
  exchange::RoundCard c;
  c.round_id = cfg.round_id;
  c.addresses = cfg.card.addresses.empty() ? std::vector<std::string>{peer_address} : cfg.card.addresses;
  c.status_url = http_base + "/status";
  c.model_name = fs::path(cfg.model_path).filename().string();
  if (c.model_name.empty()) c.model_name = fs::path(cfg.model_path).parent_path().filename().string();
  c.parameters = policy_params;
  c.policy_dtype = std::string(exchange::dtype_name(policy->dtype()));
  c.config_blake2b = exchange::digest_hex(protocol::blake2b_256(protocol::as_bytes(settings.model_config_json())));
  c.task = cfg.grpo.task.dataset.empty() ? cfg.grpo.task.name : "dataset:" + cfg.grpo.task.reward;
  c.gradient_codec = cfg.codec == GradientCodec::fp8 ? "fp8" : cfg.codec == GradientCodec::topk ? "topk" : "raw";
  c.kl_beta = cfg.grpo.loss.beta;
  for (exchange::CardFile f : round_files) {
    f.sources = {http_base};
    f.sources.insert(f.sources.end(), cfg.mirrors.begin(), cfg.mirrors.end());
    c.files.push_back(std::move(f));
  }
  for (const char* p : {"fp32", "bf16", "fp8"})
    c.memory_bytes[p] = memory_estimate(policy->model_config(), cfg.grpo, policy_params, p);
  c.snapshot_bytes = published.back()->content.snapshot_bytes;
  c.min_down_mbps = cfg.card.min_down_mbps;
  c.min_up_mbps = cfg.card.min_up_mbps;
  c.mirrors = cfg.mirrors;
  c.issued_ms = unix_ms();
  return exchange::sign_round_card(std::move(c), identity);
}

void Coordinator::Impl::publish_round_card(const std::string& host, uint16_t port,
                                           uint16_t status_port) {
  const bool wildcard = host == "0.0.0.0" || host == "::" || host == "[::]";
  if (wildcard && cfg.card.addresses.empty())
    spdlog::warn("coordinator: listening on {} but [card] addresses is not set: the round card "
                 "names 127.0.0.1:{}, which only this machine can reach",
                 host, port);
  const std::string peer_address = (wildcard ? "127.0.0.1" : host) + ":" + std::to_string(port);
  std::string base = cfg.card.url;
  if (base.empty()) {
    const auto colon = cfg.status_listen.rfind(':');
    std::string status_host = cfg.status_listen.substr(0, colon);
    if (status_host == "0.0.0.0" || status_host == "::" || status_host == "[::]") status_host = "127.0.0.1";
    base = "http://" + status_host + ":" + std::to_string(status_port);
  }
  while (!base.empty() && base.back() == '/') base.pop_back();
  std::string text = make_round_card(peer_address, base);
  try {
    (void)exchange::read_round_card(text);  // what every node will check, checked here first
  } catch (const exchange::CardError& e) {
    throw Error(std::string("the round card this configuration makes would be refused by nodes: ") +
                e.what() + " (see [card] and [network] mirrors in docs/ROUND_CONFIG.md)");
  }
  write_file_atomic((fs::path(cfg.data_dir) / "round-card.json").string(), text);
  {
    std::lock_guard lock(card_mutex);
    round_card = std::move(text);
  }
  spdlog::info("coordinator: round card {}/round (and {}/round-card.json); join with `cohort node "
               "join {}/round --coordinator-key {}`",
               base, cfg.data_dir, base, identity.id().hex());
}

}  // namespace cohort::coordinator
