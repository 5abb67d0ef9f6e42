// `tandem certs init`, `tandem serve-store` and `tandem replicate`: moving a
// job's checkpoints from one cloud's store to another's over gRPC with mutual
// TLS, sending only the chunks the target lacks.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/replication.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "transport/tls.h"

namespace tandem::cli {

namespace po = boost::program_options;

int CertsCommand(const std::vector<std::string>& args) {
  std::string action;
  std::string dir;
  std::vector<std::string> hosts;
  po::options_description flags(R"(Usage: tandem certs init [DIR] [--host NAME]...

Makes the mutual-TLS material tandem's links use: a CA (ca.pem, ca.key) and
this host's certificate (tls.pem, tls.key), valid as server and as client,
naming every --host. Never overwrites: run it again to check a directory, or
copy ca.pem and ca.key to another host's DIR and run it there to issue that
host's certificate from the same CA. DIR defaults to ~/.tandem/certs.

Options)");
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("host", po::value(&hosts)->multitoken()->value_name("NAME"),
       "a DNS name or IP address the certificate names (default: localhost, 127.0.0.1, ::1)");
  // clang-format on
  po::options_description hidden;
  hidden.add_options()("action", po::value(&action))("dir", po::value(&dir));
  po::positional_options_description positional;
  positional.add("action", 1).add("dir", 1);
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("certs", args, flags, hidden, positional, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  if (action != "init") {
    std::cerr << "tandem certs: expected `tandem certs init [DIR]`\n";
    return kExitUsage;
  }
  if (dir.empty()) dir = DefaultCertsDir();
  if (hosts.empty()) hosts = {"localhost", "127.0.0.1", "::1"};
  absl::Status status = CreateCertificates(dir, hosts);
  if (!status.ok()) {
    std::cerr << "tandem certs: " << status.message() << "\n";
    return kExitFailed;
  }
  std::cout << "TLS certificates in " << dir << "\n";
  return kExitOk;
}

int ServeStoreCommand(const std::vector<std::string>& args) {
  std::string store_dir;
  std::string listen;
  std::string certs;
  bool insecure = false;
  po::options_description flags(
      R"(Usage: tandem serve-store --store DIR [--listen ADDR] [--certs DIR | --insecure]

Serves a checkpoint store to peers (tandem replicate pushes into it) until
SIGINT or SIGTERM. Prints `listening on HOST:PORT` once it accepts
connections (useful with port 0).

Options)");
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("store", po::value(&store_dir)->default_value(DefaultStoreDir()), "checkpoint store folder")
      ("listen", po::value(&listen)->default_value("127.0.0.1:7443"), "address to listen on")
      ("certs", po::value(&certs)->default_value(DefaultCertsDir()),
       "TLS material from `tandem certs init`")
      ("insecure", po::bool_switch(&insecure), "plaintext instead of mutual TLS");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("serve-store", args, flags, vm, &help)) return kExitUsage;
  if (help) return kExitOk;

  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!insecure) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tls = ServerCredentials(certs);
    if (!tls.ok()) {
      std::cerr << "tandem serve-store: " << tls.status().message()
                << " (run `tandem certs init`, or pass --insecure)\n";
      return kExitFailed;
    }
    credentials = *tls;
  }
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(store_dir);
  if (!store.ok()) {
    std::cerr << "tandem serve-store: " << store.status().message() << "\n";
    return kExitFailed;
  }
  // Signals are taken synchronously by sigwait below, so they must be blocked
  // before gRPC starts its threads (which inherit the mask).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  ReplicationService service(**store);
  int port = 0;
  grpc::ServerBuilder builder;
  ListenExclusively(builder);
  builder.AddListeningPort(listen, credentials, &port);
  builder.SetMaxReceiveMessageSize(kReplicationMaxMessageBytes);
  builder.SetMaxSendMessageSize(kReplicationMaxMessageBytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "tandem serve-store: cannot listen on " << listen << "\n";
    return kExitFailed;
  }
  const std::string host = listen.substr(0, listen.rfind(':'));
  std::cout << "listening on " << host << ":" << port << std::endl;
  int signal = 0;
  sigwait(&stop_signals, &signal);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::cerr << "tandem serve-store: stopped by signal " << signal << "\n";
  return kExitOk;
}

int ReplicateCommand(const std::vector<std::string>& args) {
  std::string store_dir;
  std::string job;
  std::string target;
  std::string certs;
  std::string output;
  uint64_t step = 0;
  uint32_t keep = 0;
  double timeout_s = 0;
  bool insecure = false;
  po::options_description flags(
      R"(Usage: tandem replicate --job NAME --to ADDR [--store DIR] [--step N] [OPTIONS]

Copies a checkpoint (the latest unless --step) from the local store to the
store that `tandem serve-store` serves at ADDR: only the chunks the target
lacks cross the network; the target verifies every chunk and the state digest
before the checkpoint becomes its latest. Run it again after a failure to
resume: chunks already there are not sent again.

Options)");
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("store", po::value(&store_dir)->default_value(DefaultStoreDir()), "source store folder")
      ("job", po::value(&job), "the job to replicate")
      ("step", po::value(&step)->value_name("N"), "the checkpoint at step N (default: latest)")
      ("to", po::value(&target)->value_name("ADDR"), "HOST:PORT of the target's serve-store")
      ("keep", po::value(&keep)->default_value(3), "checkpoints of the job the target keeps")
      ("timeout", po::value(&timeout_s)->default_value(1800)->value_name("SECONDS"),
       "give up (with an error) when the whole copy takes longer")
      ("certs", po::value(&certs)->default_value(DefaultCertsDir()),
       "TLS material from `tandem certs init`")
      ("insecure", po::bool_switch(&insecure), "plaintext instead of mutual TLS")
      ("output", po::value(&output)->default_value("text"), "text or json");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("replicate", args, flags, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  if (job.empty() || target.empty()) {
    std::cerr << "tandem replicate: --job and --to are required\n";
    return kExitUsage;
  }
  if (!CheckOutputFormat("replicate", output)) return kExitUsage;
  if (timeout_s <= 0) {
    std::cerr << "tandem replicate: --timeout must be positive\n";
    return kExitUsage;
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!insecure) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> tls = ChannelCredentials(certs);
    if (!tls.ok()) {
      std::cerr << "tandem replicate: " << tls.status().message()
                << " (run `tandem certs init`, or pass --insecure)\n";
      return kExitFailed;
    }
    credentials = *tls;
  }
  std::unique_ptr<CheckpointStore> store = OpenStoreForReading("replicate", store_dir);
  if (store == nullptr) return kExitFailed;
  std::optional<uint64_t> wanted;
  if (vm.count("step")) wanted = step;
  absl::StatusOr<ReplicationStats> stats =
      PushCheckpoint(*store, job, wanted, target, credentials,
                     std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)), keep);
  if (!stats.ok()) {
    std::cerr << "tandem replicate: " << stats.status().message() << "\n";
    return kExitFailed;
  }
  if (output == "json") {
    std::cout << nlohmann::json{{"job", job},
                                {"step", stats->step},
                                {"chunks_total", stats->chunks_total},
                                {"chunks_sent", stats->chunks_sent},
                                {"chunks_skipped", stats->chunks_skipped},
                                {"bytes_sent", stats->bytes_sent},
                                {"seconds", stats->seconds}}
                     .dump()
              << std::endl;
  } else {
    std::cout << absl::StrFormat(
        "replicated job %s step %d to %s: sent %d of %d chunks (%.1f MB) in %.2f s\n", job,
        stats->step, target, stats->chunks_sent, stats->chunks_total, stats->bytes_sent / 1e6,
        stats->seconds);
  }
  return kExitOk;
}

}  // namespace tandem::cli
