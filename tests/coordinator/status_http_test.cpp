// The status HTTP server against real clients on loopback: stalled and trickling clients are cut
// at the read deadline while others are answered, connections beyond the bound are refused at
// once rather than queued, oversized heads and bodies and non-GET methods are refused, and bad or
// taken listen addresses are errors.
#include "coordinator/status_http.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/check.h"

namespace cohort::coordinator {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kStatusBody = R"({"version":7,"finished":false})";
constexpr const char* kMetricsBody = "# TYPE cohort_policy_version gauge\ncohort_policy_version 7\n";
constexpr const char* kNotFound = R"({"error":"try GET /status or GET /metrics"})";

// The coordinator's routes, counting the calls that reach the handler.
struct Routes {
  std::atomic<int> calls{0};
  HttpHandler handler() {
    return [this](const HttpRequest& req) {
      const std::string& path = req.path;
      ++calls;
      if (path == "/status" || path == "/") return HttpResponse{200, "application/json", kStatusBody};
      if (path == "/metrics") return HttpResponse{200, "text/plain; version=0.0.4", kMetricsBody};
      return HttpResponse{404, "application/json", kNotFound};
    };
  }
};

// A raw TCP client. Every read gives up after 10 s, so a server that never answers fails the
// test instead of hanging it.
class Conn {
 public:
  explicit Conn(uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    COHORT_CHECK(fd_ >= 0);
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    COHORT_CHECK(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0,
                 std::strerror(errno));
  }
  ~Conn() { ::close(fd_); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // False once the server has closed or reset the connection.
  bool send(const std::string& s) {
    return ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
  }

  // How the server ended the connection, and what it sent before.
  enum class End { eof, reset, client_timeout };
  struct Outcome {
    std::string data;
    End end = End::eof;
    Clock::time_point at;
  };
  Outcome read_to_end() {
    Outcome o;
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) {
        o.data.append(buf, static_cast<size_t>(n));
        continue;
      }
      o.end = n == 0 ? End::eof : (errno == EAGAIN || errno == EWOULDBLOCK) ? End::client_timeout
                                                                             : End::reset;
      o.at = Clock::now();
      return o;
    }
  }

  // True while the server holds the connection open without having sent anything.
  bool held_silently() {
    char c;
    ssize_t n = ::recv(fd_, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  int fd() const { return fd_; }

 private:
  int fd_;
};

struct Reply {
  int status = 0;  // 0: no response at all
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  Conn::End end = Conn::End::eof;
};

Reply parse(const Conn::Outcome& o) {
  Reply r;
  r.end = o.end;
  auto head_end = o.data.find("\r\n\r\n");
  if (o.data.rfind("HTTP/1.1 ", 0) != 0 || head_end == std::string::npos) return r;
  r.status = std::stoi(o.data.substr(9, 3));
  r.body = o.data.substr(head_end + 4);
  size_t pos = o.data.find("\r\n") + 2;
  while (pos < head_end) {
    size_t eol = o.data.find("\r\n", pos);
    std::string line = o.data.substr(pos, eol - pos);
    auto colon = line.find(':');
    std::string name = line.substr(0, colon);
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    r.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
    pos = eol + 2;
  }
  return r;
}

Reply roundtrip(uint16_t port, const std::string& request) {
  Conn c(port);
  c.send(request);
  return parse(c.read_to_end());
}

Reply get(uint16_t port, const std::string& target, const std::string& method = "GET") {
  return roundtrip(port, method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
}

// A client that sends part of a request line and then nothing, and the time the server ends it.
struct Staller {
  explicit Staller(uint16_t port) : conn(port) {
    EXPECT_TRUE(conn.send("GET /sta"));
    watcher = std::thread([this] { outcome = conn.read_to_end(); });
  }
  Conn::Outcome finish() {
    watcher.join();
    return outcome;
  }
  Conn conn;
  Conn::Outcome outcome;
  std::thread watcher;
};

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

TEST(StatusHttp, StatusAnswersWhileAClientStallsMidRequest) {
  Routes routes;
  HttpLimits limits;
  limits.read_timeout = milliseconds(2000);
  limits.max_connections = 8;
  StatusHttpServer server("127.0.0.1:0", routes.handler(), limits);
  ASSERT_GT(server.port(), 0);

  // Three slots held by clients that stopped mid request line.
  auto t0 = Clock::now();
  std::vector<std::unique_ptr<Staller>> stallers;
  for (int i = 0; i < 3; ++i) stallers.push_back(std::make_unique<Staller>(server.port()));

  for (int i = 0; i < 5; ++i) {
    Reply r = get(server.port(), "/status");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, kStatusBody);
    EXPECT_EQ(r.headers["content-type"], "application/json");
    EXPECT_EQ(r.headers["connection"], "close");
  }
  auto answered = Clock::now();
  EXPECT_LT(seconds(answered - t0), 3.0);

  for (auto& s : stallers) {
    auto o = s->finish();
    // Closed by the server (not by this client's 10 s give-up), with no reply, after the
    // deadline and well before a generous bound; the answers above came while it was held.
    EXPECT_NE(o.end, Conn::End::client_timeout);
    EXPECT_EQ(o.data, "");
    EXPECT_GE(seconds(o.at - t0), 1.8);
    EXPECT_LT(seconds(o.at - t0), 2.0 + 3.0);
    EXPECT_LT(answered, o.at);
  }
  EXPECT_EQ(routes.calls, 5);
}

TEST(StatusHttp, ConnectionsBeyondTheBoundAreRefusedNotQueued) {
  Routes routes;
  HttpLimits limits;
  limits.read_timeout = milliseconds(1500);
  limits.max_connections = 3;
  StatusHttpServer server("127.0.0.1:0", routes.handler(), limits);

  std::vector<std::unique_ptr<Staller>> stallers;
  for (int i = 0; i < 3; ++i) stallers.push_back(std::make_unique<Staller>(server.port()));
  std::this_thread::sleep_for(milliseconds(200));
  for (auto& s : stallers) EXPECT_TRUE(s->conn.held_silently());  // admitted, not refused

  // A fourth connection is answered 503 at once, before any staller's slot frees up.
  Conn extra(server.port());
  auto refused = extra.read_to_end();
  Reply r = parse(refused);
  EXPECT_EQ(r.status, 503) << refused.data;
  EXPECT_EQ(r.headers["retry-after"], "1");
  EXPECT_EQ(r.end, Conn::End::eof);

  // A request on a refused connection never reaches the handler: a 503, or a reset when the
  // request arrived before the close.
  Reply again = get(server.port(), "/status");
  EXPECT_TRUE(again.status == 503 || (again.status == 0 && again.end != Conn::End::client_timeout))
      << again.status;

  for (auto& s : stallers) {
    auto o = s->finish();
    EXPECT_NE(o.end, Conn::End::client_timeout);
    EXPECT_LT(refused.at, o.at);
  }
  EXPECT_EQ(routes.calls, 0);

  // The slots are free again once the stallers are cut (a slot is released just after its
  // socket is closed, hence a few tries).
  Reply after;
  for (auto t = Clock::now(); seconds(Clock::now() - t) < 3.0;) {
    after = get(server.port(), "/status");
    if (after.status == 200) break;
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_EQ(after.status, 200);
  EXPECT_EQ(after.body, kStatusBody);
  EXPECT_EQ(routes.calls, 1);
}

TEST(StatusHttp, TricklingBytesDoesNotExtendTheReadDeadline) {
  Routes routes;
  HttpLimits limits;
  limits.read_timeout = milliseconds(1000);
  StatusHttpServer server("127.0.0.1:0", routes.handler(), limits);

  Conn c(server.port());
  auto t0 = Clock::now();
  ASSERT_TRUE(c.send("GET /status HTTP/1.1\r\nX-Slow: "));
  // One header byte every 100 ms, each well inside any per-read timeout, until the server cuts.
  Clock::time_point cut{};
  while (seconds(Clock::now() - t0) < 5.0) {
    if (!c.send("a")) {
      cut = Clock::now();
      break;
    }
    pollfd p{c.fd(), POLLIN, 0};
    if (::poll(&p, 1, 100) > 0) {
      char buf[256];
      ssize_t n = ::recv(c.fd(), buf, sizeof(buf), MSG_DONTWAIT);
      EXPECT_LE(n, 0) << "no reply expected, got " << std::string(buf, n > 0 ? n : 0);
      cut = Clock::now();
      break;
    }
  }
  ASSERT_NE(cut, Clock::time_point{}) << "the server never closed the trickling connection";
  EXPECT_GE(seconds(cut - t0), 0.9);
  EXPECT_LT(seconds(cut - t0), 1.0 + 3.0);
  EXPECT_EQ(routes.calls, 0);
}

TEST(StatusHttp, OversizedHeaderIsRefusedWith431) {
  Routes routes;
  HttpLimits limits;
  limits.max_header_bytes = 8 * 1024;
  StatusHttpServer server("127.0.0.1:0", routes.handler(), limits);

  Reply big = roundtrip(server.port(), "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " +
                                          std::string(16 * 1024, 'a') + "\r\n\r\n");
  EXPECT_EQ(big.status, 431);
  EXPECT_NE(big.body.find("8192 bytes"), std::string::npos) << big.body;
  // So is a head of many short headers, and a request line alone over the limit.
  std::string many = "GET /status HTTP/1.1\r\n";
  for (int i = 0; i < 1000; ++i) many += "X-H" + std::to_string(i) + ": v\r\n";
  EXPECT_EQ(roundtrip(server.port(), many + "\r\n").status, 431);
  EXPECT_EQ(get(server.port(), "/status?" + std::string(9000, 'q')).status, 431);
  EXPECT_EQ(routes.calls, 0);

  // A head under the limit is served.
  Reply fine = roundtrip(server.port(), "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " +
                                           std::string(4 * 1024, 'a') + "\r\n\r\n");
  EXPECT_EQ(fine.status, 200);
  EXPECT_EQ(routes.calls, 1);
}

TEST(StatusHttp, RoutesComeFromTheHandler) {
  Routes routes;
  StatusHttpServer server("127.0.0.1:0", routes.handler());

  Reply status = get(server.port(), "/status?pretty=1");  // the query is not part of the path
  EXPECT_EQ(status.status, 200);
  EXPECT_EQ(status.body, kStatusBody);
  EXPECT_EQ(get(server.port(), "/").body, kStatusBody);

  Reply metrics = get(server.port(), "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_EQ(metrics.headers["content-type"], "text/plain; version=0.0.4");
  EXPECT_EQ(metrics.body, kMetricsBody);

  Reply missing = get(server.port(), "/nope");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.headers["content-type"], "application/json");
  EXPECT_EQ(missing.body, kNotFound);

  // HEAD: the GET reply's headers, no body.
  Reply head = get(server.port(), "/status", "HEAD");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.headers["content-length"], std::to_string(std::string(kStatusBody).size()));
  EXPECT_EQ(head.body, "");
  EXPECT_EQ(routes.calls, 5);
}

TEST(StatusHttp, OtherMethodsAre405WithoutCallingTheHandler) {
  Routes routes;
  StatusHttpServer server("127.0.0.1:0", routes.handler());

  Reply post = roundtrip(server.port(),
                        "POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                        "application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nstep=99");
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.headers["allow"], "GET, HEAD");
  EXPECT_EQ(post.headers["content-type"], "application/json");
  EXPECT_EQ(get(server.port(), "/status", "DELETE").status, 405);
  EXPECT_EQ(get(server.port(), "/status", "PUT").status, 405);
  EXPECT_EQ(routes.calls, 0);
}

TEST(StatusHttp, GetWithABodyOverTheLimitIs413) {
  Routes routes;
  StatusHttpServer server("127.0.0.1:0", routes.handler());  // max_body_bytes 0

  EXPECT_EQ(roundtrip(server.port(),
                     "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n")
                .status,
            413);
  EXPECT_EQ(roundtrip(server.port(), "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .status,
            413);
  EXPECT_EQ(routes.calls, 0);
  // Content-Length: 0 is no body.
  EXPECT_EQ(roundtrip(server.port(),
                     "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
                .status,
            200);
}

TEST(StatusHttp, HandlerFailureIs500WithItsMessage) {
  StatusHttpServer server("127.0.0.1:0", [](const HttpRequest&) -> HttpResponse {
    throw Error("ledger unavailable");
  });
  Reply r = get(server.port(), "/status");
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(r.body.find("ledger unavailable"), std::string::npos) << r.body;
}

TEST(StatusHttp, BadOrTakenListenAddressIsAnError) {
  Routes routes;
  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:65536",
                          "127.0.0.1:-1", "300.1.1.1:0", "localhost:0", ":8080"}) {
    try {
      StatusHttpServer s(bad, routes.handler());
      ADD_FAILURE() << "'" << bad << "' was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos)
          << e.what();
    }
  }
  // An address that is not this machine's.
  EXPECT_THROW(StatusHttpServer("192.0.2.1:0", routes.handler()), Error);

  // A taken port is an error, and the first server keeps it (no SO_REUSEPORT sharing).
  StatusHttpServer first("127.0.0.1:0", routes.handler());
  const std::string taken = "127.0.0.1:" + std::to_string(first.port());
  try {
    StatusHttpServer second(taken, routes.handler());
    ADD_FAILURE() << taken << " was bound twice";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
  }
  for (int i = 0; i < 4; ++i) EXPECT_EQ(get(first.port(), "/status").status, 200);
  EXPECT_EQ(routes.calls, 4);
}

TEST(StatusHttp, StopDisconnectsStalledClientsWithoutWaitingForTheirDeadline) {
  Routes routes;
  HttpLimits limits;
  limits.read_timeout = milliseconds(30000);
  auto server = std::make_unique<StatusHttpServer>("127.0.0.1:0", routes.handler(), limits);
  const uint16_t port = server->port();
  std::vector<std::unique_ptr<Staller>> stallers;
  for (int i = 0; i < 2; ++i) stallers.push_back(std::make_unique<Staller>(port));
  std::this_thread::sleep_for(milliseconds(100));

  auto t0 = Clock::now();
  server->stop();
  server->stop();  // idempotent
  EXPECT_LT(seconds(Clock::now() - t0), 3.0);
  for (auto& s : stallers) EXPECT_NE(s->finish().end, Conn::End::client_timeout);
  server.reset();

  // The port is free again: a new server binds it.
  StatusHttpServer again("127.0.0.1:" + std::to_string(port), routes.handler());
  EXPECT_EQ(get(port, "/status").status, 200);
}

}  // namespace
}  // namespace cohort::coordinator

namespace cohort::coordinator {
namespace {

// A streamed body (a blob) arrives whole with its extra headers, a Range header reaches the
// handler as sent, and a stream that fails part way cuts that reply short without taking the
// server down: the next request is answered.
TEST(StatusHttp, StreamedBodiesArriveWholeAndAFailingStreamOnlyCutsItsReply) {
  std::string blob(3 << 20, '\0');
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>(i * 7 + i / 4096);
  std::atomic<int> pieces{0};
  std::string range_seen;
  std::mutex mu;
  StatusHttpServer server("127.0.0.1:0", [&](const HttpRequest& req) {
    {
      std::lock_guard<std::mutex> lock(mu);
      range_seen = req.range;
    }
    HttpResponse r{200, "application/octet-stream", {}};
    r.headers.emplace_back("X-Blob", "yes");
    r.stream_bytes = blob.size();
    const bool fail = req.path == "/fail";
    r.stream = [&, fail](uint64_t offset, uint64_t max) {
      if (fail && offset > 0) throw std::runtime_error("the blob went away");
      ++pieces;
      return blob.substr(offset, max);
    };
    return r;
  });
  Reply ok = roundtrip(server.port(), "GET /blob HTTP/1.1\r\nHost: x\r\nRange: bytes=5-9\r\n\r\n");
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.headers["x-blob"], "yes");
  EXPECT_EQ(ok.body.size(), blob.size());
  EXPECT_TRUE(ok.body == blob);
  EXPECT_GE(pieces.load(), 3);  // written a piece (≤ 1 MiB) at a time
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(range_seen, "bytes=5-9");  // the handler's to apply; httplib did not cut the body
  }
  Reply cut = get(server.port(), "/fail");
  EXPECT_LT(cut.body.size(), blob.size());
  Reply again = get(server.port(), "/blob");
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(again.body.size(), blob.size());
}

}  // namespace
}  // namespace cohort::coordinator
