#include "grpo/commands.h"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/progress.h"
#include "common/runtime.h"
#include "grpo/bpe_tokenizer.h"
#include "grpo/checkpoint.h"
#include "grpo/trainer.h"

namespace cohort::grpo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

void add_task_options(CLI::App* cmd, TaskSpec& t) {
  cmd->add_option("--task", t.name, "Built-in task: arith | countdown")->capture_default_str();
  cmd->add_option("--digits", t.digits, "arith: digits per operand")->capture_default_str();
  cmd->add_option("--ops", t.ops, "arith: operators to draw from (subset of \"+-*\")")
      ->capture_default_str();
  cmd->add_option("--numbers", t.numbers, "countdown: numbers given")->capture_default_str();
  cmd->add_option("--max-number", t.max_number, "countdown: largest number")->capture_default_str();
  cmd->add_option("--format-weight", t.format_weight, "reward += weight x format reward")
      ->capture_default_str();
  cmd->add_option("--task-seed", t.seed, "Fixes the prompt stream and the held-out split")
      ->capture_default_str();
  cmd->add_option("--dataset", t.dataset,
                  "JSONL dataset instead of a built-in task: GSM8K {question, answer} or {prompt, answer}");
  cmd->add_option("--eval-dataset", t.eval_dataset,
                  "JSONL held-out set (default: a seeded --held-out-percent share of --dataset)");
  cmd->add_option("--held-out-percent", t.held_out_percent, "Share reserved for evaluation")
      ->capture_default_str();
  cmd->add_option("--reward", t.reward, "Dataset reward: math")->capture_default_str();
}

struct PromptOptions {
  std::string system_prompt = "r1";  // "r1" | "default" (the template's) | any text
};

void add_prompt_options(CLI::App* cmd, PromptOptions& p) {
  cmd->add_option("--system-prompt", p.system_prompt,
                  "Chat models: system turn of every prompt: r1 | default (the template's) | text")
      ->capture_default_str();
}

std::unique_ptr<Tokenizer> tokenizer_for(const std::string& dir, const ModelConfig& cfg,
                                         const PromptOptions& p) {
  return tokenizer_for_model(dir, cfg, p.system_prompt);
}

void add_threads_option(CLI::App* cmd, int& threads) {
  cmd->add_option("--threads", threads, "CPU threads (default: all cores)");
}

void add_device_option(CLI::App* cmd, std::string& device) {
  cmd->add_option("--device", device,
                  "Where the model computes: cpu | cuda | cuda:N (needs a CUDA build of LibTorch)")
      ->capture_default_str();
}

void apply_threads(int threads) {
  if (threads > 0) set_num_threads(threads);
}

json eval_json(const EvalResult& e) {
  return {{"n", e.n}, {"accuracy", e.accuracy}, {"format", e.format},
          {"completion_len", e.completion_len}, {"seconds", e.seconds}};
}

struct PretrainArgs {
  PretrainConfig cfg;
  std::string out;
  int threads = 0;
  std::string dtype = "f32";
};

at::ScalarType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return at::kFloat;
  if (s == "bf16" || s == "bfloat16") return at::kBFloat16;
  if (s == "f16" || s == "float16") return at::kHalf;
  throw Error("unknown checkpoint dtype '" + s + "' (expected f32, bf16 or f16)");
}

EvalResult run_pretrain(const PretrainArgs& a) {
  auto task = make_task(a.cfg.task);
  CharTokenizer tok;
  Model model(task_model_config(a.cfg.model), a.cfg.seed);
  spdlog::info("pretrain: {} parameters, task {}, {} steps max", model.config().parameter_count(),
               a.cfg.task.name, a.cfg.steps);
  PretrainResult r = pretrain(model, tok, *task, a.cfg);
  save_model(a.out, model, parse_dtype(a.dtype));
  json j = {{"steps", r.steps}, {"loss", r.final_loss}, {"eval", eval_json(r.eval)}, {"out", a.out}};
  std::printf("%s\n", j.dump().c_str());
  return r.eval;
}

void add_pretrain(CLI::App& app) {
  auto a = std::make_shared<PretrainArgs>();
  auto* cmd = app.add_subcommand("pretrain", "Supervised warm-up: a weak base model that knows the format");
  add_task_options(cmd, a->cfg.task);
  cmd->add_option("--out", a->out, "Output model folder")->required();
  cmd->add_option("--steps", a->cfg.steps, "Maximum optimizer steps")->capture_default_str();
  cmd->add_option("--batch-size", a->cfg.batch_size, "Examples per step")->capture_default_str();
  cmd->add_option("--lr", a->cfg.lr, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--label-noise", a->cfg.label_noise,
                  "Share of examples trained on a wrong answer (weaker, noisier base)")
      ->capture_default_str();
  cmd->add_option("--stop-at-accuracy", a->cfg.stop_at_accuracy,
                  "Stop once held-out greedy accuracy reaches this (0: run all steps)")
      ->capture_default_str();
  cmd->add_option("--eval-every", a->cfg.eval_every, "Steps between evaluations")->capture_default_str();
  cmd->add_option("--eval-n", a->cfg.eval_n, "Held-out prompts per evaluation")->capture_default_str();
  cmd->add_option("--seed", a->cfg.seed, "Initialization and data seed")->capture_default_str();
  add_model_shape_options(*cmd, a->cfg.model);
  cmd->add_option("--dtype", a->dtype, "Checkpoint dtype: f32 | bf16 | f16")->capture_default_str();
  add_threads_option(cmd, a->threads);
  cmd->callback([a] {
    apply_threads(a->threads);
    run_pretrain(*a);
  });
}

struct TrainArgs {
  GrpoConfig cfg;
  std::string model, out, metrics_out, loss = "dapo", scale = "group", importance = "token";
  std::string precision = "fp32", dtype = "f32", device = "cpu";
  int steps = 100, eval_every = 20, eval_n = 200, threads = 0;
  bool quiet = false;
  PromptOptions prompt;
  int64_t max_shard_mb = 0;
};

void add_grpo_options(CLI::App* cmd, TrainArgs& a) {
  auto& c = a.cfg;
  cmd->add_option("--prompts-per-step", c.prompts_per_step, "Prompts (groups) per step")
      ->capture_default_str();
  cmd->add_option("-G,--group-size", c.group_size, "Completions per prompt")->capture_default_str();
  cmd->add_option("--lr", c.lr, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--weight-decay", c.weight_decay, "AdamW weight decay")->capture_default_str();
  cmd->add_option("--max-grad-norm", c.max_grad_norm, "Gradient clipping (0: off)")->capture_default_str();
  cmd->add_option("--loss", a.loss, "Aggregation: grpo | bnpo | dapo | dr_grpo")->capture_default_str();
  cmd->add_option("--scale", a.scale, "Advantage scaling: group | batch | none")->capture_default_str();
  cmd->add_option("--importance", a.importance, "Ratio level: token | sequence (GSPO)")
      ->capture_default_str();
  cmd->add_option("--epsilon", c.loss.epsilon_low, "Clip range (low side; high too unless set)")
      ->capture_default_str();
  cmd->add_option("--epsilon-high", c.loss.epsilon_high, "Clip range, high side (DAPO clip-higher)");
  cmd->add_option("--beta", c.loss.beta, "KL coefficient (0: no reference model)")->capture_default_str();
  cmd->add_option("--temperature", c.sampling.temperature, "Sampling temperature")->capture_default_str();
  cmd->add_option("--top-p", c.sampling.top_p, "Nucleus sampling mass")->capture_default_str();
  cmd->add_option("--top-k", c.sampling.top_k, "Top-k sampling (0: off)")->capture_default_str();
  cmd->add_option("--max-new-tokens", c.sampling.max_new_tokens, "Completion length limit")
      ->capture_default_str();
  cmd->add_option("--micro-batch", c.micro_batch, "Rows per forward/backward (0: whole step)")
      ->capture_default_str();
  cmd->add_option("--stop", c.sampling.stop_strings,
                  "Stop a completion once its text contains this string (repeatable)");
  cmd->add_flag("--mask-truncated", c.mask_truncated,
                "Completions cut at --max-new-tokens add no loss (DAPO overlong filtering)");
  add_prompt_options(cmd, a.prompt);
  cmd->add_option("--seed", c.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--precision", a.precision, "Linear layers: fp32 | bf16 | fp8")->capture_default_str();
  add_device_option(cmd, a.device);
}

void finalize(TrainArgs& a, CLI::App* cmd) {
  a.cfg.loss.loss = parse_loss_type(a.loss);
  a.cfg.scale = parse_advantage_scale(a.scale);
  a.cfg.loss.importance = parse_importance_level(a.importance);
  if (cmd->count("--epsilon-high") == 0) a.cfg.loss.epsilon_high = a.cfg.loss.epsilon_low;
  a.cfg.loss.max_completion_length = a.cfg.sampling.max_new_tokens;
}

json step_json(const StepStats& s, double elapsed) {
  return {{"step", s.step},           {"loss", s.loss},
          {"reward_mean", s.reward_mean}, {"reward_std", s.reward_std},
          {"accuracy", s.accuracy},   {"format", s.format},
          {"completion_len", s.completion_len}, {"truncated_frac", s.truncated_frac},
          {"completion_len_min", s.completion_len_min}, {"completion_len_max", s.completion_len_max},
          {"completion_len_std", s.completion_len_std},
          {"completion_len_correct", s.completion_len_correct},
          {"kl", s.kl},               {"clip_frac", s.clip_frac},
          {"grad_norm", s.grad_norm}, {"zero_std_frac", s.zero_std_frac},
          {"tokens_per_s", s.tokens_per_s}, {"gen_s", s.gen_s},
          {"train_s", s.train_s},     {"elapsed_s", elapsed}};
}

struct TrainSummary {
  double base = 0, final = 0, time_to_40 = -1, wall = 0;
  int64_t steps = 0, step_to_40 = -1;
  double tokens_per_s = 0;
};

TrainSummary run_train(TrainArgs& a) {
  auto task = make_task(a.cfg.task);
  const at::Device device = parse_device(a.device);  // fails before any loading
  auto model = load_model(a.model);
  auto tok = tokenizer_for(a.model, model->config(), a.prompt);
  model->set_precision(parse_precision(a.precision));
  model->to(device);
  std::ofstream metrics;
  if (!a.metrics_out.empty()) {
    if (auto dir = fs::path(a.metrics_out).parent_path(); !dir.empty()) fs::create_directories(dir);
    metrics.open(a.metrics_out);
    if (!metrics) throw Error("cannot write " + a.metrics_out);
  }
  auto emit = [&](const json& j) {
    if (metrics) metrics << j.dump() << "\n" << std::flush;
  };
  const int max_new = a.cfg.sampling.max_new_tokens;
  TrainSummary sum;
  EvalResult base = evaluate(*model, *tok, *task, a.eval_n, max_new);
  sum.base = sum.final = base.accuracy;
  emit({{"step", 0}, {"eval_accuracy", base.accuracy}, {"elapsed_s", 0.0}});
  spdlog::info("train: {} params, precision {}, device {}, base held-out accuracy {:.3f} (n={})",
               model->config().parameter_count(), a.precision, device.str(), base.accuracy,
               a.eval_n);

  GrpoTrainer trainer(*model, *tok, *task, a.cfg);
  Progress bar("train", a.steps);
  double tok_total = 0, time_total = 0;
  for (int i = 1; i <= a.steps; ++i) {
    StepStats s = trainer.step();
    const double elapsed = bar.seconds();
    json j = step_json(s, elapsed);
    tok_total += s.tokens_per_s * s.step_s;
    time_total += s.step_s;
    if (a.eval_every > 0 && (i % a.eval_every == 0 || i == a.steps)) {
      EvalResult e = evaluate(*model, *tok, *task, a.eval_n, max_new);
      j["eval_accuracy"] = e.accuracy;
      sum.final = e.accuracy;
      if (sum.time_to_40 < 0 && e.accuracy >= sum.base + 0.40) {
        sum.time_to_40 = elapsed;
        sum.step_to_40 = i;
      }
    }
    emit(j);
    char status[160];
    std::snprintf(status, sizeof status, "reward %.2f acc %.2f eval %.2f len %.1f %.0f tok/s",
                  s.reward_mean, s.accuracy, sum.final, s.completion_len, s.tokens_per_s);
    bar.update(i, status);
    if (a.quiet) continue;
    if (!isatty(STDERR_FILENO) && (i % 10 == 0 || i == a.steps))
      spdlog::info("step {}/{}: {}", i, a.steps, status);
  }
  bar.finish();
  sum.steps = a.steps;
  sum.wall = bar.seconds();
  sum.tokens_per_s = time_total > 0 ? tok_total / time_total : 0;
  if (!a.out.empty()) {
    save_model(a.out, *model, parse_dtype(a.dtype), a.max_shard_mb << 20);
    // A Hugging Face folder stays one: the trained weights travel with their tokenizer.
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
      if (fs::exists(fs::path(a.model) / f) && fs::absolute(a.model) != fs::absolute(a.out))
        fs::copy_file(fs::path(a.model) / f, fs::path(a.out) / f, fs::copy_options::overwrite_existing);
  }
  return sum;
}

void add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Local GRPO training on a built-in task");
  cmd->add_option("--model", a->model,
                  "Model folder: config.json + model.safetensors (or sharded), tokenizer.json for "
                  "Hugging Face models")
      ->required();
  add_task_options(cmd, a->cfg.task);
  cmd->add_option("--max-shard-mb", a->max_shard_mb, "Split --out weights into shards of this size (0: one file)")
      ->capture_default_str();
  cmd->add_option("--steps", a->steps, "GRPO steps")->capture_default_str();
  cmd->add_option("--metrics-out", a->metrics_out, "Write one JSON object per step (JSONL)");
  cmd->add_option("--out", a->out, "Save the trained model to this folder");
  cmd->add_option("--dtype", a->dtype, "Checkpoint dtype: f32 | bf16 | f16")->capture_default_str();
  cmd->add_option("--eval-every", a->eval_every, "Held-out evaluation interval (0: off)")
      ->capture_default_str();
  cmd->add_option("--eval-n", a->eval_n, "Held-out prompts per evaluation")->capture_default_str();
  add_grpo_options(cmd, *a);
  add_threads_option(cmd, a->threads);
  cmd->callback([a, cmd] {
    finalize(*a, cmd);
    apply_threads(a->threads);
    TrainSummary s = run_train(*a);
    json j = {{"base_eval_accuracy", s.base}, {"final_eval_accuracy", s.final},
              {"steps", s.steps}, {"wall_s", s.wall}, {"tokens_per_s", s.tokens_per_s}};
    j["time_to_plus40_s"] = s.time_to_40 >= 0 ? json(s.time_to_40) : json(nullptr);
    j["step_to_plus40"] = s.step_to_40 >= 0 ? json(s.step_to_40) : json(nullptr);
    std::printf("%s\n", j.dump().c_str());
  });
}

void add_eval(CLI::App& app) {
  struct Args {
    std::string model;
    TaskSpec task;
    int n = 500, max_new_tokens = 16, threads = 0;
    std::string precision = "fp32", device = "cpu";
    PromptOptions prompt;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval", "Held-out greedy accuracy as one JSON line");
  cmd->add_option("--model", a->model, "Model folder")->required();
  add_task_options(cmd, a->task);
  cmd->add_option("--n", a->n, "Held-out prompts")->capture_default_str();
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Completion length limit")
      ->capture_default_str();
  cmd->add_option("--precision", a->precision, "Linear layers: fp32 | bf16 | fp8")->capture_default_str();
  add_device_option(cmd, a->device);
  add_prompt_options(cmd, a->prompt);
  add_threads_option(cmd, a->threads);
  cmd->callback([a] {
    apply_threads(a->threads);
    const at::Device device = parse_device(a->device);
    auto task = make_task(a->task);
    auto model = load_model(a->model);
    model->set_precision(parse_precision(a->precision));
    model->to(device);
    auto tok = tokenizer_for(a->model, model->config(), a->prompt);
    EvalResult e = evaluate(*model, *tok, *task, a->n, a->max_new_tokens);
    json j = eval_json(e);
    j["model"] = a->model;
    j["task"] = a->task.dataset.empty() ? a->task.name : a->task.dataset;
    std::printf("%s\n", j.dump().c_str());
  });
}

}  // namespace

void add_model_shape_options(CLI::App& cmd, ModelConfig& shape) {
  cmd.add_option("--hidden", shape.hidden_size, "Model width")->capture_default_str();
  cmd.add_option("--layers", shape.num_hidden_layers, "Transformer blocks")->capture_default_str();
  cmd.add_option("--heads", shape.num_attention_heads, "Attention heads")->capture_default_str();
  cmd.add_option("--kv-heads", shape.num_key_value_heads, "Key/value heads (GQA)")
      ->capture_default_str();
  cmd.add_option("--intermediate", shape.intermediate_size, "SwiGLU width")->capture_default_str();
}

void add_commands(CLI::App& app) {
  add_pretrain(app);
  add_train(app);
  add_eval(app);
}

}  // namespace cohort::grpo
