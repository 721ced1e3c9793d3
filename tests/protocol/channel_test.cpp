// The channel over real loopback sockets: a coordinator-side Server on its own thread, honest
// clients (BlockingChannel, coroutines) and raw peers that speak the wire format by hand to
// forge, tamper with, replay, reorder, truncate, stall and spew garbage.
#include <gtest/gtest.h>
#include <poll.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "protocol/channel.h"

namespace cohort::protocol {
namespace {

using asio::ip::tcp;
using namespace std::chrono_literals;

constexpr auto kWait = 10s;  // upper bound on waiting for an event that must happen

ChannelLimits test_limits(std::chrono::milliseconds timeout = 5000ms) {
  ChannelLimits l;
  l.handshake_timeout = timeout;
  l.idle_timeout = timeout;
  l.write_timeout = timeout;
  return l;
}

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

wire::Envelope heartbeat(std::uint64_t id, std::string status = "ok") {
  wire::Envelope env;
  env.set_id(id);
  env.mutable_heartbeat()->set_sent_unix_ms(1000 + id);
  env.mutable_heartbeat()->set_status(std::move(status));
  return env;
}

std::vector<Bytes> records(const Bytes& wire) {
  std::vector<Bytes> out;
  for (std::size_t pos = 0; pos < wire.size();) {
    const std::size_t len = std::size_t{wire[pos]} << 8 | wire[pos + 1];
    out.emplace_back(wire.begin() + pos, wire.begin() + pos + 2 + len);
    pos += 2 + len;
  }
  return out;
}

Bytes concat(const std::vector<Bytes>& parts) {
  Bytes out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

template <class F>
ErrorCode code_of(F&& f) {
  try {
    f();
  } catch (const ProtocolError& e) {
    return e.code();
  }
  ADD_FAILURE() << "expected a ProtocolError";
  return ErrorCode::io;
}

// The coordinator side: a Server on its own io thread that echoes (or just records) envelopes
// and records how every session and every failed handshake ended.
class TestServer {
 public:
  struct Session {
    PeerId peer;
    noise::Hash hash{};
    std::vector<wire::Envelope> received;
    std::optional<ErrorCode> error;
  };

  explicit TestServer(Identity identity, ChannelOptions options = {.limits = test_limits()},
                      bool echo = true)
      : identity_(identity), echo_(echo) {
    server_.emplace(io_.get_executor(), tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0), identity,
                    std::move(options), [this](Channel ch) { return session(std::move(ch)); });
    server_->set_handshake_error_handler([this](const tcp::endpoint&, const ProtocolError& e) {
      std::lock_guard lock(mu_);
      handshake_errors_.push_back(e.code());
      cv_.notify_all();
    });
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TestServer() {
    server_->stop();
    io_.stop();
    thread_.join();
  }

  std::uint16_t port() const { return server_->port(); }
  const PeerId& id() const { return identity_.id(); }
  const Server::Stats& stats() const { return server_->stats(); }
  void set_address_limits(std::size_t n, double per_s, double burst) {
    server_->set_address_limits(n, per_s, burst);
  }
  void set_max_pending_handshakes(std::size_t n) { server_->set_max_pending_handshakes(n); }

  Session wait_session() {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, kWait, [&] { return !sessions_.empty(); })) {
      ADD_FAILURE() << "no session ended";
      return {};
    }
    Session s = std::move(sessions_.front());
    sessions_.pop_front();
    return s;
  }
  std::optional<ErrorCode> wait_handshake_error() {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, kWait, [&] { return !handshake_errors_.empty(); })) return std::nullopt;
    const ErrorCode c = handshake_errors_.front();
    handshake_errors_.pop_front();
    return c;
  }

 private:
  asio::awaitable<void> session(Channel ch) {
    Session s{ch.peer(), ch.handshake_hash(), {}, {}};
    try {
      for (;;) {
        wire::Envelope env = co_await ch.receive();
        s.received.push_back(env);
        if (echo_) co_await ch.send(env);
      }
    } catch (const ProtocolError& e) {
      s.error = e.code();
    }
    std::lock_guard lock(mu_);
    sessions_.push_back(std::move(s));
    cv_.notify_all();
  }

  asio::io_context io_;
  Identity identity_;
  bool echo_;
  std::optional<Server> server_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Session> sessions_;
  std::deque<ErrorCode> handshake_errors_;
};

// A peer that speaks the wire format by hand (blocking sockets), to misbehave precisely.
class RawPeer {
 public:
  explicit RawPeer(std::uint16_t port) : socket_(io_) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    socket_.set_option(tcp::no_delay(true));
  }
  explicit RawPeer(tcp::socket s) : socket_(std::move(s)) {}
  // From another loopback address (127.0.0.2, ...): another machine, as the server sees it.
  RawPeer(std::uint16_t port, const char* from) : socket_(io_) {
    socket_.open(tcp::v4());
    socket_.bind(tcp::endpoint(asio::ip::make_address(from), 0));
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }

  void write(ByteView b) { asio::write(socket_, asio::buffer(b.data(), b.size())); }
  Bytes read_exact(std::size_t n) {
    Bytes b(n);
    asio::read(socket_, asio::buffer(b));
    return b;
  }
  void write_handshake(const Bytes& m) {
    Bytes framed(2 + m.size());
    framed[0] = static_cast<std::uint8_t>(m.size() >> 8);
    framed[1] = static_cast<std::uint8_t>(m.size());
    std::copy(m.begin(), m.end(), framed.begin() + 2);
    write(framed);
  }
  Bytes read_handshake() {
    const Bytes len = read_exact(2);
    return read_exact(std::size_t{len[0]} << 8 | len[1]);
  }

  // Initiator handshake up to and including message 3; `payload` replaces the identity payload.
  // With `raw_cipher`, transport messages are built by hand with record() instead of seal().
  void handshake(const Identity& id, std::optional<Bytes> payload = std::nullopt,
                 bool raw_cipher = false) {
    const std::uint64_t rekey_interval = ChannelLimits{}.rekey_interval;
    const Bytes pre = {'C', 'O', 'H', 'O', 'R', 'T', 1, 1};
    write(pre);
    Bytes prologue = pre;
    const Bytes theirs = read_exact(8);
    prologue.insert(prologue.end(), theirs.begin(), theirs.end());
    noise::HandshakeState hs(noise::HandshakePattern::xx, true, prologue, {.s = id.noise_static()});
    write_handshake(hs.write_message({}));
    const Bytes p2 = hs.read_message(read_handshake());
    responder = verify_identity_payload(p2, *hs.remote_static());
    write_handshake(hs.write_message(payload.value_or(id.identity_payload())));
    auto [send, recv] = hs.split();
    ChannelLimits limits;
    limits.rekey_interval = rekey_interval;
    if (raw_cipher) {
      raw_send_.emplace(std::move(send));
    } else {
      sealer_.emplace(std::move(send), rekey_interval);
    }
    opener_.emplace(std::move(recv), limits);
  }
  // One transport message with exactly `plaintext` inside (which may lie about lengths).
  Bytes record(const Bytes& plaintext) {
    Bytes ct;
    raw_send_->encrypt_with_ad({}, plaintext, ct);
    Bytes out(2 + ct.size());
    out[0] = static_cast<std::uint8_t>(ct.size() >> 8);
    out[1] = static_cast<std::uint8_t>(ct.size());
    std::copy(ct.begin(), ct.end(), out.begin() + 2);
    return out;
  }
  Frame read_frame() {
    for (;;) {
      if (auto f = opener_->pop()) return std::move(*f);
      std::uint8_t buf[65536];
      const std::size_t n = socket_.read_some(asio::buffer(buf));
      opener_->feed(ByteView(buf, n));
    }
  }
  void expect_accepted() {
    const Frame verdict = read_frame();
    EXPECT_EQ(verdict.cls, MessageClass::verdict);
    ASSERT_FALSE(verdict.body.empty());
    EXPECT_EQ(verdict.body[0], 0);
  }
  Bytes seal(MessageClass cls, ByteView body) {
    Bytes out;
    sealer_->seal(cls, body, out);
    return out;
  }
  Bytes seal(const wire::Envelope& env) {
    const std::string s = env.SerializeAsString();
    return seal(message_class(env), as_bytes(s));
  }
  // True once the other side has closed the connection (reads EOF or reset within `within`).
  bool wait_closed(std::chrono::milliseconds within = kWait) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{socket_.native_handle(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
      std::uint8_t buf[65536];
      std::error_code ec;
      socket_.read_some(asio::buffer(buf), ec);
      if (ec) return true;
    }
  }
  void shutdown_send() { socket_.shutdown(tcp::socket::shutdown_send); }

  std::optional<PeerId> responder;

 private:
  asio::io_context io_;
  tcp::socket socket_;
  std::optional<FrameSealer> sealer_;
  std::optional<noise::CipherState> raw_send_;
  std::optional<FrameOpener> opener_;
};

// ---------------------------------------------------------------------------------------------

TEST(Channel, HandshakeAuthenticatesBothSidesAndCarriesEnvelopesBothWays) {
  const Identity coord = Identity::generate(), node = Identity::generate();
  TestServer server(coord);
  BlockingChannel ch = BlockingChannel::connect(
      "127.0.0.1", server.port(), node, {.limits = test_limits(), .expected_peer = coord.id()});
  EXPECT_EQ(ch.peer(), coord.id());
  EXPECT_EQ(ch.channel().version(), kProtocolVersionMax);

  std::vector<wire::Envelope> sent;
  wire::Envelope join;
  join.set_id(1);
  auto* caps = join.mutable_join_request()->mutable_capabilities();
  caps->set_software_version("0.1.0");
  caps->set_fp8(true);
  caps->add_devices()->set_kind("cuda");
  sent.push_back(join);
  wire::Envelope chunk;  // 3 MiB: many transport messages
  chunk.set_id(2);
  chunk.mutable_blob_chunk()->set_data(std::string(3 << 20, '\x5a'));
  chunk.mutable_blob_chunk()->set_total_bytes(3 << 20);
  sent.push_back(chunk);
  sent.push_back(heartbeat(3));
  for (const auto& env : sent) {
    ch.send(env);
    const wire::Envelope echoed = ch.receive();
    EXPECT_EQ(echoed.SerializeAsString(), env.SerializeAsString());
  }
  const noise::Hash client_hash = ch.channel().handshake_hash();
  ch.close();

  const TestServer::Session s = server.wait_session();
  EXPECT_EQ(s.peer, node.id());
  EXPECT_EQ(s.hash, client_hash);
  ASSERT_EQ(s.received.size(), sent.size());
  EXPECT_EQ(s.error, ErrorCode::closed);
  EXPECT_EQ(server.stats().handshakes_ok, 1u);
}

asio::awaitable<void> connect_and_echo(std::uint16_t port, PeerId coordinator, std::uint64_t id, int& ok) {
  const Identity me = Identity::generate();
  Channel ch = co_await Channel::connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), me,
                                         {.limits = test_limits(), .expected_peer = coordinator});
  co_await ch.send(heartbeat(id));
  const wire::Envelope back = co_await ch.receive();
  if (back.id() == id && ch.peer() == coordinator) ++ok;
}

TEST(Channel, ManyConcurrentCoroutineClients) {
  const Identity coord = Identity::generate();
  TestServer server(coord);
  constexpr int kClients = 16;
  asio::io_context io;
  int ok = 0;
  for (int i = 0; i < kClients; ++i) {
    asio::co_spawn(io, connect_and_echo(server.port(), coord.id(), static_cast<std::uint64_t>(i), ok),
                   asio::detached);
  }
  io.run();
  EXPECT_EQ(ok, kClients);
  for (int i = 0; i < kClients; ++i) EXPECT_EQ(server.wait_session().error, ErrorCode::closed);
  EXPECT_EQ(server.stats().handshakes_ok, static_cast<std::uint64_t>(kClients));
}

// Several coroutines send on one channel at once (a coordinator pushing leases while answering
// requests): every message must arrive intact, each exactly once.
asio::awaitable<void> send_many(Channel& ch, int sender, int count, std::map<std::uint64_t, std::string>& sent) {
  for (int i = 0; i < count; ++i) {
    const std::uint64_t id = static_cast<std::uint64_t>(sender * 1000 + i);
    // Sizes from 1 byte to ~300 KB: many writes span several transport messages.
    wire::Envelope env;
    env.set_id(id);
    env.mutable_blob_chunk()->set_data(std::string(1 + (id * 7919) % 300'000, static_cast<char>('a' + sender)));
    sent[id] = env.SerializeAsString();
    co_await ch.send(env);
  }
}

TEST(Channel, ConcurrentSendersOnOneChannelKeepEveryMessageIntact) {
  const Identity coord = Identity::generate(), node = Identity::generate();
  TestServer server(coord);
  asio::io_context io;
  constexpr int kSenders = 6, kEach = 15;
  std::map<std::uint64_t, std::string> sent, echoed;
  std::optional<Channel> ch;
  std::exception_ptr failure;
  auto record = [&failure](std::exception_ptr e) {
    if (e && !failure) failure = e;
  };
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        ch.emplace(co_await Channel::connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), server.port()),
                                             node, {.limits = test_limits()}));
        const auto ex = co_await asio::this_coro::executor;
        for (int s = 0; s < kSenders; ++s) asio::co_spawn(ex, send_many(*ch, s, kEach, sent), record);
        for (int n = 0; n < kSenders * kEach; ++n) {
          const wire::Envelope back = co_await ch->receive();
          echoed[back.id()] = back.SerializeAsString();
        }
      },
      record);
  io.run();
  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      FAIL() << e.what();
    }
  }
  EXPECT_EQ(echoed.size(), static_cast<std::size_t>(kSenders * kEach));
  EXPECT_TRUE(echoed == sent);
}

TEST(Channel, PinnedKeyMismatchIsAClearError) {
  const Identity coord = Identity::generate(), impostor_pin = Identity::generate();
  TestServer server(coord);
  EXPECT_EQ(code_of([&] {
              (void)BlockingChannel::connect("127.0.0.1", server.port(), Identity::generate(),
                                             {.limits = test_limits(), .expected_peer = impostor_pin.id()});
            }),
            ErrorCode::pinned_key_mismatch);
}

TEST(Channel, AllowlistRefusalIsAClearErrorOnBothSides) {
  const Identity coord = Identity::generate(), friendly = Identity::generate(), stranger = Identity::generate();
  ChannelOptions opts{.limits = test_limits()};
  opts.admit = [id = friendly.id()](const PeerId& p) { return p == id; };
  TestServer server(coord, opts);
  EXPECT_EQ(code_of([&] {
              (void)BlockingChannel::connect("127.0.0.1", server.port(), stranger,
                                             {.limits = test_limits(), .expected_peer = coord.id()});
            }),
            ErrorCode::not_allowed);
  EXPECT_EQ(server.wait_handshake_error(), ErrorCode::not_allowed);
  BlockingChannel ok = BlockingChannel::connect("127.0.0.1", server.port(), friendly,
                                                {.limits = test_limits(), .expected_peer = coord.id()});
  ok.send(heartbeat(1));
  EXPECT_EQ(ok.receive().id(), 1u);
}

TEST(Channel, ForgedInitiatorSignatureEndsTheConnectionAtOnce) {
  const Identity coord = Identity::generate(), victim = Identity::generate(), mallory = Identity::generate();
  TestServer server(coord);
  RawPeer raw(server.port());
  // Mallory claims the victim's identity; the signature over her static key is her own.
  Bytes forged = make_identity_payload(mallory, mallory.noise_static().public_key);
  std::copy(victim.id().bytes().begin(), victim.id().bytes().end(), forged.begin());
  raw.handshake(mallory, forged);
  EXPECT_EQ(server.wait_handshake_error(), ErrorCode::bad_identity_signature);
  EXPECT_TRUE(raw.wait_closed());
  EXPECT_EQ(server.stats().handshakes_ok, 0u);
}

TEST(Channel, ForgedResponderSignatureIsRejectedByTheInitiator) {
  const Identity coord = Identity::generate(), mallory = Identity::generate();
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  std::thread fake([&] {
    RawPeer peer(acceptor.accept());
    const Bytes theirs = peer.read_exact(8);
    const Bytes mine = {'C', 'O', 'H', 'O', 'R', 'T', 1, 1};
    peer.write(mine);
    Bytes prologue = theirs;
    prologue.insert(prologue.end(), mine.begin(), mine.end());
    noise::HandshakeState hs(noise::HandshakePattern::xx, false, prologue, {.s = mallory.noise_static()});
    (void)hs.read_message(peer.read_handshake());
    Bytes forged = make_identity_payload(mallory, mallory.noise_static().public_key);
    std::copy(coord.id().bytes().begin(), coord.id().bytes().end(), forged.begin());
    peer.write_handshake(hs.write_message(forged));
    EXPECT_TRUE(peer.wait_closed());
  });
  EXPECT_EQ(code_of([&] {
              (void)BlockingChannel::connect("127.0.0.1", acceptor.local_endpoint().port(), Identity::generate(),
                                             {.limits = test_limits(), .expected_peer = coord.id()});
            }),
            ErrorCode::bad_identity_signature);
  fake.join();
}

// After an honest handshake, the raw peer sends transport records mutated as `mutate` says;
// returns how the server session ended and how many envelopes reached the handler.
std::pair<std::optional<ErrorCode>, std::size_t> send_mutated(
    const std::function<Bytes(std::vector<Bytes>)>& mutate, std::vector<wire::Envelope> envs) {
  const Identity coord = Identity::generate(), node = Identity::generate();
  TestServer server(coord, {.limits = test_limits()}, /*echo=*/false);
  RawPeer raw(server.port());
  raw.handshake(node);
  raw.expect_accepted();
  Bytes wire;
  for (const auto& env : envs) {
    const Bytes b = raw.seal(env);
    wire.insert(wire.end(), b.begin(), b.end());
  }
  raw.write(mutate(records(wire)));
  raw.shutdown_send();
  const TestServer::Session s = server.wait_session();
  return {s.error, s.received.size()};
}

TEST(Channel, TamperedFrameEndsTheConnectionBeforeAnyHandler) {
  auto [error, delivered] = send_mutated(
      [](std::vector<Bytes> r) {
        r[1][20] ^= 0x01;
        return concat(r);
      },
      {heartbeat(1), heartbeat(2), heartbeat(3)});
  EXPECT_EQ(error, ErrorCode::authentication_failed);
  EXPECT_EQ(delivered, 1u);
}

TEST(Channel, ReplayedFrameIsRejected) {
  auto [error, delivered] = send_mutated(
      [](std::vector<Bytes> r) { return concat({r[0], r[1], r[1]}); }, {heartbeat(1), heartbeat(2)});
  EXPECT_EQ(error, ErrorCode::authentication_failed);
  EXPECT_EQ(delivered, 2u);
}

TEST(Channel, ReorderedFramesAreRejected) {
  auto [error, delivered] = send_mutated(
      [](std::vector<Bytes> r) { return concat({r[1], r[0]}); }, {heartbeat(1), heartbeat(2)});
  EXPECT_EQ(error, ErrorCode::authentication_failed);
  EXPECT_EQ(delivered, 0u);
}

TEST(Channel, TruncatedMessageIsNeverDelivered) {
  wire::Envelope big;
  big.mutable_blob_chunk()->set_data(std::string(300'000, 'x'));
  // Drop the last transport message of the big message, and separately cut one in half.
  auto [error, delivered] = send_mutated(
      [](std::vector<Bytes> r) {
        r.pop_back();
        return concat(r);
      },
      {heartbeat(1), big});
  EXPECT_EQ(error, ErrorCode::closed);
  EXPECT_EQ(delivered, 1u);
  auto [error2, delivered2] = send_mutated(
      [](std::vector<Bytes> r) {
        r[0].resize(r[0].size() / 2);
        return r[0];
      },
      {heartbeat(1)});
  EXPECT_EQ(error2, ErrorCode::closed);
  EXPECT_EQ(delivered2, 0u);
}

TEST(Channel, OversizedLengthPrefixIsRefused) {
  const Identity coord = Identity::generate(), node = Identity::generate();
  {
    // A correctly sealed transport message whose header announces a 1 GiB bulk message.
    TestServer server(coord, {.limits = test_limits()}, false);
    RawPeer raw(server.port());
    raw.handshake(node, std::nullopt, /*raw_cipher=*/true);
    raw.expect_accepted();
    raw.write(raw.record(Bytes{static_cast<std::uint8_t>(MessageClass::bulk), 0x40, 0, 0, 0}));
    const TestServer::Session s = server.wait_session();
    EXPECT_EQ(s.error, ErrorCode::message_too_large);
    EXPECT_TRUE(s.received.empty());
    EXPECT_TRUE(raw.wait_closed());
  }
  // Through the public API: a control message over the control limit.
  TestServer server(coord);
  BlockingChannel ch = BlockingChannel::connect("127.0.0.1", server.port(), node, {.limits = test_limits()});
  ch.send(heartbeat(1, std::string(300'000, 's')));
  const TestServer::Session s = server.wait_session();
  EXPECT_EQ(s.error, ErrorCode::message_too_large);
  EXPECT_TRUE(s.received.empty());
}

TEST(Channel, StalledHandshakeTimesOutWithoutLeakingSockets) {
  const Identity coord = Identity::generate(), node = Identity::generate();
  TestServer server(coord, {.limits = test_limits(300ms)});
  const std::size_t baseline = open_fds();
  for (int stage = 0; stage < 3; ++stage) {
    {
      RawPeer raw(server.port());
      if (stage >= 1) raw.write(Bytes{'C', 'O', 'H', 'O', 'R', 'T', 1, 1});
      if (stage >= 2) {
        (void)raw.read_exact(8);
        raw.write_handshake(Bytes(32, 9));  // message 1, then silence
      }
      EXPECT_EQ(server.wait_handshake_error(), ErrorCode::timeout) << "stage " << stage;
      EXPECT_TRUE(raw.wait_closed()) << "stage " << stage;
    }
    EXPECT_EQ(open_fds(), baseline) << "stage " << stage;
  }
  // An honest client still gets in afterwards.
  BlockingChannel ch = BlockingChannel::connect("127.0.0.1", server.port(), node, {.limits = test_limits()});
  EXPECT_EQ(ch.peer(), coord.id());
}

// One source address cannot crowd out the rest: a connection over its bound (open at once, or
// new ones too fast) is closed before a byte is read; when its others end there is room again.
TEST(Channel, PerAddressLimitsCloseExtraConnectionsAtOnce) {
  const Identity coord = Identity::generate(), node = Identity::generate();
  TestServer server(coord, {.limits = test_limits(5000ms)});
  server.set_address_limits(2, 0, 1);
  {
    RawPeer a(server.port()), b(server.port());
    RawPeer c(server.port());  // a third from 127.0.0.1 while two are open
    EXPECT_TRUE(c.wait_closed(2000ms));
    EXPECT_FALSE(a.wait_closed(200ms));  // the first two are still in their handshakes
    EXPECT_EQ(server.stats().rejected_address, 1u);
  }
  // a and b hung up: their handshakes end, and the address has room again.
  EXPECT_TRUE(server.wait_handshake_error().has_value());
  EXPECT_TRUE(server.wait_handshake_error().has_value());
  {
    BlockingChannel ch = BlockingChannel::connect("127.0.0.1", server.port(), node, {.limits = test_limits()});
    EXPECT_EQ(ch.peer(), coord.id());
  }
  // A rate of 0.5 new connections per second with a burst of 2: the third at once is closed.
  server.set_address_limits(0, 0.5, 2);
  RawPeer d(server.port()), e(server.port());
  RawPeer f(server.port());
  EXPECT_TRUE(f.wait_closed(2000ms));
  EXPECT_EQ(server.stats().rejected_rate, 1u);
}

// A flood of half-open connections cannot keep a peer out: at max_pending_handshakes a new
// connection takes the place of the oldest handshake of the address with the most of them.
TEST(Channel, HalfOpenFloodEvictsItselfNotTheNewcomer) {
  const Identity coord = Identity::generate(), node = Identity::generate();
  TestServer server(coord, {.limits = test_limits(5000ms)});
  server.set_max_pending_handshakes(3);
  RawPeer lone(server.port(), "127.0.0.3");  // one handshake from another address, slow
  std::vector<std::unique_ptr<RawPeer>> flood;
  for (int i = 0; i < 2; ++i) flood.push_back(std::make_unique<RawPeer>(server.port(), "127.0.0.2"));
  for (int i = 0; i < 200 && server.stats().accepted < 3; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(server.stats().accepted, 3u);
  // Full: the newcomer gets in, and the oldest of the flood's two made room.
  BlockingChannel ch = BlockingChannel::connect("127.0.0.1", server.port(), node, {.limits = test_limits()});
  EXPECT_EQ(ch.peer(), coord.id());
  EXPECT_EQ(server.stats().evicted, 1u);
  EXPECT_EQ(server.stats().rejected_busy, 0u);
  EXPECT_TRUE(flood[0]->wait_closed(2000ms));
  EXPECT_FALSE(flood[1]->wait_closed(200ms));
  EXPECT_FALSE(lone.wait_closed(200ms));
}

TEST(Channel, SilentResponderTimesOutTheInitiator) {
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const std::size_t baseline = open_fds();
  EXPECT_EQ(code_of([&] {
              (void)BlockingChannel::connect("127.0.0.1", acceptor.local_endpoint().port(),
                                             Identity::generate(), {.limits = test_limits(300ms)});
            }),
            ErrorCode::timeout);
  {
    tcp::socket accepted = acceptor.accept();  // the connection sat in the backlog
    RawPeer peer(std::move(accepted));
    EXPECT_TRUE(peer.wait_closed());
  }
  EXPECT_EQ(open_fds(), baseline);
}

TEST(Channel, IdleConnectionTimesOut) {
  const Identity coord = Identity::generate();
  TestServer server(coord, {.limits = test_limits(300ms)});
  BlockingChannel ch = BlockingChannel::connect("127.0.0.1", server.port(), Identity::generate(),
                                                {.limits = test_limits()});
  EXPECT_EQ(server.wait_session().error, ErrorCode::timeout);
}

TEST(Channel, GarbageBytesAreRejectedAtEveryStage) {
  const Identity coord = Identity::generate(), node = Identity::generate();
  TestServer server(coord, {.limits = test_limits()}, false);
  std::mt19937 rng(7);
  auto random_bytes = [&](std::size_t n) {
    Bytes b(n);
    for (auto& x : b) x = static_cast<std::uint8_t>(rng());
    return b;
  };
  {  // instead of the preamble
    RawPeer raw(server.port());
    raw.write(random_bytes(64));
    EXPECT_EQ(server.wait_handshake_error(), ErrorCode::not_cohort_peer);
    EXPECT_TRUE(raw.wait_closed());
  }
  {  // an HTTP client on the wrong port
    RawPeer raw(server.port());
    raw.write(as_bytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(server.wait_handshake_error(), ErrorCode::not_cohort_peer);
  }
  {  // as message 1 (a 65535-byte "ephemeral key and payload")
    RawPeer raw(server.port());
    raw.write(Bytes{'C', 'O', 'H', 'O', 'R', 'T', 1, 1});
    (void)raw.read_exact(8);
    raw.write_handshake(random_bytes(65535));
    EXPECT_EQ(server.wait_handshake_error(), ErrorCode::handshake_failed);
    EXPECT_TRUE(raw.wait_closed());
  }
  {  // after the handshake
    RawPeer raw(server.port());
    raw.handshake(node);
    raw.expect_accepted();
    raw.write(random_bytes(70'000));  // at least one whole "transport message"
    const auto s = server.wait_session();
    EXPECT_TRUE(s.error == ErrorCode::authentication_failed || s.error == ErrorCode::malformed);
    EXPECT_TRUE(s.received.empty());
  }
  {  // the initiator meets a server that is not Cohort
    asio::io_context io;
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    std::thread ssh([&] {
      RawPeer peer(acceptor.accept());
      peer.write(as_bytes("SSH-2.0-OpenSSH_9.2\r\n"));
      (void)peer.wait_closed();
    });
    EXPECT_EQ(code_of([&] {
                (void)BlockingChannel::connect("127.0.0.1", acceptor.local_endpoint().port(), node,
                                               {.limits = test_limits()});
              }),
              ErrorCode::not_cohort_peer);
    ssh.join();
  }
}

TEST(Channel, VersionMismatchIsAClearErrorOnBothSides) {
  const Identity coord = Identity::generate();
  TestServer server(coord);
  ChannelOptions future{.limits = test_limits()};
  future.version_min = future.version_max = 2;
  try {
    (void)BlockingChannel::connect("127.0.0.1", server.port(), Identity::generate(), future);
    FAIL() << "connected with no common version";
  } catch (const ProtocolError& e) {
    EXPECT_EQ(e.code(), ErrorCode::version_mismatch);
    EXPECT_NE(std::string(e.what()).find("1..1"), std::string::npos) << e.what();
  }
  EXPECT_EQ(server.wait_handshake_error(), ErrorCode::version_mismatch);
  // A newer client that also speaks version 1 is served version 1.
  ChannelOptions newer{.limits = test_limits()};
  newer.version_max = 3;
  BlockingChannel ch = BlockingChannel::connect("127.0.0.1", server.port(), Identity::generate(), newer);
  EXPECT_EQ(ch.channel().version(), 1);
}

TEST(Channel, EnvelopeInTheWrongClassOrUnparseableIsMalformed) {
  const Identity coord = Identity::generate(), node = Identity::generate();
  TestServer server(coord, {.limits = test_limits()}, false);
  {
    RawPeer raw(server.port());
    raw.handshake(node);
    raw.expect_accepted();
    wire::Envelope chunk;
    chunk.mutable_blob_chunk()->set_data("x");
    const std::string body = chunk.SerializeAsString();
    raw.write(raw.seal(MessageClass::control, as_bytes(body)));  // bulk payload as control
    EXPECT_EQ(server.wait_session().error, ErrorCode::malformed);
  }
  {
    RawPeer raw(server.port());
    raw.handshake(node);
    raw.expect_accepted();
    raw.write(raw.seal(MessageClass::control, Bytes{0xff, 0xff, 0xff}));
    EXPECT_EQ(server.wait_session().error, ErrorCode::malformed);
  }
}

TEST(Channel, RekeyingKeepsTheConversationGoing) {
  const Identity coord = Identity::generate();
  ChannelOptions opts{.limits = test_limits()};
  opts.limits.rekey_interval = 2;
  TestServer server(coord, opts);
  BlockingChannel ch = BlockingChannel::connect("127.0.0.1", server.port(), Identity::generate(), opts);
  for (int i = 0; i < 20; ++i) {
    wire::Envelope env = heartbeat(i, std::string(i * 9000, 'r'));
    ch.send(env);
    EXPECT_EQ(ch.receive().SerializeAsString(), env.SerializeAsString());
  }
}

}  // namespace
}  // namespace cohort::protocol

namespace cohort::protocol {
namespace {

// A volunteer's bandwidth caps (ChannelOptions) pace the bytes, never change them: a 3 MiB
// message and a small one go through a channel capped both ways, intact and in order.
TEST(Channel, CappedChannelDeliversEveryByteInOrder) {
  const Identity coord = Identity::generate();
  TestServer server(coord);
  BlockingChannel ch = BlockingChannel::connect(
      "127.0.0.1", server.port(), Identity::generate(),
      {.limits = test_limits(), .expected_peer = coord.id(), .max_send_bytes_per_s = 40e6,
       .max_receive_bytes_per_s = 40e6});
  wire::Envelope chunk;
  chunk.set_id(1);
  std::string data(3 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 131 % 251);
  chunk.mutable_update_chunk()->set_data(data);
  for (const wire::Envelope& env : {chunk, heartbeat(2)}) {
    ch.send(env);
    EXPECT_EQ(ch.receive().SerializeAsString(), env.SerializeAsString());
  }
}

}  // namespace
}  // namespace cohort::protocol
