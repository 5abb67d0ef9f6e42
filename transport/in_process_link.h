// InProcessLink: the pools of a job as threads of one process, meeting in an
// InProcessHub. For fast tests of code that drives a Link (the step loop,
// digest checks, failover); the same contract as GrpcLink without a network.
//
// Payloads are copied through the hub; payload_bytes_sent counts a payload
// once per peer, and wire_bytes_sent equals it. A peer is alive (silent_for
// zero) while its link exists; once it is gone, silent_for counts from when
// it left. Progress travels through the hub at once. Thread-safety: as Link;
// the hub is shared by the pools' links and is thread-safe.
#ifndef TANDEM_TRANSPORT_IN_PROCESS_LINK_H_
#define TANDEM_TRANSPORT_IN_PROCESS_LINK_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/link.h"

namespace tandem {

class InProcessHub {
 public:
  explicit InProcessHub(int pool_count);
  InProcessHub(const InProcessHub&) = delete;
  InProcessHub& operator=(const InProcessHub&) = delete;

  int pool_count() const { return pool_count_; }

 private:
  friend class InProcessLink;

  struct Round {
    std::vector<std::optional<std::string>> payloads;  // by pool
    std::vector<bool> taken;                           // the pool is done with the round
  };

  // Drops rounds every live pool is done with.
  void Collect() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int pool_count_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<bool> attached_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> closed_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Time> left_at_ ABSL_GUARDED_BY(mu_);
  // Each pool's progress (Link::ReportProgress) and when it last changed.
  struct Progress {
    uint64_t units = 0;
    std::chrono::milliseconds recent_unit{0};
    absl::Time changed;
  };
  std::vector<Progress> progress_ ABSL_GUARDED_BY(mu_);
  // The round each pool's Exchange is in, if any.
  std::vector<std::optional<uint64_t>> in_flight_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Round> rounds_ ABSL_GUARDED_BY(mu_);
};

class InProcessLink final : public Link {
 public:
  // InvalidArgument for a pool index outside the hub, AlreadyExists if a live
  // link holds that index.
  static absl::StatusOr<std::unique_ptr<InProcessLink>> Create(std::shared_ptr<InProcessHub> hub,
                                                               int pool_index);
  // The pool leaves the hub: peers waiting for its payload fail at once with
  // Unavailable.
  ~InProcessLink() override;
  InProcessLink(const InProcessLink&) = delete;
  InProcessLink& operator=(const InProcessLink&) = delete;

  int pool_index() const override { return pool_index_; }
  int pool_count() const override { return hub_->pool_count(); }
  // Waits until every pool has a link (Unavailable if one left).
  absl::Status Connect(std::chrono::milliseconds deadline) override;
  absl::StatusOr<std::vector<std::string>> Exchange(uint64_t round, absl::string_view payload,
                                                    std::chrono::milliseconds deadline) override;
  LinkStats Stats() const override;
  std::vector<PeerHealth> Peers() const override;
  void ReportProgress(uint64_t units, std::chrono::milliseconds recent_unit) override;

 private:
  InProcessLink(std::shared_ptr<InProcessHub> hub, int pool_index)
      : hub_(std::move(hub)), pool_index_(pool_index) {}

  const std::shared_ptr<InProcessHub> hub_;
  const int pool_index_;
  bool completed_any_ = false;  // the caller's thread only
  uint64_t last_completed_ = 0;
  mutable absl::Mutex stats_mu_;
  LinkStats stats_ ABSL_GUARDED_BY(stats_mu_);
};

}  // namespace tandem

#endif  // TANDEM_TRANSPORT_IN_PROCESS_LINK_H_
