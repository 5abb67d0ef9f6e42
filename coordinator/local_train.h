// Runs a job's pools on this machine: each pool one mpirun group of
// `tandem worker` ranks that tandem launches itself, its events read from the
// group's stdout and handed to the caller as they come. The leaders of a job
// with several pools exchange gradients over gRPC on loopback, optionally
// through tandem-wan-proxy to emulate the WAN between clouds.
#ifndef TANDEM_COORDINATOR_LOCAL_TRAIN_H_
#define TANDEM_COORDINATOR_LOCAL_TRAIN_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tandem/v1/job.pb.h"

namespace tandem {

struct LocalTrainOptions {
  std::string spec_path;      // the job spec the workers read
  std::string store_dir;      // the pool's checkpoint store
  bool resume = false;        // continue from the latest checkpoint
  std::string init_file;      // start from this PyTorch state_dict file
  uint64_t max_steps = 0;     // overrides train.max_steps when non-zero
  std::string tandem_binary;  // the executable mpirun starts as `tandem worker`
  // Between the pools of a job with several: mutual TLS with the material in
  // certs_dir (from `tandem certs init`), or plaintext when insecure.
  std::string certs_dir;
  bool insecure = false;
  uint32_t exchange_timeout_ms = 60000;  // connecting to the peers
  // When a peer in an exchange is lost (worker/trainer.h WorkerOptions).
  uint32_t liveness_ms = 4000;
  uint32_t stuck_after_ms = 60000;
  bool eval_per_pool = false;  // see WorkerOptions
  // WAN emulation between the pools (tandem-wan-proxy in front of each
  // leader): one-way delay, rate limit, and resets per MB.
  uint32_t wan_delay_ms = 0;
  double wan_rate_mbit = 0;
  double wan_loss = 0;
};

// One event of a pool leader (see worker/worker_events.h), parsed.
struct WorkerEvent {
  std::string kind;
  v1::TrainingProgress progress;  // the fields the event carries; others zero
  std::string message;            // warning and error events
  double epochs = 0;              // done: samples consumed / dataset size
  std::string init_digest;        // start: digest of the --init parameters
  double eval_s = 0;              // eval: the evaluation's wall time
};

struct TrainResult {
  uint64_t steps = 0;
  double epochs = 0;
  uint64_t cursor = 0;
  double loss = 0;
  double test_accuracy = 0;
  double test_loss = 0;
  double samples_per_s = 0;
  double wall_s = 0;
  std::string state_digest;
  std::string init_digest;       // of the --init parameters, if any
  uint64_t wan_bytes_sent = 0;   // by pool 0's leader to the other clouds
  double compression_ratio = 0;  // fp32 gradient bytes exchanged / bytes sent
};

// The checkpoint store of pool `pool`: the store folder itself for a job of
// one pool, else one folder per cloud inside it.
std::string PoolStoreDir(const LocalTrainOptions& options, const v1::JobSpec& spec, int pool);

// Parses one line of a worker's stdout; nullopt if it is not an event.
std::optional<WorkerEvent> ParseWorkerEvent(const std::string& line);

// The mpirun command line (and environment) that runs `ranks` workers.
std::vector<std::string> MpirunArgv(int ranks, const std::vector<std::string>& worker_argv);
std::vector<std::pair<std::string, std::string>> MpirunEnv();

// Trains `spec` to its end. `on_event` sees every event as it arrives, on the
// calling thread. Returns the result of the leader's "done" event, or the
// error a worker reported (or mpirun's exit status if none did).
absl::StatusOr<TrainResult> RunLocalTraining(
    const LocalTrainOptions& options, const v1::JobSpec& spec,
    const std::function<void(const WorkerEvent&)>& on_event);

}  // namespace tandem

#endif  // TANDEM_COORDINATOR_LOCAL_TRAIN_H_
