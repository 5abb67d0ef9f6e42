// Launcher: how an agent starts one pool's worker group (N ranks of
// `tandem worker`) on its cloud. MpirunLauncher runs mpirun on this machine;
// a Slurm launcher (`srun --mpi=pmix`) is the next one.
#ifndef TANDEM_COORDINATOR_LAUNCHER_H_
#define TANDEM_COORDINATOR_LAUNCHER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/subprocess.h"

namespace tandem {

class Launcher {
 public:
  virtual ~Launcher() = default;
  // Starts `ranks` processes running `worker_argv` as one MPI job. The
  // returned process stands for the whole group: its stdout carries rank 0's
  // events, its exit is the group's, killing it ends the group.
  virtual absl::StatusOr<std::unique_ptr<Subprocess>> Launch(
      int ranks, const std::vector<std::string>& worker_argv) = 0;
  virtual std::string name() const = 0;
};

class MpirunLauncher final : public Launcher {
 public:
  absl::StatusOr<std::unique_ptr<Subprocess>> Launch(
      int ranks, const std::vector<std::string>& worker_argv) override;
  std::string name() const override { return "mpirun"; }
};

}  // namespace tandem

#endif  // TANDEM_COORDINATOR_LAUNCHER_H_
