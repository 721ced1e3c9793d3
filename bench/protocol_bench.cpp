// `cohort bench protocol`: the peer protocol against baselines measured in the same run:
//   - channel throughput on loopback for 1 MiB messages (sender and receiver on their own
//     threads, as on two machines) over raw libsodium ChaCha20-Poly1305 IETF encryption of
//     transport-sized messages on one core (target >= 0.7);
//   - signed-update verification (BLAKE2b-256 + Ed25519 + parse + checks) in MB/s of update bytes
//     over BLAKE2b hashing of the same bytes (target >= 0.8);
//   - full handshakes per second (TCP connect + preamble + Noise XX + identity check + verdict).
// Baseline and measurement alternate, `--trials` times each; medians are reported.
// Also built standalone as `protocol_bench protocol` (protocol/CMakeLists.txt), without LibTorch.
#include <CLI/CLI.hpp>
#include <sodium.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "protocol/channel.h"
#include "protocol/signed_update.h"
#include "protocol/tensor_codec.h"

namespace cohort::bench {
namespace {

namespace p = cohort::protocol;
namespace w = cohort::wire;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Options {
  int trials = 5;
  int channel_mb = 256;      // MiB sent per channel trial
  int message_kb = 1024;     // message size
  int update_mb = 32;        // signed update body size
  double handshake_seconds = 1.0;
  bool json = false;
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// CPU seconds (user + system) used so far by the calling thread.
double thread_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

// MB/s (1e6 bytes) of encrypting `total` bytes in transport-message-sized pieces on one core;
// with `decrypt_too`, of encrypting and then decrypting each piece (the channel's total crypto).
// With `cpu_clock`, per second of this thread's CPU time instead of wall-clock time.
double raw_chachapoly_mbps(std::size_t total, bool decrypt_too = false, bool cpu_clock = false) {
  constexpr std::size_t kChunk = p::kMaxTransportPlaintext;
  std::vector<std::uint8_t> buf(kChunk + crypto_aead_chacha20poly1305_ietf_ABYTES, 0x5a);
  std::uint8_t key[crypto_aead_chacha20poly1305_ietf_KEYBYTES] = {1};
  std::uint8_t nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {};
  std::uint64_t n = 0;
  const auto t0 = Clock::now();
  const double cpu0 = thread_cpu_seconds();
  for (std::size_t done = 0; done < total; done += kChunk) {
    std::memcpy(nonce + 4, &n, 8);
    ++n;
    unsigned long long mac_len = 0;
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(buf.data(), buf.data() + kChunk, &mac_len, buf.data(),
                                                       kChunk, nullptr, 0, nullptr, nonce, key);
    if (decrypt_too &&
        crypto_aead_chacha20poly1305_ietf_decrypt_detached(buf.data(), nullptr, buf.data(), kChunk,
                                                           buf.data() + kChunk, nullptr, 0, nonce, key) != 0) {
      throw Error("raw ChaCha20-Poly1305 round trip failed");
    }
  }
  const double elapsed = cpu_clock ? thread_cpu_seconds() - cpu0 : seconds_since(t0);
  return static_cast<double>(total) / elapsed / 1e6;
}

// A server on its own thread; `handler` runs for every authenticated connection.
struct LoopbackServer {
  LoopbackServer(const p::Identity& id, p::Server::Handler handler)
      : server(io.get_executor(), tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0), id, {},
               std::move(handler)) {
    server.start();
    thread = std::thread([this] { io.run(); });
  }
  ~LoopbackServer() {
    server.stop();
    io.stop();
    thread.join();
  }
  tcp::endpoint endpoint() const { return {asio::ip::make_address("127.0.0.1"), server.port()}; }

  asio::io_context io;
  p::Server server;
  std::thread thread;
};

template <class T>
T run_client(const std::function<asio::awaitable<T>()>& body) {
  asio::io_context io;
  T result{};
  std::exception_ptr error;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { result = co_await body(); },
      [&](std::exception_ptr e) { error = e; });
  io.run();
  if (error) std::rethrow_exception(error);
  return result;
}

struct ChannelRun {
  double mbps = 0;         // wall clock, first send to the receiver's acknowledgement
  double cpu_seconds = 0;  // sender thread + receiver thread CPU time over the transfer
};

// `messages` messages of `size` bytes from a client to a server, until the server's
// acknowledgement of the last one. With `envelopes`, BlobChunk Envelopes (serialize + parse).
ChannelRun channel_run(std::size_t size, int messages, bool envelopes) {
  const p::Identity server_id = p::Identity::generate(), client_id = p::Identity::generate();
  auto receiver_cpu = std::make_shared<double>(0.0);
  LoopbackServer server(server_id, [messages, envelopes, receiver_cpu](p::Channel ch) -> asio::awaitable<void> {
    double cpu0 = 0;
    for (int i = 0; i < messages; ++i) {
      if (envelopes) {
        (void)co_await ch.receive();
      } else {
        (void)co_await ch.receive_frame();
      }
      if (i == 0) cpu0 = thread_cpu_seconds();  // the clock starts with the first message
    }
    *receiver_cpu = thread_cpu_seconds() - cpu0;
    const p::Bytes ack(1, 1);
    co_await ch.send_frame(p::MessageClass::control, ack);
    try {
      (void)co_await ch.receive_frame();  // until the client hangs up
    } catch (const p::ProtocolError&) {
    }
  });
  ChannelRun run = run_client<ChannelRun>([&]() -> asio::awaitable<ChannelRun> {
    p::ChannelOptions options;
    options.expected_peer = server_id.id();
    p::Channel ch = co_await p::Channel::connect(server.endpoint(), client_id, options);
    const p::Bytes body(size, 0x5a);
    w::Envelope env;
    env.mutable_blob_chunk()->set_data(std::string(size, '\x5a'));
    env.mutable_blob_chunk()->set_total_bytes(size);
    const auto t0 = Clock::now();
    const double cpu0 = thread_cpu_seconds();
    for (int i = 0; i < messages; ++i) {
      if (envelopes) {
        co_await ch.send(env);
      } else {
        co_await ch.send_frame(p::MessageClass::bulk, body);
      }
    }
    const double sender_cpu = thread_cpu_seconds() - cpu0;
    (void)co_await ch.receive_frame();
    co_return ChannelRun{static_cast<double>(size) * messages / seconds_since(t0) / 1e6, sender_cpu};
  });
  run.cpu_seconds += *receiver_cpu;
  return run;
}

// Sequential full handshakes per second for about `seconds`.
double handshakes_per_second(double seconds) {
  const p::Identity server_id = p::Identity::generate(), client_id = p::Identity::generate();
  LoopbackServer server(server_id, [](p::Channel) -> asio::awaitable<void> { co_return; });
  return run_client<double>([&]() -> asio::awaitable<double> {
    int done = 0;
    const auto t0 = Clock::now();
    while (seconds_since(t0) < seconds) {
      p::ChannelOptions options;
      options.expected_peer = server_id.id();
      p::Channel ch = co_await p::Channel::connect(server.endpoint(), client_id, options);
      ch.close();
      ++done;
    }
    co_return done / seconds_since(t0);
  });
}

struct Figures {
  double raw_mbps, frame_mbps, envelope_mbps, hash_mbps, verify_mbps, handshakes;
  double cpu_ratio;  // (encrypt + decrypt on one core) CPU time / channel's CPU time, same bytes
};

int run(const Options& opt) {
  if (sodium_init() < 0) throw Error("libsodium failed to initialize");
  const std::size_t size = static_cast<std::size_t>(opt.message_kb) * 1024;
  const int messages = std::max(1, static_cast<int>(std::int64_t{opt.channel_mb} * 1024 * 1024 / size));
  const std::size_t stream = static_cast<std::size_t>(messages) * size;

  // A signed update of about update_mb MiB: one FP32 gradient tensor plus the usual fields.
  const p::Identity coordinator = p::Identity::generate(), node = p::Identity::generate();
  w::GradientUpdate update;
  update.set_round_id("bench");
  update.set_lease_id("lease-1");
  update.set_policy_version(5);
  update.set_sequence(1);
  update.set_recipient(coordinator.id().bytes().data(), p::kPublicKeyLen);
  const std::int64_t numel = std::int64_t{opt.update_mb} * (1 << 20) / 4;
  p::Bytes grad(static_cast<std::size_t>(numel) * 4);
  randombytes_buf(grad.data(), grad.size());
  *update.add_tensors() = p::encode_raw("model.embed_tokens.weight", w::DTYPE_F32,
                                        std::vector<std::int64_t>{numel}, grad);
  const w::SignedUpdate su = p::sign_update(update, node);
  const double body_bytes = static_cast<double>(su.body().size());
  const p::UpdatePolicy policy{.recipient = coordinator.id(), .current_version = 5, .staleness_bound = 1};

  std::vector<double> raw, frame, envelope, hash, verify, hs, cpu_ratio;
  volatile unsigned sink = 0;  // keeps the baseline hash from being optimized away
  for (int t = 0; t < opt.trials; ++t) {
    raw.push_back(raw_chachapoly_mbps(stream));
    const double raw_pair_cpu_mbps = raw_chachapoly_mbps(stream, /*decrypt_too=*/true, /*cpu_clock=*/true);
    const ChannelRun frames = channel_run(size, messages, false);
    frame.push_back(frames.mbps);
    // The receiver's clock starts after the first message: count the bytes it timed.
    const double timed_bytes = static_cast<double>(stream) - 0.5 * static_cast<double>(size);
    cpu_ratio.push_back(timed_bytes / (raw_pair_cpu_mbps * 1e6) / frames.cpu_seconds);
    envelope.push_back(channel_run(size, messages, true).mbps);

    for (int pair = 0; pair < 3; ++pair) {
      auto t0 = Clock::now();
      const p::Digest d = p::blake2b_256(p::as_bytes(su.body()));
      hash.push_back(body_bytes / seconds_since(t0) / 1e6);
      t0 = Clock::now();
      const p::VerifiedUpdate r = p::verify_update(su, policy, node.id());
      verify.push_back(body_bytes / seconds_since(t0) / 1e6);
      if (!r) throw Error("benchmark update failed to verify: " + r.detail);
      sink = sink + d[0];
    }

    hs.push_back(handshakes_per_second(opt.handshake_seconds));
  }
  const Figures f{median(raw),  median(frame), median(envelope), median(hash),
                  median(verify), median(hs), median(cpu_ratio)};

  if (opt.json) {
    std::printf(
        "{\"message_bytes\": %zu, \"stream_bytes\": %zu, \"raw_chachapoly_mbps\": %.1f, "
        "\"channel_mbps\": %.1f, \"channel_ratio\": %.3f, \"envelope_mbps\": %.1f, "
        "\"envelope_ratio\": %.3f, \"channel_cpu_ratio\": %.3f, \"update_bytes\": %.0f, "
        "\"blake2b_mbps\": %.1f, "
        "\"verify_mbps\": %.1f, \"verify_ratio\": %.3f, \"handshakes_per_s\": %.1f, \"trials\": %d}\n",
        size, stream, f.raw_mbps, f.frame_mbps, f.frame_mbps / f.raw_mbps, f.envelope_mbps,
        f.envelope_mbps / f.raw_mbps, f.cpu_ratio, body_bytes, f.hash_mbps, f.verify_mbps, f.verify_mbps / f.hash_mbps,
        f.handshakes, opt.trials);
    return 0;
  }
  std::printf("cohort bench protocol: loopback, %d KiB messages x %d, %.0f MB signed update, median of %d trials\n",
              opt.message_kb, messages, body_bytes / 1e6, opt.trials);
  std::printf("  raw ChaCha20-Poly1305 IETF (1 core)     %9.1f MB/s   (baseline)\n", f.raw_mbps);
  std::printf("  channel, %4d KiB frames                %9.1f MB/s   ratio %.2f  (target >= 0.70)\n",
              opt.message_kb, f.frame_mbps, f.frame_mbps / f.raw_mbps);
  std::printf("  channel, %4d KiB BlobChunk envelopes %9.1f MB/s   ratio %.2f\n", opt.message_kb,
              f.envelope_mbps, f.envelope_mbps / f.raw_mbps);
  std::printf("  channel CPU efficiency                               ratio %.2f  (CPU time of raw encrypt+decrypt\n"
              "                                                      / CPU time of both channel threads)\n",
              f.cpu_ratio);
  std::printf("  BLAKE2b-256 hashing                     %9.1f MB/s   (baseline)\n", f.hash_mbps);
  std::printf("  signed-update verification              %9.1f MB/s   ratio %.2f  (target >= 0.80)\n",
              f.verify_mbps, f.verify_mbps / f.hash_mbps);
  std::printf("  handshakes (sequential, XX + identity)  %9.1f /s\n", f.handshakes);
  return 0;
}

}  // namespace

void add_protocol_bench(CLI::App& bench) {
  auto opt = std::make_shared<Options>();
  auto* cmd = bench.add_subcommand("protocol", "Noise channel, signed updates, handshakes (ratios vs libsodium)");
  cmd->add_option("--trials", opt->trials, "Alternating baseline/measurement trials (median reported)")
      ->check(CLI::Range(1, 100));
  cmd->add_option("--channel-mb", opt->channel_mb, "MiB sent per channel trial")->check(CLI::Range(1, 65536));
  cmd->add_option("--message-kb", opt->message_kb, "Channel message size in KiB")->check(CLI::Range(1, 65536));
  cmd->add_option("--update-mb", opt->update_mb, "Signed update size in MiB")->check(CLI::Range(1, 1024));
  cmd->add_option("--handshake-seconds", opt->handshake_seconds, "Seconds of handshakes per trial");
  cmd->add_flag("--json", opt->json, "One JSON object instead of the table");
  cmd->callback([opt] {
    if (const int rc = run(*opt); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace cohort::bench
