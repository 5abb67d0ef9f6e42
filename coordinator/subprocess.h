// Subprocess: a child process whose stdout we read line by line (its stderr
// goes where ours goes). Used to run one pool's mpirun and read its events.
// Not thread-safe; the destructor kills a child still running and reaps it.
#ifndef TANDEM_COORDINATOR_SUBPROCESS_H_
#define TANDEM_COORDINATOR_SUBPROCESS_H_

#include <sys/types.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem {

class Subprocess {
 public:
  // Starts argv[0] (looked up in PATH) with `env` added to our environment.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(
      const std::vector<std::string>& argv,
      const std::vector<std::pair<std::string, std::string>>& env = {});

  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  // The next line of the child's stdout without its newline; nullopt at end
  // of stream (the child closed stdout or exited). Blocks until then.
  std::optional<std::string> ReadLine();

  // Waits for the child to exit. Returns its exit code, or 128 + the signal
  // that killed it, as a shell reports it.
  absl::StatusOr<int> Wait();

  void Kill(int signal);
  pid_t pid() const { return pid_; }

 private:
  Subprocess(pid_t pid, FILE* out) : pid_(pid), out_(out) {}

  pid_t pid_;
  FILE* out_;
  std::optional<int> exit_code_;
};

}  // namespace tandem

#endif  // TANDEM_COORDINATOR_SUBPROCESS_H_
