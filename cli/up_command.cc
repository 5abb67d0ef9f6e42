// `tandem up`: two clouds on this machine. Starts a coordinator, optionally a
// WAN proxy in front of each cloud, and the agents of "cloud-a" and
// "cloud-b" as child processes; waits until the agents are registered;
// publishes the coordinator's address in HOME/coordinator for the CLI; then
// waits for SIGINT/SIGTERM (or a child that dies) and stops everything in
// order: agents (they stop their worker groups), proxies, coordinator.
//
// Each child runs in a process group of its own, so that a terminal's Ctrl-C
// reaches only `up`, which then stops the children in that order, and so that
// whatever a child leaves behind (mpirun, workers) can be killed as a group.
// Each child also gets SIGTERM if `up` itself dies (PR_SET_PDEATHSIG).
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "tandem/v1/coordinator.grpc.pb.h"
#include "transport/tls.h"

namespace tandem::cli {

namespace po = boost::program_options;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kClouds[] = {"cloud-a", "cloud-b"};
// How long each kind of child may take to exit after SIGTERM before SIGKILL.
// Agents stop their worker groups first (mpirun teardown).
constexpr std::chrono::seconds kAgentStopTimeout{20};
constexpr std::chrono::seconds kProxyStopTimeout{5};
constexpr std::chrono::seconds kCoordinatorStopTimeout{10};

struct UpOptions {
  std::string home;
  uint32_t port = 7440;
  uint32_t wan_port = 7451;
  uint32_t slots = 2;
  bool insecure = false;
  uint32_t wan_delay_ms = 0;
  double wan_rate_mbit = 0;
  double startup_timeout_s = 60;
  std::string sample_log_dir;  // test mode, passed to the agents
};

// A process `up` started. Its stdout and stderr go to log_path.
struct Child {
  std::string name;  // what messages call it: "coordinator", "agent cloud-a", "wan-proxy cloud-b"
  std::string log_path;
  pid_t pid = -1;
  std::optional<int> exit_code;  // set once reaped; 128 + signal if killed
};

std::string DefaultHome() {
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr && *home != '\0' ? home : ".") + "/.tandem";
}

// The stop signals and SIGCHLD, taken synchronously with sigtimedwait.
sigset_t WaitedSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGCHLD);
  return set;
}

// Waits up to `timeout` for one of WaitedSignals(); returns it, or 0.
int WaitSignal(std::chrono::milliseconds timeout) {
  const sigset_t set = WaitedSignals();
  if (timeout.count() < 0) timeout = std::chrono::milliseconds(0);
  timespec ts{static_cast<time_t>(timeout.count() / 1000),
              static_cast<long>(timeout.count() % 1000) * 1000000};
  const int signal = sigtimedwait(&set, nullptr, &ts);
  return signal > 0 ? signal : 0;
}

// Starts argv with stdout and stderr appended to child->log_path, stdin from
// /dev/null, in its own process group, with a clean signal mask and default
// handlers. Between fork and exec the child only makes async-signal-safe calls.
absl::Status Spawn(const std::vector<std::string>& argv, Child* child) {
  const int log = open(child->log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log < 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("cannot open %s: %s", child->log_path, std::strerror(errno)));
  }
  const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  // exec failures come back through this pipe; it closes on a successful exec.
  int status_pipe[2];
  if (devnull < 0 || pipe2(status_pipe, O_CLOEXEC) != 0) {
    const int error = errno;
    close(log);
    if (devnull >= 0) close(devnull);
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(error)));
  }
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (std::string& s : args) argp.push_back(s.data());
  argp.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // `up` died before prctl
    dup2(devnull, STDIN_FILENO);
    dup2(log, STDOUT_FILENO);
    dup2(log, STDERR_FILENO);
    for (int signal = 1; signal < NSIG; ++signal) ::signal(signal, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(argp[0], argp.data());
    const int error = errno;
    (void)!write(status_pipe[1], &error, sizeof(error));
    _exit(127);
  }
  const int fork_error = errno;
  close(log);
  close(devnull);
  close(status_pipe[1]);
  if (pid < 0) {
    close(status_pipe[0]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(fork_error)));
  }
  // Also set from here, so that the group exists whichever of us runs first.
  setpgid(pid, pid);
  child->pid = pid;
  int exec_error = 0;
  ssize_t n;
  do {
    n = read(status_pipe[0], &exec_error, sizeof(exec_error));
  } while (n < 0 && errno == EINTR);
  close(status_pipe[0]);
  if (n == sizeof(exec_error)) {
    waitpid(pid, nullptr, 0);
    child->exit_code = 127;
    return absl::FailedPreconditionError(
        absl::StrFormat("cannot start %s: %s", argv[0], std::strerror(exec_error)));
  }
  return absl::OkStatus();
}

// Reaps the child if it has exited; true if it has.
bool Reap(Child& child) {
  if (child.exit_code.has_value()) return true;
  if (child.pid <= 0) return false;
  int status = 0;
  const pid_t r = waitpid(child.pid, &status, WNOHANG);
  if (r != child.pid) return false;
  child.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return true;
}

std::string ExitDescription(int code) {
  if (code > 128)
    return absl::StrFormat("was killed by signal %d (%s)", code - 128, strsignal(code - 128));
  return absl::StrFormat("exited with code %d", code);
}

// The last `lines` lines of a log file, indented.
std::string LogTail(const std::string& path, size_t lines = 20) {
  std::ifstream in(path);
  std::deque<std::string> tail;
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (tail.size() > lines) tail.pop_front();
  }
  std::string text;
  for (const std::string& l : tail) absl::StrAppend(&text, "    ", l, "\n");
  return text.empty() ? "    (empty)\n" : text;
}

// The value after `prefix` on the first line of the log that starts with it.
std::optional<std::string> FindLogLine(const std::string& path, const std::string& prefix) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) return line.substr(prefix.size());
  }
  return std::nullopt;
}

// Binds 127.0.0.1:port (0: any free port) and lets go; returns the port.
// Without SO_REUSEPORT this fails on a port that anything listens on, even a
// gRPC server (which sets SO_REUSEPORT, so a second one would share the port
// silently).
absl::StatusOr<uint32_t> ProbeLoopbackPort(uint32_t port = 0) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  socklen_t length = sizeof(address);
  if (port != 0 && bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    const int error = errno;
    close(fd);
    return absl::FailedPreconditionError(absl::StrFormat(
        "127.0.0.1:%d is %s", port, error == EADDRINUSE ? "in use" : std::strerror(error)));
  }
  if (port != 0) {
    close(fd);
    return port;
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const int error = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("cannot find a free port: ", std::strerror(error)));
  }
  close(fd);
  return ntohs(address.sin_port);
}

// Runs the processes; not thread-safe (one per `tandem up`).
class Up {
 public:
  explicit Up(UpOptions options) : options_(std::move(options)) {}

  int Run();

 private:
  // Why startup stopped early.
  enum class Abort { kNone, kSignal, kChildDied, kError };

  // Polls `ready` until it returns true, a child dies, a stop signal comes or
  // the startup deadline passes. `what` names what we wait for.
  Abort WaitUntil(const std::string& what, Child* responsible, const std::function<bool()>& ready);
  // Prints which child died (and its log's tail) if one did; true if so.
  bool ReportDeadChild();
  absl::Status StartChild(const std::string& name, const std::string& log_name,
                          const std::vector<std::string>& argv, Child* child);
  std::optional<std::vector<v1::PoolHealth>> ListPools();
  // Stops the children in order; false if one had to be killed or failed.
  bool Shutdown();
  bool Stop(std::vector<Child*> children, std::chrono::seconds timeout);
  void WriteAddressFile();
  void RemoveAddressFile();

  UpOptions options_;
  std::string logs_;
  std::string certs_;
  Child coordinator_;
  std::vector<Child> proxies_;
  std::vector<Child> agents_;
  std::string coordinator_address_;
  std::unique_ptr<v1::JobService::Stub> stub_;
  Clock::time_point deadline_;
  bool address_file_written_ = false;
};

absl::Status Up::StartChild(const std::string& name, const std::string& log_name,
                            const std::vector<std::string>& argv, Child* child) {
  child->name = name;
  child->log_path = logs_ + "/" + log_name + ".log";
  absl::Status status = Spawn(argv, child);
  if (!status.ok()) return status;
  std::cout << "started " << name << " (pid " << child->pid << "), log " << child->log_path
            << std::endl;
  return absl::OkStatus();
}

bool Up::ReportDeadChild() {
  std::vector<Child*> all = {&coordinator_};
  for (Child& c : proxies_) all.push_back(&c);
  for (Child& c : agents_) all.push_back(&c);
  for (Child* child : all) {
    if (child->pid > 0 && Reap(*child)) {
      std::cerr << "tandem up: " << child->name << " (pid " << child->pid << ") "
                << ExitDescription(*child->exit_code) << "; the end of " << child->log_path << ":\n"
                << LogTail(child->log_path);
      return true;
    }
  }
  return false;
}

Up::Abort Up::WaitUntil(const std::string& what, Child* responsible,
                        const std::function<bool()>& ready) {
  while (true) {
    if (ReportDeadChild()) return Abort::kChildDied;
    if (ready()) return Abort::kNone;
    const auto now = Clock::now();
    if (now >= deadline_) {
      std::cerr << absl::StrFormat(
          "tandem up: %s within %g s (--startup-timeout); the end of %s:\n%s", what,
          options_.startup_timeout_s, responsible->log_path, LogTail(responsible->log_path));
      return Abort::kError;
    }
    const auto wait = std::min<Clock::duration>(deadline_ - now, std::chrono::milliseconds(100));
    const int signal = WaitSignal(std::chrono::duration_cast<std::chrono::milliseconds>(wait));
    if (signal == SIGINT || signal == SIGTERM) {
      std::cerr << "tandem up: stopped by signal " << signal << " while starting\n";
      return Abort::kSignal;
    }
  }
}

std::optional<std::vector<v1::PoolHealth>> Up::ListPools() {
  grpc::ClientContext context;
  const auto remaining = deadline_ - Clock::now();
  context.set_deadline(std::chrono::system_clock::now() +
                       std::clamp<Clock::duration>(remaining, std::chrono::milliseconds(1),
                                                   std::chrono::seconds(2)));
  v1::ListPoolsResponse response;
  if (!stub_->ListPools(&context, v1::ListPoolsRequest(), &response).ok()) return std::nullopt;
  return std::vector<v1::PoolHealth>(response.pools().begin(), response.pools().end());
}

bool Up::Stop(std::vector<Child*> all, std::chrono::seconds timeout) {
  // Those that already exited were reported when they did.
  std::vector<Child*> children;
  for (Child* child : all) {
    if (!child->exit_code.has_value()) children.push_back(child);
  }
  bool clean = true;
  for (Child* child : children) {
    if (!Reap(*child)) kill(child->pid, SIGTERM);
  }
  const auto deadline = Clock::now() + timeout;
  bool killed = false;
  while (true) {
    bool all_done = true;
    for (Child* child : children) all_done &= Reap(*child);
    if (all_done) break;
    const auto now = Clock::now();
    if (now >= deadline && !killed) {
      for (Child* child : children) {
        if (Reap(*child)) continue;
        std::cerr << absl::StrFormat(
            "tandem up: %s (pid %d) did not exit within %d s; killing it\n", child->name,
            child->pid, timeout.count());
        kill(-child->pid, SIGKILL);
        kill(child->pid, SIGKILL);
      }
      killed = true;
      clean = false;
    }
    const int signal = WaitSignal(std::chrono::milliseconds(100));
    if ((signal == SIGINT || signal == SIGTERM) && !killed) {
      std::cerr << "tandem up: signal " << signal << " again: killing the rest\n";
      for (Child* child : children) {
        if (Reap(*child)) continue;
        kill(-child->pid, SIGKILL);
        kill(child->pid, SIGKILL);
      }
      killed = true;
      clean = false;
    }
  }
  for (Child* child : all) {
    // What the child left in its group (mpirun, workers) goes with it.
    if (kill(-child->pid, 0) == 0) {
      std::cerr << "tandem up: " << child->name << " left processes behind; killing them\n";
      kill(-child->pid, SIGKILL);
      clean = false;
    }
  }
  for (Child* child : children) {
    if (*child->exit_code != 0 && !killed) {
      std::cerr << "tandem up: " << child->name << " " << ExitDescription(*child->exit_code)
                << " while stopping; see " << child->log_path << "\n";
      clean = false;
    }
  }
  return clean;
}

bool Up::Shutdown() {
  RemoveAddressFile();
  auto started = [](std::vector<Child>& children) {
    std::vector<Child*> result;
    for (Child& c : children) {
      if (c.pid > 0) result.push_back(&c);
    }
    return result;
  };
  bool clean = Stop(started(agents_), kAgentStopTimeout);
  clean &= Stop(started(proxies_), kProxyStopTimeout);
  if (coordinator_.pid > 0) clean &= Stop({&coordinator_}, kCoordinatorStopTimeout);
  return clean;
}

void Up::WriteAddressFile() {
  const std::string path = options_.home + "/coordinator";
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << coordinator_address_ << "\n";
  }
  fs::rename(temporary, path);
  address_file_written_ = true;
}

void Up::RemoveAddressFile() {
  if (!address_file_written_) return;
  std::error_code error;
  fs::remove(options_.home + "/coordinator", error);
  address_file_written_ = false;
}

int Up::Run() {
  const std::string self = SelfExecutable();
  const std::string proxy_binary = (fs::path(self).parent_path() / "tandem-wan-proxy").string();
  const bool emulate_wan = options_.wan_delay_ms > 0 || options_.wan_rate_mbit > 0;
  if (emulate_wan && access(proxy_binary.c_str(), X_OK) != 0) {
    std::cerr << "tandem up: --wan-delay/--wan-rate need " << proxy_binary
              << ", which is missing (build the tandem-wan-proxy target)\n";
    return kExitFailed;
  }
  logs_ = options_.home + "/logs";
  certs_ = options_.home + "/certs";
  const std::string state = options_.home + "/coordinator-state";
  std::error_code error;
  for (const std::string& dir :
       {options_.home, logs_, state, options_.home + "/cloud-a", options_.home + "/cloud-b"}) {
    fs::create_directories(dir, error);
    if (error) {
      std::cerr << "tandem up: cannot create " << dir << ": " << error.message() << "\n";
      return kExitFailed;
    }
  }
  if (fs::exists(options_.home + "/coordinator") &&
      !fs::is_regular_file(options_.home + "/coordinator")) {
    std::cerr << "tandem up: " << options_.home
              << "/coordinator is not a file; move it away (up writes the coordinator's "
                 "address there)\n";
    return kExitFailed;
  }

  std::vector<std::string> security = {"--insecure"};
  if (!options_.insecure) {
    security = {"--certs", certs_};
    bool complete = true;
    for (const char* file : {kTlsCaCertFile, kTlsCertFile, kTlsKeyFile}) {
      complete &= fs::exists(fs::path(certs_) / file);
    }
    if (!complete)
      std::cout << "creating TLS certificates in " << certs_ << " (tandem certs init)\n";
    absl::Status status = CreateCertificates(certs_, {"localhost", "127.0.0.1", "::1"});
    if (!status.ok()) {
      std::cerr << "tandem up: TLS certificates in " << certs_ << ": " << status.message()
                << " (fix or remove that folder, or pass --insecure)\n";
      return kExitFailed;
    }
  }

  // WAN ports: cloud i's leaders listen on wan_port + i; its proxy on
  // wan_port + 10 + i with its control socket on wan_port + 20 + i; its
  // agent serves checkpoint replication on wan_port + 30 + i.
  // Fixed ports are checked first: another `tandem up` most likely holds them.
  std::vector<uint32_t> fixed_ports;
  if (options_.port != 0) fixed_ports.push_back(options_.port);
  for (size_t i = 0; options_.wan_port != 0 && i < std::size(kClouds); ++i) {
    fixed_ports.push_back(options_.wan_port + i);
    fixed_ports.push_back(options_.wan_port + 30 + i);
    if (emulate_wan) {
      fixed_ports.push_back(options_.wan_port + 10 + i);
      fixed_ports.push_back(options_.wan_port + 20 + i);
    }
  }
  for (uint32_t port : fixed_ports) {
    absl::StatusOr<uint32_t> probe = ProbeLoopbackPort(port);
    if (!probe.ok()) {
      std::cerr << "tandem up: " << probe.status().message()
                << " (another `tandem up`? pass other --port / --wan-port, or 0 for any free "
                   "ports)\n";
      return kExitFailed;
    }
  }
  std::vector<uint32_t> wan_ports;
  std::vector<uint32_t> replication_ports;
  for (size_t i = 0; i < std::size(kClouds); ++i) {
    if (options_.wan_port != 0) {
      wan_ports.push_back(options_.wan_port + i);
      replication_ports.push_back(options_.wan_port + 30 + i);
      continue;
    }
    for (std::vector<uint32_t>* ports : {&wan_ports, &replication_ports}) {
      absl::StatusOr<uint32_t> port = ProbeLoopbackPort();
      if (!port.ok()) {
        std::cerr << "tandem up: " << port.status().message() << "\n";
        return kExitFailed;
      }
      ports->push_back(*port);
    }
  }

  deadline_ = Clock::now() +
              std::chrono::milliseconds(static_cast<int64_t>(options_.startup_timeout_s * 1000));
  auto fail = [this](Abort abort) {
    const bool clean = Shutdown();
    if (abort == Abort::kSignal && clean) return kExitOk;
    return kExitFailed;
  };

  // The coordinator.
  absl::Status status = StartChild(
      "coordinator", "coordinator",
      [&] {
        std::vector<std::string> argv = {self,       "coordinator",
                                         "--listen", absl::StrCat("127.0.0.1:", options_.port),
                                         "--state",  state};
        argv.insert(argv.end(), security.begin(), security.end());
        return argv;
      }(),
      &coordinator_);
  if (!status.ok()) {
    std::cerr << "tandem up: the coordinator: " << status.message() << "\n";
    return fail(Abort::kError);
  }
  Abort abort = WaitUntil("the coordinator did not print its address", &coordinator_, [&] {
    std::optional<std::string> address = FindLogLine(coordinator_.log_path, "listening on ");
    if (address.has_value()) coordinator_address_ = *address;
    return address.has_value();
  });
  if (abort != Abort::kNone) return fail(abort);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options_.insecure) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> tls = ChannelCredentials(certs_);
    if (!tls.ok()) {
      std::cerr << "tandem up: TLS certificates in " << certs_ << ": " << tls.status().message()
                << "\n";
      return fail(Abort::kError);
    }
    credentials = *tls;
  }
  stub_ = v1::JobService::NewStub(grpc::CreateChannel(coordinator_address_, credentials));
  abort = WaitUntil("the coordinator did not answer at " + coordinator_address_, &coordinator_,
                    [&] { return ListPools().has_value(); });
  if (abort != Abort::kNone) return fail(abort);
  std::cout << absl::StrFormat("coordinator      pid %-7d %s  state %s\n", coordinator_.pid,
                               coordinator_address_, state);

  // The WAN proxies, one in front of each cloud's leaders.
  std::vector<std::string> advertise;
  for (size_t i = 0; i < std::size(kClouds); ++i) {
    advertise.push_back(absl::StrCat("127.0.0.1:", wan_ports[i]));
  }
  proxies_.resize(emulate_wan ? std::size(kClouds) : 0);
  for (size_t i = 0; i < proxies_.size(); ++i) {
    const uint32_t base = options_.wan_port;
    std::vector<std::string> argv = {proxy_binary,
                                     "--listen",
                                     absl::StrCat("127.0.0.1:", base == 0 ? 0 : base + 10 + i),
                                     "--target",
                                     advertise[i],
                                     "--control",
                                     absl::StrCat("127.0.0.1:", base == 0 ? 0 : base + 20 + i),
                                     "--delay-ms",
                                     absl::StrCat(options_.wan_delay_ms),
                                     "--rate-mbit",
                                     absl::StrCat(options_.wan_rate_mbit)};
    if (options_.wan_rate_mbit > 0 && options_.wan_delay_ms > 0) {
      // At most this many bytes in flight per direction: twice the
      // bandwidth-delay product, so that the rate and not the buffer limits.
      const double bdp = options_.wan_rate_mbit * 1e6 / 8 * options_.wan_delay_ms / 1000;
      argv.push_back("--buffer-bytes");
      argv.push_back(absl::StrCat(std::max<uint64_t>(4 << 20, static_cast<uint64_t>(2 * bdp))));
    }
    status = StartChild(absl::StrCat("wan-proxy ", kClouds[i]),
                        absl::StrCat("wan-proxy-", kClouds[i]), argv, &proxies_[i]);
    if (!status.ok()) {
      std::cerr << "tandem up: the WAN proxy of " << kClouds[i] << ": " << status.message() << "\n";
      return fail(Abort::kError);
    }
  }
  std::vector<std::string> controls(proxies_.size());
  for (size_t i = 0; i < proxies_.size(); ++i) {
    abort = WaitUntil(proxies_[i].name + " did not print its addresses", &proxies_[i], [&] {
      std::optional<std::string> listen = FindLogLine(proxies_[i].log_path, "listening on ");
      std::optional<std::string> control = FindLogLine(proxies_[i].log_path, "control on ");
      if (!listen.has_value() || !control.has_value()) return false;
      advertise[i] = *listen;
      controls[i] = *control;
      return true;
    });
    if (abort != Abort::kNone) return fail(abort);
    std::cout << absl::StrFormat(
        "wan-proxy %-7s pid %-7d %s -> 127.0.0.1:%d  delay %d ms  rate %s  control %s\n",
        kClouds[i], proxies_[i].pid, advertise[i], wan_ports[i], options_.wan_delay_ms,
        options_.wan_rate_mbit > 0 ? absl::StrCat(options_.wan_rate_mbit, " Mbit/s") : "unlimited",
        controls[i]);
  }

  // The agents.
  const int64_t agents_started_ms = absl::ToUnixMillis(absl::Now());
  agents_.resize(std::size(kClouds));
  for (size_t i = 0; i < agents_.size(); ++i) {
    std::vector<std::string> argv = {self,
                                     "agent",
                                     "--cloud",
                                     kClouds[i],
                                     "--coordinator",
                                     coordinator_address_,
                                     "--store",
                                     options_.home + "/" + kClouds[i],
                                     "--slots",
                                     absl::StrCat(options_.slots),
                                     "--wan-listen",
                                     absl::StrCat("127.0.0.1:", wan_ports[i]),
                                     "--wan-advertise",
                                     advertise[i],
                                     "--replication-listen",
                                     absl::StrCat("127.0.0.1:", replication_ports[i])};
    if (!options_.sample_log_dir.empty()) {
      argv.insert(argv.end(), {"--sample-log", options_.sample_log_dir});
    }
    argv.insert(argv.end(), security.begin(), security.end());
    status = StartChild(absl::StrCat("agent ", kClouds[i]), absl::StrCat("agent-", kClouds[i]),
                        argv, &agents_[i]);
    if (!status.ok()) {
      std::cerr << "tandem up: agent " << kClouds[i] << ": " << status.message() << "\n";
      return fail(Abort::kError);
    }
  }
  for (size_t i = 0; i < agents_.size(); ++i) {
    // A pool recovered from an earlier run's state may still look alive: only
    // a heartbeat since this agent started counts.
    abort = WaitUntil(absl::StrCat("agent ", kClouds[i], " did not register with the coordinator"),
                      &agents_[i], [&] {
                        std::optional<std::vector<v1::PoolHealth>> pools = ListPools();
                        if (!pools.has_value()) return false;
                        for (const v1::PoolHealth& pool : *pools) {
                          if (pool.pool().cloud() == kClouds[i] && pool.alive() &&
                              pool.last_heartbeat_unix_ms() >= agents_started_ms) {
                            return true;
                          }
                        }
                        return false;
                      });
    if (abort != Abort::kNone) return fail(abort);
    std::cout << absl::StrFormat(
        "agent %-10s pid %-7d %d slots  wan 127.0.0.1:%d%s  store %s/%s\n", kClouds[i],
        agents_[i].pid, options_.slots, wan_ports[i],
        emulate_wan ? absl::StrCat(" (reached via ", advertise[i], ")") : "", options_.home,
        kClouds[i]);
  }

  WriteAddressFile();
  const bool default_home = options_.home == DefaultHome();
  std::string client_flags;
  if (options_.insecure) {
    client_flags = " --insecure";
  } else if (!default_home) {
    client_flags = " --certs " + certs_;
  }
  if (!default_home) client_flags = " --coordinator " + coordinator_address_ + client_flags;
  std::cout << "\nready: coordinator at " << coordinator_address_ << " (written to "
            << options_.home << "/coordinator)\n"
            << "  submit a job:   tandem submit" << client_flags
            << " examples/fashion-mnist-two-clouds.yaml\n"
            << "  follow it:      tandem status" << client_flags << " --watch JOB\n"
            << "  logs:           " << logs_ << "/*.log (each process's stdout and stderr)\n";
  for (size_t i = 0; i < controls.size(); ++i) {
    const size_t colon = controls[i].rfind(':');
    std::cout << "  cut the WAN into " << kClouds[i] << ": echo 'partition on' | nc -q1 "
              << controls[i].substr(0, colon) << " " << controls[i].substr(colon + 1)
              << "   (also: partition off, stats, delay MS, rate MBIT)\n";
  }
  std::cout << "Ctrl-C (SIGINT) or SIGTERM stops everything." << std::endl;

  while (true) {
    const int signal = WaitSignal(std::chrono::seconds(1));
    if (signal == SIGINT || signal == SIGTERM) {
      std::cout << "stopping (signal " << signal << ")" << std::endl;
      if (!Shutdown()) return kExitFailed;
      std::cout << "stopped" << std::endl;
      return kExitOk;
    }
    // SIGCHLD, or a periodic check in case one was merged with another.
    if (ReportDeadChild()) {
      std::cerr << "tandem up: stopping the other processes\n";
      Shutdown();
      return kExitFailed;
    }
  }
}

}  // namespace

int UpCommand(const std::vector<std::string>& args) {
  UpOptions options;
  po::options_description flags(
      R"(Usage: tandem up [--home DIR] [--port P] [--slots N] [--insecure]
                 [--wan-delay MS] [--wan-rate MBIT] [--wan-port P]

Runs two clouds on this machine until SIGINT (Ctrl-C) or SIGTERM: a
coordinator on 127.0.0.1:--port (state in HOME/coordinator-state) and the
agents of cloud-a and cloud-b (checkpoint stores in HOME/cloud-a and
HOME/cloud-b, --slots worker ranks each). cloud-a's pool leaders accept the
other cloud's gradient streams on 127.0.0.1:--wan-port, cloud-b's on
--wan-port + 1; their agents serve checkpoint copies (migrations, export) on
--wan-port + 30 and + 31.

With --wan-delay or --wan-rate, every byte between the clouds crosses a
tandem-wan-proxy: one in front of each cloud's leaders (on --wan-port + 10
and + 11; the other cloud dials it) that adds the delay and limits the rate
in each direction. Each proxy's line-based control socket (--wan-port + 20
and + 21) takes `partition on|off`, `stats`, `delay MS`, `rate MBIT`; e.g.
`echo 'partition on' | nc -q1 127.0.0.1 7471` cuts the connections into
cloud-a. The fixed ports must be free (exit 1 otherwise); --port 0 and
--wan-port 0 pick free ones, printed at start.

Mutual TLS everywhere unless --insecure; the material in HOME/certs is created
first if it is missing (as `tandem certs init HOME/certs` does).

Once both agents are registered, writes the coordinator's address to
HOME/coordinator (where `tandem submit`, `status` etc. look for it; removed on
exit) and prints how to submit a job. Each process's stdout and stderr go to
HOME/logs/NAME.log. On SIGINT or SIGTERM it stops the agents (they stop their
worker groups), then the proxies, then the coordinator, killing any that does
not exit in time; a second signal kills them at once.

Exit codes: 0 stopped by a signal, everything exited cleanly; 1 a process
failed to start, did not become ready within --startup-timeout, died while up
ran (up names it and prints the end of its log, then stops the others), or had
to be killed; 2 usage error.

Options)");
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("home", po::value(&options.home)->default_value(DefaultHome())->value_name("DIR"),
       "folder for state, stores, certificates, logs and the address file")
      ("port", po::value(&options.port)->default_value(options.port)->value_name("P"),
       "the coordinator's port on 127.0.0.1 (0: any free port)")
      ("slots", po::value(&options.slots)->default_value(options.slots)->value_name("N"),
       "worker ranks each cloud may run at once")
      ("insecure", po::bool_switch(&options.insecure), "plaintext instead of mutual TLS")
      ("wan-delay", po::value(&options.wan_delay_ms)->default_value(0)->value_name("MS"),
       "one-way delay added between the clouds (each direction), in milliseconds")
      ("wan-rate", po::value(&options.wan_rate_mbit)->default_value(0)->value_name("MBIT"),
       "bandwidth between the clouds per direction, in Mbit/s (0: unlimited)")
      ("sample-log", po::value(&options.sample_log_dir)->value_name("DIR"),
       "test mode: the workers log the sample ids of every step to files here")
      ("wan-port", po::value(&options.wan_port)->default_value(options.wan_port)->value_name("P"),
       "first of the clouds' WAN ports, see above (0: any free ports)")
      ("startup-timeout",
       po::value(&options.startup_timeout_s)->default_value(options.startup_timeout_s)
           ->value_name("SECONDS"),
       "give up (exit 1) if the processes are not ready within this time");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("up", args, flags, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  auto usage = [](const std::string& message) {
    std::cerr << "tandem up: " << message << "\nRun `tandem up --help` for the options.\n";
    return kExitUsage;
  };
  if (options.home.empty()) return usage("--home must not be empty");
  if (options.port > 65535) return usage("--port must be at most 65535");
  if (options.wan_port > 65535 - 31) return usage("--wan-port must be at most 65504");
  if (options.slots == 0) return usage("--slots must be at least 1");
  if (!(options.wan_rate_mbit >= 0)) return usage("--wan-rate must not be negative");
  if (!(options.startup_timeout_s > 0)) return usage("--startup-timeout must be positive");
  options.home = fs::absolute(options.home).lexically_normal().string();
  if (options.home.size() > 1 && options.home.back() == '/') options.home.pop_back();

  // Blocked before any thread starts (gRPC's inherit the mask), and taken
  // with sigtimedwait. The children get a clean mask (Spawn).
  const sigset_t signals = WaitedSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return Up(std::move(options)).Run();
}

}  // namespace tandem::cli
