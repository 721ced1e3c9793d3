#include "node/commands.h"

#include <CLI/CLI.hpp>

#include <cstdlib>
#include <memory>

#include "common/check.h"
#include "node/device_group.h"
#include "node/node.h"

namespace cohort::node {

void add_commands(CLI::App& app) {
  auto* node = app.add_subcommand("node", "Peer node: contribute compute to a round");
  node->require_subcommand(1);
  auto o = std::make_shared<NodeOptions>();
  auto addr = std::make_shared<std::string>();
  auto* run = node->add_subcommand("run", "Join a coordinator and work leases until the round ends");
  run->add_option("--coordinator", *addr, "Coordinator address HOST:PORT")->required();
  run->add_option("--coordinator-key", o->coordinator_key, "Coordinator public key (64 hex characters)")
      ->required();
  run->add_option("--key", o->key_file, "This node's key file (created with mode 0600 when missing)")
      ->required();
  run->add_option("--name", o->name, "Display name")->capture_default_str();
  run->add_option("--max-batch", o->max_batch, "Most prompts (groups) per lease (0: coordinator decides)")
      ->capture_default_str();
  run->add_option("--threads", o->threads, "CPU threads (default: all cores)");
  auto devices = std::make_shared<std::string>("1");
  run->add_option("--devices", *devices,
                  "Local workers, one model replica each; the lease is split among them by measured "
                  "throughput and their gradients are reduced before one signed update leaves. N: N CPU "
                  "workers. cuda: one worker per visible GPU; cuda:0,1: GPUs 0 and 1 (needs a CUDA build "
                  "of LibTorch; several GPUs are reduced with NCCL, node/nccl_collective.h)")
      ->capture_default_str();
  run->add_option("--precision", o->precision,
                  "Linear layers: fp32 | bf16 | fp8 (FP8 GEMM operands, FP32 accumulation)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16", "fp8"}));
  run->add_option("--dataset", o->dataset,
                  "The round's JSONL dataset (must be byte-identical to the coordinator's)");
  run->add_option("--tokenizer", o->tokenizer_dir,
                  "Folder with the round's model tokenizer.json / tokenizer_config.json (Hugging Face models)");
  run->add_option("--summary-out", o->summary_out, "Write a JSON summary here at exit");
  run->add_option("--max-leases", o->max_leases, "Leave after this many accepted leases (0: never)")
      ->capture_default_str();
  run->add_flag("--ask-ahead,!--no-ask-ahead", o->ask_ahead,
               "Ask for the next lease and fetch its weights while computing the current one "
               "(default on; off: one lease at a time)");
  run->add_option("--max-upload-mbps", o->max_upload_mbps,
                  "Cap on what this node sends, in Mbit/s (0: none); updates take longer to send")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  run->add_option("--max-download-mbps", o->max_download_mbps,
                  "Cap on what this node receives over the channel, in Mbit/s (0: none); weights "
                  "take longer to fetch")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  run->add_option("--mirror", o->mirrors,
                  "Base URL of a blob mirror (serving GET URL/blobs/<hex>), tried before the "
                  "round's own mirrors; every byte is checked against its signed digest "
                  "(repeatable)");
  run->add_option("--max-backoff", o->max_backoff_s, "Longest wait between reconnection attempts (s)")
      ->capture_default_str();
  run->add_option("--give-up-after", o->give_up_s, "Stop after this long without a coordinator (s, 0: never)")
      ->capture_default_str();
  // Fault injection for the fault tests; hidden from --help (group "").
  auto fault = std::make_shared<std::string>();
  run->add_option("--fault", *fault, "Test only: false-reward | replay | poison | worker-throw | hoard | churn")->group("");
  run->add_option("--delay-ms", o->delay_ms, "Test only: sleep before sending each update")->group("");
  run->callback([o, addr, devices, fault] {
    o->fault = parse_fault(*fault);
    if (devices->rfind("cuda", 0) == 0) {
      o->gpus = parse_gpu_list(*devices);
      o->devices = static_cast<int>(o->gpus.size());
    } else {
      const std::string& d = *devices;
      if (d.empty() || d.size() > 3 || d.find_first_not_of("0123456789") != std::string::npos)
        throw Error("--devices must be a number of CPU workers, \"cuda\" or \"cuda:0,1,...\" (got '" + d + "')");
      o->devices = std::stoi(d);
    }
    auto colon = addr->rfind(':');
    if (colon == std::string::npos) throw Error("--coordinator must be HOST:PORT");
    o->host = addr->substr(0, colon);
    o->port = static_cast<uint16_t>(std::stoi(addr->substr(colon + 1)));
    if (o->name.empty()) o->name = "node";
    run_node(*o);
  });
}

}  // namespace cohort::node
