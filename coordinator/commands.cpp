#include "coordinator/commands.h"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/runtime.h"
#include "coordinator/coordinator.h"
#include "tools/local_cluster.h"
#include "grpo/checkpoint.h"
#include "grpo/tokenizer.h"
#include "grpo/tokenizer.h"
#include "grpo/trainer.h"

namespace cohort::coordinator {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using tools::Endpoint;
using tools::Subprocess;
using tools::http_get;
using tools::self_executable;
using tools::wait_for_endpoint;

void add_serve(CLI::App& parent) {
  struct Args {
    std::string config, model, dataset, eval_dataset, reward, system_prompt;
    int threads = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = parent.add_subcommand("serve", "Run (or resume) the round described by a TOML file");
  cmd->add_option("--config", a->config, "Round config (docs/ROUND_CONFIG.md)")->required();
  cmd->add_option("--threads", a->threads, "CPU threads for the optimizer and evaluation");
  // The same names as `cohort train`; each replaces the config's key.
  cmd->add_option("--model", a->model, "Model folder ([model] path): a Hugging Face folder or a cohort checkpoint");
  cmd->add_option("--dataset", a->dataset, "JSONL dataset ([task] dataset); peers need the same file");
  cmd->add_option("--eval-dataset", a->eval_dataset, "JSONL held-out set ([task] eval_dataset)");
  cmd->add_option("--reward", a->reward, "Dataset reward ([task] reward): math");
  cmd->add_option("--system-prompt", a->system_prompt,
                  "Chat models ([model] system_prompt): r1 | default | text");
  cmd->callback([a] {
    if (a->threads > 0) set_num_threads(a->threads);
    RoundConfig cfg = RoundConfig::load(a->config, /*check=*/false);
    if (!a->model.empty()) cfg.model_path = a->model;
    if (!a->dataset.empty()) cfg.grpo.task.dataset = a->dataset;
    if (!a->eval_dataset.empty()) cfg.grpo.task.eval_dataset = a->eval_dataset;
    if (!a->reward.empty()) cfg.grpo.task.reward = a->reward;
    if (!a->system_prompt.empty()) cfg.system_prompt = a->system_prompt;
    cfg.validate();
    Coordinator c(cfg);
    c.serve();
  });
}

void add_status(CLI::App& parent) {
  struct Args {
    std::string data_dir, url;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = parent.add_subcommand("status", "Round status as JSON (live over HTTP, else from the ledger)");
  cmd->add_option("--data-dir", a->data_dir, "The round's data directory");
  cmd->add_option("--url", a->url, "Status endpoint HOST:PORT (default: from <data-dir>/endpoint.json)");
  cmd->callback([a] {
    if (a->data_dir.empty() && a->url.empty()) throw Error("give --data-dir or --url");
    std::string host;
    int port = 0;
    if (!a->url.empty()) {
      auto colon = a->url.rfind(':');
      if (colon == std::string::npos) throw Error("--url must be HOST:PORT");
      host = a->url.substr(0, colon);
      port = std::stoi(a->url.substr(colon + 1));
    } else if (fs::exists(endpoint_path(a->data_dir))) {
      std::ifstream in(endpoint_path(a->data_dir));
      auto ep = json::parse(in);
      host = ep.value("host", "127.0.0.1");
      port = ep.value("status_port", 0);
    }
    std::string body;
    if (port > 0) {
      try {
        body = http_get(host, port, "/status");
      } catch (const Error& e) {
        if (a->data_dir.empty()) throw;
      }
    }
    if (body.empty()) {
      json j = json::parse(status_json_from_ledger(a->data_dir));
      j["live"] = false;
      body = j.dump();
    }
    std::printf("%s\n", json::parse(body).dump(2).c_str());
  });
}

// -------------------------------------------------------------------------------------------
// `cohort demo`

struct DemoArgs {
  std::string dir = "runs/demo";
  int steps = 60;
  int staleness = 0;  // synchronous, as `cohort train` (see docs/RESULTS.md for S = 1)
  int prompts_per_step = 32;
  double lr = 3e-4;
  int threads = 0;
  int eval_n = 500;
  std::string codec = "fp8";  // gradient_codec: fp8 | raw | topk
  uint64_t seed = 1;          // the round's seed (prompt stream, sampling seeds)
  int digits = 2;             // arith operands of up to this many digits
  double beta = 0;            // [grpo] beta: the KL term to the initial weights
};

std::string demo_round_toml(const DemoArgs& a, const std::string& base, const std::string& data_dir) {
  std::string t;
  t += "[round]\nid = \"demo\"\nsteps = " + std::to_string(a.steps) +
       "\nprompts_per_step = " + std::to_string(a.prompts_per_step) +
       "\nstaleness_bound = " + std::to_string(a.staleness) + "\nlease_timeout_s = 120\nreconnect_grace_s = 5\ncheckpoint_interval = 10\n"
       "data_dir = \"" + data_dir + "\"\nseed = " + std::to_string(a.seed) + "\nlinger_s = 3\n\n";
  t += "[network]\nlisten = \"127.0.0.1:0\"\nstatus_listen = \"127.0.0.1:0\"\n\n";
  t += "[admission]\nmode = \"open\"\n\n";
  t += "[model]\npath = \"" + base + "\"\n\n";
  t += "[task]\nname = \"arith\"\ndigits = " + std::to_string(a.digits) + "\n\n";
  char lr[32];
  std::snprintf(lr, sizeof lr, "%g", a.lr);
  char beta[32];
  std::snprintf(beta, sizeof beta, "%g", a.beta);
  t += std::string("[grpo]\ngroup_size = 8\nlr = ") + lr + "\nbeta = " + beta +
       "\nloss = \"dapo\"\ngradient_codec = \"" + a.codec + "\"\n\n";
  t += "[sampling]\ntemperature = 1.0\nmax_new_tokens = 16\n";
  return t;
}

int run_demo(const DemoArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  if (a.threads > 0) set_num_threads(a.threads);
  fs::create_directories(a.dir);
  const std::string dir = fs::absolute(a.dir).string();
  // One base per operand size (pretrained once, kept).
  const std::string base = dir + (a.digits == 2 ? "/base" : "/base-d" + std::to_string(a.digits));
  grpo::TaskSpec spec;  // arith, the defaults of `cohort train`
  spec.digits = a.digits;
  auto task = grpo::make_task(spec);
  grpo::CharTokenizer tok;
  if (!fs::exists(base + "/config.json")) {
    spdlog::info("demo: pretraining a weak base model into {} (once; about 2 minutes on 2 cores)", base);
    grpo::PretrainConfig p;
    p.task = spec;
    p.model = grpo::task_model_config();
    p.stop_at_accuracy = 0.25;
    p.eval_every = 50;
    grpo::Model model(p.model, p.seed);
    grpo::pretrain(model, tok, *task, p);
    grpo::save_model(base, model);
  }
  auto before_model = grpo::load_model(base);
  const grpo::EvalResult before = grpo::evaluate(*before_model, tok, *task, a.eval_n, 16);
  spdlog::info("demo: base model held-out accuracy {:.1f}% (n={})", 100 * before.accuracy, a.eval_n);

  const std::string round_dir = dir + "/round";
  fs::remove_all(round_dir);
  fs::create_directories(round_dir);
  const std::string config = dir + "/round.toml";
  std::ofstream(config) << demo_round_toml(a, base, round_dir);

  const std::string exe = self_executable();
  Subprocess coord = Subprocess::spawn({exe, "coordinator", "serve", "--config", config});
  Endpoint ep = wait_for_endpoint(round_dir, 60, coord.pid());
  // Three peers with different capacities: threads and the most prompts they take per lease.
  struct Peer {
    std::string name, threads, max_batch;
  };
  const std::vector<Peer> peers = {{"big", "2", "16"}, {"medium", "1", "8"}, {"small", "1", "4"}};
  std::vector<Subprocess> nodes;
  fs::create_directories(dir + "/keys");
  for (const auto& p : peers) {
    nodes.push_back(Subprocess::spawn(
        {exe, "node", "run", "--coordinator", ep.host + ":" + std::to_string(ep.port), "--coordinator-key",
         ep.coordinator_key, "--key", dir + "/keys/" + p.name + ".key", "--name", p.name, "--threads",
         p.threads, "--max-batch", p.max_batch, "--give-up-after", "60"},
        dir + "/node-" + p.name + ".log"));
  }
  spdlog::info("demo: coordinator pid {} on {}:{}, nodes big/medium/small (logs in {}/node-*.log), "
               "status: cohort coordinator status --data-dir {}",
               coord.pid(), ep.host, ep.port, dir, round_dir);
  const int rc = coord.wait().value_or(1);
  for (auto& n : nodes)
    if (!n.wait(15)) n.signal(SIGTERM);
  for (auto& n : nodes) n.wait(10);
  if (rc != 0) {
    std::fprintf(stderr, "demo: the coordinator exited with %d\n", rc);
    return rc;
  }
  char ck[64];
  std::snprintf(ck, sizeof ck, "/checkpoints/step-%06d", a.steps);
  auto after_model = grpo::load_model(round_dir + ck);
  const grpo::EvalResult after = grpo::evaluate(*after_model, tok, *task, a.eval_n, 16);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("held-out accuracy on arith (%d digits): before %.1f%%, after %.1f%% (%d GRPO steps, "
              "3 nodes, codec %s, seed %llu, %.0f s)\n",
              a.digits, 100 * before.accuracy, 100 * after.accuracy, a.steps, a.codec.c_str(),
              static_cast<unsigned long long>(a.seed), wall);
  return 0;
}

void add_demo(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  auto* cmd = app.add_subcommand(
      "demo", "Decentralized GRPO on arith: a coordinator and three peer nodes on loopback");
  cmd->add_option("--dir", a->dir, "Working folder (the pretrained base is kept here)")->capture_default_str();
  cmd->add_option("--steps", a->steps, "GRPO steps")->capture_default_str();
  cmd->add_option("--prompts-per-step", a->prompts_per_step, "Prompts (groups) per step")->capture_default_str();
  cmd->add_option("--lr", a->lr, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--staleness", a->staleness, "Staleness bound S")->capture_default_str();
  cmd->add_option("--eval-n", a->eval_n, "Held-out prompts for before/after")->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads of this process (pretraining, evaluation)");
  cmd->add_option("--codec", a->codec, "Gradient codec of the round: fp8 | raw | topk")
      ->check(CLI::IsMember({"fp8", "raw", "topk"}))
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "The round's seed (prompts drawn, completions sampled)")
      ->capture_default_str();
  cmd->add_option("--digits", a->digits, "Arith operands of up to this many digits (a base per value)")
      ->check(CLI::Range(1, 9))
      ->capture_default_str();
  cmd->add_option("--beta", a->beta,
                  "KL coefficient to the initial weights ([grpo] beta; 0: no KL term, no reference policy)")
      ->check(CLI::Range(0.0, 10.0))
      ->capture_default_str();
  cmd->callback([a] {
    if (const int rc = run_demo(*a); rc != 0) throw Error("the demo failed (see the log above)", rc);
  });
}

}  // namespace

void add_commands(CLI::App& app) {
  auto* coord = app.add_subcommand("coordinator", "Coordinator of a decentralized round");
  coord->require_subcommand(1);
  add_serve(*coord);
  add_status(*coord);
  add_demo(app);
}

}  // namespace cohort::coordinator
