// WanProxy: a TCP proxy that makes a local link behave like a WAN, for tests
// and demos of the cross-cloud gradient exchange (this kernel has no netem, so
// delay, loss and partitions are emulated here, in userspace).
//
// Every connection accepted on `listen` is joined to a new connection to
// `target`. Each direction (client->target, target->client) gets:
//   - one-way delay: every byte is released `delay` after the proxy read it;
//   - a rate limit (token bucket shared by all connections of that direction,
//     like one WAN link; 0 = unlimited);
//   - a bounded queue of `buffer_bytes` per connection: when it is full the
//     proxy stops reading from the sender, so TCP backpressure reaches it and
//     the bandwidth-delay product is real (throughput <= buffer / delay);
//   - random resets: with probability `loss_per_mb` per 10^6 bytes read, the
//     connection is reset (RST to both sides, via SO_LINGER 0).
// Partition: while on, no bytes are written either way (connections stay open
// and stall; bytes already read wait in the queues, and readers stop once a
// queue is full). New connections are accepted but stall too: the connection
// to the target is only opened when the partition ends, as if the SYN were
// lost. So clients see a black hole, not a refusal, and only their keepalives
// and deadlines notice, as on a real WAN partition.
//
// Threading: one io thread, started by Start() and joined by Stop() or the
// destructor, owns all sockets and state. The public methods are thread-safe
// and return once the io thread has applied them. Optionally a line-based
// control socket (see kControlHelp) drives the same operations.
#ifndef TANDEM_INFRA_WAN_PROXY_WAN_PROXY_H_
#define TANDEM_INFRA_WAN_PROXY_WAN_PROXY_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem::infra {

struct WanProxyOptions {
  // HOST:PORT, HOST an IP address ([::1] for IPv6) or a name. Port 0 picks a
  // free port; listen_address() says which.
  std::string listen = "127.0.0.1:0";
  std::string target;
  // Empty: no control socket. It is unauthenticated, so it must be loopback.
  std::string control;
  std::chrono::milliseconds delay{0};
  double rate_mbit = 0;  // 10^6 bits/s per direction; 0 = unlimited
  size_t buffer_bytes = size_t{4} << 20;
  double loss_per_mb = 0;  // in [0, 1]
  uint64_t seed = 1;
};

// What the proxy has done so far; "queued" counts bytes read but not yet
// written on.
struct WanDirectionStats {
  uint64_t bytes = 0;       // written to the receiving side
  uint64_t queued = 0;      // now, all connections together
  uint64_t max_queued = 0;  // the most one connection ever held; <= buffer_bytes
};

struct WanProxyStats {
  WanDirectionStats client_to_target;
  WanDirectionStats target_to_client;
  uint64_t connections_active = 0;
  uint64_t connections_total = 0;
  uint64_t resets = 0;  // connections reset by loss or by ResetConnections()
  bool partitioned = false;
  int64_t delay_ms = 0;
  double rate_mbit = 0;
  double loss_per_mb = 0;
  size_t buffer_bytes = 0;
};

// One JSON object on one line, as the control socket's `stats` answers.
std::string StatsToJson(const WanProxyStats& stats);

// Checks option values without touching the network: InvalidArgument with a
// message naming the flag.
absl::Status ValidateWanProxyOptions(const WanProxyOptions& options);

// The control protocol, one command per line, one answer line each:
//   partition on|off  -> ok
//   reset             -> ok N   (N connections reset)
//   delay MS          -> ok     (for bytes read from now on)
//   rate MBIT         -> ok     (0 = unlimited)
//   loss P            -> ok
//   stats             -> {"client_to_target":{...},...}
//   help              -> the command list, on one line
// Anything else -> `error MESSAGE`.
extern const char kControlHelp[];

class WanProxy {
 public:
  // Validates, resolves, binds and starts the io thread. InvalidArgument for
  // bad options or an unresolvable name; Unavailable when binding fails.
  static absl::StatusOr<std::unique_ptr<WanProxy>> Start(const WanProxyOptions& options);

  // Stops: resets every open connection, closes the listeners, joins the io
  // thread. Idempotent.
  ~WanProxy();
  void Stop();

  WanProxy(const WanProxy&) = delete;
  WanProxy& operator=(const WanProxy&) = delete;

  // The bound addresses as HOST:PORT with the real port; control_address()
  // is empty without a control socket.
  const std::string& listen_address() const { return listen_address_; }
  uint16_t listen_port() const { return listen_port_; }
  const std::string& control_address() const { return control_address_; }
  uint16_t control_port() const { return control_port_; }

  // Thread-safe; each returns once applied. After Stop() they do nothing
  // (Stats() returns zeros) and return FailedPrecondition where they return
  // a Status.
  absl::Status SetPartitioned(bool on);
  absl::StatusOr<int> ResetConnections();  // how many were reset
  absl::Status SetDelay(std::chrono::milliseconds delay);
  absl::Status SetRateMbit(double rate_mbit);
  absl::Status SetLossPerMb(double loss_per_mb);
  WanProxyStats Stats();

 private:
  class Impl;
  explicit WanProxy(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  std::string listen_address_;
  uint16_t listen_port_ = 0;
  std::string control_address_;
  uint16_t control_port_ = 0;
};

}  // namespace tandem::infra

#endif  // TANDEM_INFRA_WAN_PROXY_WAN_PROXY_H_
