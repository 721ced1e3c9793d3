// Wiring of the coordinator: the network thread (one Asio io_context: peer sessions, timers) and
// the compute executor (one thread: checking and auditing updates, optimizer steps, publication,
// checkpoints), which the sessions co_await. The parts: coordinator_impl.h lists them.
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/file.h"
#include "coordinator/coordinator_impl.h"
#include "grpo/safetensors.h"

namespace cohort::coordinator {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::pair<std::string, uint16_t> split_host_port(const std::string& s) {
  const auto colon = s.rfind(':');
  const std::string port = colon == std::string::npos ? "" : s.substr(colon + 1);
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) > 65535)
    throw Error("address '" + s + "' must be HOST:PORT with a port in 0..65535");
  return {s.substr(0, colon), static_cast<uint16_t>(std::stoi(port))};
}

volatile std::sig_atomic_t g_stop_signal = 0;
void on_signal(int sig) { g_stop_signal = sig; }

}  // namespace

std::string endpoint_path(const std::string& d) { return (fs::path(d) / "endpoint.json").string(); }
std::string ledger_path(const std::string& d) { return (fs::path(d) / "ledger.sqlite").string(); }

std::string status_json_from_ledger(const std::string& data_dir) {
  if (!fs::exists(ledger_path(data_dir))) throw Error("no ledger in " + data_dir);
  Ledger ledger(ledger_path(data_dir));
  return ledger.status_json();
}

asio::awaitable<void> Coordinator::Impl::housekeeping() {
  asio::steady_timer t(io);
  double finished_at = -1;
  for (;;) {
    t.expires_after(std::chrono::milliseconds(100));
    co_await t.async_wait(asio::use_awaitable);
    for (const ClosedLease& c : sched->expire_due(unix_ms())) log_closed(c);
    if (g_stop_signal) {
      spdlog::info("coordinator: signal {}, stopping (serve again to resume)", int(g_stop_signal));
      break;
    }
    if (finished && evals_running == 0 && !applying) {
      if (finished_at < 0) finished_at = mono_s();
      if (sched->connected() == 0 || mono_s() - finished_at > cfg.linger_s) break;
    }
  }
  if (server) server->stop();
  io.stop();
}

namespace {

// Every peer is a socket: raises the soft limit on open files to the hard one and says how many
// peers that leaves room for (the rest: the ledger, blobs, HTTP, logs).
void raise_open_file_limit(const RoundConfig& cfg) {
  constexpr rlim_t kReserve = 64;
  rlimit fds{};
  if (::getrlimit(RLIMIT_NOFILE, &fds) != 0) return;
  const rlim_t before = fds.rlim_cur;
  if (fds.rlim_cur < fds.rlim_max) {
    fds.rlim_cur = fds.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &fds) != 0) fds.rlim_cur = before;
  }
  const rlim_t room = fds.rlim_cur > kReserve ? fds.rlim_cur - kReserve : 0;
  spdlog::info("coordinator: open-file limit {} (was {}): room for about {} connections; "
               "max_peers {}", fds.rlim_cur, before, room, cfg.max_peers);
  if (static_cast<rlim_t>(cfg.max_peers) + static_cast<rlim_t>(cfg.max_pending_handshakes) > room)
    spdlog::warn("coordinator: max_peers + max_pending_handshakes ({}) is over the open-file "
                 "room ({}): raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower them",
                 cfg.max_peers + cfg.max_pending_handshakes, room);
}

}  // namespace

void Coordinator::Impl::serve() {
  open();
  auto [host, port] = split_host_port(cfg.listen);
  protocol::ChannelOptions opts;
  opts.limits.idle_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(cfg.idle_timeout_s * 1000));
  opts.admit = [this](const PeerId& id) {
    if (banned.count(id.hex())) {
      ledger->record_refusal(id.hex(), "", "banned", "connection from a banned identity",
                             unix_ms());
      spdlog::warn("coordinator: refused peer {}: banned", id.fingerprint());
      return false;
    }
    if (cfg.admission == Admission::open || allowed.count(id)) return true;
    ledger->record_refusal(id.hex(), "", "not_admitted", "identity not on the allowlist",
                           unix_ms());
    spdlog::warn("coordinator: refused peer {}: not on the allowlist", id.fingerprint());
    return false;
  };
  server = std::make_unique<protocol::Server>(
      io.get_executor(), asio::ip::tcp::endpoint(asio::ip::make_address(host), port), identity,
      opts, [this](Channel ch) { return session(std::move(ch)); });
  server->set_max_pending_handshakes(static_cast<size_t>(cfg.max_pending_handshakes));
  server->set_address_limits(static_cast<size_t>(cfg.max_connections_per_ip),
                             cfg.handshakes_per_ip_per_s, cfg.handshake_burst_per_ip);
  raise_open_file_limit(cfg);
  server->start();
  uint16_t status_port = 0;
  if (!cfg.status_listen.empty()) {
    http = std::make_unique<StatusHttpServer>(
        cfg.status_listen,
        [this](const HttpRequest& req) { return http_get(req); });
    status_port = http->port();
  }
  json ep = {{"host", host},
             {"port", server->port()},
             {"status_port", status_port},
             {"coordinator_key", identity.id().hex()},
             {"pid", ::getpid()},
             {"round_id", cfg.round_id}};
  if (http) publish_round_card(host, server->port(), status_port);
  write_file_atomic(endpoint_path(cfg.data_dir), ep.dump());
  spdlog::info("coordinator: round {} on {}:{} (status http://{}:{}/status), key {}, version {}",
               cfg.round_id, host, server->port(), host, status_port, identity.id().hex(),
               sched->version());
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  asio::co_spawn(io, housekeeping(), asio::detached);
  io.run();
  if (http) http->stop();  // before the io_context its handler posts to goes away
  compute.join();
  for (auto& e : evals) e.join();
  if (!fatal.empty()) throw Error("the coordinator stopped: " + fatal);
  if (!finished && g_stop_signal)
    throw Error("stopped by signal; `serve` on the same data directory resumes", 130);
  if (!finished) throw Error("the coordinator stopped before the round completed");
}

Coordinator::Coordinator(RoundConfig cfg) : impl_(std::make_unique<Impl>(std::move(cfg))) {}
Coordinator::~Coordinator() = default;
void Coordinator::serve() { impl_->serve(); }

}  // namespace cohort::coordinator
