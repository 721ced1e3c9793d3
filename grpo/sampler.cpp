#include "grpo/sampler.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>

#include "common/check.h"
#include "grpo/model.h"
#include "grpo/tokenizer.h"

namespace cohort::grpo {

using at::Tensor;

namespace {
// CPU: the seeded CPU generator (the reference stream). A GPU samples on the device with its own
// generator kind, seeded the same way: reproducible per device, not bit-identical across them.
at::Generator make_generator(uint64_t seed, at::Device device) {
  if (device.is_cpu()) return at::detail::createCPUGenerator(seed);
  at::Generator g = at::globalContext().defaultGenerator(device).clone();
  g.set_current_seed(seed);
  return g;
}
}  // namespace

at::Tensor filter_logits(const Tensor& scaled, int top_k, double top_p) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  Tensor out = scaled;
  const int64_t v = scaled.size(-1);
  if (top_k > 0 && top_k < v) {
    auto kth = std::get<0>(out.topk(top_k, -1)).narrow(-1, top_k - 1, 1);
    out = out.masked_fill(out < kth, neg_inf);
  }
  if (top_p < 1.0) {
    auto [sorted, idx] = out.sort(-1, /*descending=*/true);
    auto probs = sorted.softmax(-1);
    // Drop a token when the mass before it already reaches top_p; the first token always stays.
    auto before = probs.cumsum(-1) - probs;
    auto drop_sorted = before >= top_p;
    auto drop = at::zeros_like(drop_sorted).scatter(-1, idx, drop_sorted);
    out = out.masked_fill(drop, neg_inf);
  }
  return out;
}

Rollout layout(const std::vector<std::vector<int64_t>>& prompts, int group_size,
               const std::vector<std::vector<int64_t>>& completions, int64_t max_new_tokens,
               int64_t pad_id) {
  const int64_t b = static_cast<int64_t>(prompts.size()), n = b * group_size;
  COHORT_CHECK(static_cast<int64_t>(completions.size()) == n, "one completion per row");
  int64_t p = 0, c = 0;
  for (const auto& pr : prompts) p = std::max<int64_t>(p, static_cast<int64_t>(pr.size()));
  for (const auto& co : completions) c = std::max<int64_t>(c, static_cast<int64_t>(co.size()));
  if (p == 0) throw Error("empty prompt");
  if (c > max_new_tokens) throw Error("completion longer than max_new_tokens");
  c = std::max<int64_t>(c, 1);

  Rollout r;
  r.prompt_len = p;
  r.group_size = group_size;
  r.completions = completions;
  r.tokens = at::full({n, p + c}, pad_id, at::kLong);
  r.positions = at::zeros({n, p + c}, at::kLong);
  r.key_valid = at::zeros({n, p + c}, at::kBool);
  r.completion_mask = at::zeros({n, c});
  r.logprobs = at::zeros({n, c});
  auto tok = r.tokens.accessor<int64_t, 2>();
  auto pos = r.positions.accessor<int64_t, 2>();
  auto valid = r.key_valid.accessor<bool, 2>();
  auto mask = r.completion_mask.accessor<float, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const auto& pr = prompts[i / group_size];
    const auto& co = completions[i];
    const int64_t pl = static_cast<int64_t>(pr.size()), pad = p - pl;
    for (int64_t j = 0; j < pl; ++j) {
      tok[i][pad + j] = pr[j];
      pos[i][pad + j] = j;
      valid[i][pad + j] = true;
    }
    for (int64_t j = 0; j < static_cast<int64_t>(co.size()); ++j) {
      tok[i][p + j] = co[j];
      pos[i][p + j] = pl + j;
      valid[i][p + j] = true;
      mask[i][j] = 1.0f;
    }
    for (int64_t j = static_cast<int64_t>(co.size()); j < c; ++j) pos[i][p + j] = pl + j;
    r.generated_tokens += static_cast<int64_t>(co.size());
  }
  r.truncated.assign(n, false);
  return r;
}

Rollout generate(const Model& model, const std::vector<std::vector<int64_t>>& prompts,
                 int group_size, const SamplingParams& sp, int64_t pad_id) {
  COHORT_CHECK(group_size >= 1);
  if (prompts.empty()) throw Error("generate: no prompts");
  if (sp.max_new_tokens < 1) throw Error("max_new_tokens must be at least 1");
  if (sp.temperature < 0) throw Error("temperature must be >= 0");
  if (sp.top_p <= 0 || sp.top_p > 1) throw Error("top_p must be in (0, 1]");

  const int64_t b = static_cast<int64_t>(prompts.size()), g = group_size, n = b * g;
  int64_t p = 0;
  for (const auto& pr : prompts) {
    if (pr.empty()) throw Error("generate: empty prompt");
    p = std::max<int64_t>(p, static_cast<int64_t>(pr.size()));
  }
  const int64_t c = sp.max_new_tokens;
  if (p + c > model.config().max_position_embeddings)
    throw Error("prompt (" + std::to_string(p) + ") + max_new_tokens (" + std::to_string(c) +
                ") exceeds the model's max_position_embeddings (" +
                std::to_string(model.config().max_position_embeddings) + ")");

  // Prompt batch, left-padded, one row per prompt.
  std::vector<std::vector<int64_t>> no_completion(b);
  Rollout prompt_rows = layout(prompts, 1, no_completion, c, pad_id);
  auto ptok = prompt_rows.tokens.narrow(1, 0, p);
  auto ppos = prompt_rows.positions.narrow(1, 0, p);
  auto pvalid = prompt_rows.key_valid.narrow(1, 0, p);
  std::vector<int64_t> prompt_len(n);
  for (int64_t i = 0; i < n; ++i) prompt_len[i] = static_cast<int64_t>(prompts[i / g].size());

  const at::Device device = model.device();
  auto gen = make_generator(sp.seed, device);
  std::vector<at::Generator> group_gens;
  if (!sp.group_seeds.empty()) {
    if (static_cast<int64_t>(sp.group_seeds.size()) != b)
      throw Error("generate: group_seeds needs one seed per prompt");
    for (uint64_t s : sp.group_seeds) group_gens.push_back(make_generator(s, device));
  }
  std::vector<std::vector<int64_t>> completions(n);
  std::vector<std::vector<float>> logps(n);
  std::vector<bool> finished(n, false);
  {
    // Inference tensors stay inside this scope: the returned layout must be usable by autograd.
    c10::InferenceMode guard;

    // Prefill each prompt once, then share its cache rows among its G completions.
    KVCache cache;
    Tensor logits;
    Tensor seq_tok, seq_pos, seq_valid;  // only for the uncached path
    if (sp.use_cache) {
      KVCache pre = model.make_cache(b, p);
      logits = model.forward_cached(ptok, ppos, pvalid, pre);
      cache = model.make_cache(n, p + c);
      for (size_t l = 0; l < cache.k.size(); ++l) {
        cache.k[l].narrow(2, 0, p).copy_(pre.k[l].repeat_interleave(g, 0));
        cache.v[l].narrow(2, 0, p).copy_(pre.v[l].repeat_interleave(g, 0));
      }
      cache.key_bias.narrow(3, 0, p).copy_(pre.key_bias.repeat_interleave(g, 0));
      cache.length = p;
      logits = logits.repeat_interleave(g, 0);
    } else {
      seq_tok = ptok.repeat_interleave(g, 0);
      seq_pos = ppos.repeat_interleave(g, 0);
      seq_valid = pvalid.repeat_interleave(g, 0);
      logits = model.forward(seq_tok, seq_pos, seq_valid).select(1, p - 1);
    }

    auto is_stop = [&](int64_t t) {
      return std::find(sp.stop_tokens.begin(), sp.stop_tokens.end(), t) != sp.stop_tokens.end();
    };
    // A stop string ends the row once the text of its last few tokens contains it: an earlier
    // occurrence would already have ended the row, so any occurrence found is new.
    size_t stop_window = 0;
    for (const auto& s : sp.stop_strings) stop_window = std::max(stop_window, s.size() + 2);
    if (stop_window > 0 && sp.stop_decoder == nullptr)
      throw Error("generate: stop strings need a tokenizer (SamplingParams::stop_decoder)");
    auto hits_stop_string = [&](const std::vector<int64_t>& ids) {
      if (stop_window == 0) return false;
      const size_t k = std::min(stop_window, ids.size());
      const std::string tail = sp.stop_decoder->decode(
          std::span<const int64_t>(ids.data() + ids.size() - k, k));
      for (const auto& s : sp.stop_strings)
        if (!s.empty() && tail.find(s) != std::string::npos) return true;
      return false;
    };
    auto step_tok = at::empty({n, 1}, at::kLong);
    auto step_pos = at::empty({n, 1}, at::kLong);
    auto step_valid = at::empty({n, 1}, at::kBool);
    for (int64_t s = 0; s < c; ++s) {
      Tensor next, next_logp;
      if (sp.temperature == 0.0) {
        auto lp = logits.log_softmax(-1);
        next = lp.argmax(-1, /*keepdim=*/true);
        next_logp = lp.gather(-1, next);
      } else {
        auto scaled = logits / sp.temperature;
        auto lp = scaled.log_softmax(-1);
        auto probs = filter_logits(scaled, sp.top_k, sp.top_p).softmax(-1);
        if (group_gens.empty()) {
          next = at::multinomial(probs, 1, /*replacement=*/false, gen);
        } else {
          next = at::empty({n, 1}, at::TensorOptions().dtype(at::kLong).device(device));
          for (int64_t gi = 0; gi < b; ++gi)
            next.narrow(0, gi * g, g)
                .copy_(at::multinomial(probs.narrow(0, gi * g, g), 1, false, group_gens[gi]));
        }
        next_logp = lp.gather(-1, next);
      }
      // The host reads the sampled ids (stop checks, decoding); no copy on the CPU.
      const Tensor next_host = next.cpu(), next_logp_host = next_logp.cpu();
      auto nt = next_host.accessor<int64_t, 2>();
      auto nl = next_logp_host.accessor<float, 2>();
      auto st = step_tok.accessor<int64_t, 2>();
      auto sps = step_pos.accessor<int64_t, 2>();
      auto sv = step_valid.accessor<bool, 2>();
      bool all_done = true;
      for (int64_t i = 0; i < n; ++i) {
        sps[i][0] = prompt_len[i] + s;
        if (finished[i]) {
          st[i][0] = pad_id;
          sv[i][0] = false;
          continue;
        }
        completions[i].push_back(nt[i][0]);
        logps[i].push_back(nl[i][0]);
        st[i][0] = nt[i][0];
        sv[i][0] = true;
        if (is_stop(nt[i][0]) || hits_stop_string(completions[i])) finished[i] = true;
        all_done = all_done && finished[i];
      }
      if (all_done || s + 1 == c) break;
      if (sp.use_cache) {
        logits = model.forward_cached(step_tok, step_pos, step_valid, cache);
      } else {
        seq_tok = at::cat({seq_tok, step_tok}, 1);
        seq_pos = at::cat({seq_pos, step_pos}, 1);
        seq_valid = at::cat({seq_valid, step_valid}, 1);
        logits = model.forward(seq_tok, seq_pos, seq_valid).select(1, -1);
      }
    }
  }

  Rollout r = layout(prompts, group_size, completions, c, pad_id);
  auto lp = r.logprobs.accessor<float, 2>();
  for (int64_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < logps[i].size(); ++j) lp[i][j] = logps[i][j];
    r.truncated[i] = !finished[i];
  }
  return r;
}

}  // namespace cohort::grpo
