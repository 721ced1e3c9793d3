// An audit's recomputation of one lease, the same code whoever runs it (the coordinator itself, or
// a validator peer, docs/PROTOCOL.md "Validators"): from an update's completions, under the policy
// version it names, in the arithmetic it says it used,
//   - the completions re-sampled from the lease's seeds where sampling is reproducible (CPU, FP32)
//     and counted token for token against the reported ones;
//   - every completion's log-probability sum (what the node reports as π_old) and the typicality
//     statistic of its tokens under the distribution the sampler draws from (samples of the
//     policy give about N(0, 1); fabricated, greedy or stop-token-only completions do not);
//   - the lease's gradient sum and KL sum, through the codec's stateless transform where it has one
//     (top-k), as a dense vector.
// Whoever recomputed compares (coordinator/update_checks.h compare_audit): a validator reports
// what it found, never a verdict.
//
//   LeaseRecomputation r = recompute_lease(model, reference, {task, tok, cfg, layout, codec},
//                                          lease_prompts, update.completions(), resample);
#pragma once

#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "exchange/param_layout.h"
#include "grpo/grpo_config.h"
#include "grpo/tasks.h"
#include "grpo/tokenizer.h"
#include "protocol/messages.pb.h"

namespace cohort::grpo {
class Model;
}

namespace cohort::exchange {

struct AuditContext {
  const grpo::Task& task;
  const grpo::Tokenizer& tok;
  const grpo::GrpoConfig& cfg;
  const ParamLayout& layout;
  wire::Codec codec = wire::CODEC_RAW;  // the round's: top-k audits compare its transform
};

struct LeaseRecomputation {
  uint32_t completions = 0;
  uint32_t resampled = 0, resampled_same = 0;  // resampled = 0: not re-sampled
  std::vector<float> logprob_sums;            // per completion, in the lease's order
  double typicality_z = std::numeric_limits<double>::quiet_NaN();
  uint32_t outside_support = 0;
  std::vector<float> gradient;  // Σ gradient (layout order), the codec's stateless transform applied
  double kl_sum = 0;
  double tokens = 0;  // completion tokens (stop tokens included)
  double seconds = 0;
};

// Recomputes the lease on `model` (the version the update names, its precision set by the
// caller) and `reference` (rounds with a KL term; else nullptr). `completions` hold every
// (prompt, completion) of `lease_prompts` exactly once (the update checks saw to it); they are
// taken in the lease's order. `resample`: re-sample with `seeds` (the lease's, one per prompt) and
// compare.
// Runs on the caller's thread; leaves the model's gradients empty.
[[nodiscard]] LeaseRecomputation recompute_lease(
    grpo::Model& model, const grpo::Model* reference, const AuditContext& ctx,
    std::span<const uint64_t> lease_prompts, std::span<const uint64_t> seeds,
    const google::protobuf::RepeatedPtrField<wire::CompletionDigest>& completions, bool resample);

// True when completions sampled as `sampling_device` reports, computed in `precision`, come out
// the same when sampled again here: the CPU generator in FP32.
[[nodiscard]] bool sampling_reproducible(const std::string& sampling_device,
                                         const std::string& precision);

}  // namespace cohort::exchange
