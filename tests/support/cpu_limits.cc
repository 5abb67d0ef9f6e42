#include "tests/support/cpu_limits.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace tandem::testing {
namespace {

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.flush();
  if (!out) return absl::InternalError(absl::StrCat("cannot write \"", text, "\" to ", path));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuQuota>> CpuQuota::Create(const std::string& name) {
  namespace fs = std::filesystem;
  if (geteuid() != 0) return absl::FailedPreconditionError("CpuQuota needs root for cgroups");
  std::string root;
  bool v2 = false;
  if (fs::exists("/sys/fs/cgroup/cgroup.controllers")) {
    std::ifstream in("/sys/fs/cgroup/cgroup.controllers");
    std::string controllers((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (controllers.find("cpu") == std::string::npos) {
      return absl::FailedPreconditionError("cgroup v2 without the cpu controller");
    }
    root = "/sys/fs/cgroup";
    v2 = true;
    // Children of the root get the cpu controller only when it is enabled.
    (void)WriteFile(root + "/cgroup.subtree_control", "+cpu");
  } else if (fs::exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")) {
    root = "/sys/fs/cgroup/cpu";
  } else {
    return absl::FailedPreconditionError(
        "no cgroup cpu controller under /sys/fs/cgroup (neither v2 nor v1)");
  }
  const std::string path = absl::StrCat(root, "/", name, "-", getpid());
  std::error_code error;
  fs::create_directory(path, error);
  if (error) return absl::InternalError(absl::StrCat("mkdir ", path, ": ", error.message()));
  return std::unique_ptr<CpuQuota>(new CpuQuota(path, root, v2));
}

CpuQuota::~CpuQuota() {
  std::ifstream in(path_ + "/cgroup.procs");
  std::string pid;
  while (in >> pid) (void)WriteFile(root_ + "/cgroup.procs", pid);
  std::error_code error;
  std::filesystem::remove(path_, error);
}

absl::Status CpuQuota::Add(pid_t pid) {
  return WriteFile(path_ + "/cgroup.procs", std::to_string(pid));
}

absl::Status CpuQuota::Limit(int percent) {
  const int period_us = 100000;
  if (v2_) {
    return WriteFile(path_ + "/cpu.max",
                     percent == 0 ? "max 100000" : absl::StrCat(period_us * percent / 100, " ",
                                                                period_us));
  }
  absl::Status status = WriteFile(path_ + "/cpu.cfs_period_us", std::to_string(period_us));
  if (!status.ok()) return status;
  return WriteFile(path_ + "/cpu.cfs_quota_us",
                   percent == 0 ? "-1" : std::to_string(period_us * percent / 100));
}

CpuHog::CpuHog(int processes) {
  for (int i = 0; i < processes; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      volatile uint64_t spin = 0;
      while (true) ++spin;
    }
    if (pid > 0) pids_.push_back(pid);
  }
}

CpuHog::~CpuHog() {
  for (pid_t pid : pids_) kill(pid, SIGKILL);
  for (pid_t pid : pids_) waitpid(pid, nullptr, 0);
}

}  // namespace tandem::testing
