// Test support: CPU scarcity, made by the kernel rather than simulated.
//
// CpuQuota: a cgroup of its own with a CPU bandwidth quota (cgroup v2
// `cpu.max`, or v1 `cpu.cfs_quota_us` where the cpu controller is mounted as
// v1), for starving a cloud's processes: a process added before it starts
// children keeps them in the cgroup. The destructor moves whatever is left
// back to the root cgroup and removes it.
//
// CpuHog: busy-looping child processes, one per core asked for, killed and
// reaped by the destructor.
#ifndef TANDEM_TESTS_SUPPORT_CPU_LIMITS_H_
#define TANDEM_TESTS_SUPPORT_CPU_LIMITS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem::testing {

class CpuQuota {
 public:
  // FailedPrecondition (saying what is missing) where no cpu controller can
  // be used: not root, or no cgroup file system.
  static absl::StatusOr<std::unique_ptr<CpuQuota>> Create(const std::string& name);
  ~CpuQuota();
  CpuQuota(const CpuQuota&) = delete;
  CpuQuota& operator=(const CpuQuota&) = delete;

  absl::Status Add(pid_t pid);
  // The processes in the cgroup get at most `percent` of one CPU in all
  // (100 ms periods); 0 lifts the limit.
  absl::Status Limit(int percent);
  const std::string& path() const { return path_; }

 private:
  CpuQuota(std::string path, std::string root, bool v2)
      : path_(std::move(path)), root_(std::move(root)), v2_(v2) {}
  std::string path_;
  std::string root_;
  bool v2_;
};

class CpuHog {
 public:
  explicit CpuHog(int processes);
  ~CpuHog();
  CpuHog(const CpuHog&) = delete;
  CpuHog& operator=(const CpuHog&) = delete;

 private:
  std::vector<pid_t> pids_;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_CPU_LIMITS_H_
