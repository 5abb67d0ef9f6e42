// PlanClient: a pool leader's line to the coordinator's PlanService
// (proto/tandem/v1/coordinator.proto). The coordinator decides which pools of
// a job train together (a Plan, one generation per change); the leader follows
// it at step boundaries, reports peers it cannot reach, and asks to join.
//
// A background long poll (Watch) keeps the newest plan at hand, so checking
// for a change at a step boundary costs no round trip. The coordinator being
// down does not stop training: the watcher retries quietly and the leader
// keeps the plan it has.
//
// Thread-safety: Sync may be called from one thread while the watcher runs;
// Newer and SetStep from any thread.
#ifndef TANDEM_WORKER_PLAN_CLIENT_H_
#define TANDEM_WORKER_PLAN_CLIENT_H_

#include <grpcpp/security/credentials.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem {

struct PlanReport {
  uint64_t step = 0;
  std::vector<uint32_t> unreachable_pools;
  uint32_t unreachable_for_ms = 0;
  std::string reason;  // why they were given up on (SyncPlanRequest.loss_reason)
  bool ready_to_join = false;
};

class PlanClient {
 public:
  PlanClient(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> credentials,
             std::string job_id, uint32_t pool_index);
  ~PlanClient();  // stops the watcher
  PlanClient(const PlanClient&) = delete;
  PlanClient& operator=(const PlanClient&) = delete;

  // One SyncPlan call: sends `report` and returns the plan once its
  // generation is above `generation`, or after `wait` (the current one).
  // Unavailable / DeadlineExceeded when the coordinator does not answer
  // within wait + a few seconds.
  absl::StatusOr<v1::Plan> Sync(uint64_t generation, const PlanReport& report,
                                std::chrono::milliseconds wait);

  // Starts the background long poll from `generation` on.
  void Watch(uint64_t generation);
  // The newest plan the watcher saw if its generation is above `generation`.
  std::optional<v1::Plan> Newer(uint64_t generation);
  // The step the watcher reports with its polls.
  void SetStep(uint64_t step);

 private:
  void WatchLoop();

  std::unique_ptr<v1::PlanService::Stub> stub_;
  const std::string job_id_;
  const uint32_t pool_index_;

  std::mutex mutex_;
  std::condition_variable stopping_;
  bool stop_ = false;                // guarded by mutex_
  std::optional<v1::Plan> newest_;   // guarded by mutex_
  uint64_t watched_generation_ = 0;  // guarded by mutex_
  uint64_t step_ = 0;                // guarded by mutex_
  std::thread watcher_;
};

}  // namespace tandem

#endif  // TANDEM_WORKER_PLAN_CLIENT_H_
