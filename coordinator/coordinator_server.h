// The coordinator: one gRPC server with JobService (the CLI), AgentService
// (one agent per cloud), PlanService (pool leaders' long poll) and the
// standard grpc.health.v1 service. It owns the job state machine, the cloud
// leases, placement and failover; its state lives in its own RocksDB and a
// restarted coordinator recovers every job and every registered cloud.
//
// Thread-safe. Start() returns a running server; Shutdown() (also run by the
// destructor) stops it, wakes every long poll and log stream, and closes the
// database. A second coordinator on the same state dir fails at Start with
// FailedPrecondition naming the dir.
#ifndef TANDEM_COORDINATOR_COORDINATOR_SERVER_H_
#define TANDEM_COORDINATOR_COORDINATOR_SERVER_H_

#include <grpcpp/security/server_credentials.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tandem/v1/job.pb.h"

namespace tandem {

class CoordinatorState;

struct CoordinatorOptions {
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free port
  std::string state_dir;               // RocksDB folder, created if missing
  uint32_t lease_ttl_ms = 3000;        // a cloud without a heartbeat this long is lost
  // Placement, lease expiry and relaunch run at least this often (and on
  // every RPC that can change them).
  uint32_t tick_ms = 100;
  // Plaintext when null.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Called (outside the coordinator's locks) once per job state transition.
  std::function<void(const std::string& job_id, const v1::JobEvent& event)> on_event;
};

class CoordinatorServer {
 public:
  // Opens (or recovers) the state in options.state_dir and starts serving.
  // FailedPrecondition "... in use by another coordinator" when another
  // process holds the dir; Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(const CoordinatorOptions& options);

  ~CoordinatorServer();
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  // The bound port (the real one when options.listen asked for port 0).
  int port() const { return port_; }
  // Stops serving; idempotent.
  void Shutdown();

 private:
  struct Impl;
  explicit CoordinatorServer(std::unique_ptr<Impl> impl, int port);

  std::unique_ptr<Impl> impl_;
  int port_;
};

}  // namespace tandem

#endif  // TANDEM_COORDINATOR_COORDINATOR_SERVER_H_
