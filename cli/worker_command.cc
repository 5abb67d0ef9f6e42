#include <boost/program_options.hpp>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "transport/mpi_comm.h"
#include "worker/peer_wait.h"
#include "worker/trainer.h"
#include "worker/worker_events.h"

namespace tandem::cli {

namespace po = boost::program_options;

int WorkerCommand(int argc, char** argv) {
  WorkerOptions options;
  std::string peers;
  po::options_description flags("tandem worker (started by mpirun; not for direct use)");
  // clang-format off
  flags.add_options()
      ("spec", po::value(&options.spec_path)->required(), "job spec file")
      ("store", po::value(&options.store_dir)->required(), "checkpoint store folder")
      ("resume", po::bool_switch(&options.resume), "continue from the latest checkpoint")
      ("init", po::value(&options.init_file), "start from this PyTorch state_dict file")
      ("max-steps", po::value(&options.max_steps), "override train.max_steps")
      ("pool", po::value(&options.pool_index), "which pool of the spec these ranks are")
      ("link-listen", po::value(&options.link_listen), "HOST:PORT the leader's link listens on")
      ("link-peers", po::value(&peers), "every leader's HOST:PORT by pool index, comma-separated")
      ("certs", po::value(&options.certs_dir), "mutual TLS material for the link")
      ("insecure", po::bool_switch(&options.insecure), "plaintext link")
      ("exchange-timeout-ms", po::value(&options.exchange_timeout_ms),
       "how long the leader waits to connect to its peers when a link starts")
      ("liveness-ms", po::value(&options.liveness_ms),
       "a peer the link heard nothing from this long is lost (link dead)")
      ("eval-per-pool", po::bool_switch(&options.eval_per_pool),
       "each pool evaluates the whole test set itself (not sharded across pools)")
      ("stuck-after-ms", po::value(&options.stuck_after_ms),
       "an alive peer without progress this long (at least) is lost (stuck)")
      ("coordinator", po::value(&options.coordinator),
       "follow this coordinator's plans (a job run by `tandem agent`)")
      ("launch", po::value(&options.launch), "the coordinator's launch number of this pool")
      ("sample-log", po::value(&options.sample_log_dir),
       "test mode: log the sample ids of every step to files in this folder");
  // clang-format on
  try {
    po::variables_map vm;
    po::store(po::parse_command_line(argc, argv, flags), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "tandem worker: " << e.what() << "\n" << flags;
    return kExitUsage;
  }
  if (options.liveness_ms < kMinLivenessMs || options.stuck_after_ms < kMinLivenessMs) {
    std::cerr << "tandem worker: --liveness-ms and --stuck-after-ms must be at least "
              << kMinLivenessMs << " (two heartbeat intervals)\n";
    return kExitUsage;
  }
  if (!peers.empty()) options.link_peers = absl::StrSplit(peers, ',');
  absl::StatusOr<std::unique_ptr<MpiSession>> mpi = MpiSession::Start(&argc, &argv);
  if (!mpi.ok()) {
    std::cerr << "tandem worker: " << mpi.status().message() << "\n";
    return kExitFailed;
  }
  PoolComm comm = PoolComm::World();
  absl::Status status = RunWorker(options, comm, std::cout);
  if (status.ok()) return kExitOk;
  if (comm.rank() == 0) {
    std::cout
        << kEventPrefix
        << nlohmann::json{{"event", "error"}, {"message", std::string(status.message())}}.dump()
        << "\n"
        << std::flush;
  } else {
    std::cerr << "tandem worker rank " << comm.rank() << ": " << status.message() << "\n";
  }
  // No MPI_Finalize: ranks that did not fail may be waiting in a collective,
  // and finalize would wait for them. Exiting lets mpirun end the group.
  std::cerr << std::flush;
  std::_Exit(kExitFailed);
}

}  // namespace tandem::cli
