#include "node/volunteer.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "common/check.h"

namespace cohort::node {
namespace {

namespace fs = std::filesystem;

// Set by the handlers on whichever thread takes the signal, read by the network thread.
std::atomic<bool> g_paused{false};
static_assert(std::atomic<bool>::is_always_lock_free, "signal handlers need a lock-free flag");
void on_pause(int) { g_paused.store(true); }
void on_resume(int) { g_paused.store(false); }

std::string read_text(const char* path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Process ids running on GPU `gpu`, from nvidia-smi; nullopt when it cannot tell (no
// nvidia-smi, no driver): the GPU then counts as idle, and the log says so once.
std::optional<std::vector<long>> gpu_processes(int gpu) {
  const std::string cmd = "nvidia-smi --query-compute-apps=pid --format=csv,noheader -i " +
                          std::to_string(gpu) + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return std::nullopt;
  std::string out;
  std::array<char, 256> buf{};
  while (std::fgets(buf.data(), buf.size(), p)) out += buf.data();
  if (::pclose(p) != 0) return std::nullopt;
  std::vector<long> pids;
  std::stringstream ss(out);
  for (std::string line; std::getline(ss, line);)
    if (!line.empty()) pids.push_back(std::atol(line.c_str()));
  return pids;
}

std::string human_bytes(double b) {
  if (b < 1024) return fmt::format("{:.0f} B", b);
  if (b < 1024.0 * 1024) return fmt::format("{:.1f} KiB", b / 1024);
  if (b < 1024.0 * 1024 * 1024) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
  return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
}

}  // namespace

void install_pause_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_pause;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGUSR1, &sa, nullptr);
  sa.sa_handler = on_resume;
  ::sigaction(SIGUSR2, &sa, nullptr);
}

bool pause_requested() { return g_paused.load(); }

fs::path pid_file_for(const fs::path& key_file) { return fs::path(key_file.string() + ".pid"); }

// The node holds an exclusive lock on its pid file while it runs: a second node with the same key
// is refused, and a stale file (its node gone, its pid perhaps reused) is recognised as such.
PidFile::PidFile(fs::path path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) throw Error("cannot create " + path_.string() + ": " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd_);
    fd_ = -1;
    throw Error("another node runs with this key (" + path_.string() +
                " is locked): one identity, one node; give this one its own --key");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
    throw Error("cannot write " + path_.string() + ": " + std::strerror(errno));
}

PidFile::~PidFile() {
  if (fd_ < 0) return;
  std::error_code ec;
  fs::remove(path_, ec);  // while still locked: no other node can have taken it
  ::close(fd_);
}

void signal_node(const fs::path& key_file, bool pause) {
  const fs::path pid_path = pid_file_for(key_file);
  const int fd = ::open(pid_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("no node runs with key " + key_file.string() + " (no " + pid_path.string() + ")");
  // A lock we can take means no node holds it: the file is stale.
  const bool held = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  if (!held) throw Error("no node runs with key " + key_file.string() + " (" + pid_path.string() + " is stale)");
  const long pid = std::atol(read_text(pid_path.c_str()).c_str());
  if (pid <= 0) throw Error(pid_path.string() + " names no process");
  if (::kill(static_cast<pid_t>(pid), pause ? SIGUSR1 : SIGUSR2) != 0)
    throw Error("cannot signal pid " + std::to_string(pid) + ": " + std::strerror(errno));
}

std::optional<CpuSample> parse_proc_stat(std::string_view text) {
  // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"
  if (!text.starts_with("cpu ")) return std::nullopt;
  std::stringstream ss{std::string(text.substr(0, text.find('\n')))};
  std::string label;
  ss >> label;
  std::vector<uint64_t> v;
  for (uint64_t x; ss >> x;) v.push_back(x);
  if (v.size() < 5) return std::nullopt;
  CpuSample s;
  // guest and guest_nice are already counted in user and nice.
  for (size_t i = 0; i < std::min<size_t>(v.size(), 8); ++i) s.total += v[i];
  s.idle = v[3] + v[4];
  return s;
}

std::optional<uint64_t> parse_self_stat(std::string_view text) {
  // "pid (comm) state ppid ..." — comm may hold spaces and parentheses: fields after the last ')'.
  const auto close = text.rfind(')');
  if (close == std::string_view::npos) return std::nullopt;
  std::stringstream ss{std::string(text.substr(close + 1))};
  std::vector<std::string> f;
  for (std::string x; ss >> x;) f.push_back(x);
  // After ')': state(0) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
  // utime(11) stime(12).
  if (f.size() < 13) return std::nullopt;
  try {
    return std::stoull(f[11]) + std::stoull(f[12]);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

double others_cpu_share(const CpuSample& a, const CpuSample& b) {
  if (b.total <= a.total) return 0;
  const double all = double(b.total - a.total);
  const double busy = all - double(b.idle - a.idle);
  const double self = double(b.self - a.self);
  return std::clamp((busy - self) / all, 0.0, 1.0);
}

IdleWatch::IdleWatch(IdleOptions options)
    : options_(std::move(options)), thread_([this](std::stop_token s) { loop(s); }) {}

IdleWatch::~IdleWatch() = default;  // the jthread asks the loop to stop and joins it

std::string IdleWatch::why() const {
  std::lock_guard lock(mutex_);
  return why_;
}

void IdleWatch::loop(std::stop_token stop) {
  auto sample = []() -> std::optional<CpuSample> {
    auto s = parse_proc_stat(read_text("/proc/stat"));
    const auto self = parse_self_stat(read_text("/proc/self/stat"));
    if (!s || !self) return std::nullopt;
    s->self = *self;
    return s;
  };
  std::optional<CpuSample> last = sample();
  if (!last) spdlog::warn("node: --when-idle cannot read /proc/stat: CPU load is not watched");
  bool gpu_unknown_logged = false;
  auto last_busy = std::chrono::steady_clock::now();
  while (!stop.stop_requested()) {
    for (double waited = 0; waited < options_.period_s && !stop.stop_requested(); waited += 0.1)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::string reason;
    if (last) {
      if (auto now = sample()) {
        const double share = others_cpu_share(*last, *now);
        if (share > options_.cpu_threshold)
          reason = fmt::format("other processes use {:.0f} % of the CPU (threshold {:.0f} %)",
                               100 * share, 100 * options_.cpu_threshold);
        last = now;
      }
    }
    for (int gpu : options_.gpus) {
      if (!reason.empty()) break;
      const auto pids = gpu_processes(gpu);
      if (!pids) {
        if (!gpu_unknown_logged)
          spdlog::warn("node: --when-idle cannot list GPU processes (nvidia-smi): GPU {} is not watched", gpu);
        gpu_unknown_logged = true;
        continue;
      }
      for (long pid : *pids)
        if (pid != ::getpid()) reason = fmt::format("process {} uses GPU {}", pid, gpu);
    }
    // Busy at once; idle again only after resume_after_s of quiet, so that a bursty desktop does
    // not make the node start and stop leases every few seconds.
    const auto now = std::chrono::steady_clock::now();
    if (!reason.empty()) {
      last_busy = now;
      std::lock_guard lock(mutex_);
      why_ = reason;
      busy_ = true;
    } else if (busy_ && std::chrono::duration<double>(now - last_busy).count() >= options_.resume_after_s) {
      std::lock_guard lock(mutex_);
      why_.clear();
      busy_ = false;
    }
  }
}

std::string format_status_line(const StatusInfo& s) {
  std::string line = "cohort · " + s.state;
  if (!s.lease.empty())
    line += fmt::format(" · lease {} ({} group{})", s.lease, s.lease_groups, s.lease_groups == 1 ? "" : "s");
  if (s.tokens_per_s > 0) line += fmt::format(" · {:.0f} tok/s", s.tokens_per_s);
  line += fmt::format(" · v{} · ↑ {} ↓ {}", s.version, human_bytes(s.bytes_up), human_bytes(s.bytes_down));
  line += fmt::format(" · credit {:.0f} tokens, {} groups", s.credit_tokens, s.credit_groups);
  return line;
}

}  // namespace cohort::node
