// The coordinator's state machine behind its gRPC services: jobs, cloud
// leases, placement, failover and migration, persisted in one RocksDB.
// CoordinatorServer (coordinator_server.h) is the public face; this class is
// what its services call, one method per RPC.
//
// Thread-safe: one mutex guards the state. Durable writes (job transitions,
// pool registrations, job events, logs, checkpoints) are issued in the order
// of the state changes and complete before the method returns, but without
// holding the state mutex during the fsync, so heartbeats and status reads
// never wait for the disk. Heartbeats touch no disk at all (leases are soft
// state; lease ids are persisted on registration only).
#ifndef TANDEM_COORDINATOR_COORDINATOR_STATE_H_
#define TANDEM_COORDINATOR_COORDINATOR_STATE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tandem/v1/coordinator.pb.h"
#include "tandem/v1/job.pb.h"

namespace rocksdb {
class DB;
class WriteBatch;
}  // namespace rocksdb

namespace tandem {

class CoordinatorState {
 public:
  using EventCallback = std::function<void(const std::string& job_id, const v1::JobEvent& event)>;

  // Opens or recovers the state in `dir`. Every recovered lease gets a fresh
  // expiry of now + 2 x ttl so agents can renew it. FailedPrecondition when
  // another coordinator holds `dir`.
  static absl::StatusOr<std::unique_ptr<CoordinatorState>> Open(const std::string& dir,
                                                                uint32_t lease_ttl_ms,
                                                                EventCallback on_event);
  ~CoordinatorState();

  // JobService.
  absl::StatusOr<v1::SubmitJobResponse> SubmitJob(const v1::JobSpec& spec);
  absl::StatusOr<v1::JobStatus> GetJob(const std::string& job_id);
  v1::ListJobsResponse ListJobs();
  absl::StatusOr<v1::JobStatus> CancelJob(const std::string& job_id, const std::string& reason);
  absl::StatusOr<v1::ListCheckpointsResponse> ListCheckpoints(const std::string& job_id,
                                                              const std::string& cloud);
  absl::StatusOr<v1::JobStatus> MigrateJob(const std::string& job_id, const std::string& to_cloud);
  v1::ListPoolsResponse ListPools();
  // Calls `write` for each stored line, then (with follow) for each new one
  // until the job is terminal, `cancelled` returns true, `write` returns
  // false, or the state shuts down.
  absl::Status StreamLogs(const std::string& job_id, bool follow,
                          const std::function<bool(const v1::LogLine&)>& write,
                          const std::function<bool()>& cancelled);

  // AgentService.
  absl::StatusOr<v1::RegisterPoolResponse> RegisterPool(const v1::RegisterPoolRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  absl::StatusOr<v1::GetAssignmentsResponse> GetAssignments(
      const v1::GetAssignmentsRequest& request);
  absl::Status ReportPool(const v1::PoolReport& report);

  // PlanService: the long poll (bounded by request.wait_ms, `cancelled`, and
  // Shutdown).
  absl::StatusOr<v1::Plan> SyncPlan(const v1::SyncPlanRequest& request,
                                    const std::function<bool()>& cancelled);

  // Expires leases, places pending jobs, relaunches lost pools, flushes
  // throttled progress. Run by the server's ticker thread.
  void Tick();
  // Wakes every long poll and log stream; later waits return at once.
  void Shutdown();

 private:
  struct Cloud {
    v1::PoolInfo info;
    std::string lease_id;
    int64_t expires_ms = 0;
    int64_t last_heartbeat_ms = 0;
    bool alive = false;
  };
  // What the coordinator knows about one pool beyond its PoolStatus.
  struct PoolExtra {
    bool occupying = false;  // counts against its cloud's slots until its group exits
    bool stopping = false;   // asked to checkpoint and stop (migration)
    bool done_seen = false;  // the leader reported "done"
    bool resume = false;
    uint64_t launch_generation = 0;
    int64_t backoff_ms = 0;
    int64_t next_launch_ms = 0;
    // The job's step when this pool was let in to join; 0 if it never was.
    uint64_t joined_at_step = 0;
    std::string stop_reason;
    v1::TrainingProgress progress;
    bool has_progress = false;
  };
  enum MigratePhase { kNoMigration = 0, kStopping = 1, kReplicating = 2, kLaunched = 3 };
  struct Job {
    v1::JobStatus status;
    std::vector<PoolExtra> px;
    std::vector<uint32_t> active;  // the current generation's active pools, ascending
    std::string plan_reason;
    uint64_t recovery_step = 0;
    int64_t loss_ms = 0;
    bool awaiting_recover = false;
    bool needs_restart = false;
    std::string last_error;
    std::string wait_reason;
    int migrate_phase = kNoMigration;
    std::string migrate_to;
    std::string migrate_source;
    uint32_t migrate_source_index = 0;
    uint32_t migrate_workers = 0;
    std::vector<uint32_t> migrate_pools;  // the active pools when the migration began
    std::map<std::string, std::deque<v1::CheckpointInfo>> checkpoints;
    std::deque<v1::LogLine> logs;
    uint64_t log_base = 0;  // sequence number of logs.front()
    int64_t progress_written_ms = 0;
    bool progress_dirty = false;
  };
  // The writes and events of one state change, applied after the state mutex
  // is released but in the order of the changes.
  struct Txn;

  CoordinatorState(rocksdb::DB* db, uint32_t lease_ttl_ms, EventCallback on_event);
  absl::Status Recover();
  absl::Status Commit(Txn& txn) ABSL_UNLOCK_FUNCTION(mu_);

  // All of these run with mu_ held.
  void Reconcile(Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLeases(Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets a live lease's expiry; every change of expires_ms goes through it.
  void SetExpiry(Cloud& cloud, int64_t expires_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PlacePending(Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Relaunch(Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Job* FindJob(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Alive(const std::string& cloud) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t FreeSlots(const std::string& cloud) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The other non-terminal multi-pool job holding `cloud`, or "".
  std::string MultiPoolJobOn(const std::string& cloud, const std::string& except) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why pool `index` of `job` cannot be launched now, or "".
  std::string CannotLaunch(const Job& job, uint32_t index, bool ignore_own = false) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string KnownClouds() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void AddEvent(Job& job, v1::JobState to, const std::string& reason, const std::string& cloud,
                Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NewGeneration(Job& job, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LaunchPool(Job& job, uint32_t index, bool resume, bool joining)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartJob(Job& job, Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LosePool(Job& job, uint32_t index, const std::string& reason, int64_t loss_ms, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropFromActive(Job& job, uint32_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Restart(Job& job, const std::string& reason, int64_t loss_ms, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TryRestart(Job& job, Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AdvanceMigration(Job& job, Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishMigration(Job& job, const v1::PoolReport& report, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Finish(Job& job, v1::JobState to, const std::string& reason, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateProgress(Job& job, uint32_t index, const v1::TrainingProgress& progress, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::Plan BuildPlan(const Job& job, uint32_t index) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(Job& job, Txn& txn, bool sync) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string ExtrasJson(const Job& job) const;
  void LoadExtras(Job& job, const std::string& json) const;

  rocksdb::DB* const db_;
  const uint32_t ttl_ms_;
  const EventCallback on_event_;

  mutable absl::Mutex mu_;
  // Writes reach the database in the order of the state changes: Commit takes
  // a ticket under mu_ and writes when write_turn_ reaches it, without mu_.
  uint64_t next_write_ticket_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Mutex write_mu_;
  absl::CondVar write_cv_;  // write_turn_ advanced
  uint64_t write_turn_ ABSL_GUARDED_BY(write_mu_) = 0;
  absl::CondVar plan_cv_;  // a generation changed, a job ended, or shutdown
  absl::CondVar log_cv_;   // new log lines, a job ended, or shutdown
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_job_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, Cloud> clouds_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> lease_to_cloud_ ABSL_GUARDED_BY(mu_);
  // No live lease expires before this (a lower bound; ExpireLeases makes it
  // exact when it scans).
  int64_t next_expiry_ms_ ABSL_GUARDED_BY(mu_) = std::numeric_limits<int64_t>::max();
  std::map<std::string, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);  // job ids in submit order
};

}  // namespace tandem

#endif  // TANDEM_COORDINATOR_COORDINATOR_STATE_H_
