// Agent: `tandem agent --cloud NAME`, one per cloud. It registers the cloud's
// pool with the coordinator and keeps its lease with heartbeats, runs the
// worker groups the coordinator assigns to the cloud (through a Launcher),
// forwards their leaders' events (progress, checkpoints, logs) and reports
// their exit, and copies checkpoints to other clouds when asked (migration).
// Each job keeps its checkpoints in its own store, STORE/<job id>, written by
// the job's pool leader; the agent opens one only while no group of that job
// runs here.
//
// The coordinator being away does not stop the groups: the agent keeps them
// running, retries, re-registers when its lease is unknown (a coordinator
// that lost it), and resends exit reports until they are acknowledged.
//
// Thread-safety: Run is called once; Stop from any thread (a signal handler's
// thread, a test).
#ifndef TANDEM_COORDINATOR_AGENT_H_
#define TANDEM_COORDINATOR_AGENT_H_

#include <grpcpp/security/credentials.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/job_stores_service.h"
#include "coordinator/launcher.h"
#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem {

struct AgentOptions {
  std::string cloud;
  std::string coordinator;  // HOST:PORT
  std::string store_dir;    // the cloud's checkpoint stores, one folder per job
  uint32_t slots = 0;       // worker ranks this cloud runs at once
  // Where this cloud's pool leaders accept other clouds' gradient streams,
  // and the address the other clouds dial (a WAN proxy's, a public one);
  // the latter defaults to the former.
  std::string wan_listen;
  std::string wan_advertise;
  // Where this agent serves CheckpointReplication for migrations, and the
  // address others dial; empty = no replication service.
  std::string replication_listen;
  std::string replication_advertise;
  // Mutual TLS for every connection (coordinator, peers, workers' links), or
  // plaintext.
  std::string certs_dir;
  bool insecure = false;
  std::string tandem_binary;  // the executable the launcher starts as `tandem worker`
  std::string work_dir;       // spec files of the groups; default STORE/.agent
  std::string sample_log_dir;  // passed to the workers (test mode)
  // Passed to the workers (worker/trainer.h WorkerOptions): connecting to
  // peers, and when a peer in an exchange is lost.
  uint32_t exchange_timeout_ms = 10000;
  uint32_t liveness_ms = 4000;
  uint32_t stuck_after_ms = 60000;
  std::chrono::milliseconds heartbeat_interval{1000};
};

class Agent {
 public:
  Agent(AgentOptions options, std::unique_ptr<Launcher> launcher);
  ~Agent();  // kills and reaps the groups still running
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Serves until Stop. Returns an error only for what cannot work at all
  // (bad options, TLS material, a replication address that cannot be bound).
  absl::Status Run();
  void Stop();

 private:
  struct Group;
  struct Copy;

  absl::Status Tick();
  void Reconcile(const v1::GetAssignmentsResponse& assignments);
  absl::Status StartGroup(const v1::Assignment& assignment);
  void ReadGroup(Group* group);
  void StartCopy(const v1::Assignment& assignment);
  void RunCopy(v1::Assignment assignment);
  void Report(const v1::PoolReport& report);
  bool SendReport(const v1::PoolReport& report);
  std::vector<v1::RunningPool> RunningPools();
  uint32_t FreeSlots();

  AgentOptions options_;
  std::unique_ptr<Launcher> launcher_;
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials_;
  std::unique_ptr<v1::AgentService::Stub> stub_;
  std::string lease_id_;
  std::unique_ptr<JobStoresService> stores_service_;
  std::unique_ptr<grpc::Server> replication_server_;

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;                                // guarded by mutex_
  std::map<std::string, std::unique_ptr<Group>> groups_;  // by job id; guarded by mutex_
  std::map<std::string, std::unique_ptr<Copy>> copies_;   // by job id; guarded by mutex_
  std::vector<v1::PoolReport> unsent_exits_;         // guarded by mutex_
};

}  // namespace tandem

#endif  // TANDEM_COORDINATOR_AGENT_H_
