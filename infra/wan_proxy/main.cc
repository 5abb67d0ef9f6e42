// tandem-wan-proxy: emulates a WAN on a TCP path (see wan_proxy.h).
#include <pthread.h>

#include <boost/program_options.hpp>
#include <csignal>
#include <cstdint>
#include <iostream>
#include <string>

#include "infra/wan_proxy/wan_proxy.h"

namespace {

namespace po = boost::program_options;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

constexpr char kUsage[] = R"(Usage: tandem-wan-proxy --target HOST:PORT [OPTIONS]

Forwards every TCP connection accepted on --listen to --target and makes the
path behave like a WAN link, per direction: one-way delay, a rate limit, a
bounded in-flight buffer (when full, the sender is backpressured), random
connection resets, and partitions switched on the control socket.

Prints `listening on HOST:PORT` (and `control on HOST:PORT`) with the real
ports, then runs until SIGINT or SIGTERM. Exit status 2 for bad flags.

Control socket: one command per line, one answer line each:
  partition on|off, reset, delay MS, rate MBIT, loss P, stats (JSON), help
e.g. `echo stats | nc -q1 127.0.0.1 PORT`, or without nc, in bash:
  exec 3<>/dev/tcp/127.0.0.1/PORT; echo stats >&3; head -n1 <&3

Options)";

int Usage(const std::string& message) {
  std::cerr << "tandem-wan-proxy: " << message
            << "\nRun `tandem-wan-proxy --help` for the options.\n";
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  tandem::infra::WanProxyOptions options;
  int64_t delay_ms = 0;
  int64_t buffer_bytes = static_cast<int64_t>(options.buffer_bytes);
  po::options_description flags(kUsage);
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("listen", po::value(&options.listen)->default_value(options.listen)->value_name("HOST:PORT"),
       "where clients connect; port 0 picks a free port")
      ("target", po::value(&options.target)->value_name("HOST:PORT"),
       "where each connection is forwarded to (required)")
      ("control", po::value(&options.control)->value_name("HOST:PORT"),
       "loopback address of the line-based control socket (default: none)")
      ("delay-ms", po::value(&delay_ms)->default_value(0)->value_name("MS"),
       "one-way delay per direction: each byte is released MS ms after it arrived")
      ("rate-mbit", po::value(&options.rate_mbit)->default_value(0)->value_name("MBIT"),
       "rate limit per direction in Mbit/s (10^6 bit/s), shared by all connections; 0 = none")
      ("buffer-bytes", po::value(&buffer_bytes)->default_value(buffer_bytes)->value_name("N"),
       "bytes the proxy holds per connection and direction before it stops reading from the "
       "sender; to not cap throughput, make it >= rate x delay")
      ("loss", po::value(&options.loss_per_mb)->default_value(0)->value_name("P"),
       "probability per MB (10^6 bytes) that a connection is reset (RST to both sides)")
      ("seed", po::value(&options.seed)->default_value(options.seed)->value_name("N"),
       "seed of the reset dice, for reproducible runs");
  // clang-format on
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(flags).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    return Usage(e.what());
  }
  if (vm.count("help")) {
    std::cout << flags << "\n";
    return kExitOk;
  }
  if (buffer_bytes < 1) {
    return Usage("--buffer-bytes must be at least 1, got " + std::to_string(buffer_bytes));
  }
  options.buffer_bytes = static_cast<size_t>(buffer_bytes);
  options.delay = std::chrono::milliseconds(delay_ms);
  if (absl::Status valid = tandem::infra::ValidateWanProxyOptions(options); !valid.ok()) {
    return Usage(std::string(valid.message()));
  }

  // Signals are taken by sigwait below; the io thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<tandem::infra::WanProxy>> proxy =
      tandem::infra::WanProxy::Start(options);
  if (!proxy.ok()) {
    if (absl::IsInvalidArgument(proxy.status()))
      return Usage(std::string(proxy.status().message()));
    std::cerr << "tandem-wan-proxy: " << proxy.status().message() << "\n";
    return kExitFailed;
  }
  std::cout << "listening on " << (*proxy)->listen_address() << "\n";
  if (!(*proxy)->control_address().empty()) {
    std::cout << "control on " << (*proxy)->control_address() << "\n";
  }
  std::cout << std::flush;

  int signal = 0;
  sigwait(&stop_signals, &signal);
  (*proxy)->Stop();
  return kExitOk;
}
