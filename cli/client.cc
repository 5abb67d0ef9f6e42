#include "cli/client.h"

#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "checkpoint/replication.h"
#include "cli/commands.h"
#include "transport/tls.h"

namespace tandem::cli {

namespace po = boost::program_options;

namespace {

std::string HomeDir() {
  const char* home = std::getenv("HOME");
  return home != nullptr && *home != '\0' ? home : ".";
}

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

std::string Seconds(double seconds) { return absl::StrFormat("%g s", seconds); }

volatile sig_atomic_t interrupted = 0;

void OnInterrupt(int) { interrupted = 1; }

}  // namespace

void AddClientFlags(po::options_description& flags, ClientFlags* client) {
  // clang-format off
  flags.add_options()
      ("coordinator", po::value(&client->coordinator)->value_name("ADDR"),
       "the coordinator's HOST:PORT (default: $TANDEM_COORDINATOR, else the line in "
       "~/.tandem/coordinator that `tandem up` writes, else 127.0.0.1:7440)")
      ("certs", po::value(&client->certs)->default_value(DefaultCertsDir())->value_name("DIR"),
       "mutual TLS material from `tandem certs init`")
      ("insecure", po::bool_switch(&client->insecure),
       "plaintext to a coordinator started with --insecure")
      ("connect-timeout",
       po::value(&client->connect_timeout_s)->default_value(5)->value_name("SECONDS"),
       "give up (exit 3) when the coordinator is not reached within this time")
      ("rpc-timeout", po::value(&client->rpc_timeout_s)->default_value(10)->value_name("SECONDS"),
       "deadline of each request to the coordinator (exit 3 when it passes)");
  // clang-format on
}

std::string CoordinatorAddressFile() { return HomeDir() + "/.tandem/coordinator"; }

CoordinatorAddress ResolveCoordinator(const std::string& flag) {
  if (!flag.empty()) return {flag, "--coordinator"};
  const char* env = std::getenv(kCoordinatorEnv);
  if (env != nullptr && *env != '\0') {
    return {std::string(absl::StripAsciiWhitespace(env)), std::string("$") + kCoordinatorEnv};
  }
  const std::string file = CoordinatorAddressFile();
  std::ifstream in(file);
  std::string line;
  if (in && std::getline(in, line)) {
    line = std::string(absl::StripAsciiWhitespace(line));
    if (!line.empty()) return {line, file};
  }
  return {kDefaultCoordinator, "the default"};
}

std::unique_ptr<CoordinatorClient> CoordinatorClient::Connect(const char* command,
                                                              const ClientFlags& flags,
                                                              int* exit_code) {
  *exit_code = kExitUsage;
  if (!(flags.connect_timeout_s > 0) || !(flags.rpc_timeout_s > 0)) {
    std::cerr << "tandem " << command << ": --connect-timeout and --rpc-timeout must be positive\n";
    return nullptr;
  }
  const CoordinatorAddress resolved = ResolveCoordinator(flags.coordinator);
  if (resolved.address.find(':') == std::string::npos) {
    std::cerr << "tandem " << command << ": the coordinator address '" << resolved.address
              << "' (from " << resolved.source << ") is not HOST:PORT\n";
    return nullptr;
  }
  std::unique_ptr<CoordinatorClient> client(new CoordinatorClient());
  client->command_ = command;
  client->address_ = resolved.address;
  client->source_ = resolved.source;
  client->rpc_timeout_ = Millis(flags.rpc_timeout_s);
  client->connect_timeout_ = Millis(flags.connect_timeout_s);
  const std::string how_to_fix = absl::StrFormat(
      "\n  (the address came from %s; point tandem at the coordinator with --coordinator "
      "HOST:PORT or %s=HOST:PORT, or start one with `tandem up`)",
      resolved.source, kCoordinatorEnv);
  *exit_code = kExitUnreachable;

  client->credentials_ = grpc::InsecureChannelCredentials();
  if (!flags.insecure) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> tls = ChannelCredentials(flags.certs);
    if (!tls.ok()) {
      std::cerr << "tandem " << command << ": cannot reach the coordinator at " << client->address_
                << ": no TLS credentials: " << tls.status().message()
                << "\n  (pass --certs DIR with the coordinator's CA, or --insecure for a "
                   "coordinator started with --insecure)\n";
      return nullptr;
    }
    client->credentials_ = *tls;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kReplicationMaxMessageBytes);
  // Retry a refused connection quickly while --connect-timeout lasts (gRPC's
  // default first backoff is a whole second).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  client->channel_ = grpc::CreateCustomChannel(client->address_, client->credentials_, args);
  const auto deadline = std::chrono::system_clock::now() + Millis(flags.connect_timeout_s);
  if (!client->channel_->WaitForConnected(deadline)) {
    // The channel only says it is not connected; a fail-fast call on it
    // returns the last connection error ("Connection refused", a TLS
    // handshake failure) at once when there is one.
    std::string why = absl::StrFormat("no connection within %s (--connect-timeout)",
                                      Seconds(flags.connect_timeout_s));
    if (client->channel_->GetState(false) == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      grpc::ClientContext probe;
      probe.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
      v1::ListPoolsResponse ignored;
      grpc::Status status =
          v1::JobService::NewStub(client->channel_)->ListPools(&probe, {}, &ignored);
      if (status.ok()) {
        client->stub_ = v1::JobService::NewStub(client->channel_);
        *exit_code = kExitOk;
        return client;
      }
      if (status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
        why = status.error_message();
      }
    }
    std::cerr << "tandem " << command << ": cannot reach the coordinator at " << client->address_
              << ": " << why << how_to_fix << "\n";
    return nullptr;
  }
  client->stub_ = v1::JobService::NewStub(client->channel_);
  *exit_code = kExitOk;
  return client;
}

std::unique_ptr<grpc::ClientContext> CoordinatorClient::Context() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + rpc_timeout_);
  return context;
}

int CoordinatorClient::Fail(const grpc::Status& status) const {
  const std::string prefix = "tandem " + command_ + ": ";
  switch (status.error_code()) {
    // This client cancels no call it then reports, so a cancelled call is the
    // server's doing: it is shutting down.
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::UNAVAILABLE:
      std::cerr << prefix << "lost the coordinator at " << address_ << ": "
                << status.error_message() << "\n";
      return kExitUnreachable;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      std::cerr << prefix << "the coordinator at " << address_ << " did not answer within "
                << Seconds(rpc_timeout_.count() / 1000.0) << " (--rpc-timeout)\n";
      return kExitUnreachable;
    case grpc::StatusCode::UNIMPLEMENTED:
      std::cerr << prefix << address_ << " does not serve tandem's JobService (is it a tandem "
                << "coordinator?): " << status.error_message() << "\n";
      return kExitUnreachable;
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::ALREADY_EXISTS:
      std::cerr << prefix << status.error_message() << "\n";
      return kExitUsage;
    default:
      std::cerr << prefix << status.error_message() << "\n";
      return kExitFailed;
  }
}

void InstallInterruptHandler() {
  struct sigaction action {};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

bool Interrupted() { return interrupted != 0; }

bool SleepUnlessInterrupted(std::chrono::milliseconds duration) {
  const auto until = std::chrono::steady_clock::now() + duration;
  while (!Interrupted()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= until) break;
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(until - now, std::chrono::milliseconds(50)));
  }
  return !Interrupted();
}

}  // namespace tandem::cli
