// The leader's decision while it waits for the peers of an exchange round:
// a slow peer is waited for, a silent one is lost as "link dead", an alive
// one without progress as "stuck", and an alive, progressing one only past
// the wait cap.
#include "worker/peer_wait.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace tandem {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::string Cloud(uint32_t pool) { return "cloud-" + std::string(1, static_cast<char>('a' + pool)); }

// A peer that has not delivered the round, heard from 100 ms ago, whose
// steps take 200 ms and whose counter moved 300 ms ago.
PeerHealth Busy(int pool) {
  PeerHealth p;
  p.pool = pool;
  p.silent_for = milliseconds(100);
  p.streams_up = 4;
  p.progress = 42;
  p.recent_unit = milliseconds(200);
  p.progress_unchanged_for = milliseconds(300);
  p.delivered = false;
  return p;
}

PeerWaitPolicy Policy() {
  PeerWaitPolicy policy;
  policy.liveness = seconds(4);
  policy.stuck_floor = seconds(60);
  policy.stuck_units = 20;
  policy.slow_floor = seconds(120);
  policy.slow_units = 50;
  return policy;
}

TEST(PeerWaitTest, AnAlivePeerIsWaitedForLongPastTheOldDeadline) {
  // 45 s of waiting (the old deadline was 10 s): heard from, progressing.
  const PeerJudgement j = JudgePeers({Busy(1)}, seconds(45), milliseconds(300), Policy(), Cloud);
  EXPECT_EQ(j.verdict, PeerVerdict::kWait) << j.reason;
  EXPECT_THAT(j.waiting, ElementsAre(1u));
  EXPECT_THAT(j.lost, IsEmpty());
}

TEST(PeerWaitTest, APeerSilentForTheLivenessWindowIsLinkDead) {
  PeerHealth silent = Busy(1);
  silent.silent_for = milliseconds(4100);
  silent.streams_up = 0;
  const PeerJudgement j = JudgePeers({silent}, seconds(5), milliseconds(300), Policy(), Cloud);
  EXPECT_EQ(j.verdict, PeerVerdict::kLinkDead);
  EXPECT_THAT(j.lost, ElementsAre(1u));
  EXPECT_EQ(j.lost_for, milliseconds(4100)) << "dated back to the last sign of life";
  EXPECT_THAT(j.reason, HasSubstr("link dead: nothing heard from cloud-b for 4.1 s"));

  silent.silent_for = milliseconds(3900);
  EXPECT_EQ(JudgePeers({silent}, seconds(5), milliseconds(300), Policy(), Cloud).verdict,
            PeerVerdict::kWait);
}

TEST(PeerWaitTest, AnAlivePeerWithoutProgressIsStuckAfterTheLongerTimeout) {
  PeerHealth stuck = Busy(1);
  stuck.progress_unchanged_for = seconds(59);
  EXPECT_EQ(JudgePeers({stuck}, seconds(59), milliseconds(300), Policy(), Cloud).verdict,
            PeerVerdict::kWait);
  stuck.progress_unchanged_for = seconds(61);
  const PeerJudgement j = JudgePeers({stuck}, seconds(61), milliseconds(300), Policy(), Cloud);
  EXPECT_EQ(j.verdict, PeerVerdict::kStuck);
  EXPECT_THAT(j.lost, ElementsAre(1u));
  EXPECT_THAT(j.reason, HasSubstr("stuck: cloud-b is alive but made no progress for 61 s"));
}

TEST(PeerWaitTest, TheStuckTimeoutGrowsWithThePeersOwnStepTime) {
  // Steps of 5 s: 20 of them is 100 s, above the 60 s floor.
  PeerHealth slow = Busy(1);
  slow.recent_unit = seconds(5);
  slow.progress_unchanged_for = seconds(90);
  EXPECT_EQ(JudgePeers({slow}, seconds(90), seconds(5), Policy(), Cloud).verdict,
            PeerVerdict::kWait);
  slow.progress_unchanged_for = seconds(101);
  EXPECT_EQ(JudgePeers({slow}, seconds(101), seconds(5), Policy(), Cloud).verdict,
            PeerVerdict::kStuck);
  EXPECT_EQ(StuckAfter(seconds(5), Policy()), seconds(100));
  EXPECT_EQ(StuckAfter(milliseconds(10), Policy()), seconds(60));
}

TEST(PeerWaitTest, AnAliveProgressingPeerIsDroppedOnlyPastTheAdaptiveCap) {
  EXPECT_EQ(SlowCap(milliseconds(300), Policy()), seconds(120));
  EXPECT_EQ(SlowCap(seconds(4), Policy()), seconds(200));  // 50 evaluations of 4 s
  EXPECT_EQ(JudgePeers({Busy(1)}, seconds(199), seconds(4), Policy(), Cloud).verdict,
            PeerVerdict::kWait);
  const PeerJudgement j = JudgePeers({Busy(1)}, seconds(200), seconds(4), Policy(), Cloud);
  EXPECT_EQ(j.verdict, PeerVerdict::kTooSlow);
  EXPECT_THAT(j.lost, ElementsAre(1u));
  EXPECT_THAT(j.reason, HasSubstr("too slow: waited 200 s for cloud-b"));
}

TEST(PeerWaitTest, OnlyPeersThatHaveNotDeliveredAreJudged) {
  PeerHealth delivered = Busy(1);
  delivered.delivered = true;
  delivered.silent_for = seconds(30);  // gone since, but its payload is here
  PeerHealth dead = Busy(2);
  dead.silent_for = seconds(5);
  const PeerJudgement j =
      JudgePeers({delivered, dead, Busy(3)}, seconds(6), milliseconds(300), Policy(), Cloud);
  EXPECT_EQ(j.verdict, PeerVerdict::kLinkDead);
  EXPECT_THAT(j.lost, ElementsAre(2u)) << "only the silent peer is reported";
  EXPECT_THAT(j.reason, HasSubstr("cloud-c"));
  EXPECT_THAT(j.waiting, ElementsAre(3u));
  EXPECT_EQ(JudgePeers({delivered}, seconds(300), milliseconds(300), Policy(), Cloud).verdict,
            PeerVerdict::kWait);
}

TEST(PeerWaitTest, ProgressMeterCountsUnitsAndKeepsTheLongestRecentOne) {
  using Clock = ProgressMeter::Clock;
  const Clock::time_point t0{};
  ProgressMeter meter(t0);
  meter.Start(t0 + seconds(30));  // set-up is not a unit
  meter.Tick(t0 + seconds(30) + milliseconds(100));
  meter.Tick(t0 + seconds(30) + milliseconds(2100));  // an evaluation of 2 s
  meter.Tick(t0 + seconds(30) + milliseconds(2200));
  EXPECT_EQ(meter.units(), 3u);
  EXPECT_EQ(meter.longest_recent(), milliseconds(2000));
  // After 64 short units the long one has left the window.
  Clock::time_point t = t0 + seconds(30) + milliseconds(2200);
  for (int i = 0; i < 64; ++i) meter.Tick(t += milliseconds(50));
  EXPECT_EQ(meter.longest_recent(), milliseconds(50));
}

}  // namespace
}  // namespace tandem
