// PeerWait: how long a pool leader keeps waiting for the peers of an exchange
// round, and why it gives up on one. A slow peer is not a lost peer: the
// decision comes from the link's view of each peer (transport/link.h
// PeerHealth), never from how long the round has taken alone.
//
// For each peer that has not delivered the round, in this order:
//   link dead  nothing heard from it (no frame, ack or heartbeat, on any
//              stream) for `liveness`: its process, host or path is gone.
//   stuck      alive, but its progress counter has not moved for
//              max(stuck_floor, stuck_units x the longest unit it reported
//              lately): its training loop hangs.
//   too slow   alive and progressing, but this round has waited
//              max(slow_floor, slow_units x the longest unit this leader saw
//              lately, its own steps and evaluations, waits included): a
//              backstop, far above any step or evaluation seen so far.
// Otherwise the leader waits. Waiting in an exchange is not progress, so two
// leaders waiting for each other in different rounds (a protocol bug) are
// both found stuck rather than waiting forever. (A leader in a round has sent
// its payload to every peer, so a peer waits only for the leaders that have
// not reached the round: those are judged, not the ones waiting with it.)
//
// Pure and thread-compatible: no clock or I/O of its own, so tests drive it
// with made-up PeerHealth values.
#ifndef TANDEM_WORKER_PEER_WAIT_H_
#define TANDEM_WORKER_PEER_WAIT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "transport/link.h"

namespace tandem {

// The least liveness window (and stuck timeout) that makes sense: two of the
// link's heartbeat intervals (GrpcLinkOptions::heartbeat_interval, 500 ms).
inline constexpr uint32_t kMinLivenessMs = 1000;

struct PeerWaitPolicy {
  std::chrono::milliseconds liveness{4000};
  std::chrono::milliseconds stuck_floor{60000};
  int64_t stuck_units = 20;
  std::chrono::milliseconds slow_floor{120000};
  int64_t slow_units = 50;
};

enum class PeerVerdict { kWait, kLinkDead, kStuck, kTooSlow };

struct PeerJudgement {
  PeerVerdict verdict = PeerVerdict::kWait;
  // The peers given up on (pool indices), with the verdict of the first.
  std::vector<uint32_t> lost;
  // How long ago the loss happened by this verdict's measure (the silence,
  // the time without progress, or the wait): the coordinator dates it so.
  std::chrono::milliseconds lost_for{0};
  // For events and errors, e.g. "link dead: nothing heard from cloud-b for
  // 4.0 s (0 of 4 streams up)".
  std::string reason;
  // The peers still waited for (alive), for status: "cloud-b (alive, busy)".
  std::vector<uint32_t> waiting;
};

// Judges the peers of a round that has waited `waited` so far. `longest_unit`
// is the longest step or evaluation this leader saw lately; `name` gives a
// pool's cloud for the messages.
PeerJudgement JudgePeers(const std::vector<PeerHealth>& peers, std::chrono::milliseconds waited,
                         std::chrono::milliseconds longest_unit, const PeerWaitPolicy& policy,
                         const std::function<std::string(uint32_t)>& name);

// The wait cap for alive, progressing peers (see "too slow" above).
std::chrono::milliseconds SlowCap(std::chrono::milliseconds longest_unit,
                                  const PeerWaitPolicy& policy);
// How long a peer whose units take `recent_unit` may make no progress.
std::chrono::milliseconds StuckAfter(std::chrono::milliseconds recent_unit,
                                     const PeerWaitPolicy& policy);

// A leader's own progress counter (what Link::ReportProgress publishes) and
// the longest of its recent units. Tick() at the end of every unit of work.
// Thread-safe (the training thread and a delayed exchange's thread tick).
class ProgressMeter {
 public:
  using Clock = std::chrono::steady_clock;
  explicit ProgressMeter(Clock::time_point start = Clock::now()) : last_tick_(start) {}

  // Units are timed from here on (the set-up before it is not a unit; nor is
  // a re-plan, or a long wait for peers: their work is not this pool's).
  void Start(Clock::time_point now = Clock::now());
  void Tick(Clock::time_point now = Clock::now());
  uint64_t units() const;
  // The longest of the last kWindow units.
  std::chrono::milliseconds longest_recent() const;

 private:
  static constexpr size_t kWindow = 64;
  mutable std::mutex mu_;
  uint64_t units_ = 0;                             // guarded by mu_
  Clock::time_point last_tick_;                    // guarded by mu_
  std::vector<std::chrono::milliseconds> recent_;  // guarded by mu_; a ring of kWindow
  size_t next_ = 0;                                // guarded by mu_
};

}  // namespace tandem

#endif  // TANDEM_WORKER_PEER_WAIT_H_
