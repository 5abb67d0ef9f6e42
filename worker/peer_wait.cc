#include "worker/peer_wait.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace tandem {
namespace {

double Seconds(std::chrono::milliseconds d) { return d.count() / 1000.0; }

}  // namespace

std::chrono::milliseconds SlowCap(std::chrono::milliseconds longest_unit,
                                  const PeerWaitPolicy& policy) {
  return std::max(policy.slow_floor, longest_unit * policy.slow_units);
}

std::chrono::milliseconds StuckAfter(std::chrono::milliseconds recent_unit,
                                     const PeerWaitPolicy& policy) {
  return std::max(policy.stuck_floor, recent_unit * policy.stuck_units);
}

PeerJudgement JudgePeers(const std::vector<PeerHealth>& peers, std::chrono::milliseconds waited,
                         std::chrono::milliseconds longest_unit, const PeerWaitPolicy& policy,
                         const std::function<std::string(uint32_t)>& name) {
  PeerJudgement judgement;
  auto lose = [&](PeerVerdict verdict, const PeerHealth& peer, std::chrono::milliseconds lost_for,
                  std::string reason) {
    if (judgement.verdict == PeerVerdict::kWait) {
      judgement.verdict = verdict;
      judgement.lost_for = lost_for;
      judgement.reason = std::move(reason);
    }
    judgement.lost.push_back(static_cast<uint32_t>(peer.pool));
  };
  for (const PeerHealth& peer : peers) {
    if (peer.delivered) continue;
    const uint32_t pool = static_cast<uint32_t>(peer.pool);
    if (peer.silent_for >= policy.liveness) {
      lose(PeerVerdict::kLinkDead, peer, peer.silent_for,
           absl::StrFormat("link dead: nothing heard from %s for %.1f s (%d streams up)",
                           name(pool), Seconds(peer.silent_for), peer.streams_up));
      continue;
    }
    const std::chrono::milliseconds stuck_after = StuckAfter(peer.recent_unit, policy);
    if (peer.progress_unchanged_for >= stuck_after) {
      lose(PeerVerdict::kStuck, peer, peer.progress_unchanged_for,
           absl::StrFormat("stuck: %s is alive but made no progress for %.0f s (its recent steps "
                           "took up to %.1f s; the limit is %.0f s)",
                           name(pool), Seconds(peer.progress_unchanged_for),
                           Seconds(peer.recent_unit), Seconds(stuck_after)));
      continue;
    }
    judgement.waiting.push_back(pool);
  }
  if (judgement.verdict != PeerVerdict::kWait || judgement.waiting.empty()) return judgement;
  const std::chrono::milliseconds cap = SlowCap(longest_unit, policy);
  if (waited >= cap) {
    std::vector<std::string> names;
    for (uint32_t pool : judgement.waiting) names.push_back(name(pool));
    judgement.verdict = PeerVerdict::kTooSlow;
    judgement.lost = std::move(judgement.waiting);
    judgement.waiting.clear();
    judgement.lost_for = waited;
    judgement.reason = absl::StrFormat(
        "too slow: waited %.0f s for %s, alive and progressing, past the cap of %.0f s "
        "(%d x the longest step or evaluation seen here, %.1f s)",
        Seconds(waited), absl::StrJoin(names, ", "), Seconds(cap), policy.slow_units,
        Seconds(longest_unit));
  }
  return judgement;
}

void ProgressMeter::Start(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  last_tick_ = now;
}

void ProgressMeter::Tick(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(now - last_tick_);
  last_tick_ = now;
  ++units_;
  if (recent_.size() < kWindow) {
    recent_.push_back(took);
  } else {
    recent_[next_] = took;
    next_ = (next_ + 1) % kWindow;
  }
}

uint64_t ProgressMeter::units() const {
  std::lock_guard<std::mutex> lock(mu_);
  return units_;
}

std::chrono::milliseconds ProgressMeter::longest_recent() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::chrono::milliseconds longest{0};
  for (std::chrono::milliseconds d : recent_) longest = std::max(longest, d);
  return longest;
}

}  // namespace tandem
