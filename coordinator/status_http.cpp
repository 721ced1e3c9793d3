#include "coordinator/status_http.h"

// cpp-httplib as Debian 12 ships it (0.11.4, compiled: libcpp-httplib.so) and Ubuntu 24.04
// (0.14.3): the hooks used below (Stream, TaskQueue, process_request, the private virtual
// process_and_close_socket) have the same shape in both.
#include <httplib.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "common/check.h"

namespace cohort::coordinator {
namespace {

using Clock = std::chrono::steady_clock;

// After a reply the server half-closes and reads what the client may still send (the unread rest
// of a refused request) until the client closes, within these bounds. Closing a socket with
// unread bytes sends a reset, which can destroy the reply before the client has read it.
constexpr auto kDrainTime = std::chrono::seconds(1);
constexpr size_t kDrainBytes = 64 * 1024;

std::string error_body(const std::string& message) {
  return nlohmann::json{{"error", message}}.dump();
}

// A complete reply the server writes itself, outside httplib (refusals at accept, 431).
std::string raw_reply(int status, const char* reason, const std::string& extra_headers,
                      const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + " " + reason +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n" + extra_headers + "Connection: close\r\n\r\n" + body;
}

// Waits until `fd` is ready for `events` (or hung up, or in error: the next recv/send tells
// which); false once `deadline` has passed.
bool wait_until(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, INT_MAX)));
    if (r > 0 || (r < 0 && errno != EINTR)) return true;
  }
}

bool retry_later(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

void numeric_endpoint(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  if ((peer ? ::getpeername(fd, sa, &len) : ::getsockname(fd, sa, &len)) != 0) return;
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (::getnameinfo(sa, len, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return;
  ip = host;
  port = std::atoi(serv);
}

// One accepted connection as httplib reads and writes it, under HttpLimits: the request head
// must arrive whole before one deadline and within a byte budget, the reply must leave before
// another. Once the head overran either, reads fail and httplib's own reply (a 400) is dropped:
// the server then sends 431 itself, or closes without a reply on a timeout.
class LimitedStream final : public httplib::Stream {
 public:
  enum class Overrun { none, read_deadline, header_bytes };

  LimitedStream(int fd, const HttpLimits& limits)
      : fd_(fd), limits_(limits), read_deadline_(Clock::now() + limits.read_timeout) {}

  Overrun overrun() const { return overrun_; }

  bool is_readable() const override {
    return pos_ < len_ || (overrun_ == Overrun::none && wait_until(fd_, POLLIN, read_deadline_));
  }
  bool is_writable() const override { return wait_until(fd_, POLLOUT, write_deadline()); }

  ssize_t read(char* ptr, size_t size) override {
    if (pos_ == len_) {
      if (overrun_ != Overrun::none) return -1;
      if (received_ >= limits_.max_header_bytes) {
        overrun_ = Overrun::header_bytes;
        return -1;
      }
      for (;;) {
        if (!wait_until(fd_, POLLIN, read_deadline_)) {
          overrun_ = Overrun::read_deadline;
          return -1;
        }
        // Never past the budget: bytes after the head stay in the socket, unread.
        size_t want = std::min(sizeof(buf_), limits_.max_header_bytes - received_);
        ssize_t n = ::recv(fd_, buf_, want, MSG_DONTWAIT);
        if (n == 0) return 0;
        if (n > 0) {
          received_ += static_cast<size_t>(n);
          pos_ = 0;
          len_ = static_cast<size_t>(n);
          break;
        }
        if (!retry_later(errno)) return -1;
      }
    }
    size_t k = std::min(size, len_ - pos_);
    std::memcpy(ptr, buf_ + pos_, k);
    pos_ += k;
    return static_cast<ssize_t>(k);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (overrun_ != Overrun::none) return static_cast<ssize_t>(size);  // dropped, see above
    return send_some(ptr, size);
  }

  // Writes all of `data` before the write deadline, whatever httplib's state.
  bool send_all(const std::string& data) {
    for (size_t off = 0; off < data.size();) {
      ssize_t n = send_some(data.data() + off, data.size() - off);
      if (n < 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    numeric_endpoint(fd_, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    numeric_endpoint(fd_, false, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  Clock::time_point write_deadline() const {
    if (!writing_) {
      writing_ = true;
      write_deadline_ = Clock::now() + limits_.write_timeout;
    }
    return write_deadline_;
  }

  ssize_t send_some(const char* ptr, size_t size) {
    for (;;) {
      if (!wait_until(fd_, POLLOUT, write_deadline())) return -1;
      ssize_t n = ::send(fd_, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) return n;
      if (!retry_later(errno)) return -1;
    }
  }

  int fd_;
  const HttpLimits& limits_;
  Clock::time_point read_deadline_;
  mutable bool writing_ = false;
  mutable Clock::time_point write_deadline_{};
  Overrun overrun_ = Overrun::none;
  size_t received_ = 0, pos_ = 0, len_ = 0;
  char buf_[4096];
};

// Set on the accepting thread while it runs a job that ConnectionSlots refused.
thread_local bool t_refused = false;

// httplib's task queue with one worker per connection slot and no waiting line. httplib 0.11's
// enqueue cannot say no, and dropping the job would leak its socket, so a connection beyond the
// slots runs at once on the accepting thread, flagged refused: it is answered 503 and closed
// there without being read (no waiting), never queued behind stalled clients.
class ConnectionSlots final : public httplib::TaskQueue {
 public:
  explicit ConnectionSlots(size_t n) {
    for (size_t i = 0; i < n; ++i) workers_.emplace_back([this] { work(); });
  }
  ~ConnectionSlots() override { shutdown(); }

  void enqueue(std::function<void()> job) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (jobs_.size() + busy_ < workers_.size()) {
        jobs_.push_back(std::move(job));
        ready_.notify_one();
        return;
      }
    }
    t_refused = true;
    job();
    t_refused = false;
  }

  // Runs the jobs already taken (the server disconnects them first), then joins the workers.
  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    ready_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        ready_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
        ++busy_;
      }
      job();
      std::lock_guard<std::mutex> lock(mu_);
      --busy_;
    }
  }

  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  size_t busy_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

// httplib's server with each connection handled here rather than by httplib's socket loop:
// one request per connection through LimitedStream, every request answered by the pre-routing
// handler (so httplib never reads a body), sockets in progress tracked so stop() can cut them.
class GuardedServer final : public httplib::Server {
 public:
  GuardedServer(const HttpLimits& limits, HttpHandler handler)
      : limits_(limits), handler_(std::move(handler)) {
    set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      answer(req, res);
      return HandlerResponse::Handled;
    });
  }

  // Shuts down every connection in progress and refuses those accepted from now on.
  void disconnect_all() {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (int fd : live_) ::shutdown(fd, SHUT_RDWR);
  }

 private:
  bool process_and_close_socket(socket_t sock) override {
    if (t_refused) {
      static const std::string reply =
          raw_reply(503, "Service Unavailable", "Retry-After: 1\r\n",
                    error_body("too many status connections at once; try again shortly"));
      // Best effort and never waiting: this is the accepting thread.
      (void)::send(sock, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      ::shutdown(sock, SHUT_WR);
      ::close(sock);
      return false;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) {
        ::close(sock);
        return false;
      }
      live_.insert(sock);
    }
    LimitedStream strm(sock, limits_);
    bool connection_closed = false;
    bool ok = process_request(strm, /*close_connection=*/true, connection_closed, nullptr);
    if (strm.overrun() == LimitedStream::Overrun::header_bytes) {
      strm.send_all(raw_reply(431, "Request Header Fields Too Large", "",
                              error_body("request head over " +
                                         std::to_string(limits_.max_header_bytes) + " bytes")));
    }
    if (strm.overrun() != LimitedStream::Overrun::read_deadline) drain_after_reply(sock);
    {
      // Forgotten before it is closed, so stop() never shuts down a reused descriptor.
      std::lock_guard<std::mutex> lock(mu_);
      live_.erase(sock);
    }
    ::close(sock);
    return ok;
  }

  static void drain_after_reply(int fd) {
    ::shutdown(fd, SHUT_WR);
    auto deadline = Clock::now() + kDrainTime;
    char buf[4096];
    size_t total = 0;
    while (total < kDrainBytes && wait_until(fd, POLLIN, deadline)) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n == 0 || (n < 0 && !retry_later(errno))) break;
      if (n > 0) total += static_cast<size_t>(n);
    }
  }

  void answer(const httplib::Request& req, httplib::Response& res) const {
    auto refuse = [&](int status, const std::string& message) {
      res.status = status;
      res.set_content(error_body(message), "application/json");
    };
    if (req.method != "GET" && req.method != "HEAD") {
      res.set_header("Allow", "GET, HEAD");
      return refuse(405, req.method + " is not served here; try GET /status or GET /metrics");
    }
    if (req.has_header("Transfer-Encoding"))
      return refuse(413, "a chunked request body is not accepted");
    if (req.has_header("Content-Length")) {
      const std::string text = req.get_header_value("Content-Length");
      uint64_t length = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), length);
      if (text.empty() || ec != std::errc{} || end != text.data() + text.size())
        return refuse(400, "malformed Content-Length");
      if (length > limits_.max_body_bytes)
        return refuse(413, "request body over " + std::to_string(limits_.max_body_bytes) +
                               " bytes; GET takes none");
    }
    HttpResponse r;
    // The handler applies a Range itself (or ignores it, as RFC 9110 allows); httplib must not
    // cut the reply again.
    const std::string range = req.get_header_value("Range");
    const_cast<httplib::Request&>(req).ranges.clear();  // the server's own object, not const
    try {
      r = handler_(HttpRequest{req.method, req.path, range});
    } catch (const std::exception& e) {
      return refuse(500, std::string("status handler failed: ") + e.what());
    }
    if (r.status < 100 || r.status > 599)
      return refuse(500, "status handler returned HTTP status " + std::to_string(r.status));
    res.status = r.status;
    for (const auto& [k, v] : r.headers) res.set_header(k, v);
    if (r.stream) {
      res.set_content_provider(
          r.stream_bytes, r.content_type,
          [stream = r.stream](size_t offset, size_t length, httplib::DataSink& sink) {
            // A piece that cannot be read (e.g. a blob removed meanwhile) ends the reply early;
            // nothing may escape into httplib's writer.
            try {
              const std::string piece = stream(offset, std::min<size_t>(length, size_t{1} << 20));
              return !piece.empty() && sink.write(piece.data(), piece.size());
            } catch (const std::exception&) {
              return false;
            }
          });
    } else {
      res.set_content(r.body, r.content_type);
    }
  }

  const HttpLimits& limits_;
  HttpHandler handler_;
  std::mutex mu_;
  std::set<int> live_;
  bool stopping_ = false;
};

std::pair<std::string, uint16_t> parse_listen(const std::string& listen) {
  auto bad = [&](const std::string& why) {
    return Error("status address '" + listen + "': " + why +
                 " (expected HOST:PORT, e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:0)");
  };
  auto colon = listen.rfind(':');
  if (colon == std::string::npos) throw bad("no ':PORT'");
  std::string host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc{} || end != port_text.data() + port_text.size() ||
      port > 65535)
    throw bad("PORT must be a number from 0 to 65535");
  in_addr v4{};
  in6_addr v6{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) != 1 && ::inet_pton(AF_INET6, host.c_str(), &v6) != 1)
    throw bad("HOST must be an IP address");
  return {host, static_cast<uint16_t>(port)};
}

}  // namespace

class StatusHttpServer::Impl {
 public:
  Impl(const std::string& listen, HttpHandler handler, const HttpLimits& limits)
      : limits_(limits), server_(limits_, std::move(handler)) {
    auto [host, port] = parse_listen(listen);
    if (limits_.max_connections == 0) throw Error("status server: max_connections must be >= 1");
    if (limits_.read_timeout.count() <= 0 || limits_.write_timeout.count() <= 0)
      throw Error("status server: read and write timeouts must be positive");
    if (limits_.max_header_bytes == 0) throw Error("status server: max_header_bytes must be > 0");

    // httplib's default sets SO_REUSEPORT, with which a second server on a taken port binds
    // without error and the kernel splits the connections between them. SO_REUSEADDR alone
    // rebinds past TIME_WAIT after a restart and still refuses a port someone listens on.
    server_.set_socket_options([](socket_t sock) {
      int one = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    });
    const size_t slots = limits_.max_connections;
    server_.new_task_queue = [slots] { return new ConnectionSlots(slots); };
    // Unused by GuardedServer's own request handling; httplib also sets them as SO_RCVTIMEO /
    // SO_SNDTIMEO on accepted sockets, a backstop for any blocking call.
    server_.set_read_timeout(limits_.read_timeout);
    server_.set_write_timeout(limits_.write_timeout);
    server_.set_payload_max_length(limits_.max_body_bytes);
    server_.set_keep_alive_max_count(1);

    errno = 0;
    int bound = port == 0 ? server_.bind_to_any_port(host, AI_NUMERICHOST)
                          : (server_.bind_to_port(host, port, AI_NUMERICHOST) ? port : -1);
    if (bound <= 0) {
      const int err = errno;
      throw Error("cannot listen on " + listen + " for the status server" +
                  (err != 0 ? ": " + std::generic_category().message(err) : std::string()) +
                  " (is the port taken, or the address not this machine's? pick another "
                  "status_listen, or port 0)");
    }
    port_ = static_cast<uint16_t>(bound);
    thread_ = std::thread([this] {
      server_.listen_after_bind();
      listen_returned_ = true;
    });
    // httplib's stop() does nothing until its accept loop has started.
    while (!server_.is_running() && !listen_returned_)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  ~Impl() { stop(); }

  uint16_t port() const { return port_; }

  void stop() {
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (!thread_.joinable()) return;
    server_.disconnect_all();
    server_.stop();
    thread_.join();
  }

 private:
  const HttpLimits limits_;
  GuardedServer server_;
  uint16_t port_ = 0;
  std::atomic<bool> listen_returned_{false};
  std::mutex stop_mu_;
  std::thread thread_;
};

StatusHttpServer::StatusHttpServer(const std::string& listen, HttpHandler handler,
                                   HttpLimits limits)
    : impl_(std::make_unique<Impl>(listen, std::move(handler), limits)) {}

StatusHttpServer::~StatusHttpServer() = default;

uint16_t StatusHttpServer::port() const { return impl_->port(); }

void StatusHttpServer::stop() { impl_->stop(); }

}  // namespace cohort::coordinator
