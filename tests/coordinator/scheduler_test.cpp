// The lease scheduler as a pure state machine (coordinator/scheduler.h): time is passed in, so
// each test drives issue, completion, expiry, return, re-issue, guided sizing, min_peers and the
// staleness window step by step, without processes or sockets.
#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

#include <set>

namespace cohort::coordinator {
namespace {

SchedulerConfig config(int64_t groups = 16, uint32_t staleness = 1, int min_peers = 1) {
  return {.steps = 4,
          .groups_per_step = groups,
          .staleness_bound = staleness,
          .lease_timeout_s = 10,
          .reconnect_grace_s = 2,
          .min_peers = min_peers};
}

TEST(LeaseScheduler, NoLeaseBeforeMinPeersThenLeasesStart) {
  LeaseScheduler s(config(16, 1, 2));
  s.peer_connected("a");
  s.peer_working("a");
  EXPECT_FALSE(s.issue("a", 0, 0.0, 1000));
  EXPECT_FALSE(s.started());
  s.peer_connected("b");
  ASSERT_TRUE(s.issue("a", 0, 0.0, 1000));
  EXPECT_TRUE(s.started());
  // Once started, leases go on even if a peer leaves.
  s.peer_disconnected("b", 1000);
  EXPECT_TRUE(s.issue("a", 0, 0.0, 1000));
}

TEST(LeaseScheduler, UnmeasuredPeerGetsAProbeOfAnEighthThenItsShare) {
  LeaseScheduler s(config(16));
  s.peer_connected("a");
  s.peer_working("a");
  auto probe = s.issue("a", 0, 0.0, 0);
  ASSERT_TRUE(probe);
  EXPECT_EQ(probe->groups.size(), 2u);                           // ceil(16 / 8)
  EXPECT_EQ(probe->rec.prompts, (std::vector<uint64_t>{0, 1}));  // step 1 starts at prompt 0
  s.complete(probe->rec.lease_id, 1.0);                          // 2 groups in 1 s
  EXPECT_DOUBLE_EQ(s.throughput("a"), 2.0);
  // Measured and alone: its share is the whole step; 14 pending.
  auto next = s.issue("a", 0, 1.0, 0);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->groups.size(), 14u);
  EXPECT_EQ(next->rec.step, 1);
}

// Two peers of a 32-group step, measured on a first probe lease each: "fast" at 3 groups/s,
// "slow" at 1 group/s; 8 groups of step 1 are done, 24 pending.
LeaseScheduler measured_fast_and_slow() {
  LeaseScheduler s(config(32));
  for (const char* p : {"fast", "slow"}) s.peer_connected(p), s.peer_working(p);
  auto f = s.issue("fast", 0, 0.0, 0);
  auto w = s.issue("slow", 0, 0.0, 0);
  EXPECT_TRUE(f && w);
  s.complete(f->rec.lease_id, double(f->groups.size()) / 3.0);
  s.complete(w->rec.lease_id, double(w->groups.size()) / 1.0);
  return s;
}

TEST(LeaseScheduler, GuidedSizingSplitsByThroughputAndShrinksAsThePoolDrains) {
  LeaseScheduler s = measured_fast_and_slow();
  ASSERT_NEAR(s.throughput("fast"), 3.0, 1e-9);
  ASSERT_NEAR(s.throughput("slow"), 1.0, 1e-9);
  // 32 - 8 = 24 pending; fast's share is 3/4 → 18 (its full share of a step is 24).
  EXPECT_EQ(s.lease_size("fast", 24, 0), 18);
  // slow: 1/4 of 24 = 6, bounded below by half its share of a step (8 / 2 = 4).
  EXPECT_EQ(s.lease_size("slow", 24, 0), 6);
  EXPECT_EQ(s.lease_size("slow", 4, 0), 4);
  EXPECT_EQ(s.lease_size("fast", 24, 5), 5);  // the node's own max_prompts
}

// A peer behind a slow link: its leases grow until their compute (groups / throughput) covers
// the seconds its update upload and weight download take, even past its share of the step.
TEST(LeaseScheduler, SlowLinkGetsLeasesLongEnoughToHideTheTransfer) {
  LeaseScheduler s = measured_fast_and_slow();
  ASSERT_EQ(s.lease_size("slow", 24, 0), 6);  // as above, with no transfer measured
  s.upload_measured("slow", 6.0);
  s.download_measured("slow", 4.0);  // 10 s of link per lease at 1 group/s: 10 groups
  EXPECT_EQ(s.lease_size("slow", 24, 0), 10);
  EXPECT_EQ(s.lease_size("slow", 7, 0), 7);   // never more than is pending
  EXPECT_EQ(s.lease_size("slow", 24, 4), 4);  // nor than the node takes
  s.upload_measured("slow", 2.0);             // EMA: (6 + 2) / 2 = 4, plus 4 down: 8 groups
  EXPECT_EQ(s.lease_size("slow", 24, 0), 8);
  EXPECT_EQ(s.lease_size("fast", 24, 0), 18);  // the fast peer's link costs nothing here
}

TEST(LeaseScheduler, StalenessWindowBoundsHowFarAheadLeasesGo) {
  LeaseScheduler s(config(2, /*staleness=*/1));
  s.peer_connected("a");
  s.peer_working("a");
  std::set<int64_t> steps;
  while (auto l = s.issue("a", 1, 0.0, 0)) steps.insert(l->rec.step);
  EXPECT_EQ(steps, (std::set<int64_t>{1, 2}));  // version 0: steps 1 .. 1 + S
}

TEST(LeaseScheduler, ExpiredAndReturnedLeasesAreReissuedAndNoGroupIsCountedTwice) {
  LeaseScheduler s(config(4, /*staleness=*/0));
  s.peer_connected("a");
  s.peer_working("a");
  // Lease the whole step (S = 0: nothing beyond it).
  std::vector<ActiveLease> out;
  while (auto l = s.issue("a", 0, 0.0, 1000)) out.push_back(*l);
  size_t leased = 0;
  for (const auto& l : out) leased += l.groups.size();
  EXPECT_EQ(leased, 4u);
  // Every deadline passes: all prompts go back to the pool.
  const auto expired = s.expire_due(1000 + 10'001);
  ASSERT_EQ(expired.size(), out.size());
  EXPECT_EQ(expired[0].state, "expired");
  EXPECT_EQ(expired[0].reason, "deadline passed");
  // Re-issued; one is given back and re-issued again; then all complete.
  std::vector<ActiveLease> again;
  while (auto l = s.issue("a", 0, 0.0, 20'000)) again.push_back(*l);
  ASSERT_FALSE(again.empty());
  auto closed = s.close(again[0].rec.lease_id, "returned", "worker failed");
  ASSERT_TRUE(closed);
  EXPECT_EQ(closed->state, "returned");
  EXPECT_FALSE(s.close(again[0].rec.lease_id, "returned", "twice"));
  auto redo = s.issue("a", 0, 0.0, 20'000);
  ASSERT_TRUE(redo);
  EXPECT_EQ(redo->rec.prompts, again[0].rec.prompts);
  again[0] = *redo;
  for (const auto& l : again) {
    EXPECT_FALSE(s.step_complete(1));
    s.complete(l.rec.lease_id, 1.0);
  }
  EXPECT_TRUE(s.step_complete(1));
  EXPECT_FALSE(s.issue("a", 0, 0.0, 20'000));
  s.step_applied(1);
  EXPECT_EQ(s.version(), 1u);
}

TEST(LeaseScheduler, DisconnectedPeerKeepsItsLeasesForTheGraceOnly) {
  LeaseScheduler s(config(8));
  s.peer_connected("a");
  s.peer_working("a");
  s.complete(s.issue("a", 1, 0.0, 0)->rec.lease_id, 1.0);  // a has delivered before
  auto l = s.issue("a", 0, 1.0, 1000);
  ASSERT_TRUE(l);
  const auto changed = s.peer_disconnected("a", 5000);
  ASSERT_EQ(changed.size(), 1u);
  EXPECT_EQ(changed[0].deadline_ms, 5000 + 2000);
  EXPECT_TRUE(s.expire_due(6999).empty());
  EXPECT_EQ(s.expire_due(7001).size(), 1u);
  EXPECT_EQ(s.connected(), 0);
}

// A key that never delivered has nothing to come back for: its leases go back at once.
TEST(LeaseScheduler, DisconnectedPeerThatNeverDeliveredGetsNoGrace) {
  LeaseScheduler s(config(8));
  s.peer_connected("v");
  s.peer_working("v");
  ASSERT_TRUE(s.issue("v", 0, 0.0, 1000));
  const auto changed = s.peer_disconnected("v", 5000);
  ASSERT_EQ(changed.size(), 1u);
  EXPECT_EQ(changed[0].deadline_ms, 5000);
  EXPECT_EQ(s.expire_due(5001).size(), 1u);
}

// Connected keys that asked once and never deliver do not shrink the leases of a peer that does.
TEST(LeaseScheduler, SilentUnmeasuredPeersDoNotShrinkAMeasuredPeersShare) {
  LeaseScheduler s(config(32, 0));
  s.peer_connected("a");
  s.peer_working("a");
  s.complete(s.issue("a", 4, 0.0, 0)->rec.lease_id, 1.0);  // 4 groups/s
  for (const char* v : {"v1", "v2", "v3"}) {
    s.peer_connected(v);
    s.peer_working(v);
    ASSERT_EQ(s.issue(v, 1, 1.0, 0)->groups.size(), 1u);
  }
  // 25 pending: a alone is measured, so its share is the whole step, not a quarter.
  auto l = s.issue("a", 0, 1.0, 0);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->groups.size(), 25u);
}

TEST(LeaseScheduler, LeasesOfAPeerNameWhatItHolds) {
  LeaseScheduler s(config(8));
  s.peer_connected("a");
  s.peer_working("a");
  auto l1 = s.issue("a", 1, 0.0, 0);
  auto l2 = s.issue("a", 1, 0.0, 0);
  ASSERT_TRUE(l1 && l2);
  auto held = s.leases_of("a");
  EXPECT_EQ(held.size(), 2u);
  EXPECT_TRUE(s.leases_of("b").empty());
}

TEST(LeaseScheduler, AdoptsLeasesActiveAtARestartOnlyWhenTheyStillFit) {
  LeaseScheduler s(config(4), /*version=*/1);
  auto record = [](std::string id, int64_t step, std::vector<uint64_t> prompts) {
    LeaseRecord r;
    r.lease_id = std::move(id);
    r.step = step;
    r.peer = "a";
    r.prompts = std::move(prompts);
    return r;
  };
  const LeaseRecord ok = record("x", 2, {4, 5});
  const LeaseRecord applied = record("y", 1, {0});
  const LeaseRecord clash = record("z", 2, {5});
  const LeaseRecord outside = record("w", 2, {8});
  EXPECT_TRUE(s.adopt(ok, 0));
  EXPECT_FALSE(s.adopt(applied, 0));
  EXPECT_FALSE(s.adopt(clash, 0));
  EXPECT_FALSE(s.adopt(outside, 0));
  EXPECT_NE(s.find("x"), nullptr);
}

TEST(LeaseScheduler, ReplayedGroupsCompleteAStep) {
  LeaseScheduler s(config(2));
  s.mark_done(1, {0});
  EXPECT_FALSE(s.step_complete(1));
  s.mark_done(1, {1});
  EXPECT_TRUE(s.step_complete(1));
  s.step_applied(1);
  EXPECT_EQ(s.open_steps().count(1), 0u);
}

TEST(LeaseScheduler, FinishedRoundIssuesNothing) {
  LeaseScheduler s(config(1), /*version=*/4);
  s.peer_connected("a");
  EXPECT_TRUE(s.finished());
  EXPECT_FALSE(s.issue("a", 0, 0.0, 0));
}

// Backup leases (SchedulerConfig::backup_factor): a one-step window of 2 groups; "a" is measured
// at 2 groups/s on its first lease, "v" took the other group and went silent.
struct Overdue {
  LeaseScheduler s{{.steps = 4,
                    .groups_per_step = 2,
                    .staleness_bound = 0,
                    .lease_timeout_s = 100,
                    .reconnect_grace_s = 2,
                    .backup_factor = 2,
                    .backup_min_s = 1,
                    .backup_min_new_s = 1}};
  ActiveLease v;
  Overdue() {
    for (const char* p : {"a", "v"}) s.peer_connected(p), s.peer_working(p);
    auto a1 = s.issue("a", 1, 0.0, 0);
    v = *s.issue("v", 1, 0.0, 0);
    s.complete(a1->rec.lease_id, 0.5);  // a: 1 group in 0.5 s
  }
};

TEST(LeaseScheduler, OverdueLeaseIsBackedUpByAnIdlePeerThatHasDelivered) {
  Overdue o;
  // v is unmeasured: expected as the median peer (a, 0.5 s per group); due after
  // max(2 x 0.5 s, 1 s) = 1 s.
  EXPECT_FALSE(o.s.issue("a", 0, 0.9, 0));
  EXPECT_FALSE(o.s.issue("v", 0, 1.2, 0));  // v has never delivered: no backup for it
  auto b = o.s.issue("a", 0, 1.2, 0);
  ASSERT_TRUE(b);
  EXPECT_TRUE(b->backup);
  EXPECT_EQ(b->partner, o.v.rec.lease_id);
  EXPECT_EQ(b->rec.prompts, o.v.rec.prompts);
  EXPECT_EQ(b->rec.step, 1);
  EXPECT_FALSE(o.s.issue("a", 0, 5.0, 0));  // at most two holders of a group
  std::optional<ClosedLease> superseded;
  o.s.complete(b->rec.lease_id, 1.5, &superseded);
  ASSERT_TRUE(superseded);
  EXPECT_EQ(superseded->lease_id, o.v.rec.lease_id);
  EXPECT_EQ(superseded->state, "superseded");
  EXPECT_EQ(o.s.find(o.v.rec.lease_id), nullptr);  // v's late update finds no lease
  EXPECT_TRUE(o.s.step_complete(1));
}

TEST(LeaseScheduler, FirstHolderDeliveringSupersedesItsBackup) {
  Overdue o;
  auto b = o.s.issue("a", 0, 1.2, 0);
  ASSERT_TRUE(b);
  std::optional<ClosedLease> superseded;
  o.s.complete(o.v.rec.lease_id, 1.3, &superseded);
  ASSERT_TRUE(superseded);
  EXPECT_EQ(superseded->lease_id, b->rec.lease_id);
  EXPECT_EQ(o.s.find(b->rec.lease_id), nullptr);
  EXPECT_TRUE(o.s.step_complete(1));
}

TEST(LeaseScheduler, ClosingABackedUpLeaseLeavesItsGroupsWithTheBackup) {
  Overdue o;
  auto b = o.s.issue("a", 0, 1.2, 0);
  ASSERT_TRUE(b);
  ASSERT_TRUE(o.s.close(o.v.rec.lease_id, "expired", "deadline passed"));
  o.s.peer_connected("c");
  o.s.peer_working("c");
  EXPECT_FALSE(o.s.issue("c", 0, 1.3, 0));  // not back in the pool: b holds them
  std::optional<ClosedLease> superseded;
  o.s.complete(b->rec.lease_id, 1.4, &superseded);
  EXPECT_FALSE(superseded);
  EXPECT_TRUE(o.s.step_complete(1));
}

TEST(LeaseScheduler, NoBackupLeasesWhenTurnedOff) {
  LeaseScheduler off({.steps = 4, .groups_per_step = 2, .staleness_bound = 0, .backup_factor = 0});
  for (const char* p : {"a", "v"}) off.peer_connected(p), off.peer_working(p);
  auto a1 = off.issue("a", 1, 0.0, 0);
  ASSERT_TRUE(off.issue("v", 1, 0.0, 0));
  off.complete(a1->rec.lease_id, 0.5);
  EXPECT_FALSE(off.issue("a", 0, 50.0, 0));
}

// Keys that never deliver (new, or taking leases and dropping them) cannot hold the step that
// moves the round on: once a peer has delivered, they take from the newest step of the window
// first, hold at most half of its groups together, and never take again a group such a key let go.
TEST(LeaseScheduler, NeverDeliveredKeysTakeNewestFirstAtMostHalfTheWindowAndNotWhatTheyDropped) {
  LeaseScheduler s(config(8, 1));  // window: steps 1 and 2, 16 groups
  s.peer_connected("a");
  s.peer_working("a");
  s.complete(s.issue("a", 1, 0.0, 0)->rec.lease_id, 1.0);  // a delivered step 1's group 0
  int64_t held = 0;
  for (int i = 0; i < 20; ++i) {
    const std::string v = "v" + std::to_string(i);
    s.peer_connected(v);
    s.peer_working(v);
    if (auto l = s.issue(v, 1, 1.0, 0)) {
      EXPECT_EQ(l->rec.step, 2) << v;
      held += static_cast<int64_t>(l->groups.size());
    }
  }
  EXPECT_EQ(held, 8);  // half of 16
  auto l = s.issue("a", 0, 1.0, 0);  // step 1's 7 pending groups are all a's
  ASSERT_TRUE(l);
  EXPECT_EQ(l->rec.step, 1);
  EXPECT_EQ(l->groups.size(), 7u);
  // v0 lets its group go: no new key takes it again, a peer that delivers does.
  const std::vector<uint64_t> dropped = s.find(s.leases_of("v0").at(0))->rec.prompts;
  for (const auto& id : s.leases_of("v0")) s.close(id, "returned", "peer left");
  s.peer_connected("w");
  s.peer_working("w");
  EXPECT_FALSE(s.issue("w", 0, 1.0, 0));
  s.complete(l->rec.lease_id, 2.0);
  auto again = s.issue("a", 0, 2.0, 0);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->rec.prompts, dropped);
}

// A holder that has never delivered may still be fetching the weights (a joiner's snapshot): its
// lease is backed up only after backup_min_new_s, whatever the median peer's pace.
TEST(LeaseScheduler, NewHoldersLeaseIsBackedUpOnlyAfterItsFloor) {
  LeaseScheduler s({.steps = 4, .groups_per_step = 2, .staleness_bound = 0, .backup_factor = 2,
                    .backup_min_s = 1, .backup_min_new_s = 10});
  for (const char* p : {"a", "v"}) s.peer_connected(p), s.peer_working(p);
  auto a1 = s.issue("a", 1, 0.0, 0);
  ASSERT_TRUE(s.issue("v", 1, 0.0, 0));
  s.complete(a1->rec.lease_id, 0.5);
  EXPECT_FALSE(s.issue("a", 0, 9.9, 0));
  EXPECT_TRUE(s.issue("a", 0, 10.1, 0));
}

}  // namespace
}  // namespace cohort::coordinator
