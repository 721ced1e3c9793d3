// The coordinator's model side, owned by its compute executor (one thread): FP32 master weights
// and AdamW, the gradient accumulators of the open steps, applying a step, publishing a policy
// version (tensor bytes + signed manifest), checkpoint files and audits (the full recomputation
// of a sampled update). Nothing here touches sockets or the ledger, and nothing here runs on the
// network thread: the sessions await it (coordinator.cpp).
//
//   Policy p(cfg, identity, task, tokenizer);
//   std::vector<float> g(p.layout().total);
//   if (auto r = p.decode(update, g)) refuse(*r);
//   p.absorb(step, contribution, std::move(g));
//   Policy::Applied a = p.apply(step);         // AdamW step; a.published is the new version
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "coordinator/ledger.h"
#include "coordinator/round_config.h"
#include "coordinator/update_checks.h"
#include "exchange/blob_store.h"
#include "exchange/lease_audit.h"
#include "exchange/publisher.h"
#include "exchange/param_layout.h"
#include "exchange/refusal.h"
#include "exchange/weight_patch.h"
#include "protocol/digest.h"
#include "protocol/identity.h"
#include "protocol/messages.pb.h"

namespace cohort::grpo {
class Model;
class Task;
class Tokenizer;
struct ModelConfig;
}  // namespace cohort::grpo

namespace cohort::exchange {
struct SparseGradient;
}

namespace cohort::coordinator {

// One published policy version (immutable once built: shared between the network thread, which
// serves it, and audits): its signed manifest and the blobs it lists (snapshot shards and the
// patch chain), which live as files in the blob store, not in memory.
struct Published {
  uint64_t version = 0;
  wire::SignedManifest manifest;
  exchange::VersionBlobs content;  // in the coordinator's blob store
};

// What an accepted update adds to its step besides the gradient (the coordinator's own figures).
struct Contribution {
  double units = 0, tokens = 0, loss = 0, reward_mean = 0, accuracy = 0;
  double kl_sum = 0;    // Σ KL to the reference over its loss tokens (the update's kl_sum)
  int64_t rows = 0;     // completions
  double decode_s = 0;  // time spent decoding, checking (audit included) and recording it
};

class Policy {
 public:
  Policy(const RoundConfig& cfg, const protocol::Identity& identity, const grpo::Task& task,
         const grpo::Tokenizer& tokenizer);
  ~Policy();
  Policy(const Policy&) = delete;
  Policy& operator=(const Policy&) = delete;

  // Loads weights and optimizer state from a checkpoint folder; the version becomes `version`.
  void resume(const std::string& checkpoint_dir, uint64_t version);
  [[nodiscard]] uint64_t version() const { return version_; }
  [[nodiscard]] const exchange::ParamLayout& layout() const { return layout_; }
  [[nodiscard]] const grpo::ModelConfig& model_config() const;
  // What versions are published in (the round's policy_dtype, "auto" resolved).
  [[nodiscard]] wire::DType dtype() const { return dtype_; }
  // Where published versions' blobs live (files; read from any thread).
  [[nodiscard]] std::shared_ptr<const exchange::BlobStore> blob_store() const {
    return publisher_->store();
  }

  // Rounds with a KL term (beta > 0): the reference policy, the round's initial weights as nodes
  // hold them (rounded to the policy dtype), published once as a signed manifest of version 0
  // whose blobs stay for the round. nullptr when beta = 0.
  [[nodiscard]] std::shared_ptr<const Published> reference() const { return reference_published_; }

  // A round file (dataset, tokenizer) into the blob store, kept for the whole round (the round
  // card lists it as GET /blobs/<hex>).
  protocol::Digest put_round_file(std::string_view bytes) { return publisher_->put_pinned(bytes); }

  // The update's gradient sum into `out` (layout().total floats), or why it is refused.
  [[nodiscard]] std::optional<exchange::Refusal> decode(const wire::GradientUpdate& u,
                                                        std::vector<float>& out) const;
  // Recomputes the lease's gradient sum from the reported completions on the weights they were
  // sampled with (`sampled_on`, or the live model when it is the current version) and compares
  // it with the reported one: cosine and norm ratio.
  [[nodiscard]] std::optional<exchange::Refusal> audit(const Published& sampled_on,
                                                       const wire::GradientUpdate& u,
                                                       std::span<const uint64_t> lease_prompts,
                                                       std::span<const float> reported);

  // The recomputation behind audit() (exchange/lease_audit.h), for comparing a validator's report
  // with the coordinator's own findings.
  [[nodiscard]] exchange::LeaseRecomputation recompute(const Published& sampled_on,
                                                       const wire::GradientUpdate& u,
                                                       std::span<const uint64_t> lease_prompts);
  [[nodiscard]] AuditLimits audit_limits() const;

  // A top-k update under the mean rule, as its kept entries: no model-sized buffer per update.
  [[nodiscard]] std::optional<exchange::Refusal> decode_sparse(const wire::GradientUpdate& u,
                                                               exchange::SparseGradient& out) const;
  // True when updates of this round go through decode_sparse (top-k codec, mean rule).
  [[nodiscard]] bool folds_sparse() const;

  // Adds an accepted update to its step.
  void absorb(int64_t step, const Contribution& c, std::vector<float> gradient_sum);
  void absorb(int64_t step, const Contribution& c, const exchange::SparseGradient& gradient_sum);

  struct Applied {
    StepRecord record;
    std::shared_ptr<const Published> published;
  };
  // Aggregates step `step` (= version() + 1), steps AdamW and publishes the new version.
  Applied apply(int64_t step, bool replaying);
  // Publishes the current weights as version(): the policy in dtype() as snapshot shards, a patch
  // from the previous version when there is one (kept in the chain while the chain weighs less
  // than a snapshot), the signed manifest; blobs no version still served lists are removed.
  std::shared_ptr<const Published> publish();
  // Writes the checkpoint folder of `step` (weights, optimizer, state.json) atomically; returns
  // its path. The caller records it in the ledger.
  std::string write_checkpoint(int64_t step);
  // A copy of the current weights, for a held-out evaluation on another thread.
  [[nodiscard]] std::shared_ptr<grpo::Model> snapshot() const;

 private:
  struct StepSums;
  grpo::Model& weights_of(const Published& p);
  void count(StepSums& st, const Contribution& c, double t0);  // an update's counts, either form

  const RoundConfig& cfg_;
  const protocol::Identity& identity_;
  const grpo::Task& task_;
  const grpo::Tokenizer& tok_;
  std::unique_ptr<grpo::Model> model_;
  std::unique_ptr<grpo::Model> audit_model_;  // an older published version, for audits
  std::unique_ptr<grpo::Model> reference_;    // beta > 0: the reference policy (audits)
  std::shared_ptr<const Published> reference_published_;
  uint64_t audit_version_ = UINT64_MAX;
  struct Optimizer;
  std::unique_ptr<Optimizer> opt_;
  exchange::ParamLayout layout_;
  uint64_t version_ = 0;
  wire::DType dtype_ = wire::DTYPE_F32;
  // Blobs, patches and the current version's published bytes (audits of it load them).
  std::unique_ptr<exchange::Publisher> publisher_;
  std::map<int64_t, std::unique_ptr<StepSums>> steps_;
  // An applied step's gradient sum, zeroed and reused by the next step that folds sparse updates:
  // a new model-sized buffer each step is a page fault per 4 KiB (7 B parameters: 28 GB).
  std::vector<float> spare_grad_;
};

}  // namespace cohort::coordinator
