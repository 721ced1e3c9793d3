// `cohort bench` (and `cohort bench grpo`): generation with and without the KV cache, and the
// GRPO training step, on the demo model and on the bench config. Every rate is also printed as
// a ratio against this machine's FP32 matmul throughput measured in the same run with the same
// threads (MFU), because absolute timings on shared machines mislead. With --precision bf16|fp8
// the block projections run at that precision, and the same run also times FP32 for the ratio.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "common/clock.h"
#include "common/cpu_allocator.h"
#include "common/runtime.h"
#include "grpo/trainer.h"

namespace cohort::bench {
namespace {

using grpo::ModelConfig;
using nlohmann::json;

// Best of several 1024³ FP32 matmuls: the machine's matmul limit with the current threads.
double matmul_flops(int n = 1024, int reps = 8) {
  torch::NoGradGuard g;
  auto a = torch::randn({n, n}), b = torch::randn({n, n}), c = torch::empty({n, n});
  at::mm_out(c, a, b);
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const double t0 = mono_s();
    at::mm_out(c, a, b);
    best = std::min(best, mono_s() - t0);
  }
  return 2.0 * n * n * n / best;
}

ModelConfig bench_config() {
  ModelConfig c;
  c.vocab_size = 32;
  c.hidden_size = 512;
  c.num_hidden_layers = 8;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.intermediate_size = 1536;
  c.tie_word_embeddings = true;
  c.max_position_embeddings = 256;
  return c;
}

ModelConfig demo_config() {
  ModelConfig c;  // the defaults of `cohort pretrain`
  c.vocab_size = 32;
  return c;
}

struct Shape {
  int prompts = 8, group = 8, prompt_len = 16, new_tokens = 128;
};

std::vector<std::vector<int64_t>> random_prompts(const Shape& s) {
  std::vector<std::vector<int64_t>> p(s.prompts);
  uint64_t x = 12345;
  for (auto& row : p)
    for (int i = 0; i < s.prompt_len; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      row.push_back(3 + static_cast<int64_t>((x >> 33) % 29));
    }
  return p;
}

double generate_tokens_per_s(const grpo::Model& m, const Shape& s, bool cache, int reps) {
  grpo::SamplingParams sp;
  sp.max_new_tokens = s.new_tokens;
  sp.use_cache = cache;  // no stop tokens: every row generates new_tokens
  auto prompts = random_prompts(s);
  double best = 1e30;
  int64_t tokens = 0;
  for (int i = 0; i < reps; ++i) {
    sp.seed = i;
    const double t0 = mono_s();
    auto r = grpo::generate(m, prompts, s.group, sp, 0);
    best = std::min(best, mono_s() - t0);
    tokens = r.generated_tokens;
  }
  return double(tokens) / best;
}

struct DecodeAB {
  double fused = 0, general = 0;  // median tokens/s
  int runs = 0;                   // per path
};

// The fused one-token decode step against the general tensor-op path, runs alternating in one
// process (the machine's load drifts; alternation spreads it over both), medians.
DecodeAB fused_vs_general_decode(grpo::Model& m, const Shape& s, int runs) {
  grpo::SamplingParams sp;
  sp.max_new_tokens = s.new_tokens;
  auto prompts = random_prompts(s);
  std::vector<double> fused, general;
  for (int i = 0; i < 2 * runs; ++i) {
    const bool fast = i % 2 == 0;
    m.set_fast_decode(fast);
    sp.seed = i / 2;
    const double t0 = mono_s();
    auto r = grpo::generate(m, prompts, s.group, sp, 0);
    (fast ? fused : general).push_back(double(r.generated_tokens) / (mono_s() - t0));
  }
  m.set_fast_decode(true);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  return {median(fused), median(general), runs};
}

// Time of the decode step's GEMMs replayed alone (same shapes, same threads), per token.
double decode_matmul_seconds_per_token(const ModelConfig& c, int rows) {
  torch::NoGradGuard g;
  const int64_t d = c.hidden_size, hd = c.dim_head();
  const int64_t q = c.num_attention_heads * hd, kv = c.num_key_value_heads * hd;
  auto x = torch::randn({rows, d});
  auto wq = torch::randn({q, d}), wk = torch::randn({kv, d}), wo = torch::randn({d, q});
  auto wg = torch::randn({c.intermediate_size, d}), wd = torch::randn({d, c.intermediate_size});
  auto head = torch::randn({c.vocab_size, d});
  auto xi = torch::randn({rows, c.intermediate_size});
  auto step = [&] {
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      at::linear(x, wq); at::linear(x, wk); at::linear(x, wk); at::linear(x, wo);
      at::linear(x, wg); at::linear(x, wg); at::linear(xi, wd);
    }
    at::linear(x, head);
  };
  step();
  const int reps = 20;
  const double t0 = mono_s();
  for (int i = 0; i < reps; ++i) step();
  return (mono_s() - t0) / reps / rows;
}

struct TrainResult {
  double tokens_per_s = 0, flops_per_s = 0, step_s = 0, flops = 0;
};

TrainResult train_step_rate(grpo::Model& m, const Shape& s, int reps) {
  grpo::GrpoConfig cfg;
  cfg.group_size = s.group;
  cfg.sampling.max_new_tokens = s.new_tokens;
  grpo::SamplingParams sp = cfg.sampling;
  auto r = grpo::generate(m, random_prompts(s), s.group, sp, 0);
  std::vector<float> adv(r.tokens.size(0));
  for (size_t i = 0; i < adv.size(); ++i) adv[i] = float(int(i % 3) - 1);
  torch::optim::AdamW opt(m.parameters(), torch::optim::AdamWOptions(1e-5));
  const ModelConfig& c = m.config();
  const double tokens = double(r.tokens.numel());
  const double seq = double(r.tokens.size(1));
  const double flops = 6.0 * double(c.parameter_count()) * tokens +
                       12.0 * c.num_hidden_layers * c.hidden_size * seq * tokens;
  double best = 1e30;
  for (int i = 0; i < reps + 1; ++i) {  // the first step warms allocator and caches
    const double t0 = mono_s();
    opt.zero_grad();
    grpo::accumulate_gradient(m, nullptr, r, adv, cfg);
    opt.step();
    if (i > 0) best = std::min(best, mono_s() - t0);
  }
  return {tokens / best, flops / best, best, flops};
}

int run(bool quick, int no_cache_tokens, grpo::Precision precision, const std::string& only,
        bool generation_only) {
  const BlasInfo blas = blas_info();
  std::printf("BLAS: %s\n  config: %s\n  threads: torch %d, BLAS %d, OMP_WAIT_POLICY=%s\n",
              blas.library.c_str(), blas.config.empty() ? "(not OpenBLAS)" : blas.config.c_str(),
              blas.torch_threads, blas.blas_threads,
              blas.omp_wait_policy.empty() ? "(default)" : blas.omp_wait_policy.c_str());
  const double peak = matmul_flops();
  std::printf("FP32 matmul 1024^3: %.1f GFLOP/s\n\n", peak / 1e9);
  std::printf("precision of the block projections: %s\n\n", grpo::precision_name(precision));
  json out = {{"blas", blas.library}, {"torch_threads", blas.torch_threads},
              {"precision", grpo::precision_name(precision)},
              {"blas_threads", blas.blas_threads}, {"matmul_gflops", peak / 1e9}};

  for (const auto& [name, cfg] : {std::pair<const char*, ModelConfig>{"demo", demo_config()},
                                  {"bench", bench_config()}}) {
    if (!only.empty() && only != name) continue;
    grpo::Model m(cfg, 1);
    m.set_precision(precision);
    Shape s;
    const int reps = quick ? 1 : 3;
    const double gen_cache = generate_tokens_per_s(m, s, true, reps);
    Shape nc = s;
    nc.new_tokens = no_cache_tokens;
    const double gen_plain =
        no_cache_tokens > 0 ? generate_tokens_per_s(m, nc, false, 1) : 0.0;
    const double mm_share = decode_matmul_seconds_per_token(cfg, s.prompts * s.group) * gen_cache;
    const DecodeAB ab = fused_vs_general_decode(m, s, quick ? 3 : 5);
    if (generation_only) {
      std::printf("[%s] generation, KV cache: %.0f tokens/s (matmuls %.0f%% of the time)\n", name,
                  gen_cache, 100 * mm_share);
      std::printf("  fused vs general decode step, %d alternating runs each: median %.0f vs %.0f "
                  "tokens/s (x%.2f)\n\n",
                  ab.runs, ab.fused, ab.general, ab.fused / ab.general);
      out[name] = {{"gen_tokens_per_s_cache", gen_cache}, {"gen_matmul_share", mm_share},
                   {"gen_fused_median", ab.fused}, {"gen_general_median", ab.general}};
      continue;
    }
    // The MFU denominator is re-measured right before and after the step and the larger value
    // kept: on a shared machine the load drifts within a run, and a stale, low peak would
    // inflate MFU.
    const double peak_before = matmul_flops();
    TrainResult tr = train_step_rate(m, s, quick ? 1 : 3);
    const double step_peak = std::max({peak, peak_before, matmul_flops()});
    set_cpu_allocator_caching(false);  // the same step with glibc's fresh mmap()s
    TrainResult tr_nocache = train_step_rate(m, s, 1);
    set_cpu_allocator_caching(true);
    double gen_fp32 = gen_cache, train_fp32_s = tr.step_s;  // side by side, same run
    if (precision != grpo::Precision::fp32) {
      grpo::Model m32(cfg, 1);
      gen_fp32 = generate_tokens_per_s(m32, s, true, reps);
      train_fp32_s = train_step_rate(m32, s, quick ? 1 : 3).step_s;
    }
    std::printf("[%s] %lld params, B=%d x G=%d, prompt %d, %d new tokens\n", name,
                static_cast<long long>(cfg.parameter_count()), s.prompts, s.group, s.prompt_len,
                s.new_tokens);
    std::printf("  generation, KV cache : %8.0f tokens/s (matmuls %.0f%% of the time)\n", gen_cache,
                100 * mm_share);
    std::printf("  fused vs general decode step, %d alternating runs each: median %.0f vs %.0f "
                "tokens/s (x%.2f)\n",
                ab.runs, ab.fused, ab.general, ab.fused / ab.general);
    if (gen_plain > 0)
      std::printf("  generation, no cache : %8.0f tokens/s (%d new tokens)  cache speed-up %.1fx\n",
                  gen_plain, nc.new_tokens, gen_cache / gen_plain);
    std::printf("  training step        : %8.0f tokens/s, %.2f s, %.1f GFLOP -> %.1f GFLOP/s, MFU %.0f%%\n",
                tr.tokens_per_s, tr.step_s, tr.flops / 1e9, tr.flops_per_s / 1e9,
                100 * tr.flops_per_s / step_peak);
    std::printf("  (MFU denominator: %.1f GFLOP/s, the best 1024^3 matmul around the step)\n",
                step_peak / 1e9);
    std::printf("  training step, no caching allocator: %.2f s (caching allocator speed-up %.2fx)\n\n",
                tr_nocache.step_s, tr_nocache.step_s / tr.step_s);
    if (precision != grpo::Precision::fp32)
      std::printf("  %s vs fp32 (same run): generation time x%.2f, training step time x%.2f\n\n",
                  grpo::precision_name(precision), gen_fp32 / gen_cache, tr.step_s / train_fp32_s);
    out[name] = {{"params", cfg.parameter_count()},
                 {"gen_tokens_per_s_cache", gen_cache},
                 {"gen_tokens_per_s_no_cache", gen_plain},
                 {"no_cache_new_tokens", nc.new_tokens},
                 {"cache_speedup", gen_plain > 0 ? gen_cache / gen_plain : 0.0},
                 {"gen_matmul_share", mm_share},
                 {"gen_fused_median", ab.fused},
                 {"gen_general_median", ab.general},
                 {"train_tokens_per_s", tr.tokens_per_s},
                 {"train_step_s", tr.step_s},
                 {"train_gflops_per_s", tr.flops_per_s / 1e9},
                 {"train_mfu", tr.flops_per_s / step_peak},
                 {"train_mfu_denominator_gflops", step_peak / 1e9},
                 {"gen_time_vs_fp32", gen_fp32 / gen_cache},
                 {"train_step_time_vs_fp32", tr.step_s / train_fp32_s}};
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

void add_grpo_bench(CLI::App& bench) {
  struct Args {
    bool quick = false;
    int no_cache_tokens = 128;
    std::string precision = "fp32";
    std::string only;
    bool generation_only = false;
  };
  auto a = std::make_shared<Args>();
  auto run_it = [a] {
    run(a->quick, a->no_cache_tokens, grpo::parse_precision(a->precision), a->only,
        a->generation_only);
  };
  auto* cmd = bench.add_subcommand("grpo", "Generation and training throughput, MFU");
  for (CLI::App* c : {cmd, &bench}) {
    c->add_flag("--quick", a->quick, "One repetition per measurement");
    c->add_option("--no-cache-tokens", a->no_cache_tokens,
                  "New tokens for the no-cache generation baseline (0: skip it)")->capture_default_str();
    c->add_option("--precision", a->precision, "Block projections: fp32 | bf16 | fp8")
        ->capture_default_str();
    c->add_option("--only", a->only, "Run one model: demo | bench");
    c->add_flag("--generation-only", a->generation_only,
                "Generation figures only (no training step)");
  }
  cmd->callback(run_it);
  // `cohort bench` with no subcommand runs this one.
  bench.callback([&bench, run_it] {
    if (bench.get_subcommands().empty()) run_it();
  });
}

}  // namespace cohort::bench
