// The training loop of one rank of one pool: `tandem worker`, started by
// mpirun. Every rank loads the data and builds the model; rank 0 (the pool
// leader) alone owns the checkpoint store and reports events (worker_events.h)
// on `events`. Each step: forward/backward on this rank's slice of the global
// batch, MPI allreduce of the flat fp32 gradient inside the pool; with several
// pools the leaders then encode it, exchange it over the WAN link, decode and
// sum every pool's in pool order, and broadcast the sum in their pool; then
// the optimizer step. Every rank of every pool holds bitwise-identical
// parameters after every step (checked every exchange.digest_every_steps
// between clouds, and at the end). With exchange.mode: delayed (tandem train
// only; refused with a coordinator) the leader exchanges step t's gradient on
// a thread of its own while every rank computes step t+1, whose optimizer
// step then applies step t's combined gradient: one update of staleness (see
// Trainer::StartDelayedExchange); checkpoints and the end drain it.
#ifndef TANDEM_WORKER_TRAINER_H_
#define TANDEM_WORKER_TRAINER_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "transport/mpi_comm.h"

namespace tandem {

struct WorkerOptions {
  std::string spec_path;
  std::string store_dir;
  // Continue from the job's latest checkpoint in the store. Without it, a
  // store that already has checkpoints of the job is refused.
  bool resume = false;
  // A PyTorch state_dict file (parameter name -> tensor) to start from
  // instead of the seeded initialisation.
  std::string init_file;
  // Overrides train.max_steps of the spec when non-zero.
  uint64_t max_steps = 0;

  // Which of the spec's pools this group of ranks is.
  uint32_t pool_index = 0;
  // For a job of several pools: where this pool's leader accepts the other
  // leaders' gradient streams, and every leader's address by pool index.
  std::string link_listen;
  std::vector<std::string> link_peers;
  // Mutual TLS material (tandem certs init), or plaintext when insecure.
  std::string certs_dir;
  bool insecure = false;
  // How long a leader waits to connect to its peers when a link starts.
  uint32_t exchange_timeout_ms = 60000;
  // During an exchange a peer is lost only when the link says so
  // (worker/peer_wait.h): nothing heard from it for liveness_ms (link dead),
  // or alive with no progress for max(stuck_after_ms, 20 of its recent
  // steps) (stuck); an alive, progressing peer is waited for up to
  // max(2 x stuck_after_ms, 50 x the longest step or evaluation seen). A
  // lost peer fails the job (with a coordinator: is reported to it).
  // Both at least kMinLivenessMs: the link's heartbeats come every 500 ms.
  uint32_t liveness_ms = 4000;
  uint32_t stuck_after_ms = 60000;
  // Each pool evaluates the whole test set on its own ranks (as tandem did
  // before evaluation was sharded across pools); kept to compare against.
  bool eval_per_pool = false;

  // A job run by `tandem agent`: the leader follows the plans of the
  // coordinator at this address (worker/plan_client.h). It learns there which
  // pools train together and every leader's address (link_peers is unused),
  // reports peers it cannot reach, and survives their loss: the step that
  // could not complete is redone by the surviving pools with their in-memory
  // state, the global batch split among the ranks left. A pool the plan does
  // not hold yet joins: it waits until it reaches the active pools, asks to
  // join, and takes the state from them at a step boundary.
  std::string coordinator;
  // Test mode: every rank appends the sample ids of each step it computes to
  // DIR/<cloud>-l<launch>-r<rank>.log, one line "step generation id id ...".
  // The step's update is the one of its last generation: a step redone after
  // a loss is logged again with the new generation.
  std::string sample_log_dir;
  uint64_t launch = 0;  // the coordinator's launch number, for file names
};

// Runs this rank's share of the job to its end. Collective over `comm`.
absl::Status RunWorker(const WorkerOptions& options, PoolComm& comm, std::ostream& events);

}  // namespace tandem

#endif  // TANDEM_WORKER_TRAINER_H_
