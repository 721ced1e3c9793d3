// `cohort bench e2e`: a coordinator and N node processes on loopback running a short round;
// reports samples/s, seconds per step, the fraction of wall time the nodes spend computing, the
// coordinator's time per step (aggregation + optimizer + publication), the bytes per update and
// per step and node, and the audits. Options shape it like a real round: a model size, a
// codec, each node's link (its own upload/download caps), audits and the nodes' precision.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <sqlite3.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "bench/bench.h"
#include "common/check.h"
#include "common/cpu_allocator.h"
#include "coordinator/coordinator.h"
#include "tools/local_cluster.h"
#include "grpo/checkpoint.h"
#include "grpo/commands.h"
#include "grpo/tokenizer.h"

namespace cohort::bench {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using tools::Subprocess;

struct E2EArgs {
  int nodes = 3;
  // A round long enough that the first and last steps (nothing to take ahead) weigh little:
  // the configuration docs/RESULTS.md reports.
  int steps = 30;
  int prompts_per_step = 96;
  int group_size = 8;
  int staleness = 1;
  int node_threads = 1;
  std::string model;  // default: a random-init model of the built-in shape
  std::string codec = "fp8";
  std::string ledger_sync = "full";
  bool ask_ahead = true;  // nodes pipeline the link with compute (node run --ask-ahead)
  std::string dir;
  // A random-init model of this shape when --model is not given.
  grpo::ModelConfig shape = grpo::task_model_config();
  int max_new_tokens = 0;     // 0: the round's default
  double up_mbps = 0, down_mbps = 0;  // every node's link caps (0: none)
  double recompute_fraction = 0;
  std::string node_precision = "fp32";
  int max_batch = 0;          // most prompts per lease (0: the coordinator decides)
  double lr = 0;              // 0: the round's default
  bool bench_reward = false;  // [task] reward = "bench-length": non-zero advantages untrained
  std::string policy_dtype;   // [model] policy_dtype ("": the round's default)
  // A Hugging Face-style random-init model: its tokenizer files from this folder, this vocabulary
  // size (0: the tokenizer's) and model type; nodes get the folder as --tokenizer.
  std::string hf_tokenizer;
  int64_t vocab = 0;
  std::string model_type = "qwen2";
  // tc qdiscs shaping every node's link in the kernel (e.g. "netem delay 20ms loss 0.1%",
  // "tbf rate 20mbit burst 64kb latency 1s"): each node in its own network namespace behind a veth
  // pair, `qdisc_up` on its end, `qdisc_down` on the host's. Root only.
  std::string qdisc_up, qdisc_down;
};

// The path of a system program (PATH, then the sbin folders a non-login root shell may lack).
std::string program(const std::string& name) {
  std::string dirs = std::getenv("PATH") ? std::getenv("PATH") : "";
  dirs += ":/usr/sbin:/sbin:/usr/bin:/bin";
  for (size_t b = 0, e; b <= dirs.size(); b = e + 1) {
    e = dirs.find(':', b);
    if (e == std::string::npos) e = dirs.size();
    const fs::path p = fs::path(dirs.substr(b, e - b)) / name;
    if (e > b && ::access(p.c_str(), X_OK) == 0) return p.string();
  }
  throw Error("bench e2e: `" + name + "` not found (Debian: apt-get install iproute2)");
}

// Runs a command (argv[0] a program name); throws cohort::Error with it when it fails.
void run_command(std::vector<std::string> argv) {
  argv[0] = program(argv[0]);
  tools::Subprocess p = tools::Subprocess::spawn(argv);
  if (p.wait(60).value_or(1) != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
    throw Error("bench e2e: `" + cmd + "` failed (for tc: \"qdisc kind is unknown\" means this kernel lacks it, e.g. netem without CONFIG_NET_SCH_NETEM)");
  }
}

// Kernel-shaped links: node i runs in network namespace cohort-<pid>-<i> and reaches the
// coordinator at 10.231.i.1 over a veth pair; a tc qdisc on the node's end shapes what it sends
// (upload), one on the host's end what it receives (download): netem for delay and loss, tbf or
// htb for rates. Torn down (namespaces and pairs) on destruction or when setting up fails.
class ShapedLinks {
 public:
  ShapedLinks(int nodes, const std::string& up, const std::string& down) {
    if (::geteuid() != 0) throw Error("bench e2e: --qdisc-up/--qdisc-down need root (network namespaces and tc)");
    if (nodes > 250) throw Error("bench e2e: shaped links take one 10.231.i.0/30 per node: at most 250 nodes");
    try {
      for (int i = 0; i < nodes; ++i) add(i, up, down);
    } catch (...) {
      remove_all();
      throw;
    }
  }
  ~ShapedLinks() { remove_all(); }
  ShapedLinks(const ShapedLinks&) = delete;
  ShapedLinks& operator=(const ShapedLinks&) = delete;

  static std::string host_address(int i) { return fmt::format("10.231.{}.1", i); }
  // Node i's command, run inside its namespace.
  std::vector<std::string> wrap(int i, std::vector<std::string> argv) const {
    argv.insert(argv.begin(), {program("ip"), "netns", "exec", namespaces_.at(static_cast<size_t>(i))});
    return argv;
  }

 private:
  static std::vector<std::string> words(const std::string& spec) {
    std::vector<std::string> out;
    for (size_t b = 0, e; b < spec.size(); b = e + 1) {
      e = spec.find(' ', b);
      if (e == std::string::npos) e = spec.size();
      if (e > b) out.push_back(spec.substr(b, e - b));
    }
    return out;
  }
  void add(int i, const std::string& up, const std::string& down) {
    const std::string ns = fmt::format("cohort-{}-{}", ::getpid(), i);
    const std::string host_end = fmt::format("cb{}h{}", ::getpid() % 100000, i);
    const std::string node_end = fmt::format("cb{}n{}", ::getpid() % 100000, i);
    run_command({"ip", "netns", "add", ns});
    namespaces_.push_back(ns);
    run_command({"ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end});
    run_command({"ip", "link", "set", node_end, "netns", ns});
    run_command({"ip", "addr", "add", host_address(i) + "/30", "dev", host_end});
    run_command({"ip", "link", "set", host_end, "up"});
    run_command({"ip", "netns", "exec", ns, "ip", "addr", "add", fmt::format("10.231.{}.2/30", i), "dev", node_end});
    run_command({"ip", "netns", "exec", ns, "ip", "link", "set", node_end, "up"});
    run_command({"ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"});
    if (!down.empty()) {
      std::vector<std::string> q = {"tc", "qdisc", "add", "dev", host_end, "root"};
      for (auto& w : words(down)) q.push_back(std::move(w));
      run_command(q);
    }
    if (!up.empty()) {
      std::vector<std::string> q = {"ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", node_end, "root"};
      for (auto& w : words(up)) q.push_back(std::move(w));
      run_command(q);
    }
  }
  void remove_all() {
    for (const auto& ns : namespaces_) {  // removing a namespace removes its end of the pair, and the pair
      tools::Subprocess p = tools::Subprocess::spawn({program("ip"), "netns", "del", ns});
      p.wait(30);
    }
    namespaces_.clear();
  }

  std::vector<std::string> namespaces_;
};

// What publishing cost per version, from the coordinator's log lines "published vN (dtype):
// snapshot S B in K shards; patch from vM P B (b B/param), C of E elements changed (d %)".
struct Publications {
  double snapshot_bytes = 0;
  int patches = 0;
  double patch_bytes = 0, changed = 0, elements = 0;  // sums over versions with a patch
};

Publications read_publications(const fs::path& log_path) {
  Publications p;
  std::ifstream log(log_path);
  for (std::string line; std::getline(log, line);) {
    const size_t s = line.find("): snapshot ");
    if (line.find("coordinator: published v") == std::string::npos || s == std::string::npos) continue;
    p.snapshot_bytes = std::stod(line.substr(s + 12));
    const size_t pf = line.find("; patch from v");
    if (pf == std::string::npos) continue;
    const size_t b = line.find(' ', pf + 14), of = line.find(" of ", pf), el = line.find(" elements changed", pf);
    const size_t c = line.rfind(", ", of);
    if (b == std::string::npos || of == std::string::npos || el == std::string::npos || c == std::string::npos) continue;
    p.patches++;
    p.patch_bytes += std::stod(line.substr(b + 1));
    p.changed += std::stod(line.substr(c + 2));
    p.elements += std::stod(line.substr(of + 4));
  }
  return p;
}

double query(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  double v = 0;
  if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_double(st, 0);
  sqlite3_finalize(st);
  return v;
}

int run_e2e(const E2EArgs& a) {
  const fs::path dir = a.dir.empty() ? fs::temp_directory_path() / ("cohort-bench-e2e-" + std::to_string(::getpid()))
                                     : fs::path(a.dir);
  fs::remove_all(dir / "round");
  fs::create_directories(dir);
  // Logs and summaries are appended to: a reused --dir starts from empty ones.
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".log" || e.path().extension() == ".json") fs::remove(e.path());
  // This harness only writes the random-init model: what it frees goes back to the system rather
  // than sit in the caching allocator beside the processes it measures.
  set_cpu_allocator_caching(false);
  std::string model = a.model;
  if (model.empty()) {
    model = (dir / "base").string();
    grpo::ModelConfig mc = a.shape;
    if (!a.hf_tokenizer.empty()) {
      // A Hugging Face-style folder: config.json + random weights + the tokenizer's files.
      mc.tokenizer.clear();
      mc.model_type = a.model_type;
      mc.vocab_size = 1 << 20;  // provisional, to read the tokenizer's ids
      const auto tok = grpo::tokenizer_for_model(a.hf_tokenizer, mc);
      mc.vocab_size = a.vocab > 0 ? a.vocab : tok->vocab_size();
      if (mc.vocab_size < tok->vocab_size())
        throw Error(fmt::format("--vocab {} is below the tokenizer's {}", mc.vocab_size, tok->vocab_size()));
      mc.bos_token_id = tok->bos_id();
      mc.eos_token_id = tok->eos_id();
      mc.pad_token_id = tok->pad_id();
    }
    std::printf("bench e2e: random-init model, %.1f M parameters\n", double(mc.parameter_count()) / 1e6);
    grpo::Model m(mc, 1);
    grpo::save_model(model, m);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      if (!a.hf_tokenizer.empty() && fs::exists(fs::path(a.hf_tokenizer) / f))
        fs::copy_file(fs::path(a.hf_tokenizer) / f, fs::path(model) / f, fs::copy_options::overwrite_existing);
  }
  const std::string data = (dir / "round").string();
  const bool shaped = !a.qdisc_up.empty() || !a.qdisc_down.empty();
  std::string toml = fmt::format(
      "[round]\nid = \"bench\"\nsteps = {}\nprompts_per_step = {}\nstaleness_bound = {}\n"
      "checkpoint_interval = 1000000\nmin_peers = {}\ndata_dir = \"{}\"\nlinger_s = 3\nledger_sync = \"{}\"\n"
      "[network]\nlisten = \"{}:0\"\nstatus_listen = \"\"\n[model]\npath = \"{}\"\n{}"
      "[task]\nname = \"arith\"\nreward = \"{}\"\n[grpo]\ngroup_size = {}\ngradient_codec = \"{}\"\n",
      a.steps, a.prompts_per_step, a.staleness, a.nodes, data, a.ledger_sync,
      shaped ? "0.0.0.0" : "127.0.0.1", fs::absolute(model).string(),
      a.policy_dtype.empty() ? std::string() : fmt::format("policy_dtype = \"{}\"\n", a.policy_dtype),
      a.bench_reward ? "bench-length" : "math", a.group_size, a.codec);
  if (a.lr > 0) toml += fmt::format("lr = {}\n", a.lr);
  if (a.max_new_tokens > 0) toml += fmt::format("[sampling]\nmax_new_tokens = {}\n", a.max_new_tokens);
  if (a.recompute_fraction > 0)
    toml += fmt::format("[verification]\nrecompute_fraction = {}\n", a.recompute_fraction);
  const std::string config = (dir / "round.toml").string();
  std::ofstream(config) << toml;
  const std::string exe = tools::self_executable();
  std::optional<ShapedLinks> links;
  if (shaped) links.emplace(a.nodes, a.qdisc_up, a.qdisc_down);
  const auto t0 = std::chrono::steady_clock::now();
  Subprocess coord = Subprocess::spawn({exe, "coordinator", "serve", "--config", config, "--threads", "1"},
                                       (dir / "coordinator.log").string());
  auto ep = tools::wait_for_endpoint(data, 120, coord.pid());
  std::vector<Subprocess> nodes;
  const bool hf = fs::exists(fs::path(model) / "tokenizer.json");
  for (int i = 0; i < a.nodes; ++i) {
    const std::string host = links ? ShapedLinks::host_address(i) : ep.host;
    std::vector<std::string> argv = {exe, "node", "run", "--coordinator", host + ":" + std::to_string(ep.port), "--coordinator-key",
         ep.coordinator_key, "--key", (dir / fmt::format("node{}.key", i)).string(), "--name",
         fmt::format("node{}", i), "--threads", std::to_string(a.node_threads), "--summary-out",
         (dir / fmt::format("node{}.json", i)).string(), "--give-up-after", "30",
         a.ask_ahead ? "--ask-ahead" : "--no-ask-ahead", "--max-upload-mbps", fmt::format("{}", a.up_mbps),
         "--max-download-mbps", fmt::format("{}", a.down_mbps), "--precision", a.node_precision,
         "--max-batch", std::to_string(a.max_batch)};
    if (hf) argv.insert(argv.end(), {"--tokenizer", fs::absolute(model).string()});
    if (links) argv = links->wrap(i, std::move(argv));
    nodes.push_back(Subprocess::spawn(argv, (dir / fmt::format("node{}.log", i)).string()));
  }
  const int rc = coord.wait().value_or(1);
  double node_rss = 0;
  for (auto& n : nodes) {
    n.wait(30);
    node_rss = std::max(node_rss, n.max_rss_bytes());
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rc != 0) {
    std::fprintf(stderr, "bench e2e: coordinator exited with %d (logs in %s)\n", rc, dir.c_str());
    return 1;
  }
  double compute = 0, node_wall = 0, fraction_min = 1;
  // The nodes' time outside compute, summed over nodes: waiting for a lease, fetching or loading
  // weights, for Acks, and for the link's ask-ahead after computing.
  double lease_wait = 0, weights = 0, ack_wait = 0, ahead_wait = 0;
  double join_weights = 0;  // of `weights`, each node's first (a joiner's snapshot), paid once
  double sent = 0, fetched = 0;  // update and weight bytes, all nodes
  double patch_fetched = 0, snapshot_fetched = 0, patches_applied = 0, snapshots_fetched = 0;
  for (int i = 0; i < a.nodes; ++i) {
    std::ifstream in(dir / fmt::format("node{}.json", i));
    if (!in) continue;
    auto j = json::parse(in);
    compute += j.value("compute_s", 0.0);
    node_wall += j.value("wall_s", 0.0);
    fraction_min = std::min(fraction_min, j.value("compute_fraction", 0.0));
    lease_wait += j.value("lease_wait_s", 0.0);
    weights += j.value("weights_s", 0.0);
    join_weights += j.value("join_weights_s", 0.0);
    ack_wait += j.value("ack_wait_s", 0.0);
    ahead_wait += j.value("ahead_wait_s", 0.0);
    sent += j.value("bytes_per_update", 0.0) * j.value("updates_sent", 0.0);
    fetched += j.value("weights_fetched_bytes", 0.0);
    patch_fetched += j.value("weights_patch_bytes", 0.0);
    snapshot_fetched += j.value("weights_snapshot_bytes", 0.0);
    patches_applied += j.value("weights_patches", 0.0);
    snapshots_fetched += j.value("weights_snapshots", 0.0);
  }
  const Publications pubs = read_publications(dir / "coordinator.log");
  sqlite3* db = nullptr;
  sqlite3_open_v2(coordinator::ledger_path(data).c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  const double run_s = (query(db, "SELECT MAX(applied_ms) FROM steps") - query(db, "SELECT MIN(issued_ms) FROM leases")) / 1000.0;
  const double coord_step_s = query(db, "SELECT AVG(aggregate_s + optimizer_s + publish_s) FROM steps");
  const double agg_s = query(db, "SELECT AVG(aggregate_s) FROM steps");
  const double opt_s = query(db, "SELECT AVG(optimizer_s) FROM steps");
  const double pub_s = query(db, "SELECT AVG(publish_s) FROM steps");
  const double bytes = query(db, "SELECT AVG(bytes) FROM updates WHERE accepted = 1");
  const double updates = query(db, "SELECT COUNT(*) FROM updates WHERE accepted = 1");
  std::string refusals;
  {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT reason, COUNT(*) FROM updates WHERE accepted = 0 GROUP BY reason",
                           -1, &st, nullptr) == SQLITE_OK)
      while (sqlite3_step(st) == SQLITE_ROW)
        refusals += fmt::format("{}{} {}", refusals.empty() ? "" : ", ",
                                reinterpret_cast<const char*>(sqlite3_column_text(st, 0)),
                                sqlite3_column_int64(st, 1));
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  // Audits, from the coordinator's log lines "recomputed lease ...: cosine C, norm ratio R".
  int64_t audits = 0;
  double min_cosine = 1, max_ratio_error = 0;
  {
    std::ifstream log(dir / "coordinator.log");
    for (std::string line; std::getline(log, line);) {
      const size_t c = line.find("recomputed lease"), k = line.find("cosine "), r = line.find("norm ratio ");
      if (c == std::string::npos || k == std::string::npos || r == std::string::npos) continue;
      ++audits;
      min_cosine = std::min(min_cosine, std::stod(line.substr(k + 7)));
      max_ratio_error = std::max(max_ratio_error, std::abs(std::stod(line.substr(r + 11)) - 1));
    }
  }
  const double params = static_cast<double>(
      grpo::ModelConfig::load((fs::path(model) / "config.json").string()).parameter_count());
  const double samples = double(a.steps) * a.prompts_per_step * a.group_size;
  const double frac = node_wall > 0 ? compute / node_wall : 0;
  // Once joined: without each node's first weights, the snapshot a joiner fetches once per round
  // (a short run cannot amortize it; a volunteer's hours-long session does).
  const double joined_wall = node_wall - join_weights;
  const double frac_joined = joined_wall > 0 ? compute / joined_wall : 0;
  json j = {{"nodes", a.nodes}, {"steps", a.steps}, {"prompts_per_step", a.prompts_per_step},
            {"group_size", a.group_size}, {"staleness_bound", a.staleness}, {"codec", a.codec}, {"ledger_sync", a.ledger_sync},
            {"ask_ahead", a.ask_ahead},
            {"parameters", params}, {"samples", samples}, {"run_s", run_s}, {"wall_s", wall},
            {"samples_per_s", run_s > 0 ? samples / run_s : 0},
            {"node_compute_fraction", frac}, {"node_compute_fraction_min", fraction_min},
            {"node_compute_fraction_joined", frac_joined},
            {"node_join_weights_s", a.nodes > 0 ? join_weights / a.nodes : 0},
            {"node_lease_wait_fraction", node_wall > 0 ? lease_wait / node_wall : 0},
            {"node_weights_fraction", node_wall > 0 ? weights / node_wall : 0},
            {"node_ack_wait_fraction", node_wall > 0 ? ack_wait / node_wall : 0},
            {"node_ahead_wait_fraction", node_wall > 0 ? ahead_wait / node_wall : 0},
            {"coordinator_step_s", coord_step_s}, {"aggregate_s", agg_s}, {"optimizer_s", opt_s},
            {"publish_s", pub_s}, {"updates", updates}, {"bytes_per_update", bytes},
            {"bytes_per_param", params > 0 ? bytes / params : 0},
            {"seconds_per_step", run_s / a.steps},
            {"update_bytes_per_step_per_node", sent / a.steps / a.nodes},
            {"weight_bytes_per_step_per_node", fetched / a.steps / a.nodes},
            {"qdisc_up", a.qdisc_up}, {"qdisc_down", a.qdisc_down}, {"up_mbps", a.up_mbps}, {"down_mbps", a.down_mbps}, {"node_precision", a.node_precision},
            {"audits", audits}, {"audit_min_cosine", min_cosine},
            {"audit_max_norm_ratio_error", max_ratio_error}, {"refusals", refusals},
            {"policy_dtype", a.policy_dtype.empty() ? "auto" : a.policy_dtype},
            {"snapshot_bytes", pubs.snapshot_bytes},
            {"patch_bytes_mean", pubs.patches ? pubs.patch_bytes / pubs.patches : 0.0},
            {"patch_bytes_per_param", pubs.patches && params > 0 ? pubs.patch_bytes / pubs.patches / params : 0.0},
            {"changed_fraction", pubs.elements > 0 ? pubs.changed / pubs.elements : 0.0},
            {"node_patches_applied", patches_applied}, {"node_snapshots_fetched", snapshots_fetched},
            {"node_patch_bytes", patch_fetched}, {"node_snapshot_bytes", snapshot_fetched},
            {"coordinator_max_rss_bytes", coord.max_rss_bytes()},
            {"coordinator_minor_faults", coord.minor_faults()}, {"node_max_rss_bytes", node_rss}};
  std::printf("e2e: %d nodes, %d steps x %d prompts x G=%d, S=%d, %.0f params, codec %s, %s\n", a.nodes,
              a.steps, a.prompts_per_step, a.group_size, a.staleness, params, a.codec.c_str(),
              a.ask_ahead ? "nodes ask ahead" : "one lease at a time");
  if (a.up_mbps > 0 || a.down_mbps > 0)
    std::printf("  node links                   %g Mbit/s up, %g Mbit/s down (0: uncapped)\n", a.up_mbps,
                a.down_mbps);
  if (shaped)
    std::printf("  kernel-shaped links          up: %s; down: %s\n", a.qdisc_up.empty() ? "-" : a.qdisc_up.c_str(),
                a.qdisc_down.empty() ? "-" : a.qdisc_down.c_str());
  std::printf("  samples/s                    %.1f  (%.0f samples in %.1f s from first lease to last step)\n",
              j["samples_per_s"].get<double>(), samples, run_s);
  std::printf("  seconds per step             %.2f\n", run_s / a.steps);
  std::printf("  node compute fraction        %.1f%%  (min over nodes %.1f%%; target >= 95%%)\n", 100 * frac,
              100 * fraction_min);
  std::printf("  once joined                  %.1f%%  (without each node's first weights: %.1f s on average)\n",
              100 * frac_joined, a.nodes > 0 ? join_weights / a.nodes : 0);
  if (node_wall > 0)
    std::printf("  node time outside compute    lease wait %.1f%%, weights %.1f%%, acks %.1f%%, link %.1f%%\n",
                100 * lease_wait / node_wall, 100 * weights / node_wall, 100 * ack_wait / node_wall,
                100 * ahead_wait / node_wall);
  std::printf("  coordinator per step         %.1f ms  (aggregate %.1f + optimizer %.1f + publish %.1f)\n",
              1e3 * coord_step_s, 1e3 * agg_s, 1e3 * opt_s, 1e3 * pub_s);
  std::printf("  bytes per update             %.0f  (%.4f bytes/param, %.0f updates)\n", bytes,
              params > 0 ? bytes / params : 0, updates);
  std::printf("  bytes per step per node      %.0f up (updates), %.0f down (weights)\n",
              sent / a.steps / a.nodes, fetched / a.steps / a.nodes);
  if (audits > 0)
    std::printf("  audits                       %lld, min cosine %.6f, max |norm ratio - 1| %.6f\n",
                static_cast<long long>(audits), min_cosine, max_ratio_error);
  std::printf("  refused updates              %s\n", refusals.empty() ? "none" : refusals.c_str());
  if (pubs.patches > 0)
    std::printf("  weights per version          patch %.0f B (%.4f bytes/param, %.3f%% of elements changed) "
                "vs snapshot %.0f B (%.2f bytes/param)\n",
                pubs.patch_bytes / pubs.patches, pubs.patch_bytes / pubs.patches / params,
                100 * pubs.changed / std::max(1.0, pubs.elements), pubs.snapshot_bytes,
                pubs.snapshot_bytes / params);
  std::printf("  node weight fetches          %.0f snapshots (%.0f B), %.0f patches (%.0f B), all nodes\n",
              snapshots_fetched, snapshot_fetched, patches_applied, patch_fetched);
  std::printf("  peak RSS                     coordinator %.2f GB, node (max) %.2f GB\n",
              coord.max_rss_bytes() / 1e9, node_rss / 1e9);
  std::printf("  coordinator page faults      %.0f minor (%.0f per step)\n", coord.minor_faults(),
              coord.minor_faults() / a.steps);
  std::printf("%s\n", j.dump().c_str());
  if (a.dir.empty()) fs::remove_all(dir);
  return 0;
}

}  // namespace

void add_e2e_bench(CLI::App& bench) {
  auto a = std::make_shared<E2EArgs>();
  auto* cmd = bench.add_subcommand("e2e", "Coordinator + N nodes on loopback: samples/s, compute fraction, "
                                          "coordinator time per step, bytes per update");
  cmd->add_option("--nodes", a->nodes, "Node processes")->capture_default_str();
  cmd->add_option("--steps", a->steps, "GRPO steps")->capture_default_str();
  cmd->add_option("--prompts-per-step", a->prompts_per_step, "Prompts per step")->capture_default_str();
  cmd->add_option("-G,--group-size", a->group_size, "Completions per prompt")->capture_default_str();
  cmd->add_option("--staleness", a->staleness, "Staleness bound S")->capture_default_str();
  cmd->add_option("--node-threads", a->node_threads, "Threads per node")->capture_default_str();
  cmd->add_option("--model", a->model, "Model folder (default: random init of the built-in shape)");
  cmd->add_option("--codec", a->codec, "Gradient codec: fp8 | raw | topk")->capture_default_str();
  grpo::add_model_shape_options(*cmd, a->shape);  // the random-init model, without --model
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Completion length cap (0: the round's default)");
  cmd->add_option("--lr", a->lr, "AdamW learning rate (0: the round's default)");
  cmd->add_flag("--bench-reward", a->bench_reward,
                "Benchmark-only reward (+ completion length / 64): an untrained model's groups get "
                "non-zero advantages, so real-size runs move real gradients");
  cmd->add_option("--policy-dtype", a->policy_dtype, "[model] policy_dtype: fp32 | bf16 (default: the round's)");
  cmd->add_option("--hf-tokenizer", a->hf_tokenizer,
                  "Random-init model as a Hugging Face folder with this folder's tokenizer.json and "
                  "tokenizer_config.json (nodes get it as --tokenizer)");
  cmd->add_option("--vocab", a->vocab, "With --hf-tokenizer: vocabulary size (0: the tokenizer's)");
  cmd->add_option("--model-type", a->model_type, "With --hf-tokenizer: llama | qwen2")->capture_default_str();
  cmd->add_option("--up-mbps", a->up_mbps, "Every node's upload cap, Mbit/s (0: none)")->capture_default_str();
  cmd->add_option("--down-mbps", a->down_mbps, "Every node's download cap, Mbit/s (0: none)")->capture_default_str();
  cmd->add_option("--recompute-fraction", a->recompute_fraction, "Share of updates the coordinator audits")
      ->capture_default_str();
  cmd->add_option("--node-precision", a->node_precision, "Nodes compute in fp32 | fp8")->capture_default_str();
  cmd->add_option("--max-batch", a->max_batch, "Most prompts per lease (0: the coordinator decides)")
      ->capture_default_str();
  cmd->add_option("--ledger-sync", a->ledger_sync, "Ledger commits: full (fsync) | normal")->capture_default_str();
  cmd->add_flag("--ask-ahead,!--no-ask-ahead", a->ask_ahead,
               "Nodes ask for the next lease while computing (off: one lease at a time)")
      ->capture_default_str();
  cmd->add_option("--qdisc-up", a->qdisc_up,
                  "A tc qdisc on every node's upload, e.g. \"netem delay 20ms loss 0.1%\" or \"tbf rate 20mbit "
                  "burst 64kb latency 1s\": each node in its own network namespace behind a veth pair (root only; "
                  "benchmarks, never make test)");
  cmd->add_option("--qdisc-down", a->qdisc_down, "A tc qdisc on every node's download (as --qdisc-up)");
  cmd->add_option("--dir", a->dir, "Keep the run here (default: a temporary folder, removed)");
  cmd->callback([a] {
    if (const int rc = run_e2e(*a); rc != 0) throw Error("bench e2e failed (see the log above)", rc);
  });
}

}  // namespace cohort::bench
