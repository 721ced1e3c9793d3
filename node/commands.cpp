#include "node/commands.h"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <tuple>

#include "common/check.h"
#include "exchange/round_card.h"
#include "node/device_group.h"
#include "node/join.h"
#include "node/volunteer.h"
#include "protocol/identity.h"
#include "node/node.h"

namespace cohort::node {

namespace {

// The options of working a round, shared by `node run` and `node join`. `devices` and `fault` are
// parsed by finish_work_options once CLI11 has filled them.
void add_work_options(CLI::App* cmd, NodeOptions& o, std::string& devices, std::string& fault) {
  cmd->add_option("--key", o.key_file,
                  "This node's identity key file (created with mode 0600 when missing; default: "
                  "$XDG_CONFIG_HOME/cohort/node.key, i.e. ~/.config/cohort/node.key)");
  cmd->add_option("--name", o.name, "Display name")->capture_default_str();
  cmd->add_option("--max-batch", o.max_batch, "Most prompts (groups) per lease (0: coordinator decides)")
      ->capture_default_str();
  cmd->add_option("--threads", o.threads, "CPU threads (default: all cores)");
  cmd->add_option("--devices", devices,
                  "Local workers, one model replica each; the lease is split among them by measured "
                  "throughput and their gradients are reduced before one signed update leaves. N: N CPU "
                  "workers. cuda: one worker per visible GPU; cuda:0,1: GPUs 0 and 1 (needs a CUDA build "
                  "of LibTorch; several GPUs are reduced with NCCL, node/nccl_collective.h)")
      ->capture_default_str();
  cmd->add_option("--precision", o.precision,
                  "Linear layers: fp32 | bf16 | fp8 (FP8 GEMM operands, FP32 accumulation)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16", "fp8"}));
  cmd->add_option("--summary-out", o.summary_out, "Write a JSON summary here at exit");
  cmd->add_option("--max-leases", o.max_leases, "Leave after this many accepted leases (0: never)")
      ->capture_default_str();
  cmd->add_flag("--ask-ahead,!--no-ask-ahead", o.ask_ahead,
                "Ask for the next lease and fetch its weights while computing the current one "
                "(default on; off: one lease at a time)");
  cmd->add_option("--max-upload-mbps", o.max_upload_mbps,
                  "Cap on what this node sends, in Mbit/s (0: none); updates take longer to send")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--max-download-mbps", o.max_download_mbps,
                  "Cap on what this node receives over the channel, in Mbit/s (0: none); weights "
                  "take longer to fetch")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--mirror", o.mirrors,
                  "Base URL of a blob mirror (serving GET URL/blobs/<hex>), tried before the "
                  "round's own mirrors; every byte is checked against its signed digest "
                  "(repeatable)");
  cmd->add_option("--max-backoff", o.max_backoff_s, "Longest wait between reconnection attempts (s)")
      ->capture_default_str();
  cmd->add_option("--give-up-after", o.give_up_s, "Stop after this long without a coordinator (s, 0: never)")
      ->capture_default_str();
  cmd->add_flag("--when-idle", o.when_idle,
                "Work only while this machine is otherwise idle: pause (after the lease in hand) "
                "when other processes use more than --idle-threshold of the CPU or another process "
                "uses the node's GPUs; resume after 30 s of quiet");
  cmd->add_option("--idle-threshold", o.idle_threshold,
                  "With --when-idle: the share of the whole machine's CPU other processes may use")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_flag("!--no-status-line", o.status_line,
                "No live status line on the terminal (it is never drawn when stderr is not a terminal)");
  // Fault injection for the fault tests; hidden from --help (group "").
  cmd->add_option("--fault", fault, "Test only: false-reward | replay | poison | worker-throw | hoard | churn | sign-flip | scaled | noise | nan | zero | stop-only | lazy | cherry-pick | copycat | collude | rubber-stamp | sybil")->group("");
  cmd->add_option("--collude-dir", o.collude_dir, "Test only: a folder colluding nodes share (copycat reads the gradient others leave there)")->group("");
  cmd->add_option("--delay-ms", o.delay_ms, "Test only: sleep before sending each update")->group("");
}

void finish_work_options(NodeOptions& o, const std::string& devices, const std::string& fault) {
  o.fault = parse_fault(fault);
  if (devices.rfind("cuda", 0) == 0) {
    o.gpus = parse_gpu_list(devices);
    o.devices = static_cast<int>(o.gpus.size());
  } else {
    if (devices.empty() || devices.size() > 3 || devices.find_first_not_of("0123456789") != std::string::npos)
      throw Error("--devices must be a number of CPU workers, \"cuda\" or \"cuda:0,1,...\" (got '" + devices + "')");
    o.devices = std::stoi(devices);
  }
  if (o.key_file.empty()) o.key_file = default_key_file().string();
  if (o.name.empty()) o.name = "node";
}

}  // namespace

void add_commands(CLI::App& app) {
  auto* node = app.add_subcommand("node", "Peer node: contribute compute to a round");
  node->require_subcommand(1);
  auto devices = std::make_shared<std::string>("1");
  auto fault = std::make_shared<std::string>();

  auto o = std::make_shared<NodeOptions>();
  auto addr = std::make_shared<std::string>();
  auto* run = node->add_subcommand("run", "Join a coordinator and work leases until the round ends");
  run->add_option("--coordinator", *addr, "Coordinator address HOST:PORT")->required();
  run->add_option("--coordinator-key", o->coordinator_key, "Coordinator public key (64 hex characters)")
      ->required();
  run->add_option("--dataset", o->dataset,
                  "The round's JSONL dataset (must be byte-identical to the coordinator's)");
  run->add_option("--tokenizer", o->tokenizer_dir,
                  "Folder with the round's model tokenizer.json / tokenizer_config.json (Hugging Face models)");
  add_work_options(run, *o, *devices, *fault);
  run->callback([o, addr, devices, fault] {
    finish_work_options(*o, *devices, *fault);
    const auto address = exchange::split_host_port(*addr);
    if (!address) throw Error("--coordinator must be HOST:PORT, port 1..65535 (got '" + *addr + "')");
    std::tie(o->host, o->port) = *address;
    run_node(*o);
  });

  // Pause and resume a running node (the one using --key), without it leaving the round.
  for (const bool pause : {true, false}) {
    auto key = std::make_shared<std::string>();
    auto* c = node->add_subcommand(
        pause ? "pause" : "resume",
        pause ? "Pause the running node: it finishes the lease in hand, delivers it, and takes no "
                "more work until resumed (it stays in the round)"
              : "Resume a paused node");
    c->add_option("--key", *key, "The node's key file (default: the XDG one, as for node run)");
    c->callback([key, pause] {
      const std::string k = key->empty() ? default_key_file().string() : *key;
      signal_node(k, pause);
      std::printf("%s the node using %s\n", pause ? "paused" : "resumed", k.c_str());
    });
  }

  // This node's own record in a round: its credit (verified work), refusals, last seen.
  auto st_url = std::make_shared<std::string>();
  auto st_key = std::make_shared<std::string>();
  auto* st = node->add_subcommand("status", "This node's credit and record in a round, from its status page");
  st->add_option("round", *st_url,
                 "The round: its card (http://HOST:PORT/round or a file) or its status URL "
                 "(http://HOST:PORT or http://HOST:PORT/status)")
      ->required();
  st->add_option("--key", *st_key, "The node's key file (default: the XDG one)");
  st->callback([st_url, st_key] {
    const std::string k = st_key->empty() ? default_key_file().string() : *st_key;
    const std::string me = protocol::Identity::load(k).id().hex();
    std::printf("%s\n", peer_status_text(*st_url, me).c_str());
  });

  auto jo = std::make_shared<NodeOptions>();
  auto join = std::make_shared<JoinOptions>();
  auto* jc = node->add_subcommand(
      "join",
      "Join a public round from its card (the coordinator's GET /round, or a card file): check its "
      "signature, fetch the files it names into the cache (resumable, verified, never twice), work");
  jc->add_option("card", join->card, "The round card: http://HOST:PORT/round or a file")->required();
  jc->add_option("--coordinator-key", join->coordinator_key,
                 "The key the card must be signed by (64 hex, from the round's operator); without "
                 "it the card's key is trusted on first use and remembered for its round id");
  jc->add_option("--cache-dir", join->cache_dir,
                 "Where fetched files are kept (default: $XDG_CACHE_HOME/cohort, i.e. ~/.cache/cohort)");
  add_work_options(jc, *jo, *devices, *fault);
  jc->callback([jo, join, devices, fault] {
    finish_work_options(*jo, *devices, *fault);
    const JoinedRound r = join_round(*join);
    if (auto it = r.card.memory_bytes.find(jo->precision); it != r.card.memory_bytes.end()) {
      const double need = double(it->second), ram = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGESIZE));
      spdlog::info("node: the card estimates {:.2f} GiB per worker device at {}", need / (1 << 30), jo->precision);
      if (jo->gpus.empty() && need * jo->devices > ram)
        spdlog::warn("node: {} CPU worker(s) need about {:.1f} GiB, this machine has {:.1f} GiB of RAM",
                     jo->devices, need * jo->devices / (1 << 30), ram / (1 << 30));
    }
    jo->host = r.host;
    jo->port = r.port;
    jo->coordinator_key = r.card.coordinator_key;
    jo->dataset = r.dataset;
    jo->tokenizer_dir = r.tokenizer_dir;
    run_node(*jo);
  });
}

}  // namespace cohort::node
