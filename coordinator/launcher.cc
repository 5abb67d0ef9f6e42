#include "coordinator/launcher.h"

#include "coordinator/local_train.h"

namespace tandem {

absl::StatusOr<std::unique_ptr<Subprocess>> MpirunLauncher::Launch(
    int ranks, const std::vector<std::string>& worker_argv) {
  return Subprocess::Start(MpirunArgv(ranks, worker_argv), MpirunEnv());
}

}  // namespace tandem
