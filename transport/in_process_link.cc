#include "transport/in_process_link.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tandem {

InProcessHub::InProcessHub(int pool_count)
    : pool_count_(pool_count),
      attached_(pool_count, false),
      closed_(pool_count, false),
      left_at_(pool_count, absl::InfinitePast()),
      progress_(pool_count, Progress{0, std::chrono::milliseconds(0), absl::Now()}),
      in_flight_(pool_count) {}

void InProcessHub::Collect() {
  for (auto it = rounds_.begin(); it != rounds_.end();) {
    bool all = true;
    for (int p = 0; p < pool_count_; ++p) all = all && (it->second.taken[p] || closed_[p]);
    it = all ? rounds_.erase(it) : std::next(it);
  }
}

absl::StatusOr<std::unique_ptr<InProcessLink>> InProcessLink::Create(
    std::shared_ptr<InProcessHub> hub, int pool_index) {
  if (hub == nullptr || pool_index < 0 || pool_index >= hub->pool_count()) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool index ", pool_index, " is not in the hub"));
  }
  {
    absl::MutexLock lock(&hub->mu_);
    if (hub->attached_[pool_index]) {
      return absl::AlreadyExistsError(absl::StrCat("pool ", pool_index, " already has a link"));
    }
    hub->attached_[pool_index] = true;
    hub->closed_[pool_index] = false;
    hub->cv_.SignalAll();
  }
  return std::unique_ptr<InProcessLink>(new InProcessLink(std::move(hub), pool_index));
}

InProcessLink::~InProcessLink() {
  absl::MutexLock lock(&hub_->mu_);
  hub_->attached_[pool_index_] = false;
  hub_->closed_[pool_index_] = true;
  hub_->left_at_[pool_index_] = absl::Now();
  hub_->in_flight_[pool_index_].reset();
  hub_->Collect();
  hub_->cv_.SignalAll();
}

absl::Status InProcessLink::Connect(std::chrono::milliseconds deadline) {
  const absl::Time end = absl::Now() + absl::Milliseconds(deadline.count());
  absl::MutexLock lock(&hub_->mu_);
  while (true) {
    std::vector<std::string> missing;
    for (int p = 0; p < hub_->pool_count_; ++p) {
      if (hub_->closed_[p]) return absl::UnavailableError(absl::StrCat("pool ", p, " has left"));
      if (!hub_->attached_[p]) missing.push_back(absl::StrCat("pool ", p));
    }
    if (missing.empty()) return absl::OkStatus();
    if (absl::Now() >= end) {
      return absl::DeadlineExceededError(absl::StrCat(
          absl::StrJoin(missing, ", "), " did not join within ", deadline.count(), " ms"));
    }
    hub_->cv_.WaitWithDeadline(&hub_->mu_, end);
  }
}

absl::StatusOr<std::vector<std::string>> InProcessLink::Exchange(
    uint64_t round, absl::string_view payload, std::chrono::milliseconds deadline) {
  const absl::Time end = absl::Now() + absl::Milliseconds(deadline.count());
  if (completed_any_ && round <= last_completed_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "exchange round ", round, " is not above the last completed round ", last_completed_));
  }
  const int n = hub_->pool_count_;
  absl::MutexLock lock(&hub_->mu_);
  for (auto& [id, r] : hub_->rounds_) {
    if (id < round) r.taken[pool_index_] = true;
  }
  hub_->Collect();
  InProcessHub::Round& r = hub_->rounds_[round];
  if (r.payloads.empty()) {
    r.payloads.resize(n);
    r.taken.assign(n, false);
  }
  if (r.payloads[pool_index_].has_value()) {
    if (*r.payloads[pool_index_] != payload) {
      return absl::InvalidArgumentError(
          absl::StrCat("exchange round ", round,
                       " was started with another payload; a round's payload cannot change"));
    }
  } else {
    r.payloads[pool_index_] = std::string(payload);
    absl::MutexLock stats_lock(&stats_mu_);
    stats_.payload_bytes_sent += payload.size() * (n - 1);
    stats_.wire_bytes_sent += payload.size() * (n - 1);
  }
  hub_->cv_.SignalAll();
  hub_->in_flight_[pool_index_] = round;
  while (true) {
    std::vector<std::string> missing;
    for (int p = 0; p < n; ++p) {
      if (r.payloads[p].has_value()) continue;
      if (hub_->closed_[p]) {
        return absl::UnavailableError(
            absl::StrCat("exchange round ", round, ": pool ", p, " has left without its payload"));
      }
      missing.push_back(absl::StrCat("pool ", p));
    }
    if (missing.empty()) break;
    if (absl::Now() >= end) {
      return absl::DeadlineExceededError(
          absl::StrCat("exchange round ", round, " did not complete within ", deadline.count(),
                       " ms: no payload from ", absl::StrJoin(missing, ", ")));
    }
    hub_->cv_.WaitWithDeadline(&hub_->mu_, end);
  }
  std::vector<std::string> result(n);
  uint64_t received = 0;
  for (int p = 0; p < n; ++p) {
    result[p] = *r.payloads[p];
    if (p != pool_index_) received += result[p].size();
  }
  r.taken[pool_index_] = true;
  hub_->in_flight_[pool_index_].reset();
  hub_->Collect();
  completed_any_ = true;
  last_completed_ = round;
  absl::MutexLock stats_lock(&stats_mu_);
  stats_.payload_bytes_received += received;
  return result;
}

LinkStats InProcessLink::Stats() const {
  absl::MutexLock lock(&stats_mu_);
  return stats_;
}

std::vector<PeerHealth> InProcessLink::Peers() const {
  const absl::Time now = absl::Now();
  auto ms = [](absl::Duration d) {
    return std::chrono::milliseconds(absl::ToInt64Milliseconds(std::max(d, absl::ZeroDuration())));
  };
  absl::MutexLock lock(&hub_->mu_);
  const std::optional<uint64_t> round = hub_->in_flight_[pool_index_];
  std::vector<PeerHealth> out;
  for (int p = 0; p < hub_->pool_count_; ++p) {
    if (p == pool_index_) continue;
    PeerHealth health;
    health.pool = p;
    const bool alive = hub_->attached_[p] && !hub_->closed_[p];
    health.silent_for = alive || hub_->left_at_[p] == absl::InfinitePast()
                            ? std::chrono::milliseconds(0)
                            : ms(now - hub_->left_at_[p]);
    health.streams_up = alive ? 1 : 0;
    health.progress = hub_->progress_[p].units;
    health.recent_unit = hub_->progress_[p].recent_unit;
    health.progress_unchanged_for = ms(now - hub_->progress_[p].changed);
    if (round.has_value()) {
      auto it = hub_->rounds_.find(*round);
      health.delivered = it != hub_->rounds_.end() && it->second.payloads[p].has_value();
    }
    out.push_back(health);
  }
  return out;
}

void InProcessLink::ReportProgress(uint64_t units, std::chrono::milliseconds recent_unit) {
  absl::MutexLock lock(&hub_->mu_);
  InProcessHub::Progress& progress = hub_->progress_[pool_index_];
  if (units > progress.units) progress.changed = absl::Now();
  progress.units = std::max(progress.units, units);
  progress.recent_unit = recent_unit;
}

}  // namespace tandem
