#include "exchange/lease_audit.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "common/check.h"
#include "common/clock.h"
#include "exchange/gradient_wire.h"
#include "grpo/loss.h"
#include "grpo/model.h"
#include "grpo/sampler.h"
#include "grpo/scoring.h"
#include "grpo/trainer.h"

namespace cohort::exchange {
namespace {

// Per completion position of `rows`, under no_grad: the log-probability of the token under the
// tempered distribution (what the loss takes as π_old), and, where the round samples at a
// temperature, the token's surprisal under the distribution the sampler draws from (top-k, top-p
// applied) with that distribution's entropy and surprisal variance.
struct TokenStats {
  at::Tensor logprob;          // [n, C]
  at::Tensor surprisal;        // [n, C] (+inf outside the sampled support)
  at::Tensor entropy, var;     // [n, C]
};

TokenStats token_stats(const grpo::Model& model, const grpo::Rollout& r,
                       const grpo::SamplingParams& sp, bool typicality) {
  const int64_t p = r.prompt_len, c = r.completion_mask.size(1);
  auto h = model.hidden(r.tokens.narrow(1, 0, p + c - 1), r.positions.narrow(1, 0, p + c - 1),
                        r.key_valid.narrow(1, 0, p + c - 1))
               .narrow(1, p - 1, c);
  auto logits = model.lm_head(h).to(at::kFloat);
  if (sp.temperature > 0 && sp.temperature != 1.0) logits = logits / sp.temperature;
  auto targets = r.tokens.narrow(1, p, c).unsqueeze(-1).to(logits.device());
  TokenStats s;
  s.logprob = logits.log_softmax(-1).gather(-1, targets).squeeze(-1).to(at::kCPU);
  if (!typicality) return s;
  const int64_t v = logits.size(-1);
  auto lp = grpo::filter_logits(logits.reshape({-1, v}), sp.top_k, sp.top_p)
                .log_softmax(-1)
                .reshape(logits.sizes());
  auto prob = lp.exp();
  auto safe = lp.masked_fill(prob == 0, 0.0);  // 0 · log 0 = 0
  s.entropy = -(prob * safe).sum(-1).to(at::kCPU);
  s.var = ((prob * safe * safe).sum(-1).to(at::kCPU) - s.entropy * s.entropy).clamp_min(0.0);
  s.surprisal = -lp.gather(-1, targets).squeeze(-1).to(at::kCPU);
  return s;
}

}  // namespace

bool sampling_reproducible(const std::string& sampling_device, const std::string& precision) {
  return (sampling_device.empty() || sampling_device == "cpu") &&
         (precision.empty() || precision == "fp32");
}

LeaseRecomputation recompute_lease(
    grpo::Model& model, const grpo::Model* reference, const AuditContext& ctx,
    std::span<const uint64_t> lease_prompts, std::span<const uint64_t> seeds,
    const google::protobuf::RepeatedPtrField<wire::CompletionDigest>& completions, bool resample) {
  const double t0 = mono_s();
  LeaseRecomputation out;
  const int g = ctx.cfg.group_size;
  const grpo::SamplingParams& sampling = ctx.cfg.sampling;
  std::map<std::pair<uint64_t, uint32_t>, const wire::CompletionDigest*> by_key;
  for (const auto& c : completions) by_key[{c.prompt_index(), c.completion()}] = &c;
  std::vector<std::vector<int64_t>> prompt_ids, ids;
  std::vector<float> rewards;
  for (uint64_t idx : lease_prompts) {
    prompt_ids.push_back(grpo::encode_prompt(ctx.tok, ctx.task.train_prompt(idx)));
    for (int c = 0; c < g; ++c) {
      const auto it = by_key.find({idx, static_cast<uint32_t>(c)});
      if (it == by_key.end()) throw Error("the audited completions do not cover the lease");
      ids.emplace_back(it->second->token_ids().begin(), it->second->token_ids().end());
      rewards.push_back(it->second->reward());
    }
  }
  out.completions = static_cast<uint32_t>(ids.size());
  const std::vector<int64_t> stops = ctx.tok.stop_ids();
  at::NoGradGuard no_grad_outside;  // only accumulate_gradient below records a graph

  // Sampling reproducible from the seeds: sampled again, an honest peer's completions come out
  // the same. Fabricated or cherry-picked completions, or ones sampled on other weights than the
  // version claimed, do not.
  if (resample) {
    if (seeds.size() != lease_prompts.size()) throw Error("one seed per prompt of the lease");
    grpo::SamplingParams sp = sampling;
    sp.stop_tokens = stops;
    sp.group_seeds.assign(seeds.begin(), seeds.end());
    const grpo::Rollout again = grpo::generate(model, prompt_ids, g, sp, ctx.tok.pad_id());
    out.resampled = out.completions;
    for (size_t i = 0; i < ids.size() && i < again.completions.size(); ++i)
      out.resampled_same += again.completions[i] == ids[i] ? 1 : 0;
  }

  grpo::Rollout r = grpo::layout(prompt_ids, g, ids, sampling.max_new_tokens, ctx.tok.pad_id());
  for (size_t i = 0; i < ids.size(); ++i)  // as the node's sampler flags them
    r.truncated[i] = static_cast<int>(ids[i].size()) == sampling.max_new_tokens &&
                     std::find(stops.begin(), stops.end(), ids[i].back()) == stops.end();

  // The completions' log-probabilities and typicality, a micro-batch of rows at a time (the
  // vocabulary-wide distributions of a whole lease would not fit at real sizes).
  const bool typicality = sampling.temperature > 0;
  const int64_t n = r.tokens.size(0);
  const int64_t mb = ctx.cfg.micro_batch > 0 ? ctx.cfg.micro_batch : n;
  std::vector<at::Tensor> logprob_parts;
  double dev = 0, var = 0;
  for (int64_t begin = 0; begin < n; begin += mb) {
    const int64_t count = std::min(mb, n - begin);
    const grpo::Rollout rows = grpo::slice_rows(r, begin, count);
    TokenStats s = token_stats(model, rows, sampling, typicality);
    logprob_parts.push_back(s.logprob);
    if (!typicality) continue;
    const auto mask = rows.completion_mask > 0;
    const auto inside = mask & s.surprisal.isfinite();
    out.outside_support += static_cast<uint32_t>((mask & ~inside).sum().item<int64_t>());
    dev += ((s.surprisal - s.entropy) * inside).nan_to_num(0.0).sum().item<double>();
    var += (s.var * inside).sum().item<double>();
  }
  r.logprobs = at::cat(logprob_parts, 0) * r.completion_mask;
  const at::Tensor sums = r.logprobs.sum(1).contiguous();
  out.logprob_sums.assign(sums.data_ptr<float>(), sums.data_ptr<float>() + n);
  if (typicality) out.typicality_z = var > 0 ? dev / std::sqrt(var) : (dev == 0 ? 0.0 : INFINITY);

  // The lease's gradient sum, as the node computes it.
  const std::vector<float> adv = grpo::group_advantages(rewards, g, ctx.cfg.scale);
  for (auto p : model.parameters()) p.mutable_grad().reset();
  grpo::LossSums loss;
  {
    at::AutoGradMode grad_on(true);
    loss = grpo::accumulate_gradient(model, reference, r, adv, ctx.cfg);
  }
  out.kl_sum = loss.kl_sum;
  out.tokens = static_cast<double>(r.generated_tokens);
  out.gradient.resize(ctx.layout.total);
  flatten_grads(model, ctx.layout, out.gradient, /*release=*/true);
  // A top-k update is a pure function of the lease gradient: compared in that form (it leaves
  // out 47 in 48 entries).
  if (ctx.codec == wire::CODEC_TOPK_Q4) round_trip(ctx.layout, ctx.codec, out.gradient);
  out.seconds = mono_s() - t0;
  return out;
}

}  // namespace cohort::exchange
