// A coordinator and peer nodes as real child processes on loopback: what `cohort demo`,
// `cohort bench e2e` and the end-to-end tests run. Children are killed when their handle dies.
// A harness around the executable, not part of any module's library.
//
//   Subprocess coord = Subprocess::spawn({exe, "coordinator", "serve", "--config", toml}, "coord.log");
//   Endpoint ep = wait_for_endpoint(data_dir, 60, coord.pid());      // endpoint.json
//   Subprocess node = Subprocess::spawn({exe, "node", "run", "--coordinator", ...});
//   std::optional<int> rc = coord.wait(120);
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace cohort::tools {

class Subprocess {
 public:
  // Starts argv[0] with argv; stdout/stderr go to `log_path` when given (appended), else inherit.
  static Subprocess spawn(const std::vector<std::string>& argv, const std::string& log_path = "");
  Subprocess() = default;
  Subprocess(Subprocess&& o) noexcept
      : pid_(o.pid_), status_(o.status_), max_rss_bytes_(o.max_rss_bytes_), minor_faults_(o.minor_faults_) {
    o.pid_ = -1;
  }
  Subprocess& operator=(Subprocess&& o) noexcept;
  ~Subprocess();  // SIGKILL + reap if still running

  [[nodiscard]] pid_t pid() const { return pid_; }
  void signal(int sig) const;
  // Waits for exit; returns the exit code (128 + signal when killed), nullopt on timeout.
  std::optional<int> wait(double timeout_s = -1);
  [[nodiscard]] bool running();
  // The child's peak resident set (getrusage's ru_maxrss), known once wait() has seen it exit.
  [[nodiscard]] double max_rss_bytes() const { return max_rss_bytes_; }
  // Its minor page faults (ru_minflt: memory touched for the first time), known likewise.
  [[nodiscard]] double minor_faults() const { return minor_faults_; }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
  double max_rss_bytes_ = 0;
  double minor_faults_ = 0;
};

struct Endpoint {
  std::string host;
  int port = 0, status_port = 0;
  std::string coordinator_key;
};

// Reads <data_dir>/endpoint.json once it exists and names a live pid (or throws after timeout).
Endpoint wait_for_endpoint(const std::string& data_dir, double timeout_s, pid_t expected_pid = -1);

// GET http://host:port/path on loopback; the body, or throws cohort::Error.
std::string http_get(const std::string& host, int port, const std::string& path);

// The path of the running executable (/proc/self/exe).
std::string self_executable();

}  // namespace cohort::tools
