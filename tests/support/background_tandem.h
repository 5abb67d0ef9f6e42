// Test support: a `tandem` process that runs in the background (a
// coordinator, an agent) in a process group of its own, so that a test can
// kill it together with everything it started (mpirun, the workers), as a
// lost machine would vanish. Its stdout and stderr go to a log file the test
// prints when something fails.
#ifndef TANDEM_TESTS_SUPPORT_BACKGROUND_TANDEM_H_
#define TANDEM_TESTS_SUPPORT_BACKGROUND_TANDEM_H_

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace tandem::testing {

class BackgroundTandem {
 public:
  // Starts TandemBinary() with `args`; output appended to `log_path`.
  BackgroundTandem(const std::vector<std::string>& args, std::string log_path);
  ~BackgroundTandem();  // SIGKILLs the group if still running, and reaps
  BackgroundTandem(const BackgroundTandem&) = delete;
  BackgroundTandem& operator=(const BackgroundTandem&) = delete;

  // Sends `signal` to the whole process group.
  void SignalGroup(int signal);
  // Sends `signal` to the process and every descendant (mpirun puts each
  // rank in a process group of its own, so a group signal misses them). The
  // tree is collected first, so a SIGKILL reaches children being orphaned.
  void SignalTree(int signal);
  // Waits for the process to exit; its exit code (128 + signal if killed),
  // or nullopt if it is still running after `timeout`.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  pid_t pid() const { return pid_; }
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  int pidfd_ = -1;
  std::optional<int> exit_code_;
  std::string log_path_;
};

// `root` and its descendants, from /proc.
std::vector<pid_t> ProcessTree(pid_t root);

// A TCP port on 127.0.0.1 that nothing listens on right now.
int FreeLoopbackPort();

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_BACKGROUND_TANDEM_H_
