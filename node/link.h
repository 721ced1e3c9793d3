// The node's end of a session with the coordinator as an interface of two coroutines, so that
// weight sync and update delivery run against the real channel in the node and against an
// in-memory coordinator in tests. All calls come from one thread (the node's network thread).
//
//   ChannelLink link(channel);
//   co_await link.send(request);                 // an envelope id is assigned
//   wire::Envelope reply = co_await link.receive();
#pragma once

#include <cstdint>

#include <algorithm>

#include "protocol/channel.h"
#include "protocol/signed_update.h"

namespace cohort::node {

class CoordinatorLink {
 public:
  virtual ~CoordinatorLink() = default;
  // Sends `e` with the next envelope id (returned).
  virtual asio::awaitable<uint64_t> send(wire::Envelope e) = 0;
  // The next message from the coordinator; throws when the session is over.
  virtual asio::awaitable<wire::Envelope> receive() = 0;
};

class ChannelLink final : public CoordinatorLink {
 public:
  explicit ChannelLink(protocol::Channel& ch) : ch_(ch) {}
  asio::awaitable<uint64_t> send(wire::Envelope e) override {
    e.set_id(++next_id_);
    co_await ch_.send(e);
    co_return e.id();
  }
  asio::awaitable<wire::Envelope> receive() override { co_return co_await ch_.receive(); }

 private:
  protocol::Channel& ch_;
  uint64_t next_id_ = 0;
};

// A sealed update as the protocol carries it: the signed header, then its stream in UpdateChunks
// of at most protocol::kUpdateChunkBytes (docs/PROTOCOL.md). Waiting for the Ack is the caller's.
inline asio::awaitable<void> send_sealed_update(CoordinatorLink& link,
                                                const protocol::SealedUpdate& su) {
  wire::Envelope e;
  *e.mutable_update() = su.header;
  co_await link.send(std::move(e));
  for (size_t off = 0; off < su.stream.size(); off += protocol::kUpdateChunkBytes) {
    wire::Envelope c;
    c.mutable_update_chunk()->set_offset(off);
    c.mutable_update_chunk()->set_data(su.stream.data() + off,
                                       std::min(protocol::kUpdateChunkBytes, su.stream.size() - off));
    co_await link.send(std::move(c));
  }
}

}  // namespace cohort::node
