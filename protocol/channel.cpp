#include "protocol/channel.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <mutex>

#include "protocol/rate_limit.h"

namespace cohort::protocol {

using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::uint8_t kMagic[6] = {'C', 'O', 'H', 'O', 'R', 'T'};
constexpr std::size_t kReadBuffer = 256 * 1024;

// No Nagle delay for small control messages, and kernel buffers that hold a few 1 MiB bulk
// messages, so the sender seals the next message while the receiver opens the previous one
// instead of the two taking turns. Failures are harmless (the defaults still work).
void tune_socket(asio::ip::tcp::socket& socket) {
  std::error_code ec;
  socket.set_option(asio::ip::tcp::no_delay(true), ec);
  socket.set_option(asio::socket_base::send_buffer_size(4 << 20), ec);
  socket.set_option(asio::socket_base::receive_buffer_size(4 << 20), ec);
}
constexpr std::uint8_t kVerdictAccepted = 0;
constexpr std::uint8_t kVerdictNotAllowed = 1;

[[noreturn]] void throw_io(const std::error_code& ec, bool timed_out, const std::string& what) {
  if (timed_out) throw ProtocolError(ErrorCode::timeout, what + " timed out");
  if (ec == asio::error::eof || ec == asio::error::connection_reset ||
      ec == asio::error::broken_pipe || ec == asio::error::operation_aborted ||
      ec == asio::error::bad_descriptor || ec == asio::error::connection_aborted) {
    throw ProtocolError(ErrorCode::closed, what + ": peer closed the connection (" + ec.message() + ")");
  }
  throw ProtocolError(ErrorCode::io, what + ": " + ec.message());
}

}  // namespace

struct Channel::Impl : std::enable_shared_from_this<Channel::Impl> {
  explicit Impl(tcp::socket s, const ChannelLimits& l)
      : socket(std::move(s)),
        read_timer(socket.get_executor()),
        write_timer(socket.get_executor()),
        limits(l) {
    write_done.expires_at(asio::steady_timer::time_point::max());
  }

  tcp::socket socket;
  asio::steady_timer read_timer;   // idle timeout, and the whole handshake
  asio::steady_timer write_timer;
  ChannelLimits limits;
  bool read_timed_out = false;
  bool write_timed_out = false;

  std::optional<FrameSealer> sealer;
  std::unique_ptr<FrameOpener> opener;
  PeerId peer;
  noise::Hash hash{};
  std::uint8_t version = 0;
  Bytes wbuf;
  // Send queue (see send_frame).
  bool writing = false;
  std::deque<Bytes> queue;
  std::uint64_t sealed = 0, written = 0;
  asio::steady_timer write_done{socket.get_executor()};
  std::exception_ptr send_failure;
  bool receiving = false;
  // Volunteer caps on this end's traffic (ChannelOptions); empty: unlimited.
  std::optional<TokenBucket> send_cap, receive_cap;
  asio::steady_timer cap_timer{socket.get_executor()};

  // Sleeps as long as `bucket` says moving `bytes` now must wait.
  asio::awaitable<void> pace(std::optional<TokenBucket>& bucket, std::size_t bytes) {
    if (!bucket) co_return;
    const double now = std::chrono::duration<double>(
                           std::chrono::steady_clock::now().time_since_epoch()).count();
    const double wait = bucket->reserve(bytes, now);
    if (wait <= 0) co_return;
    cap_timer.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(wait)));
    std::error_code ignored;  // cancelled by close(): the next socket operation reports it
    co_await cap_timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }

  // Closes the socket when `timer` fires; `flag` tells the waiting operation why it failed.
  void arm(asio::steady_timer& timer, std::chrono::milliseconds after, bool Impl::*flag) {
    this->*flag = false;
    timer.expires_after(after);
    timer.async_wait([weak = weak_from_this(), flag](std::error_code ec) {
      if (ec) return;
      if (auto self = weak.lock()) {
        (*self).*flag = true;
        std::error_code ignored;
        self->socket.close(ignored);
      }
    });
  }

  void close() {
    std::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
    read_timer.cancel();
    write_timer.cancel();
    write_done.cancel();
    cap_timer.cancel();
  }

  // Handshake I/O: exact reads and writes under the handshake timer (armed by the caller).
  asio::awaitable<void> write_all(ByteView bytes, const char* what) {
    std::error_code ec;
    co_await asio::async_write(socket, asio::buffer(bytes.data(), bytes.size()),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) throw_io(ec, read_timed_out, what);
  }
  asio::awaitable<void> read_exact(std::uint8_t* p, std::size_t n, const char* what) {
    std::error_code ec;
    co_await asio::async_read(socket, asio::buffer(p, n), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) throw_io(ec, read_timed_out, what);
  }
  asio::awaitable<void> write_handshake(const Bytes& msg, const char* what) {
    Bytes framed(2 + msg.size());
    framed[0] = static_cast<std::uint8_t>(msg.size() >> 8);
    framed[1] = static_cast<std::uint8_t>(msg.size());
    std::copy(msg.begin(), msg.end(), framed.begin() + 2);
    co_await write_all(framed, what);
  }
  asio::awaitable<Bytes> read_handshake(const char* what) {
    std::uint8_t len[2];
    co_await read_exact(len, 2, what);
    Bytes msg(std::size_t{len[0]} << 8 | len[1]);
    co_await read_exact(msg.data(), msg.size(), what);
    co_return msg;
  }

  // Writes `bytes` fully; the write timeout restarts whenever the socket makes progress.
  asio::awaitable<void> write_bytes(const Bytes& bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      std::error_code ec;
      // Capped: 16 KiB at a time, each after its share of the bucket's time.
      const std::size_t want = send_cap ? std::min<std::size_t>(bytes.size() - done, 16 * 1024)
                                        : bytes.size() - done;
      co_await pace(send_cap, want);
      arm(write_timer, limits.write_timeout, &Impl::write_timed_out);
      const std::size_t n = co_await socket.async_write_some(
          asio::buffer(bytes.data() + done, want), asio::redirect_error(asio::use_awaitable, ec));
      write_timer.cancel();
      if (ec) {
        close();
        throw_io(ec, write_timed_out, "send");
      }
      done += n;
    }
  }

  // Several coroutines on the channel's strand may send at once: each message is sealed when
  // send is called (so nonces follow call order) and written in that order by whichever caller
  // is writing; the others wait until their own message is on the socket.
  asio::awaitable<void> send_frame(MessageClass cls, ByteView body) {
    if (send_failure) std::rethrow_exception(send_failure);
    if (writing) {
      Bytes wire;
      sealer->seal(cls, body, wire);
      const std::uint64_t mine = ++sealed;
      queue.push_back(std::move(wire));
      while (written < mine && !send_failure) {
        std::error_code ignored;  // expiry stays at max: only the writer's cancel() wakes us
        co_await write_done.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      }
      if (written < mine) std::rethrow_exception(send_failure);
      co_return;
    }
    writing = true;
    wbuf.clear();
    sealer->seal(cls, body, wbuf);  // the uncontended path reuses one buffer
    ++sealed;
    try {
      co_await write_bytes(wbuf);
      ++written;
      while (!queue.empty()) {
        const Bytes next = std::move(queue.front());
        queue.pop_front();
        write_done.cancel();  // wake waiters whose message just went out
        co_await write_bytes(next);
        ++written;
      }
    } catch (const ProtocolError&) {
      send_failure = std::current_exception();
      writing = false;
      write_done.cancel();
      throw;
    }
    writing = false;
    write_done.cancel();
    // A bulk message (a blob or update chunk) grew the buffer: not kept while the peer idles.
    if (wbuf.capacity() > kReadBuffer / 4) Bytes().swap(wbuf);
  }

  // `allow_verdict`: only the initiator's first read may see the responder's verdict.
  asio::awaitable<Frame> receive_frame(bool allow_verdict, bool handshake_timer) {
    for (;;) {
      if (auto frame = opener->pop()) {
        if ((frame->cls == MessageClass::verdict) != allow_verdict) {
          close();
          throw ProtocolError(ErrorCode::malformed, allow_verdict
                                                         ? "expected the handshake verdict"
                                                         : "handshake verdict after the handshake");
        }
        co_return std::move(*frame);
      }
      // Messages authenticated before a bad transport message are delivered first, in order.
      if (failure) std::rethrow_exception(failure);
      std::error_code ec;
      if (!handshake_timer) arm(read_timer, limits.idle_timeout, &Impl::read_timed_out);
      // Wait until bytes are there, then read them synchronously into this thread's buffer: the
      // opener copies what it needs, so a connection holds no read buffer of its own between
      // reads (a thousand idle peers would otherwise pin 256 KiB each on the coordinator).
      co_await socket.async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
      thread_local Bytes rbuf(kReadBuffer);
      std::size_t n = 0;
      if (!ec) {
        if (!socket.non_blocking()) socket.non_blocking(true, ec);
        if (!ec)
          n = socket.read_some(
              asio::buffer(rbuf.data(), receive_cap ? std::min<std::size_t>(rbuf.size(), 16 * 1024)
                                                    : rbuf.size()),
              ec);
      }
      if (!handshake_timer) read_timer.cancel();
      if (ec == asio::error::would_block || ec == asio::error::try_again) continue;  // spurious
      if (ec) {
        const bool mid = opener->mid_message();
        close();
        if (ec == asio::error::eof && mid) {
          failure = std::make_exception_ptr(
              ProtocolError(ErrorCode::closed, "peer closed the connection mid-message (truncated)"));
        } else {
          try {
            throw_io(ec, read_timed_out, handshake_timer ? "handshake" : "receive");
          } catch (const ProtocolError&) {
            failure = std::current_exception();
          }
        }
        continue;
      }
      try {
        opener->feed(ByteView(rbuf.data(), n));  // before any suspension: rbuf is shared
      } catch (const ProtocolError&) {
        close();
        failure = std::current_exception();
        continue;
      }
      if (receive_cap) co_await pace(receive_cap, n);  // before the next read
    }
  }

  std::exception_ptr failure;  // the receive side's terminal error, raised after queued messages
};

namespace {

using ImplPtr = std::shared_ptr<Channel::Impl>;

std::array<std::uint8_t, kPreambleLen> make_preamble(std::uint8_t lo, std::uint8_t hi) {
  std::array<std::uint8_t, kPreambleLen> p{};
  std::memcpy(p.data(), kMagic, sizeof kMagic);
  p[6] = lo;
  p[7] = hi;
  return p;
}

void check_magic(const std::array<std::uint8_t, kPreambleLen>& p, const char* who) {
  if (std::memcmp(p.data(), kMagic, sizeof kMagic) != 0) {
    throw ProtocolError(ErrorCode::not_cohort_peer,
                        std::string(who) + " did not send the COHORT preamble: wrong host or port?");
  }
}

void start_transport(Channel::Impl& s, const noise::HandshakeState& hs, const PeerId& peer) {
  auto [send, recv] = hs.split();
  s.sealer.emplace(std::move(send), s.limits.rekey_interval);
  s.opener = std::make_unique<FrameOpener>(std::move(recv), s.limits);
  s.peer = peer;
  s.hash = hs.handshake_hash();
}

asio::awaitable<void> initiator_handshake(ImplPtr s, Identity identity, ChannelOptions options) {
  const auto mine = make_preamble(options.version_min, options.version_max);
  co_await s->write_all(mine, "handshake (preamble)");
  std::array<std::uint8_t, kPreambleLen> theirs;
  co_await s->read_exact(theirs.data(), theirs.size(), "handshake (preamble)");
  check_magic(theirs, "responder");
  const std::uint8_t v = theirs[7];
  if (theirs[6] != theirs[7] || v < options.version_min || v > options.version_max) {
    throw ProtocolError(ErrorCode::version_mismatch,
                        "the responder speaks protocol versions " + std::to_string(theirs[6]) + ".." +
                            std::to_string(theirs[7]) + ", this build speaks " +
                            std::to_string(options.version_min) + ".." +
                            std::to_string(options.version_max) + "; upgrade the older side");
  }
  s->version = v;

  Bytes prologue(mine.begin(), mine.end());
  prologue.insert(prologue.end(), theirs.begin(), theirs.end());
  noise::HandshakeState hs(noise::HandshakePattern::xx, true, prologue,
                           {.s = identity.noise_static(), .e = {}, .rs = {}});
  co_await s->write_handshake(hs.write_message({}), "handshake (message 1)");
  const Bytes m2 = co_await s->read_handshake("handshake (message 2)");
  const Bytes payload = hs.read_message(m2);
  const PeerId responder = verify_identity_payload(payload, *hs.remote_static());
  if (options.expected_peer && *options.expected_peer != responder) {
    throw ProtocolError(ErrorCode::pinned_key_mismatch,
                        "expected peer " + options.expected_peer->hex() + " but the responder proved " +
                            responder.hex());
  }
  co_await s->write_handshake(hs.write_message(identity.identity_payload()), "handshake (message 3)");
  start_transport(*s, hs, responder);

  Frame verdict = co_await s->receive_frame(/*allow_verdict=*/true, /*handshake_timer=*/true);
  if (verdict.body.empty()) throw ProtocolError(ErrorCode::malformed, "empty handshake verdict");
  if (verdict.body[0] != kVerdictAccepted) {
    const std::string reason(verdict.body.begin() + 1, verdict.body.end());
    throw ProtocolError(ErrorCode::not_allowed, "the responder refused this identity (" +
                                                    identity.id().fingerprint() + "): " + reason);
  }
}

asio::awaitable<void> responder_handshake(ImplPtr s, Identity identity, ChannelOptions options) {
  std::array<std::uint8_t, kPreambleLen> theirs;
  co_await s->read_exact(theirs.data(), theirs.size(), "handshake (preamble)");
  check_magic(theirs, "initiator");
  const int lo = std::max<int>(theirs[6], options.version_min);
  const int hi = std::min<int>(theirs[7], options.version_max);
  if (theirs[6] > theirs[7] || lo > hi) {
    const auto range = make_preamble(options.version_min, options.version_max);
    co_await s->write_all(range, "handshake (preamble)");
    throw ProtocolError(ErrorCode::version_mismatch,
                        "the initiator speaks protocol versions " + std::to_string(theirs[6]) + ".." +
                            std::to_string(theirs[7]) + ", this build speaks " +
                            std::to_string(options.version_min) + ".." +
                            std::to_string(options.version_max));
  }
  s->version = static_cast<std::uint8_t>(hi);
  const auto mine = make_preamble(s->version, s->version);
  co_await s->write_all(mine, "handshake (preamble)");

  Bytes prologue(theirs.begin(), theirs.end());
  prologue.insert(prologue.end(), mine.begin(), mine.end());
  noise::HandshakeState hs(noise::HandshakePattern::xx, false, prologue,
                           {.s = identity.noise_static(), .e = {}, .rs = {}});
  const Bytes m1 = co_await s->read_handshake("handshake (message 1)");
  if (!hs.read_message(m1).empty()) {
    throw ProtocolError(ErrorCode::handshake_failed, "message 1 must carry no payload");
  }
  co_await s->write_handshake(hs.write_message(identity.identity_payload()), "handshake (message 2)");
  const Bytes m3 = co_await s->read_handshake("handshake (message 3)");
  const Bytes payload = hs.read_message(m3);
  const PeerId initiator = verify_identity_payload(payload, *hs.remote_static());
  start_transport(*s, hs, initiator);

  if (options.admit && !options.admit(initiator)) {
    const std::string reason = "identity " + initiator.hex() + " is not on the allowlist";
    Bytes body{kVerdictNotAllowed};
    body.insert(body.end(), reason.begin(), reason.end());
    try {
      co_await s->send_frame(MessageClass::verdict, body);
    } catch (const ProtocolError&) {
      // The refusal below is what matters; the peer may already be gone.
    }
    throw ProtocolError(ErrorCode::not_allowed, reason);
  }
  const Bytes ok{kVerdictAccepted};
  co_await s->send_frame(MessageClass::verdict, ok);
}

// Runs `handshake` under the handshake deadline and closes the socket on any failure.
asio::awaitable<void> guarded(ImplPtr s, asio::awaitable<void> handshake) {
  s->arm(s->read_timer, s->limits.handshake_timeout, &Channel::Impl::read_timed_out);
  try {
    co_await std::move(handshake);
  } catch (const ProtocolError& e) {
    const bool timed_out = s->read_timed_out;
    s->close();
    if (timed_out && e.code() != ErrorCode::timeout) {
      throw ProtocolError(ErrorCode::timeout, std::string("handshake did not finish in time (") + e.what() + ")");
    }
    throw;
  } catch (...) {
    s->close();
    throw;
  }
  s->read_timer.cancel();
}

}  // namespace

MessageClass message_class(const wire::Envelope& envelope) {
  switch (envelope.payload_case()) {
    case wire::Envelope::kManifest:
    case wire::Envelope::kBlobChunk:
    case wire::Envelope::kUpdate:
    case wire::Envelope::kUpdateChunk:
    case wire::Envelope::kAuditReport:
      return MessageClass::bulk;
    case wire::Envelope::kWorkLease:  // an audit lease carries a whole lease's completions
      return envelope.work_lease().has_audit() ? MessageClass::bulk : MessageClass::control;
    default:
      return MessageClass::control;
  }
}

Channel::Channel(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Channel::Channel(Channel&&) noexcept = default;
Channel& Channel::operator=(Channel&&) noexcept = default;
Channel::~Channel() {
  if (impl_) impl_->close();
}

asio::awaitable<Channel> Channel::connect(tcp::endpoint endpoint, const Identity& identity,
                                          ChannelOptions options) {
  Identity id = identity;
  auto ex = co_await asio::this_coro::executor;
  auto s = std::make_shared<Impl>(tcp::socket(ex), options.limits);
  if (options.max_send_bytes_per_s > 0) s->send_cap.emplace(options.max_send_bytes_per_s);
  if (options.max_receive_bytes_per_s > 0) s->receive_cap.emplace(options.max_receive_bytes_per_s);
  auto connect_and_handshake = [](ImplPtr s, tcp::endpoint ep, Identity id,
                                  ChannelOptions options) -> asio::awaitable<void> {
    std::error_code ec;
    if (options.local_address) {
      s->socket.open(ep.protocol(), ec);
      if (!ec) s->socket.bind(tcp::endpoint(*options.local_address, 0), ec);
      if (ec)
        throw ProtocolError(ErrorCode::io, "cannot connect from " + options.local_address->to_string() +
                                                ": " + ec.message());
    }
    co_await s->socket.async_connect(ep, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (s->read_timed_out) throw ProtocolError(ErrorCode::timeout, "connect to " + ep.address().to_string() + " timed out");
      throw ProtocolError(ErrorCode::io, "cannot connect to " + ep.address().to_string() + ":" +
                                              std::to_string(ep.port()) + ": " + ec.message());
    }
    tune_socket(s->socket);
    co_await initiator_handshake(s, std::move(id), std::move(options));
  };
  co_await guarded(s, connect_and_handshake(s, endpoint, std::move(id), std::move(options)));
  co_return Channel(std::move(s));
}

asio::awaitable<Channel> Channel::connect(std::string host, std::uint16_t port,
                                          const Identity& identity, ChannelOptions options) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  std::error_code ec;
  auto results = co_await resolver.async_resolve(host, std::to_string(port),
                                                 asio::redirect_error(asio::use_awaitable, ec));
  if (ec || results.empty()) {
    throw ProtocolError(ErrorCode::io, "cannot resolve " + host + ": " + ec.message());
  }
  std::optional<ProtocolError> last;
  for (const auto& entry : results) {
    try {
      co_return co_await connect(entry.endpoint(), identity, options);
    } catch (const ProtocolError& e) {
      // Only a failure to reach this address moves on to the next one.
      if (e.code() != ErrorCode::io) throw;
      last = e;
    }
  }
  throw *last;
}

asio::awaitable<Channel> Channel::accept(tcp::socket socket, const Identity& identity,
                                         ChannelOptions options) {
  tune_socket(socket);
  auto s = std::make_shared<Impl>(std::move(socket), options.limits);
  if (options.max_send_bytes_per_s > 0) s->send_cap.emplace(options.max_send_bytes_per_s);
  if (options.max_receive_bytes_per_s > 0) s->receive_cap.emplace(options.max_receive_bytes_per_s);
  co_await guarded(s, responder_handshake(s, identity, std::move(options)));
  co_return Channel(std::move(s));
}

asio::awaitable<void> Channel::send_frame(MessageClass cls, ByteView body) {
  auto self = impl_;
  COHORT_CHECK(cls != MessageClass::verdict, "the verdict is part of the handshake");
  co_await self->send_frame(cls, body);
}

asio::awaitable<Frame> Channel::receive_frame() {
  auto self = impl_;
  COHORT_CHECK(!self->receiving, "a Channel allows one receive at a time");
  self->receiving = true;
  struct Done {
    Impl& s;
    ~Done() { s.receiving = false; }
  } done{*self};
  co_return co_await self->receive_frame(false, false);
}

asio::awaitable<void> Channel::send(const wire::Envelope& envelope) {
  auto self = impl_;
  Bytes body(envelope.ByteSizeLong());
  envelope.SerializeWithCachedSizesToArray(body.data());
  co_await self->send_frame(message_class(envelope), body);
}

asio::awaitable<wire::Envelope> Channel::receive() {
  auto self = impl_;
  COHORT_CHECK(!self->receiving, "a Channel allows one receive at a time");
  self->receiving = true;
  struct Done {
    Impl& s;
    ~Done() { s.receiving = false; }
  } done{*self};
  Frame frame = co_await self->receive_frame(false, false);
  wire::Envelope envelope;
  if (!envelope.ParseFromArray(frame.body.data(), static_cast<int>(frame.body.size()))) {
    self->close();
    throw ProtocolError(ErrorCode::malformed, "message is not a valid Envelope");
  }
  if (message_class(envelope) != frame.cls) {
    self->close();
    throw ProtocolError(ErrorCode::malformed, "Envelope arrived in the wrong message class");
  }
  co_return envelope;
}

const PeerId& Channel::peer() const { return impl_->peer; }
const noise::Hash& Channel::handshake_hash() const { return impl_->hash; }
std::uint8_t Channel::version() const { return impl_->version; }
bool Channel::is_open() const { return impl_ && impl_->socket.is_open(); }
void Channel::close() {
  if (impl_) impl_->close();
}
tcp::endpoint Channel::remote_endpoint() const {
  std::error_code ec;
  auto ep = impl_->socket.remote_endpoint(ec);
  return ep;
}

// ---------------------------------------------------------------------------------------------

struct Server::State : std::enable_shared_from_this<Server::State> {
  State(asio::any_io_executor ex, tcp::endpoint ep, Identity id, ChannelOptions opts, Handler h)
      : executor(ex),
        acceptor(asio::make_strand(ex)),
        identity(std::move(id)),
        options(std::move(opts)),
        handler(std::move(h)) {
    acceptor.open(ep.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address(true));
    acceptor.bind(ep);
    acceptor.listen();
    port = acceptor.local_endpoint().port();
  }

  asio::any_io_executor executor;
  tcp::acceptor acceptor;
  Identity identity;
  ChannelOptions options;
  Handler handler;
  std::function<void(const tcp::endpoint&, const ProtocolError&)> on_handshake_error;
  Stats stats;
  std::uint16_t port = 0;
  std::atomic<std::size_t> max_pending{1024};
  std::atomic<bool> stopped{false};

  // Per source address: open connections and a token bucket of new ones.
  struct Address {
    std::size_t open = 0;
    double tokens = 0, at = 0;  // tokens as of `at` (steady seconds)
  };
  std::mutex mu;
  std::map<asio::ip::address, Address> addresses;
  std::size_t max_per_address = 0;
  double per_s = 0, burst = 0;

  // Admits a new connection from `a` (and counts it open), or says which bound it is over.
  const char* admit(const asio::ip::address& a) {
    std::lock_guard<std::mutex> lock(mu);
    const double now =
        std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    if (addresses.size() > 65536)  // forget idle addresses whose buckets are full again
      std::erase_if(addresses, [&](const auto& kv) {
        return kv.second.open == 0 && (per_s <= 0 || kv.second.tokens + (now - kv.second.at) * per_s >= burst);
      });
    Address& s = addresses[a];
    if (max_per_address > 0 && s.open >= max_per_address) return "address";
    if (per_s > 0) {
      s.tokens = s.at == 0 ? burst : std::min(burst, s.tokens + (now - s.at) * per_s);
      s.at = now;
      if (s.tokens < 1) return "rate";
      s.tokens -= 1;
    }
    ++s.open;
    return nullptr;
  }
  void closed(const asio::ip::address& a) {
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = addresses.find(a); it != addresses.end() && it->second.open > 0) --it->second.open;
  }

  // Handshakes in progress, oldest first. `fd` is a dup of the connection's socket: shutting it
  // down ends that handshake from here (its strand sees the socket fail), and holding it keeps
  // the descriptor number from being reused by another connection meanwhile.
  struct Handshake {
    std::uint64_t id;
    asio::ip::address address;
    int fd;
  };
  std::list<Handshake> handshakes;  // guarded by mu
  std::uint64_t next_handshake = 0;

  // Registers the handshake of a new connection from `a`; at max_pending, first evicts the oldest
  // handshake of the address holding the most. nullopt: no room (no descriptor to spare).
  std::optional<std::uint64_t> begin_handshake(const asio::ip::address& a, int socket_fd) {
    std::lock_guard<std::mutex> lock(mu);
    if (!handshakes.empty() && handshakes.size() >= max_pending) {
      std::map<asio::ip::address, std::size_t> per_address;
      for (const auto& h : handshakes) ++per_address[h.address];
      auto victim = handshakes.begin();  // the oldest of the busiest address (the list is in age order)
      std::size_t most = 0;
      for (auto it = handshakes.begin(); it != handshakes.end(); ++it)
        if (per_address[it->address] > most) most = per_address[it->address], victim = it;
      ::shutdown(victim->fd, SHUT_RDWR);
      ::close(victim->fd);
      handshakes.erase(victim);
      ++stats.evicted;
    }
    const int fd = ::dup(socket_fd);
    if (fd < 0) return std::nullopt;
    handshakes.push_back({next_handshake, a, fd});
    return next_handshake++;
  }
  // The handshake ended (either way). False: it had been evicted.
  bool end_handshake(std::uint64_t id) {
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = handshakes.begin(); it != handshakes.end(); ++it)
      if (it->id == id) {
        ::close(it->fd);
        handshakes.erase(it);
        return true;
      }
    return false;
  }

  // Failed handshakes are logged at most once a second, with how many went unlogged: a flood of
  // half-open connections must not become a flood of log lines.
  double failure_logged_at = -1;
  std::uint64_t failures_unlogged = 0;
  void log_failure(const std::string& who, const std::string& why) {
    std::lock_guard<std::mutex> lock(mu);
    const double now =
        std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    if (failure_logged_at >= 0 && now - failure_logged_at < 1.0) {
      ++failures_unlogged;
      return;
    }
    if (failures_unlogged > 0)
      spdlog::info("protocol: handshake with {} failed: {} ({} more failed since the last such line)",
                   who, why, failures_unlogged);
    else
      spdlog::info("protocol: handshake with {} failed: {}", who, why);
    failure_logged_at = now;
    failures_unlogged = 0;
  }
};

namespace {

asio::awaitable<void> serve_connection(std::shared_ptr<Server::State> st, tcp::socket socket,
                                       asio::ip::address address, std::uint64_t handshake) {
  // Counted open from accept to the end of the handler, whichever way it ends.
  struct Open {
    Server::State& st;
    asio::ip::address a;
    ~Open() { st.closed(a); }
  } open{*st, address};
  std::error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  const std::string who = ec ? std::string("?") : remote.address().to_string() + ":" + std::to_string(remote.port());
  std::optional<Channel> channel;
  try {
    channel.emplace(co_await Channel::accept(std::move(socket), st->identity, st->options));
  } catch (const ProtocolError& e) {
    const bool evicted = !st->end_handshake(handshake);
    ++st->stats.handshakes_failed;
    st->log_failure(who, evicted ? "evicted to make room for a new connection "
                                   "(max_pending_handshakes)"
                                 : e.what());
    if (st->on_handshake_error) st->on_handshake_error(remote, e);
    co_return;
  }
  st->end_handshake(handshake);
  ++st->stats.handshakes_ok;
  spdlog::debug("protocol: {} authenticated as {}", who, channel->peer().fingerprint());
  try {
    co_await st->handler(std::move(*channel));
  } catch (const ProtocolError& e) {
    spdlog::info("protocol: connection with {} ended: {}", who, e.what());
  } catch (const std::exception& e) {
    spdlog::warn("protocol: handler for {} failed: {}", who, e.what());
  }
}

asio::awaitable<void> accept_loop(std::shared_ptr<Server::State> st) {
  while (!st->stopped) {
    std::error_code ec;
    tcp::socket socket = co_await st->acceptor.async_accept(
        asio::make_strand(st->executor), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (st->stopped || ec == asio::error::operation_aborted) co_return;
      spdlog::warn("protocol: accept failed: {}", ec.message());
      if (ec == asio::error::no_descriptors) {  // out of file descriptors: do not spin
        asio::steady_timer pause(st->acceptor.get_executor(), std::chrono::milliseconds(100));
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
      continue;
    }
    ++st->stats.accepted;
    const auto address = socket.remote_endpoint(ec).address();
    if (ec) continue;  // already gone
    if (const char* over = st->admit(address)) {
      ++(over[0] == 'a' ? st->stats.rejected_address : st->stats.rejected_rate);
      socket.close(ec);
      continue;
    }
    const std::optional<std::uint64_t> handshake = st->begin_handshake(address, socket.native_handle());
    if (!handshake) {
      ++st->stats.rejected_busy;
      st->closed(address);
      socket.close(ec);
      continue;
    }
    auto ex = socket.get_executor();
    asio::co_spawn(ex, serve_connection(st, std::move(socket), address, *handshake), asio::detached);
  }
}

}  // namespace

Server::Server(asio::any_io_executor executor, tcp::endpoint endpoint, Identity identity,
               ChannelOptions options, Handler handler)
    : state_(std::make_shared<State>(std::move(executor), endpoint, std::move(identity),
                                     std::move(options), std::move(handler))) {}

Server::~Server() { stop(); }

void Server::start() { asio::co_spawn(state_->acceptor.get_executor(), accept_loop(state_), asio::detached); }

void Server::stop() {
  if (state_->stopped.exchange(true)) return;
  asio::post(state_->acceptor.get_executor(), [st = state_] {
    std::error_code ec;
    st->acceptor.close(ec);
  });
}

std::uint16_t Server::port() const { return state_->port; }
const Server::Stats& Server::stats() const { return state_->stats; }
void Server::set_max_pending_handshakes(std::size_t n) { state_->max_pending = n; }
void Server::set_address_limits(std::size_t max_connections, double per_s, double burst) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->max_per_address = max_connections;
  state_->per_s = per_s;
  state_->burst = std::max(1.0, burst);
}
void Server::set_handshake_error_handler(
    std::function<void(const tcp::endpoint&, const ProtocolError&)> on_error) {
  state_->on_handshake_error = std::move(on_error);
}

// ---------------------------------------------------------------------------------------------

namespace {

template <class T>
T run_blocking(asio::io_context& io, asio::awaitable<T> op) {
  std::optional<T> result;
  std::exception_ptr error;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { result.emplace(co_await std::move(op)); },
      [&](std::exception_ptr e) { error = e; });
  io.restart();
  io.run();
  if (error) std::rethrow_exception(error);
  return std::move(*result);
}

void run_blocking(asio::io_context& io, asio::awaitable<void> op) {
  std::exception_ptr error;
  asio::co_spawn(io, std::move(op), [&](std::exception_ptr e) { error = e; });
  io.restart();
  io.run();
  if (error) std::rethrow_exception(error);
}

}  // namespace

BlockingChannel BlockingChannel::connect(const std::string& host, std::uint16_t port,
                                         const Identity& identity, ChannelOptions options) {
  BlockingChannel out;
  out.io_ = std::make_unique<asio::io_context>(1);
  out.channel_ = std::make_unique<Channel>(
      run_blocking(*out.io_, Channel::connect(host, port, identity, std::move(options))));
  return out;
}

BlockingChannel::BlockingChannel(BlockingChannel&&) noexcept = default;
BlockingChannel& BlockingChannel::operator=(BlockingChannel&&) noexcept = default;
BlockingChannel::~BlockingChannel() {
  // The channel's socket and timers belong to io_; destroy them first.
  channel_.reset();
  if (io_) {
    io_->restart();
    io_->poll();
  }
}

void BlockingChannel::send(const wire::Envelope& envelope) { run_blocking(*io_, channel_->send(envelope)); }
wire::Envelope BlockingChannel::receive() { return run_blocking(*io_, channel_->receive()); }
void BlockingChannel::send_frame(MessageClass cls, ByteView body) {
  run_blocking(*io_, channel_->send_frame(cls, body));
}
Frame BlockingChannel::receive_frame() { return run_blocking(*io_, channel_->receive_frame()); }
const PeerId& BlockingChannel::peer() const { return channel_->peer(); }
Channel& BlockingChannel::channel() { return *channel_; }
void BlockingChannel::close() { channel_->close(); }

}  // namespace cohort::protocol
