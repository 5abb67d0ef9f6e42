// CoordinatorClient: how the user-facing commands (`tandem submit`, `status`,
// `list`, `logs`, `cancel`, `migrate`, `checkpoints JOB`, `export JOB`) reach
// the coordinator's JobService, and how what goes wrong becomes an exit code
// and a message a user can act on.
//
// The address comes from --coordinator, else $TANDEM_COORDINATOR, else the
// first line of ~/.tandem/coordinator (written by `tandem up`), else
// 127.0.0.1:7440. The channel uses mutual TLS from --certs (default
// ~/.tandem/certs) unless --insecure. Connect() waits at most
// --connect-timeout for the connection; every RPC then carries a deadline of
// --rpc-timeout (Context()).
//
// Exit codes (see commands.h): a coordinator that cannot be reached, stops
// answering or goes away (UNAVAILABLE, DEADLINE_EXCEEDED, a call it
// cancelled while shutting down, UNIMPLEMENTED: not a coordinator) is
// kExitUnreachable (3); the server's NOT_FOUND, INVALID_ARGUMENT
// and ALREADY_EXISTS are about what the user typed (kExitUsage, 2); any other
// server error is kExitFailed (1).
//
// Not thread-safe, except that Context() and stub() may be used from several
// threads at once (gRPC stubs are).
#ifndef TANDEM_CLI_CLIENT_H_
#define TANDEM_CLI_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem::cli {

inline constexpr char kCoordinatorEnv[] = "TANDEM_COORDINATOR";
inline constexpr char kDefaultCoordinator[] = "127.0.0.1:7440";

// The flags every command that talks to the coordinator takes.
struct ClientFlags {
  std::string coordinator;  // empty: see ResolveCoordinator
  std::string certs;
  bool insecure = false;
  double connect_timeout_s = 5;
  double rpc_timeout_s = 10;
};

// Adds --coordinator, --certs, --insecure, --connect-timeout and
// --rpc-timeout to `flags`, bound to `client`.
void AddClientFlags(boost::program_options::options_description& flags, ClientFlags* client);

// ~/.tandem/coordinator: where `tandem up` writes the coordinator's address.
std::string CoordinatorAddressFile();

// The address to dial and where it came from ("--coordinator",
// "$TANDEM_COORDINATOR", the address file's path, or "the default").
struct CoordinatorAddress {
  std::string address;
  std::string source;
};
CoordinatorAddress ResolveCoordinator(const std::string& flag);

class CoordinatorClient {
 public:
  // Checks the flags (a usage error prints and returns nullptr with
  // *exit_code = kExitUsage), builds the credentials and waits for the
  // connection. On failure prints "tandem COMMAND: cannot reach the
  // coordinator at ADDR: WHY" with how to point tandem elsewhere, sets
  // *exit_code = kExitUnreachable and returns nullptr.
  static std::unique_ptr<CoordinatorClient> Connect(const char* command, const ClientFlags& flags,
                                                    int* exit_code);

  v1::JobService::Stub& stub() { return *stub_; }
  const std::string& address() const { return address_; }
  // The credentials of the coordinator channel; agents' replication services
  // trust the same CA, so `export` dials them with these too.
  std::shared_ptr<grpc::ChannelCredentials> credentials() const { return credentials_; }

  // A context whose deadline is --rpc-timeout from now.
  std::unique_ptr<grpc::ClientContext> Context() const;
  std::chrono::milliseconds rpc_timeout() const { return rpc_timeout_; }
  std::chrono::milliseconds connect_timeout() const { return connect_timeout_; }

  // Prints what went wrong with an RPC ("tandem COMMAND: MESSAGE") and
  // returns the exit code for it (see the header comment).
  int Fail(const grpc::Status& status) const;

 private:
  CoordinatorClient() = default;

  std::string command_;
  std::string address_;
  std::string source_;
  std::chrono::milliseconds rpc_timeout_{10000};
  std::chrono::milliseconds connect_timeout_{5000};
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> stub_;
};

// Ctrl-C for commands that wait (status --watch, logs -f): after
// InstallInterruptHandler(), SIGINT and SIGTERM only set a flag that
// Interrupted() reads, so the command can stop its RPCs and restore the
// terminal before it exits.
void InstallInterruptHandler();
bool Interrupted();
// Sleeps up to `duration`, waking early when interrupted. Returns !Interrupted().
bool SleepUnlessInterrupted(std::chrono::milliseconds duration);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_CLIENT_H_
