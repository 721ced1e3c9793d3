#include "coordinator/policy.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>

#include "common/check.h"
#include "common/file.h"
#include "common/clock.h"
#include "coordinator/aggregation.h"
#include "exchange/gradient_wire.h"
#include "exchange/lease_audit.h"
#include "exchange/sketch.h"
#include "exchange/manifest.h"
#include "exchange/seeds.h"
#include "exchange/weights.h"
#include "grpo/checkpoint.h"
#include "grpo/safetensors.h"
#include "grpo/trainer.h"
#include "protocol/signed_update.h"

namespace cohort::coordinator {

namespace fs = std::filesystem;

namespace {

void fsync_path(const fs::path& p, bool dir) {
  int fd = ::open(p.c_str(), dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Test only: COHORT_TEST_STEP_DELAY_MS makes every applied step last that much longer, so that
// tests can show the network thread stays responsive while the compute executor is busy.
int64_t test_step_delay_ms() {
  const char* v = std::getenv("COHORT_TEST_STEP_DELAY_MS");
  return v ? std::atoll(v) : 0;
}

}  // namespace

struct Policy::Optimizer {
  torch::optim::AdamW adamw;
};

// A step's accumulated updates: the running sum for `mean`, each update's own mean for the
// robust rules.
struct Policy::StepSums {
  std::vector<float> grad;
  std::vector<std::vector<float>> update_means;
  double units = 0, tokens = 0, loss = 0, kl_sum = 0, reward_sum = 0, accuracy_sum = 0;
  int64_t rows = 0, updates = 0;
  double aggregate_s = 0;
};

Policy::Policy(const RoundConfig& cfg, const protocol::Identity& identity, const grpo::Task& task,
               const grpo::Tokenizer& tokenizer)
    : cfg_(cfg), identity_(identity), task_(task), tok_(tokenizer) {
  model_ = grpo::load_model(cfg.model_path);
  layout_ = exchange::ParamLayout(*model_);
  torch::optim::AdamWOptions o(cfg.grpo.lr);
  o.betas({cfg.grpo.adam_beta1, cfg.grpo.adam_beta2})
      .eps(cfg.grpo.adam_eps)
      .weight_decay(cfg.grpo.weight_decay);
  opt_ = std::make_unique<Optimizer>(Optimizer{torch::optim::AdamW(model_->parameters(), o)});
  dtype_ = cfg.policy_dtype == "auto"
               ? (fs::exists(fs::path(cfg.model_path) / "tokenizer.json") ? wire::DTYPE_BF16
                                                                         : wire::DTYPE_F32)
               : exchange::parse_policy_dtype(cfg.policy_dtype);
  std::vector<exchange::TensorInfo> tensors;
  for (const auto& s : layout_.slots) tensors.push_back({s.name, s.shape, s.numel});
  publisher_ = std::make_unique<exchange::Publisher>(
      std::make_shared<exchange::BlobStore>(fs::path(cfg.data_dir) / "blobs"), dtype_,
      std::move(tensors), cfg.mirrors, std::max<size_t>(2, cfg.staleness_bound + 2));
  if (cfg.grpo.loss.beta > 0) {
    // The initial weights (model_path, also after a resume from a checkpoint), rounded to the
    // policy dtype exactly as nodes receive them, so that audits see the nodes' reference.
    reference_ = grpo::load_model(cfg.model_path);
    const auto& offsets = publisher_->offsets();
    std::string bytes(offsets.back(), '\0');
    at::NoGradGuard no_grad;
    auto params = reference_->parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      const auto n = static_cast<size_t>(params[i].numel());
      const std::span<float> values(params[i].data_ptr<float>(), n);
      exchange::to_published(dtype_, values, bytes.data() + offsets[i]);
      exchange::from_published(dtype_, std::string_view(bytes).substr(offsets[i], offsets[i + 1] - offsets[i]),
                               values);
    }
    exchange::PublishedVersion v = publisher_->publish_reference(cfg.round_id, unix_ms(), bytes);
    auto p = std::make_shared<Published>();
    p->version = 0;
    p->manifest = protocol::sign_manifest(v.manifest, identity_);
    p->content = std::move(static_cast<exchange::VersionBlobs&>(v));
    reference_published_ = std::move(p);
    spdlog::info("coordinator: KL term beta {}: reference policy published ({} B in {} shards)",
                 cfg.grpo.loss.beta, reference_published_->content.snapshot_bytes,
                 reference_published_->content.shards.size());
  }
}

Policy::~Policy() = default;

const grpo::ModelConfig& Policy::model_config() const { return model_->config(); }

void Policy::resume(const std::string& dir, uint64_t version) {
  grpo::load_weights(*model_, (fs::path(dir) / "model.safetensors").string());
  torch::load(opt_->adamw, (fs::path(dir) / "optimizer.pt").string());
  version_ = version;
}

std::optional<exchange::Refusal> Policy::decode(const wire::GradientUpdate& u,
                                                std::vector<float>& out) const {
  out.assign(layout_.total, 0.0f);
  return exchange::decode_gradient(u, layout_, out);
}

bool Policy::folds_sparse() const {
  return cfg_.codec == GradientCodec::topk && cfg_.aggregation.rule == AggregationRule::mean;
}

std::optional<exchange::Refusal> Policy::decode_sparse(const wire::GradientUpdate& u,
                                                       exchange::SparseGradient& out) const {
  return exchange::decode_gradient_sparse(u, layout_, out);
}

void Policy::absorb(int64_t step, const Contribution& c, const exchange::SparseGradient& g) {
  COHORT_CHECK(cfg_.aggregation.rule == AggregationRule::mean);
  const double t0 = mono_s();
  auto& slot = steps_[step];
  if (!slot) slot = std::make_unique<StepSums>();
  StepSums& st = *slot;
  if (st.grad.empty()) {  // once per step, not per update
    st.grad = std::exchange(spare_grad_, {});  // an applied step's buffer: assign keeps its pages
    st.grad.assign(layout_.total, 0.0f);
  }
  for (size_t k = 0; k < g.index.size(); ++k) st.grad[g.index[k]] += g.value[k];
  count(st, c, t0);
}

void Policy::absorb(int64_t step, const Contribution& c, std::vector<float> grad) {
  const double t0 = mono_s();
  auto& slot = steps_[step];
  if (!slot) slot = std::make_unique<StepSums>();
  StepSums& st = *slot;
  if (cfg_.aggregation.rule == AggregationRule::mean) {
    if (st.grad.empty()) {
      st.grad = std::move(grad);
    } else {
      for (size_t i = 0; i < grad.size(); ++i) st.grad[i] += grad[i];
    }
  } else {
    const float inv = c.units > 0 ? static_cast<float>(1.0 / c.units) : 0.0f;
    for (float& x : grad) x *= inv;
    st.update_means.push_back(std::move(grad));
  }
  count(st, c, t0);
}

void Policy::count(StepSums& st, const Contribution& c, double t0) {
  st.units += c.units;
  st.tokens += c.tokens;
  st.loss += c.loss;
  st.kl_sum += c.kl_sum;
  st.reward_sum += c.reward_mean * double(c.rows);
  st.accuracy_sum += c.accuracy * double(c.rows);
  st.rows += c.rows;
  st.updates++;
  st.aggregate_s += c.decode_s + (mono_s() - t0);
}

Policy::Applied Policy::apply(int64_t step, bool replaying) {
  COHORT_CHECK(step == static_cast<int64_t>(version_) + 1, "steps are applied in order");
  const double t0 = mono_s();
  auto it = steps_.find(step);
  COHORT_CHECK(it != steps_.end(), "applying a step with no updates");
  StepSums& st = *it->second;
  const double units = std::max(st.units, 1.0);
  // The step's mean gradient: Σ sums / Σ units (exact, in place of the sum: no second copy of
  // the model's size), or a robust rule over the updates.
  std::vector<float> robust;
  float* mean = nullptr;
  if (cfg_.aggregation.rule == AggregationRule::mean) {
    const auto u = static_cast<float>(units);
    for (float& x : st.grad) x /= u;
    mean = st.grad.data();
  } else {
    robust.resize(layout_.total);
    mean = robust.data();
    std::vector<const float*> xs;
    for (const auto& m : st.update_means) xs.push_back(m.data());
    const AggregationStats a = aggregate(cfg_.aggregation, xs, layout_.total, mean);
    st.update_means.clear();
    if (!replaying)
      spdlog::info("step {}: {} of {} updates{}", step,
                   aggregation_rule_name(cfg_.aggregation.rule), a.updates,
                   cfg_.aggregation.rule == AggregationRule::centered_clip
                       ? fmt::format(" ({} clipped at radius {:.3g})", a.clipped, a.radius)
                       : std::string());
  }
  auto params = model_->parameters();
  opt_->adamw.zero_grad();
  {
    // Views of `mean`, not copies; dropped below before the buffer goes.
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& slot = layout_.slots[i];
      params[i].mutable_grad() = at::from_blob(mean + slot.offset, params[i].sizes(), at::kFloat);
    }
  }
  if (cfg_.dump_gradients && !replaying) {
    std::vector<grpo::NamedTensor> gs;
    for (size_t i = 0; i < params.size(); ++i)
      gs.push_back({layout_.slots[i].name, params[i].grad().clone()});
    fs::create_directories(fs::path(cfg_.data_dir) / "gradients");
    char name[64];
    std::snprintf(name, sizeof name, "step-%06lld.safetensors", static_cast<long long>(step));
    grpo::write_safetensors((fs::path(cfg_.data_dir) / "gradients" / name).string(), gs);
  }
  double norm = 0;
  if (cfg_.grpo.max_grad_norm > 0) {
    norm = torch::nn::utils::clip_grad_norm_(params, cfg_.grpo.max_grad_norm);
  } else {
    for (auto& p : params) norm += p.grad().pow(2).sum().item<double>();
    norm = std::sqrt(norm);
  }
  if (std::isfinite(norm))
    opt_->adamw.step();  // as GrpoTrainer: a non-finite gradient skips the update
  for (auto& p : params) p.mutable_grad().reset();
  if (const int64_t delay = test_step_delay_ms(); delay > 0 && !replaying)
    std::this_thread::sleep_for(std::chrono::milliseconds(delay));
  ++version_;
  const double t1 = mono_s();
  Applied out;
  out.published = publish();
  const double t2 = mono_s();

  StepRecord& r = out.record;
  r.step = step;
  r.version = version_;
  r.units = st.units;
  r.updates = st.updates;
  r.reward_mean = st.rows ? st.reward_sum / double(st.rows) : 0;
  r.accuracy = st.rows ? st.accuracy_sum / double(st.rows) : 0;
  r.loss = st.loss / units;
  r.kl = st.tokens > 0 ? st.kl_sum / st.tokens : 0;
  r.grad_norm = norm;
  r.aggregate_s = st.aggregate_s;
  r.optimizer_s = t1 - t0;
  r.publish_s = t2 - t1;
  r.applied_ms = unix_ms();
  if (folds_sparse()) spare_grad_ = std::move(st.grad);  // the next step's sum (absorb)
  steps_.erase(it);
  return out;
}

std::shared_ptr<const Published> Policy::publish() {
  const auto& offsets = publisher_->offsets();
  std::string bytes = publisher_->buffer();  // every byte written below
  {
    at::NoGradGuard no_grad;
    const auto params = model_->parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      const auto t = params[i].detach().contiguous().to(at::kFloat);
      const auto n = static_cast<size_t>(t.numel());
      COHORT_CHECK(n * exchange::element_bytes(dtype_) == offsets[i + 1] - offsets[i],
                   "the layout fits the model");
      exchange::to_published(dtype_, std::span<const float>(t.data_ptr<float>(), n),
                             bytes.data() + offsets[i]);
    }
  }
  exchange::PublishedVersion v =
      publisher_->publish(cfg_.round_id, version_, unix_ms(), std::move(bytes));
  auto p = std::make_shared<Published>();
  p->version = version_;
  p->manifest = protocol::sign_manifest(v.manifest, identity_);
  p->content = std::move(static_cast<exchange::VersionBlobs&>(v));
  const double params = static_cast<double>(layout_.total);
  const exchange::VersionBlobs& c = p->content;
  spdlog::info(
      "coordinator: published v{} ({}): snapshot {} B in {} shards{}", version_,
      exchange::dtype_name(dtype_), c.snapshot_bytes, c.shards.size(),
      c.patch.elements
          ? fmt::format("; {} from v{} {} B ({:.4f} B/param), {} of {} elements changed ({:.3f} %)",
                        c.patch_kept ? "patch" : "no patch (heavier than the snapshot)",
                        version_ - 1, c.patch.patch_bytes, double(c.patch.patch_bytes) / params,
                        c.patch.changed, c.patch.elements,
                        100.0 * double(c.patch.changed) / double(c.patch.elements))
          : std::string());
  return p;
}

grpo::Model& Policy::weights_of(const Published& p) {
  // The live model is the published policy only when it is published as is (F32).
  if (p.version == version_ && dtype_ == wire::DTYPE_F32) return *model_;
  if (!audit_model_) audit_model_ = std::make_unique<grpo::Model>(model_->config(), 1);
  if (audit_version_ != p.version) {
    std::string from_store;
    const bool current = publisher_->current_version() == p.version;
    if (!current) {
      // An older version: its snapshot from the blob store (the versions still served keep it).
      const exchange::BlobStore& store = *publisher_->store();
      for (const auto& d : p.content.shards) {
        const auto size = store.size(d);
        COHORT_CHECK(size.has_value(), "a served version's snapshot is in the blob store");
        from_store += store.read(d, 0, *size);
      }
    }
    const std::string_view bytes = current ? publisher_->current() : from_store;
    const auto& offsets = publisher_->offsets();
    COHORT_CHECK(bytes.size() == offsets.back(), "a snapshot fits the model");
    at::NoGradGuard no_grad;
    auto params = audit_model_->parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      auto& t = params[i];
      exchange::from_published(
          dtype_, bytes.substr(offsets[i], offsets[i + 1] - offsets[i]),
          std::span<float>(t.data_ptr<float>(), static_cast<size_t>(t.numel())));
    }
    audit_version_ = p.version;
  }
  return *audit_model_;
}

std::optional<exchange::Refusal> Policy::audit(const Published& sampled_on,
                                               const wire::GradientUpdate& u,
                                               std::span<const uint64_t> lease_prompts,
                                               std::span<const float> reported) {
  const exchange::LeaseRecomputation r = recompute(sampled_on, u, lease_prompts);
  const AuditFindings f = dense_findings(r, reported);
  spdlog::info(
      "coordinator: recomputed lease {} on v{} (current v{}, {}) in {:.2f} s: cosine {:.6f}, norm "
      "ratio {:.6f}, re-sampled {}/{}, typicality z {:.2f}",
      u.lease_id(), u.policy_version(), version_, u.compute_precision().empty() ? "fp32" : u.compute_precision(),
      r.seconds, f.cosine, f.norm_ratio, r.resampled_same, r.resampled, r.typicality_z);
  return judge_audit(f, u, lease_prompts, cfg_.grpo.group_size, audit_limits());
}

AuditLimits Policy::audit_limits() const {
  return {.min_cosine = cfg_.recompute_min_cosine,
          .typicality_z_max = cfg_.typicality_z_max,
          .kl_term = reference_ != nullptr};
}

exchange::LeaseRecomputation Policy::recompute(const Published& sampled_on,
                                               const wire::GradientUpdate& u,
                                               std::span<const uint64_t> lease_prompts) {
  grpo::Model& sampled = weights_of(sampled_on);
  // The peer's own arithmetic (its update says which; the checks admitted only these names).
  sampled.set_precision(u.compute_precision().empty()
                            ? grpo::Precision::fp32
                            : grpo::parse_precision(u.compute_precision()));
  if (reference_) reference_->set_precision(sampled.precision());
  const exchange::AuditContext ctx{
      .task = task_,
      .tok = tok_,
      .cfg = cfg_.grpo,
      .layout = layout_,
      .codec = cfg_.codec == GradientCodec::topk ? wire::CODEC_TOPK_Q4 : wire::CODEC_RAW};
  std::vector<uint64_t> seeds;
  for (uint64_t idx : lease_prompts) seeds.push_back(exchange::prompt_seed(cfg_.grpo.seed, idx));
  return exchange::recompute_lease(
      sampled, reference_.get(), ctx, lease_prompts, seeds, u.completions(),
      exchange::sampling_reproducible(u.sampling_device(), u.compute_precision()));
}

std::string Policy::write_checkpoint(int64_t step) {
  char name[64];
  std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(step));
  const fs::path root = fs::path(cfg_.data_dir) / "checkpoints";
  const fs::path final_dir = root / name;
  const fs::path tmp = root / (std::string(".tmp-") + name);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  grpo::save_model(tmp.string(), *model_);
  // A checkpoint opens like the model folder it came from (as `cohort train --out` writes it).
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    if (fs::exists(fs::path(cfg_.model_path) / f))
      fs::copy_file(fs::path(cfg_.model_path) / f, tmp / f);
  torch::save(opt_->adamw, (tmp / "optimizer.pt").string());
  nlohmann::json state = {{"round_id", cfg_.round_id},
                          {"step", step},
                          {"version", version_},
                          {"lr", cfg_.grpo.lr},
                          {"scheduler", "constant"}};
  write_file_atomic((tmp / "state.json").string(), state.dump(2));
  for (const auto& e : fs::directory_iterator(tmp)) fsync_path(e.path(), false);
  fsync_path(tmp, true);
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  fsync_path(root, true);
  return final_dir.string();
}

std::shared_ptr<grpo::Model> Policy::snapshot() const {
  auto snap = std::make_shared<grpo::Model>(model_->config(), 0);
  at::NoGradGuard no_grad;
  auto src = model_->parameters(), dst = snap->parameters();
  for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  return snap;
}

}  // namespace cohort::coordinator
