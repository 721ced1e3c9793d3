// A token bucket: the volunteer's cap on a connection's bytes per second, one per direction
// (`cohort node run --max-upload-mbps / --max-download-mbps`, the way BOINC lets volunteers cap
// bandwidth). Pure arithmetic on a time the caller passes in, so it is tested without a clock;
// the channel sleeps for what reserve() returns before moving the bytes.
//
//   TokenBucket up(20e6 / 8);                       // 20 Mbit/s
//   double wait_s = up.reserve(bytes, now_s);       // sleep wait_s, then send `bytes`
#pragma once

#include <algorithm>
#include <cstddef>

namespace cohort::protocol {

class TokenBucket {
 public:
  // bytes_per_s > 0. A burst of up to `burst_bytes` passes at once after an idle spell.
  explicit TokenBucket(double bytes_per_s, double burst_bytes = 64 * 1024)
      : rate_(bytes_per_s), burst_(burst_bytes), tokens_(burst_bytes) {}

  // Takes `bytes` (going into debt if need be) and returns how long to wait before sending
  // them so that the long-run rate stays at bytes_per_s.
  [[nodiscard]] double reserve(std::size_t bytes, double now_s) {
    if (started_) tokens_ = std::min(burst_, tokens_ + (now_s - last_s_) * rate_);
    started_ = true;
    last_s_ = now_s;
    tokens_ -= static_cast<double>(bytes);
    return tokens_ >= 0 ? 0.0 : -tokens_ / rate_;
  }
  [[nodiscard]] double bytes_per_s() const { return rate_; }

 private:
  double rate_, burst_, tokens_;
  double last_s_ = 0;
  bool started_ = false;
};

}  // namespace cohort::protocol
