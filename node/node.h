// The peer node: joins a coordinator over the Noise channel, fetches and verifies the signed
// weights (only tensors whose digest changed), works leases on its DeviceGroup (generate groups
// with the lease's per-prompt seeds → rewards → GRPO gradient sums → reduce → encode → sign),
// reconnects with exponential backoff and jitter, and leaves gracefully on SIGINT/SIGTERM.
//
//   NodeOptions o{.host = "127.0.0.1", .port = 7070, .coordinator_key = hex, .key_file = "node.key"};
//   run_node(o);   // returns when the round completes; throws cohort::Error with an exit code
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cohort::node {

// Misbehaviour a node can be told to show, for the fault tests (docs/OPERATOR.md).
enum class Fault {
  none,
  false_reward,   // claims +1 on its first completion's reward
  replay,         // sends every accepted update a second time
  poison,         // honest rewards, a reversed, scaled, noisy gradient
  worker_throw,   // the last local worker throws on the first lease, which is given back
  hoard,          // computes nothing: asks for work again and again naming every lease it got
  churn,          // computes nothing: asks for work again and again naming a made-up lease
  // Adversaries of docs/OPERATOR.md ("Untrusted peers"), each honest in everything else:
  sign_flip,      // the gradient reversed
  scaled,         // the gradient ×10
  noise,          // the gradient plus Gaussian noise of 3× its RMS
  nan,            // a NaN in the encoded gradient
  zero,           // free-rider: honest completions, a zero gradient
  stop_only,      // free-rider: every completion the stop token alone, reward 0, zero gradient
  lazy,           // keeps the first weights it loaded and labels its work with the lease's version
  cherry_pick,    // samples each group twice, keeps the better-scored completion of each slot
  copycat,        // honest completions, the gradient another colluder wrote to --collude-dir
  collude,        // honest completions, a poison direction every colluder shares (×its own norm)
  rubber_stamp,   // as a validator: reports without recomputing (everything re-sampled the same)
  sybil,          // one process, many keys: sends reversed gradients; refused a key, makes another
};
// "false-reward" | "replay" | "poison" | "worker-throw" | "hoard" | "churn" | "sign-flip" |
// "scaled" | "noise" | "nan" | "zero" | "stop-only" | "lazy" | "cherry-pick" | "copycat" |
// "collude" | "rubber-stamp" | "sybil" | "" (none); throws cohort::Error.
Fault parse_fault(const std::string& name);

struct NodeOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 7070;
  std::string coordinator_key;   // hex Ed25519 public key (pinned)
  std::string key_file;          // created (mode 0600) when missing
  std::string name;              // display name
  uint32_t max_batch = 0;        // most prompts (groups) per lease; 0: coordinator decides
  int threads = 0;               // LibTorch/BLAS threads (0: all cores)
  int devices = 1;               // CPU workers (threads), when `gpus` is empty
  std::vector<int> gpus;         // GPU workers (CUDA ordinals), one each, reduced with NCCL
  std::string precision = "fp32";  // linear layers: fp32 | bf16 | fp8 (grpo/model.h)
  // Local copies of the files a round may name; the coordinator advertises their BLAKE2b-256 and
  // the node refuses to work (exit 3) when a file is missing or differs.
  std::string dataset;           // the round's JSONL dataset ([task] dataset)
  std::string tokenizer_dir;     // a Hugging Face model's folder (tokenizer.json, tokenizer_config.json)
  std::string summary_out;       // JSON summary at exit (bench e2e)
  int64_t max_leases = 0;        // leave after this many accepted leases (0: until the round ends)
  double max_backoff_s = 30;
  double give_up_s = 0;          // stop reconnecting after this long without a connection (0: never)
  Fault fault = Fault::none;     // fault injection for the fault tests
  int64_t delay_ms = 0;          // sleep after computing, before sending (slow / stale peer)
  // Fault tests: a folder colluding nodes share; each writes the gradient of its last lease there
  // and a copycat sends it as its own.
  std::string collude_dir;
  // Ask for the next lease and fetch its weights while computing the current one, so the link's
  // round trips and downloads overlap with compute (docs/PEER.md). Off: one lease at a time.
  bool ask_ahead = true;
  // The volunteer's caps on this node's traffic with the coordinator, in Mbit/s (0: none).
  double max_upload_mbps = 0;
  double max_download_mbps = 0;
  std::vector<std::string> mirrors;  // blob mirrors tried before the manifest's (--mirror)
  // Volunteer controls (node/volunteer.h): work only while the machine is otherwise idle (other
  // processes' share of the CPU at most idle_threshold, no other process on the node's GPUs),
  // and the live status line on a terminal.
  bool when_idle = false;
  double idle_threshold = 0.25;
  bool status_line = true;
};

// Returns when the round is complete or the node was asked to leave (or was stopped by a
// signal). Throws cohort::Error whose exit_code() says why it could not go on: 2 not admitted
// or refused, 3 the node lacks a file the round names or holds a different one (dataset,
// tokenizer), 1 anything else (e.g. round settings it cannot use, or no coordinator for
// give_up_s).
void run_node(const NodeOptions& options);

}  // namespace cohort::node
