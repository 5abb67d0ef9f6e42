// `tandem agent`: one cloud's agent (coordinator/agent.h). Runs until SIGINT
// or SIGTERM, then stops the worker groups it started and exits 0.
#include <signal.h>

#include <boost/program_options.hpp>
#include <iostream>
#include <thread>

#include "cli/commands.h"
#include "cli/flags.h"
#include "coordinator/agent.h"
#include "worker/peer_wait.h"

namespace tandem::cli {

namespace po = boost::program_options;

int AgentCommand(const std::vector<std::string>& args) {
  AgentOptions options;
  uint32_t heartbeat_ms = 1000;
  po::options_description flags(
      R"(Usage: tandem agent --cloud NAME --coordinator ADDR --store DIR --slots N
                    --wan-listen HOST:PORT [OPTIONS]

Runs one cloud's agent until SIGINT or SIGTERM: registers the cloud's pool with
the coordinator and heartbeats under a lease, starts the worker groups the
coordinator assigns here (mpirun, N ranks each), forwards their progress,
checkpoints and logs, and reports when they end. On SIGINT/SIGTERM it stops the
groups it started and exits 0. Each job's checkpoints live in DIR/<job id>.

The pool leaders of this cloud accept the other clouds' gradient streams on
--wan-listen; other clouds dial --wan-advertise (default: the same address;
set it to a proxy's or a public address).

Options)");
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("cloud", po::value(&options.cloud)->value_name("NAME"), "this cloud's name")
      ("coordinator", po::value(&options.coordinator)->value_name("ADDR"),
       "the coordinator's HOST:PORT")
      ("store", po::value(&options.store_dir)->value_name("DIR"),
       "this cloud's checkpoint stores (one folder per job)")
      ("slots", po::value(&options.slots), "worker ranks this cloud may run at once")
      ("wan-listen", po::value(&options.wan_listen)->value_name("HOST:PORT"),
       "where this cloud's pool leaders accept gradient streams")
      ("wan-advertise", po::value(&options.wan_advertise)->value_name("HOST:PORT"),
       "the address other clouds dial for them (default: --wan-listen)")
      ("replication-listen", po::value(&options.replication_listen)->value_name("HOST:PORT"),
       "serve this cloud's checkpoints to other clouds' agents here (migrations, export)")
      ("replication-advertise", po::value(&options.replication_advertise)->value_name("HOST:PORT"),
       "the address others dial for it (default: --replication-listen)")
      ("certs", po::value(&options.certs_dir)->default_value(DefaultCertsDir()),
       "TLS material from `tandem certs init` (mutual TLS everywhere)")
      ("insecure", po::bool_switch(&options.insecure), "plaintext instead of mutual TLS")
      ("exchange-timeout-ms", po::value(&options.exchange_timeout_ms)->default_value(10000),
       "how long a pool's leader waits to connect to the other clouds' leaders")
      ("link-liveness-ms", po::value(&options.liveness_ms)->default_value(4000),
       "a peer cloud whose leader the link heard nothing from this long (no frame, ack or "
       "heartbeat) is reported to the coordinator as lost")
      ("stuck-after-ms", po::value(&options.stuck_after_ms)->default_value(60000),
       "a peer cloud that is alive but makes no progress this long (or 20 of its recent "
       "steps, if longer) is reported as stuck; a slow one is waited for")
      ("heartbeat-ms", po::value(&heartbeat_ms)->default_value(1000),
       "how often to heartbeat and fetch assignments")
      ("sample-log", po::value(&options.sample_log_dir)->value_name("DIR"),
       "test mode: the workers log the sample ids of every step here");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("agent", args, flags, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  for (const char* required : {"cloud", "coordinator", "store", "slots", "wan-listen"}) {
    if (vm.count(required) == 0) {
      std::cerr << "tandem agent: --" << required
                << " is required\nRun `tandem agent --help` for the options.\n";
      return kExitUsage;
    }
  }
  if (options.slots == 0 || heartbeat_ms == 0) {
    std::cerr << "tandem agent: --slots and --heartbeat-ms must be at least 1\n";
    return kExitUsage;
  }
  if (options.liveness_ms < kMinLivenessMs || options.stuck_after_ms < kMinLivenessMs) {
    std::cerr << "tandem agent: --link-liveness-ms and --stuck-after-ms must be at least "
              << kMinLivenessMs << " (two of the link's heartbeat intervals)\n";
    return kExitUsage;
  }
  options.heartbeat_interval = std::chrono::milliseconds(heartbeat_ms);
  options.tandem_binary = SelfExecutable();

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  Agent agent(options, std::make_unique<MpirunLauncher>());
  std::thread signals([&agent, &stop_signals] {
    int signal = 0;
    sigwait(&stop_signals, &signal);
    agent.Stop();
  });
  absl::Status status = agent.Run();
  if (!status.ok()) {
    std::cerr << "tandem agent: " << status.message() << "\n";
    std::_Exit(kExitFailed);  // the signal thread still waits
  }
  // Run returned because of a signal: the thread is done.
  signals.join();
  std::cerr << "tandem agent " << options.cloud << ": stopped\n";
  return kExitOk;
}

}  // namespace tandem::cli
