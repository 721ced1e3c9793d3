#include "tools/local_cluster.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "protocol/channel.h"

extern char** environ;

namespace cohort::tools {

namespace fs = std::filesystem;

Subprocess Subprocess::spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  COHORT_CHECK(!argv.empty());
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (!log_path.empty()) {
    posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
  }
  Subprocess p;
  int rc = posix_spawn(&p.pid_, argv[0].c_str(), &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw Error("cannot start " + argv[0] + ": " + std::strerror(rc));
  return p;
}

Subprocess& Subprocess::operator=(Subprocess&& o) noexcept {
  if (this != &o) {
    if (pid_ > 0 && !status_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    pid_ = o.pid_;
    status_ = o.status_;
    max_rss_bytes_ = o.max_rss_bytes_;
    minor_faults_ = o.minor_faults_;
    o.pid_ = -1;
  }
  return *this;
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

void Subprocess::signal(int sig) const {
  if (pid_ > 0 && !status_) ::kill(pid_, sig);
}

std::optional<int> Subprocess::wait(double timeout_s) {
  if (status_) return status_;
  if (pid_ <= 0) return std::nullopt;
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    int st = 0;
    struct rusage ru {};
    pid_t r = ::wait4(pid_, &st, timeout_s < 0 ? 0 : WNOHANG, &ru);
    if (r == pid_) {
      max_rss_bytes_ = static_cast<double>(ru.ru_maxrss) * 1024.0;
      minor_faults_ = static_cast<double>(ru.ru_minflt);
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return status_;
    }
    if (r < 0) return std::nullopt;
    if (timeout_s >= 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s)
      return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool Subprocess::running() { return pid_ > 0 && !wait(0).has_value(); }

Endpoint wait_for_endpoint(const std::string& data_dir, double timeout_s, pid_t expected_pid) {
  const auto path = fs::path(data_dir) / "endpoint.json";
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    if (fs::exists(path)) {
      try {
        std::ifstream in(path);
        auto j = nlohmann::json::parse(in);
        if (expected_pid < 0 || j.at("pid").get<pid_t>() == expected_pid)
          return {j.at("host").get<std::string>(), j.at("port").get<int>(), j.at("status_port").get<int>(),
                  j.at("coordinator_key").get<std::string>()};
      } catch (const std::exception&) {
      }
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s)
      throw Error("the coordinator did not start within " + std::to_string(timeout_s) + " s (" +
                  path.string() + ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::string http_get(const std::string& host, int port, const std::string& path) {
  asio::io_context io;
  asio::ip::tcp::socket s(io);
  std::error_code ec;
  s.connect(asio::ip::tcp::endpoint(asio::ip::make_address(host), static_cast<uint16_t>(port)), ec);
  if (ec) throw Error("cannot reach http://" + host + ":" + std::to_string(port) + ": " + ec.message());
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
  asio::write(s, asio::buffer(req), ec);
  std::string resp;
  char buf[8192];
  for (;;) {
    size_t n = s.read_some(asio::buffer(buf), ec);
    resp.append(buf, n);
    if (ec) break;
  }
  auto body = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.1 200", 0) != 0 || body == std::string::npos)
    throw Error("status endpoint answered: " + resp.substr(0, resp.find("\r\n")));
  return resp.substr(body + 4);
}

std::string self_executable() { return fs::read_symlink("/proc/self/exe").string(); }

}  // namespace cohort::tools
