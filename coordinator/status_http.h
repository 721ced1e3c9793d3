// The coordinator's HTTP status endpoint (GET /status, GET /metrics) on cpp-httplib, hardened so
// that slow, stalled or oversized clients cannot tie it up: a deadline for the whole request, a
// deadline for the reply, header and body limits, and a fixed number of connections at once.
//
//   StatusHttpServer http("127.0.0.1:0", [&](const std::string& method, const std::string& path) {
//     if (path == "/metrics") return HttpResponse{200, "text/plain; version=0.0.4", metrics()};
//     if (path == "/status") return HttpResponse{200, "application/json", status_json()};
//     return HttpResponse{404, "application/json", R"({"error":"try GET /status"})"};
//   });
//   uint16_t port = http.port();  // the bound port (the address may ask for port 0)
//   http.stop();                  // or let the destructor do it
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace cohort::coordinator {

struct HttpRequest {
  std::string method;  // "GET" or "HEAD" (for HEAD the server sends the headers, no body)
  std::string path;    // the request target's path, percent-decoded, without the query string
  std::string range;   // the Range header as sent ("" when none); the handler applies it or not
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // e.g. Content-Range
  // A body too large to hold (a blob): `stream_bytes` bytes that `stream(offset, max)` returns a
  // piece at a time (offset from 0, at most `max` bytes each), while the reply is written. Used
  // instead of `body` when set. A piece that throws or comes back empty cuts the reply short (the
  // client sees fewer bytes than Content-Length).
  uint64_t stream_bytes = 0;
  std::function<std::string(uint64_t offset, uint64_t max)> stream;
};

// Called for GET and HEAD only (any other method is answered 405 without calling it). It runs on
// the server's worker threads, possibly on several at once, so it must be thread-safe; it holds a
// connection slot while it runs, so it should be quick. An exception from it is answered 500 with
// its message.
using HttpHandler = std::function<HttpResponse(const HttpRequest& request)>;

// Every connection carries one request (`Connection: close`, no keep-alive), so a slot is held
// for at most read_timeout + the handler + write_timeout, plus up to a second while the server
// waits for the client to close after the reply.
struct HttpLimits {
  // From accept to the end of the request headers. A client that sends nothing, part of a
  // request, or trickles bytes is disconnected without a reply when it runs out: the deadline
  // covers the whole request, each byte does not extend it.
  std::chrono::milliseconds read_timeout{5000};
  // From the first byte of the reply to the last; a client that does not read is disconnected.
  std::chrono::milliseconds write_timeout{5000};
  // Request line plus headers, in bytes; a longer request head is answered 431.
  size_t max_header_bytes = 8 * 1024;
  // The largest body (Content-Length) a GET or HEAD may declare; the status routes take none and
  // the body is never read. A larger one, or a chunked one, is answered 413.
  size_t max_body_bytes = 0;
  // Connections served at once (one worker thread each). A connection beyond them is answered
  // 503 and closed at once, never queued, so stalled clients delay no one past their slots.
  size_t max_connections = 32;
};

class StatusHttpServer {
 public:
  // Listens on "HOST:PORT": HOST an IP address (127.0.0.1, 0.0.0.0, ::1 or [::1]), PORT 0 for an
  // ephemeral one. Serves on its own threads until stop() or destruction. Throws cohort::Error
  // when the address is malformed or cannot be bound (port in use, address not on this machine).
  StatusHttpServer(const std::string& listen, HttpHandler handler, HttpLimits limits = {});
  ~StatusHttpServer();  // stop()
  StatusHttpServer(const StatusHttpServer&) = delete;
  StatusHttpServer& operator=(const StatusHttpServer&) = delete;

  uint16_t port() const;

  // Stops accepting, disconnects the connections in progress (a handler already running
  // finishes first) and joins every thread. Idempotent.
  void stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cohort::coordinator
