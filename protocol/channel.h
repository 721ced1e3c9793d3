// The authenticated, encrypted connection between a node and the coordinator: TCP, a version
// preamble, Noise_XX_25519_ChaChaPoly_BLAKE2b with Ed25519 identity binding, then framed
// Envelopes (docs/PROTOCOL.md). Coroutine API on standalone Asio, plus a blocking client.
//
//   // coordinator                                         // node
//   Server server(ex, {tcp::v4(), 7070}, id, opts,          BlockingChannel ch = BlockingChannel::connect(
//     [](Channel ch) -> asio::awaitable<void> {                 "coord.example", 7070, id, {.expected_peer = coord});
//       auto env = co_await ch.receive();  ...              ch.send(join_request);
//     });                                                   wire::Envelope reply = ch.receive();
//   server.start();
//
// A Channel is not thread-safe: drive it from one strand (Server runs each connection on its
// own). Any number of coroutines may send at once (messages go out in call order); one receive
// at a time. Any ProtocolError from send/receive means the connection is over.
#pragma once

#ifndef ASIO_STANDALONE
#define ASIO_STANDALONE
#endif
#ifndef ASIO_NO_DEPRECATED
#define ASIO_NO_DEPRECATED
#endif
#include <asio.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "protocol/error.h"
#include "protocol/framing.h"
#include "protocol/identity.h"
#include "protocol/messages.pb.h"

namespace cohort::protocol {

// Wire protocol versions this build speaks (the preamble negotiates the highest common one).
inline constexpr std::uint8_t kProtocolVersionMin = 1;
inline constexpr std::uint8_t kProtocolVersionMax = 1;
inline constexpr std::size_t kPreambleLen = 8;  // "COHORT" || min || max

struct ChannelOptions {
  ChannelLimits limits;
  // Initiator: the responder must prove this identity (nodes pin the coordinator).
  std::optional<PeerId> expected_peer;
  // Initiator: connect from this local address (a load generator spreading its peers over
  // loopback addresses, as many machines would reach a coordinator); unset: the system's choice.
  std::optional<asio::ip::address> local_address;
  // Responder: return false to refuse an initiator (allowlist); empty admits everyone.
  std::function<bool(const PeerId&)> admit;
  // Caps on this end's traffic in bytes per second (0: none), as token buckets: the send side
  // waits before writing, the receive side before reading again (TCP's window then slows the
  // sender). A volunteer's upload and download limits.
  double max_send_bytes_per_s = 0;
  double max_receive_bytes_per_s = 0;
  // Protocol versions to offer; tests use these to provoke a mismatch.
  std::uint8_t version_min = kProtocolVersionMin;
  std::uint8_t version_max = kProtocolVersionMax;
};

// Which class an Envelope travels in (bulk: manifest, tensor chunk, update).
[[nodiscard]] MessageClass message_class(const wire::Envelope& envelope);

class Channel {
 public:
  // Connects (TCP + handshake) within limits.handshake_timeout. Throws ProtocolError.
  [[nodiscard]] static asio::awaitable<Channel> connect(asio::ip::tcp::endpoint endpoint,
                                                        const Identity& identity,
                                                        ChannelOptions options);
  [[nodiscard]] static asio::awaitable<Channel> connect(std::string host, std::uint16_t port,
                                                        const Identity& identity,
                                                        ChannelOptions options);
  // Runs the responder handshake on an accepted socket. Throws ProtocolError; the socket is
  // closed on every failure.
  [[nodiscard]] static asio::awaitable<Channel> accept(asio::ip::tcp::socket socket,
                                                       const Identity& identity,
                                                       ChannelOptions options);

  Channel(Channel&&) noexcept;
  Channel& operator=(Channel&&) noexcept;
  ~Channel();

  // Serializes and sends one Envelope in its class (message_class).
  asio::awaitable<void> send(const wire::Envelope& envelope);
  // Next Envelope; throws ProtocolError(malformed) when it does not parse or came in the wrong
  // class, timeout after limits.idle_timeout of silence, closed when the peer hung up.
  [[nodiscard]] asio::awaitable<wire::Envelope> receive();

  // The raw message layer under send/receive (benchmarks, tests, non-Envelope payloads).
  asio::awaitable<void> send_frame(MessageClass cls, ByteView body);
  [[nodiscard]] asio::awaitable<Frame> receive_frame();

  [[nodiscard]] const PeerId& peer() const;
  // Noise handshake hash: identical on both ends, unique per connection (channel binding).
  [[nodiscard]] const noise::Hash& handshake_hash() const;
  [[nodiscard]] asio::ip::tcp::endpoint remote_endpoint() const;
  [[nodiscard]] std::uint8_t version() const;
  [[nodiscard]] bool is_open() const;
  // Closes the socket; pending operations end with ProtocolError(closed).
  void close();

  struct Impl;

 private:
  explicit Channel(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Accepts connections, runs the handshake on each (in its own strand) and hands the
// authenticated Channel to `handler`. Handshake failures are logged and counted, never thrown.
class Server {
 public:
  using Handler = std::function<asio::awaitable<void>(Channel)>;

  Server(asio::any_io_executor executor, asio::ip::tcp::endpoint endpoint, Identity identity,
         ChannelOptions options, Handler handler);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void start();
  // Stops accepting; established channels live on in their handlers.
  void stop();
  [[nodiscard]] std::uint16_t port() const;

  struct Stats {
    std::atomic<std::uint64_t> accepted{0};
    std::atomic<std::uint64_t> handshakes_ok{0};
    std::atomic<std::uint64_t> handshakes_failed{0};
    std::atomic<std::uint64_t> rejected_busy{0};     // no room for another handshake
    std::atomic<std::uint64_t> evicted{0};  // handshakes closed to make room for a new connection
    std::atomic<std::uint64_t> rejected_address{0};  // over the connections of one address
    std::atomic<std::uint64_t> rejected_rate{0};     // over one address's connection rate
  };
  [[nodiscard]] const Stats& stats() const;
  // At most this many connections in the handshake at once. A new connection beyond it takes the
  // place of the oldest handshake of the address with the most of them: a flood of half-open or
  // slowloris connections evicts itself, not the peer that just arrived (whose handshake takes a
  // few round trips).
  void set_max_pending_handshakes(std::size_t n);
  // Per source address (IP): at most `max_connections` open at once, handshakes included, and
  // new connections at `per_s` a second with bursts of `burst` (0: no bound). A connection over
  // either is closed at once, before any byte is read, so one address cannot crowd out the rest.
  void set_address_limits(std::size_t max_connections, double per_s, double burst);
  // Called (on the connection's strand) for every failed handshake, e.g. to count bad signatures
  // per address. Set before start().
  void set_handshake_error_handler(
      std::function<void(const asio::ip::tcp::endpoint&, const ProtocolError&)> on_error);

  struct State;

 private:
  std::shared_ptr<State> state_;
};

// A client Channel with its own io_context, for code that is not written as coroutines.
class BlockingChannel {
 public:
  [[nodiscard]] static BlockingChannel connect(const std::string& host, std::uint16_t port,
                                               const Identity& identity, ChannelOptions options);
  BlockingChannel(BlockingChannel&&) noexcept;
  BlockingChannel& operator=(BlockingChannel&&) noexcept;
  ~BlockingChannel();

  void send(const wire::Envelope& envelope);
  [[nodiscard]] wire::Envelope receive();
  void send_frame(MessageClass cls, ByteView body);
  [[nodiscard]] Frame receive_frame();
  [[nodiscard]] const PeerId& peer() const;
  [[nodiscard]] Channel& channel();
  void close();

 private:
  BlockingChannel() = default;
  std::unique_ptr<asio::io_context> io_;
  std::unique_ptr<Channel> channel_;
};

}  // namespace cohort::protocol
