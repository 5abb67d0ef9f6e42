// Tests of tandem-wan-proxy over real sockets on 127.0.0.1 (and, as root, through
// a veth pair between two network namespaces this test creates).
#include "infra/wan_proxy/wan_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace tandem::infra {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Generous: long enough for a loaded 2-core machine, short enough that a
// missing event fails the test instead of hanging it.
constexpr milliseconds kEventDeadline{10'000};
// How long "nothing arrives" is watched for.
constexpr milliseconds kQuietWindow{300};

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    Reset();
    fd_ = std::exchange(other.fd_, -1);
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

sockaddr_in Ipv4(const std::string& ip, uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
  return addr;
}

void SetDeadlines(int fd) {
  timeval tv{kEventDeadline.count() / 1000, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// A listening socket on ip:0; `rcvbuf` > 0 shrinks the receive buffer that
// accepted sockets inherit.
Fd Listen(uint16_t* port, const std::string& ip = "127.0.0.1", int rcvbuf = 0) {
  Fd fd(socket(AF_INET, SOCK_STREAM, 0));
  if (rcvbuf > 0) setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  sockaddr_in addr = Ipv4(ip, 0);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << strerror(errno);
  EXPECT_EQ(listen(fd.get(), 16), 0) << strerror(errno);
  socklen_t len = sizeof addr;
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  *port = ntohs(addr.sin_port);
  return fd;
}

Fd Connect(uint16_t port, const std::string& ip = "127.0.0.1") {
  Fd fd(socket(AF_INET, SOCK_STREAM, 0));
  SetDeadlines(fd.get());
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in addr = Ipv4(ip, port);
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0)
      << strerror(errno);
  return fd;
}

// Polls `fds` for `events`; true when any is ready before the deadline.
bool WaitFor(std::vector<int> fds, short events, milliseconds deadline) {
  std::vector<pollfd> p;
  for (int fd : fds) p.push_back(pollfd{fd, events, 0});
  return poll(p.data(), p.size(), static_cast<int>(deadline.count())) > 0;
}

// Accepts one connection, or returns an invalid Fd when none comes in time.
Fd AcceptWithin(int listener, milliseconds deadline) {
  if (!WaitFor({listener}, POLLIN, deadline)) return Fd();
  Fd fd(accept(listener, nullptr, nullptr));
  SetDeadlines(fd.get());
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += n;
  }
  return true;
}

// Reads exactly `bytes` (less on EOF, error or after kEventDeadline).
std::string RecvExactly(int fd, size_t bytes) {
  std::string out(bytes, '\0');
  size_t got = 0;
  while (got < bytes) {
    ssize_t n = recv(fd, out.data() + got, bytes - got, 0);
    if (n <= 0) break;
    got += n;
  }
  out.resize(got);
  return out;
}

std::string RecvLine(int fd) {
  std::string line;
  char c;
  while (recv(fd, &c, 1, 0) == 1 && c != '\n') line.push_back(c);
  return line;
}

std::string RandomBytes(size_t bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(bytes, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

// True when the peer closed or reset the connection within the deadline.
bool SeesClosed(int fd) {
  if (!WaitFor({fd}, POLLIN, kEventDeadline)) return false;
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE));
}

// Polls the proxy's stats until `done` holds or kEventDeadline passes.
bool StatsReach(WanProxy& proxy, const std::function<bool(const WanProxyStats&)>& done) {
  Clock::time_point deadline = Clock::now() + kEventDeadline;
  while (Clock::now() < deadline) {
    if (done(proxy.Stats())) return true;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return done(proxy.Stats());
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A proxy in front of a listening "target" socket the test accepts on.
struct Path {
  explicit Path(WanProxyOptions options, int target_rcvbuf = 0) {
    target_listener = Listen(&target_port, "127.0.0.1", target_rcvbuf);
    options.target = "127.0.0.1:" + std::to_string(target_port);
    absl::StatusOr<std::unique_ptr<WanProxy>> started = WanProxy::Start(options);
    EXPECT_TRUE(started.ok()) << started.status();
    if (started.ok()) proxy = std::move(*started);
  }
  // A client through the proxy and the target's end of the same connection.
  std::pair<Fd, Fd> Open() {
    Fd client = Connect(proxy->listen_port());
    Fd server = AcceptWithin(target_listener.get(), kEventDeadline);
    EXPECT_TRUE(server.valid()) << "the proxy never connected to the target";
    return {std::move(client), std::move(server)};
  }

  uint16_t target_port = 0;
  Fd target_listener;
  std::unique_ptr<WanProxy> proxy;
};

TEST(WanProxyTest, PassesBytesUnchangedBothWaysAndClosesCleanly) {
  Path path({});
  ASSERT_NE(path.proxy, nullptr);
  auto [client, server] = path.Open();
  const std::string up = RandomBytes(1 << 20, 1);
  const std::string down = RandomBytes(1 << 20, 2);

  std::thread client_sender([&, fd = client.get()] {
    EXPECT_TRUE(SendAll(fd, up));
    shutdown(fd, SHUT_WR);
  });
  std::thread server_sender([&, fd = server.get()] {
    EXPECT_TRUE(SendAll(fd, down));
    shutdown(fd, SHUT_WR);
  });
  std::string at_server = RecvExactly(server.get(), up.size() + 1);  // +1: sees the EOF
  std::string at_client = RecvExactly(client.get(), down.size() + 1);
  client_sender.join();
  server_sender.join();

  EXPECT_TRUE(at_server == up) << "got " << at_server.size() << " bytes";
  EXPECT_TRUE(at_client == down) << "got " << at_client.size() << " bytes";
  EXPECT_TRUE(StatsReach(*path.proxy, [](const WanProxyStats& s) {
    return s.connections_active == 0;
  })) << "the proxy kept the half-closed connection open";
  WanProxyStats stats = path.proxy->Stats();
  EXPECT_EQ(stats.client_to_target.bytes, up.size());
  EXPECT_EQ(stats.target_to_client.bytes, down.size());
  EXPECT_EQ(stats.client_to_target.queued, 0u);
  EXPECT_EQ(stats.connections_total, 1u);
  EXPECT_EQ(stats.resets, 0u);
}

TEST(WanProxyTest, OneWayDelayAppliesToEachDirection) {
  WanProxyOptions options;
  options.delay = milliseconds(50);
  Path path(options);
  ASSERT_NE(path.proxy, nullptr);
  auto [client, server] = path.Open();

  Clock::time_point start = Clock::now();
  ASSERT_TRUE(SendAll(client.get(), "ping"));
  ASSERT_EQ(RecvExactly(server.get(), 4), "ping");
  double one_way = SecondsSince(start);
  ASSERT_TRUE(SendAll(server.get(), "pong"));
  ASSERT_EQ(RecvExactly(client.get(), 4), "pong");
  double round_trip = SecondsSince(start);

  EXPECT_GE(one_way, 0.050);
  EXPECT_GE(round_trip, 0.100);
  EXPECT_LT(round_trip, 2.0);
}

TEST(WanProxyTest, RateLimitBoundsThroughput) {
  WanProxyOptions options;
  options.rate_mbit = 20;
  Path path(options);
  ASSERT_NE(path.proxy, nullptr);
  auto [client, server] = path.Open();
  const std::string data = RandomBytes(2'500'000, 3);  // 20 Mbit: 1 s at 20 Mbit/s

  Clock::time_point start = Clock::now();
  std::thread sender([&, fd = client.get()] { EXPECT_TRUE(SendAll(fd, data)); });
  std::string got = RecvExactly(server.get(), data.size());
  double seconds = SecondsSince(start);
  sender.join();

  ASSERT_TRUE(got == data);
  EXPECT_GE(seconds, 0.9);  // a 32 KiB burst is all the bucket lends
  EXPECT_LT(seconds, 8.0);
}

TEST(WanProxyTest, FullBufferBackpressuresTheSender) {
  constexpr size_t kBuffer = 256 << 10;
  WanProxyOptions options;
  options.buffer_bytes = kBuffer;
  Path path(options, /*target_rcvbuf=*/64 << 10);
  ASSERT_NE(path.proxy, nullptr);
  auto [client, server] = path.Open();
  int sndbuf = 64 << 10;
  setsockopt(client.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

  // The target does not read: write until the sender blocks for kQuietWindow.
  const std::string block = RandomBytes(64 << 10, 4);
  std::string sent;
  constexpr size_t kGiveUp = size_t{256} << 20;
  while (sent.size() < kGiveUp) {
    ssize_t n = send(client.get(), block.data(), block.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      sent.append(block, 0, n);
      continue;
    }
    ASSERT_TRUE(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) << strerror(errno);
    if (!WaitFor({client.get()}, POLLOUT, kQuietWindow)) break;
  }
  ASSERT_LT(sent.size(), kGiveUp) << "the sender never blocked";
  RecordProperty("sent_before_blocking", std::to_string(sent.size()));
  EXPECT_TRUE(StatsReach(
      *path.proxy, [&](const WanProxyStats& s) { return s.client_to_target.queued == kBuffer; }))
      << "queued " << path.proxy->Stats().client_to_target.queued;
  WanProxyStats stats = path.proxy->Stats();
  EXPECT_LE(stats.client_to_target.max_queued, kBuffer);
  // The rest sits in the kernel's socket buffers on either side of the proxy.
  EXPECT_GE(sent.size(), kBuffer);
  EXPECT_LT(sent.size(), kBuffer + (size_t{24} << 20)) << "sent " << sent.size();

  // Once the target reads, everything arrives, in order.
  shutdown(client.get(), SHUT_WR);
  std::string got = RecvExactly(server.get(), sent.size() + 1);
  EXPECT_TRUE(got == sent) << "sent " << sent.size() << ", got " << got.size();
  EXPECT_LE(path.proxy->Stats().client_to_target.max_queued, kBuffer);
}

TEST(WanProxyTest, PartitionStallsBothWaysAndNewConnectionsUntilHealed) {
  Path path({});
  ASSERT_NE(path.proxy, nullptr);
  auto [client, server] = path.Open();
  ASSERT_TRUE(SendAll(client.get(), "a"));
  ASSERT_EQ(RecvExactly(server.get(), 1), "a");

  ASSERT_TRUE(path.proxy->SetPartitioned(true).ok());
  ASSERT_TRUE(SendAll(client.get(), "up"));
  ASSERT_TRUE(SendAll(server.get(), "down"));
  Fd late_client = Connect(path.proxy->listen_port());  // accepted by the proxy, then stalls
  EXPECT_FALSE(
      WaitFor({server.get(), client.get(), path.target_listener.get()}, POLLIN, kQuietWindow))
      << "bytes or a connection crossed the partition";
  EXPECT_TRUE(path.proxy->Stats().partitioned);
  EXPECT_TRUE(StatsReach(*path.proxy, [](const WanProxyStats& s) {
    return s.connections_active == 2;
  })) << "the proxy did not accept the connection made during the partition";

  ASSERT_TRUE(path.proxy->SetPartitioned(false).ok());
  EXPECT_EQ(RecvExactly(server.get(), 2), "up");
  EXPECT_EQ(RecvExactly(client.get(), 4), "down");
  Fd late_server = AcceptWithin(path.target_listener.get(), kEventDeadline);
  ASSERT_TRUE(late_server.valid()) << "the stalled connection never reached the target";
  ASSERT_TRUE(SendAll(late_client.get(), "late"));
  EXPECT_EQ(RecvExactly(late_server.get(), 4), "late");
}

TEST(WanProxyTest, ResetClosesBothSides) {
  Path path({});
  ASSERT_NE(path.proxy, nullptr);
  auto [client, server] = path.Open();
  ASSERT_TRUE(SendAll(client.get(), "a"));
  ASSERT_EQ(RecvExactly(server.get(), 1), "a");

  absl::StatusOr<int> reset = path.proxy->ResetConnections();
  ASSERT_TRUE(reset.ok()) << reset.status();
  EXPECT_EQ(*reset, 1);
  EXPECT_TRUE(SeesClosed(client.get()));
  EXPECT_TRUE(SeesClosed(server.get()));
  WanProxyStats stats = path.proxy->Stats();
  EXPECT_EQ(stats.resets, 1u);
  EXPECT_EQ(stats.connections_active, 0u);
}

TEST(WanProxyTest, CertainLossResetsOnFirstBytes) {
  WanProxyOptions options;
  options.loss_per_mb = 1.0;
  Path path(options);
  ASSERT_NE(path.proxy, nullptr);
  auto [client, server] = path.Open();
  ASSERT_TRUE(SendAll(client.get(), "doomed"));
  EXPECT_TRUE(SeesClosed(server.get()));
  EXPECT_TRUE(SeesClosed(client.get()));
  EXPECT_EQ(path.proxy->Stats().resets, 1u);
  EXPECT_EQ(path.proxy->Stats().client_to_target.bytes, 0u);
}

TEST(WanProxyTest, ControlSocketCommands) {
  WanProxyOptions options;
  options.control = "127.0.0.1:0";
  Path path(options);
  ASSERT_NE(path.proxy, nullptr);
  ASSERT_NE(path.proxy->control_port(), 0);
  Fd control = Connect(path.proxy->control_port());
  auto ask = [&](const std::string& command) {
    EXPECT_TRUE(SendAll(control.get(), command + "\n"));
    return RecvLine(control.get());
  };

  EXPECT_EQ(ask("help").rfind("commands:", 0), 0u);
  EXPECT_EQ(ask("delay 30"), "ok");
  EXPECT_EQ(ask("rate 12.5"), "ok");
  EXPECT_EQ(ask("loss 0.25"), "ok");
  EXPECT_EQ(ask("partition on"), "ok");
  nlohmann::json stats = nlohmann::json::parse(ask("stats"));
  EXPECT_EQ(stats["delay_ms"], 30);
  EXPECT_EQ(stats["rate_mbit"], 12.5);
  EXPECT_EQ(stats["loss_per_mb"], 0.25);
  EXPECT_EQ(stats["partitioned"], true);
  EXPECT_EQ(stats["client_to_target"]["bytes"], 0);
  EXPECT_EQ(stats["target_to_client"]["queued"], 0);
  EXPECT_EQ(stats["connections_active"], 0);
  EXPECT_EQ(ask("partition off"), "ok");
  EXPECT_EQ(path.proxy->Stats().partitioned, false);
  EXPECT_EQ(ask("reset"), "ok 0");

  EXPECT_EQ(ask("partition maybe"), "error usage: partition on|off");
  EXPECT_EQ(ask("delay -1").rfind("error usage: delay MS", 0), 0u);
  EXPECT_EQ(ask("rate fast").rfind("error usage: rate MBIT", 0), 0u);
  EXPECT_EQ(ask("loss 2").rfind("error usage: loss P", 0), 0u);
  EXPECT_EQ(ask("explode").rfind("error unknown command 'explode'", 0), 0u);
  EXPECT_EQ(ask(std::string(2000, 'x')).rfind("error line longer than", 0), 0u);
}

TEST(WanProxyTest, RejectsBadOptions) {
  WanProxyOptions options;
  EXPECT_TRUE(absl::IsInvalidArgument(ValidateWanProxyOptions(options)));  // no target
  options.target = "127.0.0.1:9";
  EXPECT_TRUE(ValidateWanProxyOptions(options).ok());
  options.control = "0.0.0.0:0";  // not loopback: refused before anything binds
  absl::StatusOr<std::unique_ptr<WanProxy>> proxy = WanProxy::Start(options);
  ASSERT_FALSE(proxy.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(proxy.status()));
  EXPECT_NE(proxy.status().message().find("loopback"), std::string::npos) << proxy.status();
}

TEST(WanProxyTest, CallsAfterStopFailCleanly) {
  Path path({});
  ASSERT_NE(path.proxy, nullptr);
  auto [client, server] = path.Open();
  path.proxy->Stop();
  EXPECT_TRUE(SeesClosed(client.get()));
  EXPECT_TRUE(absl::IsFailedPrecondition(path.proxy->SetPartitioned(true)));
  EXPECT_EQ(path.proxy->Stats().connections_total, 0u);
  path.proxy->Stop();
}

// --- The real binary ---

std::string ProxyBinary() {
  const char* env = std::getenv("TANDEM_WAN_PROXY_BIN");
  return env != nullptr && *env != '\0' ? env : TANDEM_WAN_PROXY_BIN;
}

struct Child {
  pid_t pid = -1;
  Fd out;
  Fd err;
};

Child Spawn(const std::vector<std::string>& args) {
  int out[2], err[2];
  EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(err, O_CLOEXEC), 0);
  std::vector<std::string> argv_storage = {ProxyBinary()};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  return Child{pid, Fd(out[0]), Fd(err[0])};
}

// Reads a line from a pipe, giving up at the deadline.
std::string ReadLineWithin(int fd, milliseconds deadline) {
  std::string line;
  Clock::time_point end = Clock::now() + deadline;
  char c;
  while (Clock::now() < end) {
    auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now());
    if (!WaitFor({fd}, POLLIN, left) || read(fd, &c, 1) != 1 || c == '\n') break;
    line.push_back(c);
  }
  return line;
}

std::string ReadAllWithin(int fd, milliseconds deadline) {
  std::string all;
  for (std::string line = ReadLineWithin(fd, deadline); !line.empty();
       line = ReadLineWithin(fd, deadline)) {
    all += line + "\n";
  }
  return all;
}

// The exit status, or -1 when the child is still running at the deadline
// (it is then killed).
int WaitExit(pid_t pid, milliseconds deadline) {
  // A pidfd becomes readable when the process exits: wait on that.
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  int status = 0;
  if (pidfd < 0 || !WaitFor({pidfd}, POLLIN, deadline)) {
    if (pidfd >= 0) close(pidfd);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
  }
  close(pidfd);
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

uint16_t PortOf(const std::string& line, const std::string& prefix) {
  if (line.rfind(prefix, 0) != 0) return 0;
  return static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
}

TEST(WanProxyBinaryTest, ForwardsWithDelayAndStopsOnSigterm) {
  uint16_t target_port = 0;
  Fd target = Listen(&target_port);
  Child child =
      Spawn({"--listen", "127.0.0.1:0", "--target", "127.0.0.1:" + std::to_string(target_port),
             "--control", "127.0.0.1:0", "--delay-ms", "20"});
  std::string listening = ReadLineWithin(child.out.get(), kEventDeadline);
  std::string control_line = ReadLineWithin(child.out.get(), kEventDeadline);
  uint16_t port = PortOf(listening, "listening on 127.0.0.1:");
  uint16_t control_port = PortOf(control_line, "control on 127.0.0.1:");
  if (port == 0 || control_port == 0) {
    kill(child.pid, SIGKILL);
    WaitExit(child.pid, kEventDeadline);
    FAIL() << "stdout: '" << listening << "', '" << control_line
           << "'; stderr: " << ReadAllWithin(child.err.get(), milliseconds(100));
  }

  Fd client = Connect(port);
  Fd server = AcceptWithin(target.get(), kEventDeadline);
  ASSERT_TRUE(server.valid());
  Clock::time_point start = Clock::now();
  ASSERT_TRUE(SendAll(client.get(), "ping"));
  ASSERT_EQ(RecvExactly(server.get(), 4), "ping");
  ASSERT_TRUE(SendAll(server.get(), "pong"));
  ASSERT_EQ(RecvExactly(client.get(), 4), "pong");
  EXPECT_GE(SecondsSince(start), 0.040);

  Fd control = Connect(control_port);
  ASSERT_TRUE(SendAll(control.get(), "stats\n"));
  nlohmann::json stats = nlohmann::json::parse(RecvLine(control.get()));
  EXPECT_EQ(stats["connections_total"], 1);
  EXPECT_EQ(stats["client_to_target"]["bytes"], 4);

  kill(child.pid, SIGTERM);
  EXPECT_EQ(WaitExit(child.pid, kEventDeadline), 0);
  EXPECT_TRUE(SeesClosed(client.get()));
}

TEST(WanProxyBinaryTest, BadFlagsExitTwoWithAMessage) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{}, "--target is required"},
      {{"--target", "nonsense"}, "--target 'nonsense': missing port"},
      {{"--target", "127.0.0.1:70000"}, "port must be a number from 0 to 65535"},
      {{"--target", "127.0.0.1:9", "--delay-ms=-5"}, "--delay-ms must be from 0"},
      {{"--target", "127.0.0.1:9", "--rate-mbit", "fast"}, "rate-mbit"},
      {{"--target", "127.0.0.1:9", "--loss", "2"}, "--loss must be from 0 to 1"},
      {{"--target", "127.0.0.1:9", "--buffer-bytes", "0"}, "--buffer-bytes must be at least 1"},
      {{"--target", "127.0.0.1:9", "--control", "0.0.0.0:0"}, "loopback"},
      {{"--target", "127.0.0.1:9", "--bogus"}, "bogus"},
  };
  for (const Case& c : cases) {
    std::string joined;
    for (const std::string& a : c.args) joined += a + " ";
    SCOPED_TRACE("args: " + joined);
    Child child = Spawn(c.args);
    std::string err = ReadAllWithin(child.err.get(), kEventDeadline);
    EXPECT_EQ(WaitExit(child.pid, kEventDeadline), 2);
    EXPECT_NE(err.find(c.message), std::string::npos) << "stderr: " << err;
    EXPECT_NE(err.find("--help"), std::string::npos) << "stderr: " << err;
  }
  Child help = Spawn({"--help"});
  EXPECT_NE(ReadAllWithin(help.out.get(), kEventDeadline).find("Usage: tandem-wan-proxy"),
            std::string::npos);
  EXPECT_EQ(WaitExit(help.pid, kEventDeadline), 0);
}

// --- Through two network namespaces (root only) ---

// Runs `fn` on a thread that has joined network namespace `ns`; sockets it
// creates (and threads it starts) stay there.
bool RunInNetns(const std::string& ns, const std::function<void()>& fn) {
  bool joined = false;
  std::thread([&] {
    Fd fd(open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid() || setns(fd.get(), CLONE_NEWNET) != 0) return;
    joined = true;
    fn();
  }).join();
  return joined;
}

int RunScript(const std::string& command, const std::string& env) {
  std::string script = std::string(TANDEM_BUILT_SOURCE_DIR) + "/infra/wan-emulation.sh";
  return std::system((env + " " + script + " " + command + " >/dev/null 2>&1").c_str());
}

TEST(WanProxyNetnsTest, DelayOnTopOfTheShapedVethPair) {
  if (geteuid() != 0) GTEST_SKIP() << "creating network namespaces needs root";
  if (std::system("ip netns list >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "`ip netns` does not work here";
  }
  const std::string id = std::to_string(getpid());
  const std::string ns_a = "tandem-test-a-" + id;
  const std::string ns_b = "tandem-test-b-" + id;
  const std::string env = "TANDEM_NS_A=" + ns_a + " TANDEM_NS_B=" + ns_b + " TANDEM_VETH_A=tta" +
                          id + " TANDEM_VETH_B=ttb" + id +
                          " TANDEM_ADDR_A=10.201.0.1 TANDEM_ADDR_B=10.201.0.2"
                          " TANDEM_WAN_RATE=50mbit";
  struct Down {
    std::string env;
    ~Down() { RunScript("down", env); }
  } down{env};
  if (RunScript("up", env) != 0) GTEST_SKIP() << "wan-emulation.sh up failed (no veth or tbf?)";

  uint16_t target_port = 0;
  Fd target;
  ASSERT_TRUE(RunInNetns(ns_b, [&] { target = Listen(&target_port, "10.201.0.2"); }));
  std::unique_ptr<WanProxy> proxy;
  Fd client;
  ASSERT_TRUE(RunInNetns(ns_a, [&] {
    WanProxyOptions options;
    options.target = "10.201.0.2:" + std::to_string(target_port);
    options.delay = milliseconds(20);
    absl::StatusOr<std::unique_ptr<WanProxy>> started = WanProxy::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    proxy = std::move(*started);
    client = Connect(proxy->listen_port());
  }));
  ASSERT_NE(proxy, nullptr);
  Fd server = AcceptWithin(target.get(), kEventDeadline);
  ASSERT_TRUE(server.valid());

  Clock::time_point start = Clock::now();
  ASSERT_TRUE(SendAll(client.get(), "ping"));
  ASSERT_EQ(RecvExactly(server.get(), 4), "ping");
  ASSERT_TRUE(SendAll(server.get(), "pong"));
  ASSERT_EQ(RecvExactly(client.get(), 4), "pong");
  EXPECT_GE(SecondsSince(start), 0.040);

  const std::string data = RandomBytes(2'000'000, 5);  // 16 Mbit: 0.32 s at 50 Mbit/s
  start = Clock::now();
  std::thread sender([&, fd = client.get()] { EXPECT_TRUE(SendAll(fd, data)); });
  std::string got = RecvExactly(server.get(), data.size());
  double seconds = SecondsSince(start);
  sender.join();
  EXPECT_TRUE(got == data);
  EXPECT_GE(seconds, 0.25) << "tbf did not shape the veth";
  EXPECT_LT(seconds, 8.0);
  proxy->Stop();
}

}  // namespace
}  // namespace tandem::infra
