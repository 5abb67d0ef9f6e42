// `tandem coordinator`: the control plane. Serves JobService, AgentService,
// PlanService and grpc.health.v1 until SIGINT or SIGTERM, with its state in
// its own RocksDB.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <boost/program_options.hpp>
#include <iostream>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "coordinator/coordinator_server.h"
#include "transport/tls.h"

namespace tandem::cli {

namespace po = boost::program_options;

namespace {

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  return name.rfind("JOB_STATE_", 0) == 0 ? name.substr(10) : name;
}

}  // namespace

int CoordinatorCommand(const std::vector<std::string>& args) {
  CoordinatorOptions options;
  std::string certs;
  bool insecure = false;
  po::options_description flags(
      R"(Usage: tandem coordinator --state DIR [--listen ADDR] [--certs DIR | --insecure]
                         [--lease-ttl-ms N]

Runs the control plane until SIGINT or SIGTERM (then exits 0): the job service
for the CLI, the agent service for the per-cloud agents (leases, assignments,
reports), the plan service for pool leaders, and grpc.health.v1. Its state
(jobs, events, logs, checkpoint lists, registered clouds and their lease ids)
lives in a RocksDB at --state; a restarted coordinator recovers all of it, and
agents keep their leases if they heartbeat within 2 x the lease ttl (at least
10 s) of its start. Only one
coordinator may use a state dir at a time (exit 1 otherwise).

Prints `listening on HOST:PORT` once it accepts connections (useful with port
0) and one line per job state transition on stderr.

Options)");
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("state", po::value(&options.state_dir)->value_name("DIR"),
       "folder of the coordinator's RocksDB (created if missing)")
      ("listen", po::value(&options.listen)->default_value("127.0.0.1:7440"),
       "HOST:PORT to listen on (port 0: any free port)")
      ("certs", po::value(&certs)->default_value(DefaultCertsDir()),
       "TLS material from `tandem certs init` (mutual TLS)")
      ("insecure", po::bool_switch(&insecure), "plaintext instead of mutual TLS")
      ("lease-ttl-ms", po::value(&options.lease_ttl_ms)->default_value(3000),
       "a cloud whose agent has not heartbeat for this long is lost");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("coordinator", args, flags, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  if (options.state_dir.empty()) {
    std::cerr << "tandem coordinator: --state DIR is required\nRun `tandem coordinator --help` "
                 "for the options.\n";
    return kExitUsage;
  }
  if (options.lease_ttl_ms == 0) {
    std::cerr << "tandem coordinator: --lease-ttl-ms must be at least 1\n";
    return kExitUsage;
  }
  if (vm.count("certs") && !vm["certs"].defaulted() && insecure) {
    std::cerr << "tandem coordinator: pass either --certs or --insecure, not both\n";
    return kExitUsage;
  }
  if (!insecure) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tls = ServerCredentials(certs);
    if (!tls.ok()) {
      std::cerr << "tandem coordinator: " << tls.status().message()
                << " (run `tandem certs init`, or pass --insecure)\n";
      return kExitFailed;
    }
    options.credentials = *tls;
  }
  options.on_event = [](const std::string& job_id, const v1::JobEvent& event) {
    std::cerr << absl::StrFormat(
        "%s %s %s -> %s: %s%s\n",
        absl::FormatTime("%Y-%m-%dT%H:%M:%E3S", absl::FromUnixMillis(event.time_unix_ms()),
                         absl::LocalTimeZone()),
        job_id, StateName(event.from()), StateName(event.to()), event.reason(),
        event.step() > 0 ? absl::StrFormat(" (step %d)", event.step()) : "");
  };
  // Signals are taken synchronously by sigwait below, so they must be blocked
  // before gRPC starts its threads (which inherit the mask).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // Abseil built without NDEBUG (as Debian's is) checks the lock order on
  // every Mutex lock, gRPC's included, under one global lock (GraphCycles in
  // the profile of coordinator_load_bench). The tests keep the check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(options);
  if (!server.ok()) {
    std::cerr << "tandem coordinator: " << server.status().message() << "\n";
    return kExitFailed;
  }
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  std::cout << "listening on " << host << ":" << (*server)->port() << std::endl;
  int signal = 0;
  sigwait(&stop_signals, &signal);
  (*server)->Shutdown();
  std::cerr << "tandem coordinator: stopped by signal " << signal << "\n";
  return kExitOk;
}

}  // namespace tandem::cli
