// tandem: trains one model on worker pools in several clouds. This file only
// dispatches to the subcommands (cli/*_command.cc).
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "checkpoint/allocator.h"
#include "cli/commands.h"

namespace {

constexpr char kUsage[] = R"(tandem: data-parallel training across worker pools in two clouds

Usage: tandem COMMAND [OPTIONS]

Jobs on a coordinator (`tandem coordinator`, or `tandem up`):
  submit SPEC         send a job spec to the coordinator; prints the job id
  status [JOB]        the clouds and jobs, or one job in detail; --watch
                      shows a job live until it ends
  list                the jobs, one line each
  logs JOB [-f]       the job's log lines; -f follows until it ends
  cancel JOB          stop a job
  migrate JOB --to CLOUD
                      move a job to another cloud
  checkpoints JOB     the job's checkpoints in every cloud's store
  export JOB -o FILE  fetch the job's latest checkpoint and write its model as
                      a PyTorch state_dict file

On this machine:
  train SPEC          run a job's pools on this machine (mpirun per pool) and
                      print its result
  checkpoints         list the checkpoints in a local store (--store DIR)
  export              write a checkpoint from a local store (--store DIR)
  replicate           copy a checkpoint to another cloud's store (only missing chunks)
  serve-store         serve a store to peers that replicate into it
  certs init [DIR]    make the CA and certificates for mutual TLS
  coordinator         run the control plane (jobs, agents' leases, failover)
  agent               run one cloud's agent (its pool, worker groups, store)
  up                  run a coordinator and two clouds' agents (cloud-a, cloud-b)
                      on this machine, optionally with an emulated WAN between them

The coordinator's address is --coordinator HOST:PORT, else $TANDEM_COORDINATOR,
else the line in ~/.tandem/coordinator (written by `tandem up`), else
127.0.0.1:7440; mutual TLS with ~/.tandem/certs unless --certs DIR or
--insecure.

Run `tandem COMMAND --help` for a command's options.

Exit codes: 0 ok, 1 the job or operation failed, 2 usage error (bad flag,
bad value, malformed job spec, unknown job), 3 the coordinator cannot be
reached.
)";

}  // namespace

int main(int argc, char** argv) {
  // Before any thread starts; saves reuse the memory of the last one's memtables.
  tandem::KeepFreedMemoryForCheckpoints();
  if (argc < 2) {
    std::cerr << kUsage;
    return tandem::cli::kExitUsage;
  }
  const std::string command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    std::cout << kUsage;
    return tandem::cli::kExitOk;
  }
  if (command == "worker") return tandem::cli::WorkerCommand(argc - 1, argv + 1);
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "train") return tandem::cli::TrainCommand(args);
  if (command == "checkpoints") return tandem::cli::CheckpointsCommand(args);
  if (command == "export") return tandem::cli::ExportCommand(args);
  if (command == "replicate") return tandem::cli::ReplicateCommand(args);
  if (command == "serve-store") return tandem::cli::ServeStoreCommand(args);
  if (command == "certs") return tandem::cli::CertsCommand(args);
  if (command == "coordinator") return tandem::cli::CoordinatorCommand(args);
  if (command == "agent") return tandem::cli::AgentCommand(args);
  if (command == "submit") return tandem::cli::SubmitCommand(args);
  if (command == "status") return tandem::cli::StatusCommand(args);
  if (command == "list") return tandem::cli::ListCommand(args);
  if (command == "logs") return tandem::cli::LogsCommand(args);
  if (command == "cancel") return tandem::cli::CancelCommand(args);
  if (command == "migrate") return tandem::cli::MigrateCommand(args);
  if (command == "up") return tandem::cli::UpCommand(args);
  std::cerr << "tandem: unknown command '" << command
            << "'\nRun `tandem --help` for the commands.\n";
  return tandem::cli::kExitUsage;
}
