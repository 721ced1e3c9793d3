// The volunteer's bandwidth cap (protocol/rate_limit.h) on a synthetic clock: over any stretch
// the bytes let through are at most rate × time + one burst, an idle link earns back at most one
// burst, and a link kept below the rate never waits.
#include "protocol/rate_limit.h"

#include <gtest/gtest.h>

namespace cohort::protocol {
namespace {

TEST(TokenBucket, LongRunRateIsTheCap) {
  const double rate = 2.5e6, burst = 64 * 1024;  // 20 Mbit/s
  TokenBucket b(rate, burst);
  double now = 0;
  const size_t piece = 16 * 1024;
  const size_t total = 100 * 1024 * 1024;
  for (size_t sent = 0; sent < total; sent += piece) now += b.reserve(piece, now);
  // The last piece starts once rate × t + burst covers everything sent: t = (total - burst) / rate.
  EXPECT_NEAR(now, (double(total) - burst) / rate, 1e-6);
}

TEST(TokenBucket, IdleTimeEarnsBackOneBurstAtMost) {
  TokenBucket b(1000, 500);
  EXPECT_EQ(b.reserve(500, 0), 0.0);          // the first burst passes at once
  EXPECT_DOUBLE_EQ(b.reserve(1000, 0), 1.0);  // then 1000 bytes wait a second
  // An hour idle refills the bucket to 500, not 3.6 MB: 1500 bytes wait a second.
  EXPECT_DOUBLE_EQ(b.reserve(1500, 3600), 1.0);
}

TEST(TokenBucket, TrafficBelowTheCapNeverWaits) {
  TokenBucket b(1000, 100);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(b.reserve(50, 0.1 * i), 0.0) << i;
}

}  // namespace
}  // namespace cohort::protocol
