// What a volunteer controls on their own machine while their node works a round: pause and
// resume without leaving the round (a signal, or `cohort node pause|resume`, found through a pid
// file beside the node's key), work only while the machine is otherwise idle (`--when-idle`:
// other processes' CPU load from /proc, and on GPUs another process on the device), and a live
// status line on a terminal.
//
//   IdleWatch idle({.cpu_threshold = 0.25, .gpus = {0}});   // samples on its own thread
//   if (pause_requested() || idle.busy()) ...                // finish the lease in hand, then wait
//   std::fputs(format_status_line(info).c_str(), stderr);
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace cohort::node {

// SIGUSR1 pauses, SIGUSR2 resumes (install_pause_signals); pause_requested() reads the flag.
void install_pause_signals();
[[nodiscard]] bool pause_requested();

// The pid file of a node using `key_file`: <key_file>.pid, written at start, removed at exit.
[[nodiscard]] std::filesystem::path pid_file_for(const std::filesystem::path& key_file);
// Writes this process's pid there and holds an exclusive lock on it while it lives; removes it
// when destroyed. Throws cohort::Error when another live node holds it (one key, one node).
class PidFile {
 public:
  explicit PidFile(std::filesystem::path path);
  ~PidFile();
  PidFile(const PidFile&) = delete;
  PidFile& operator=(const PidFile&) = delete;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};
// `cohort node pause|resume`: signals the node whose pid file is beside `key_file`, if a live node
// holds its lock. Throws cohort::Error when no node with that key runs.
void signal_node(const std::filesystem::path& key_file, bool pause);

// CPU time counters, in clock ticks: the machine's (all cores, /proc/stat's first line) and this
// process's (every thread, /proc/self/stat's utime + stime).
struct CpuSample {
  uint64_t total = 0, idle = 0;  // idle includes iowait
  uint64_t self = 0;
};
// Parsers of the /proc texts; nullopt when the text is not in the expected form.
[[nodiscard]] std::optional<CpuSample> parse_proc_stat(std::string_view proc_stat);
[[nodiscard]] std::optional<uint64_t> parse_self_stat(std::string_view self_stat);
// The share of the whole machine's CPU time that other processes used between two samples, in
// [0, 1] (busy time minus this process's own, over all the time that passed on every core).
[[nodiscard]] double others_cpu_share(const CpuSample& before, const CpuSample& after);

struct IdleOptions {
  double cpu_threshold = 0.25;   // busy above this share of the machine used by others
  double resume_after_s = 30;    // idle again only after this long below it
  double period_s = 2;           // between samples
  std::vector<int> gpus;         // CUDA ordinals to watch for other processes (nvidia-smi)
};

// Samples the machine on its own thread and says whether others are using it.
class IdleWatch {
 public:
  explicit IdleWatch(IdleOptions options);
  ~IdleWatch();
  IdleWatch(const IdleWatch&) = delete;
  IdleWatch& operator=(const IdleWatch&) = delete;

  [[nodiscard]] bool busy() const { return busy_.load(); }
  // Why it is busy ("other processes use 63 % of the CPU", "another process on GPU 0"), or "".
  [[nodiscard]] std::string why() const;

 private:
  void loop(std::stop_token stop);

  IdleOptions options_;
  std::atomic<bool> busy_{false};
  mutable std::mutex mutex_;
  std::string why_;
  std::jthread thread_;
};

// The live status line (no newline; the caller writes "\r" + line + "\033[K").
struct StatusInfo {
  std::string state;       // "working", "paused (you asked)", "paused: ...", "waiting for work"
  std::string lease;       // the lease computing ("" when none)
  int lease_groups = 0;
  double tokens_per_s = 0; // the last lease's generation speed
  uint64_t version = 0;    // policy version held
  double bytes_up = 0, bytes_down = 0;
  double credit_tokens = 0;  // acknowledged (verified) work this session
  int64_t credit_groups = 0;
};
[[nodiscard]] std::string format_status_line(const StatusInfo& info);

}  // namespace cohort::node
