// `tandem up` as a user runs it: the real binary starts a coordinator, two
// agents and (with --wan-delay) two WAN proxies; the test talks to them over
// gRPC and the proxies' control sockets, stops `up` with a signal and checks
// that nothing is left behind. Every wait polls the real condition under a
// deadline.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "tandem/v1/coordinator.grpc.pb.h"
#include "tests/support/background_tandem.h"
#include "tests/support/run_tandem.h"
#include "transport/tls.h"

namespace tandem {
namespace {

using testing::BackgroundTandem;
using testing::FreeLoopbackPort;
using testing::RunTandem;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr auto kReadyDeadline = std::chrono::seconds(90);
constexpr auto kExitDeadline = std::chrono::seconds(60);

// The processes `up` printed it started: "coordinator", "agent cloud-a",
// "wan-proxy cloud-b", ... -> pid.
std::map<std::string, pid_t> StartedPids(const std::string& log) {
  std::map<std::string, pid_t> pids;
  const std::regex line(R"(^started (coordinator|agent [a-z-]+|wan-proxy [a-z-]+) \(pid (\d+)\))");
  std::istringstream in(log);
  std::string text;
  while (std::getline(in, text)) {
    std::smatch match;
    if (std::regex_search(text, match, line)) pids[match[1]] = std::stoi(match[2]);
  }
  return pids;
}

// True if no process with this pid and none in its process group exists.
bool Gone(pid_t pid) {
  return kill(pid, 0) != 0 && errno == ESRCH && kill(-pid, 0) != 0 && errno == ESRCH;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// One request on a proxy's control socket; the first line of the answer.
std::optional<std::string> Control(const std::string& address, const std::string& request) {
  const size_t colon = address.rfind(':');
  sockaddr_in target{};
  target.sin_family = AF_INET;
  target.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &target.sin_addr);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&target), sizeof(target)) != 0) {
    close(fd);
    return std::nullopt;
  }
  const std::string line = request + "\n";
  std::string answer;
  if (write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size())) {
    char c;
    while (read(fd, &c, 1) == 1 && c != '\n') answer.push_back(c);
  }
  close(fd);
  return answer;
}

class UpTest : public ::testing::Test {
 protected:
  std::string Home() const { return dir_.Join("home"); }
  std::string Log() const { return up_ ? up_->Log() : ""; }

  void StartUp(std::vector<std::string> flags) {
    std::vector<std::string> args = {"up", "--home", Home(), "--port", "0", "--wan-port", "0"};
    args.insert(args.end(), flags.begin(), flags.end());
    up_ = std::make_unique<BackgroundTandem>(args, dir_.Join("up.log"));
  }

  // Polls `ready` every 100 ms until it holds; fails if `up` exits first or
  // the deadline passes.
  void WaitFor(const std::string& what, const std::function<bool()>& ready,
               std::chrono::seconds deadline = kReadyDeadline) {
    const auto end = Clock::now() + deadline;
    while (!ready()) {
      std::optional<int> code = up_->Wait(std::chrono::milliseconds(100));
      ASSERT_FALSE(code.has_value())
          << "tandem up exited with " << *code << " before " << what << ":\n"
          << Log();
      ASSERT_LT(Clock::now(), end) << "timed out waiting for " << what << ":\n" << Log();
    }
  }

  // Waits until HOME/coordinator names a coordinator whose ListPools shows
  // cloud-a and cloud-b alive; returns the pools.
  std::vector<v1::PoolHealth> WaitUntilReady(
      std::shared_ptr<grpc::ChannelCredentials> credentials) {
    const std::string address_file = Home() + "/coordinator";
    WaitFor("HOME/coordinator", [&] { return std::filesystem::exists(address_file); });
    std::string address;
    std::getline(std::ifstream(address_file), address);
    EXPECT_FALSE(address.empty());
    auto stub = v1::JobService::NewStub(grpc::CreateChannel(address, credentials));
    std::vector<v1::PoolHealth> pools;
    WaitFor("cloud-a and cloud-b alive in ListPools", [&] {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::ListPoolsResponse response;
      if (!stub->ListPools(&context, v1::ListPoolsRequest(), &response).ok()) return false;
      int alive = 0;
      for (const v1::PoolHealth& pool : response.pools()) {
        alive +=
            pool.alive() && (pool.pool().cloud() == "cloud-a" || pool.pool().cloud() == "cloud-b");
      }
      pools.assign(response.pools().begin(), response.pools().end());
      return alive == 2;
    });
    return pools;
  }

  // Expects `up` to exit with `expected_code`, leaving none of the processes
  // it started (nor anything in their process groups) behind.
  void ExpectExit(int expected_code) {
    std::optional<int> code = up_->Wait(kExitDeadline);
    ASSERT_TRUE(code.has_value()) << "tandem up did not exit:\n" << Log();
    EXPECT_EQ(*code, expected_code) << Log();
    EXPECT_FALSE(std::filesystem::exists(Home() + "/coordinator"));
    for (const auto& [name, pid] : StartedPids(Log()))
      EXPECT_TRUE(Gone(pid)) << name << " (pid " << pid << ") is left";
  }

  void TearDown() override {
    // If a test failed halfway, take the children down with `up`.
    if (up_ == nullptr) return;
    for (const auto& [name, pid] : StartedPids(Log())) {
      if (!Gone(pid)) {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
      }
    }
    up_.reset();
  }

  TempDir dir_;
  std::unique_ptr<BackgroundTandem> up_;
};

TEST_F(UpTest, StartsTwoCloudsAndStopsEverythingOnSigint) {
  StartUp({"--insecure", "--slots", "1"});
  const std::vector<v1::PoolHealth> pools = WaitUntilReady(grpc::InsecureChannelCredentials());
  for (const v1::PoolHealth& pool : pools) EXPECT_EQ(pool.pool().slots(), 1u);
  const std::map<std::string, pid_t> pids = StartedPids(Log());
  ASSERT_EQ(pids.size(), 3u) << Log();
  for (const char* name : {"coordinator", "agent cloud-a", "agent cloud-b"}) {
    ASSERT_EQ(pids.count(name), 1u) << name << "\n" << Log();
    EXPECT_EQ(kill(pids.at(name), 0), 0) << name;
  }
  EXPECT_NE(Log().find("tandem submit --coordinator"), std::string::npos) << Log();
  for (const char* log : {"coordinator.log", "agent-cloud-a.log", "agent-cloud-b.log"}) {
    EXPECT_TRUE(std::filesystem::exists(Home() + "/logs/" + log)) << log;
  }

  kill(up_->pid(), SIGINT);
  ExpectExit(0);
  EXPECT_NE(Log().find("stopped"), std::string::npos) << Log();
  EXPECT_NE(ReadFile(Home() + "/logs/agent-cloud-a.log").find("stopped"), std::string::npos);
}

TEST_F(UpTest, EmulatesTheWanWithTlsAndProxiesThatAnswerOnTheirControlPorts) {
  StartUp({"--wan-delay", "5", "--wan-rate", "100"});
  const std::vector<v1::PoolHealth> pools = [&] {
    // The certificates exist by the time up writes the address file.
    WaitFor("HOME/coordinator", [&] { return std::filesystem::exists(Home() + "/coordinator"); });
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> tls =
        ChannelCredentials(Home() + "/certs");
    EXPECT_TRUE(tls.ok()) << tls.status();
    return WaitUntilReady(*tls);
  }();
  EXPECT_NE(Log().find("creating TLS certificates in " + Home() + "/certs"), std::string::npos)
      << Log();
  const std::map<std::string, pid_t> pids = StartedPids(Log());
  ASSERT_EQ(pids.size(), 5u) << Log();

  // Each proxy line: "wan-proxy cloud-a pid N LISTEN -> TARGET ... control CONTROL".
  const std::regex proxy_line(R"(wan-proxy (cloud-[ab])\s+pid \d+\s+(\S+) -> \S+.*control (\S+))");
  std::map<std::string, std::pair<std::string, std::string>> proxies;  // cloud -> listen, control
  std::istringstream in(Log());
  std::string line;
  while (std::getline(in, line)) {
    std::smatch match;
    if (std::regex_search(line, match, proxy_line)) proxies[match[1]] = {match[2], match[3]};
  }
  ASSERT_EQ(proxies.size(), 2u) << Log();
  for (const v1::PoolHealth& pool : pools) {
    // The other cloud dials the proxy, not the agent's own WAN port.
    EXPECT_EQ(pool.pool().wan_endpoint(), proxies.at(pool.pool().cloud()).first);
  }
  for (const auto& [cloud, addresses] : proxies) {
    std::optional<std::string> stats = Control(addresses.second, "stats");
    ASSERT_TRUE(stats.has_value()) << cloud << " control " << addresses.second;
    EXPECT_EQ(stats->substr(0, 1), "{") << *stats;
  }

  kill(up_->pid(), SIGTERM);
  ExpectExit(0);
}

TEST_F(UpTest, AChildThatDiesStopsTheRestAndExits1) {
  StartUp({"--insecure"});
  WaitUntilReady(grpc::InsecureChannelCredentials());
  const std::map<std::string, pid_t> pids = StartedPids(Log());
  ASSERT_EQ(pids.count("agent cloud-b"), 1u) << Log();
  kill(pids.at("agent cloud-b"), SIGKILL);
  ExpectExit(1);
  EXPECT_NE(Log().find("agent cloud-b (pid " + std::to_string(pids.at("agent cloud-b")) +
                       ") was killed by signal 9"),
            std::string::npos)
      << Log();
}

TEST_F(UpTest, ACoordinatorThatFailsToStartIsNamedWithTheEndOfItsLog) {
  // Another coordinator holds HOME's state (as a second `up` on the same
  // HOME with another port would find it).
  std::filesystem::create_directories(Home());
  BackgroundTandem holder({"coordinator", "--listen", "127.0.0.1:0", "--state",
                           Home() + "/coordinator-state", "--insecure"},
                          dir_.Join("holder.log"));
  const auto end = Clock::now() + kReadyDeadline;
  while (holder.Log().find("listening on") == std::string::npos) {
    ASSERT_FALSE(holder.Wait(std::chrono::milliseconds(100)).has_value()) << holder.Log();
    ASSERT_LT(Clock::now(), end) << holder.Log();
  }
  StartUp({"--insecure"});
  ExpectExit(1);
  EXPECT_NE(Log().find("tandem up: coordinator (pid"), std::string::npos) << Log();
  EXPECT_NE(Log().find("exited with code 1; the end of " + Home() + "/logs/coordinator.log"),
            std::string::npos)
      << Log();
  EXPECT_EQ(StartedPids(Log()).count("agent cloud-a"), 0u) << Log();
  EXPECT_FALSE(std::filesystem::exists(Home() + "/coordinator"));
}

TEST_F(UpTest, APortInUseIsReportedBeforeAnythingStarts) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  const std::string port = std::to_string(ntohs(address.sin_port));
  testing::RunResult result =
      RunTandem({"up", "--home", Home(), "--insecure", "--port", port, "--wan-port", "0"});
  close(fd);
  EXPECT_EQ(result.exit_code, 1) << result.out << result.err;
  EXPECT_NE(result.err.find("127.0.0.1:" + port + " is in use"), std::string::npos) << result.err;
  EXPECT_EQ(result.out.find("started"), std::string::npos) << result.out;
}

TEST_F(UpTest, StartupDeadlineFires) {
  StartUp({"--insecure", "--startup-timeout", "0.001"});
  ExpectExit(1);
  EXPECT_NE(Log().find("within 0.001 s (--startup-timeout)"), std::string::npos) << Log();
  EXPECT_EQ(StartedPids(Log()).count("coordinator"), 1u) << Log();
}

TEST(UpFlagsTest, HelpAndUsageErrors) {
  testing::RunResult help = RunTandem({"up", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("cloud-a"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("--wan-delay"), std::string::npos) << help.out;
  EXPECT_EQ(RunTandem({"up", "--slots", "0"}).exit_code, 2);
  EXPECT_EQ(RunTandem({"up", "--no-such-flag"}).exit_code, 2);
  EXPECT_EQ(RunTandem({"up", "--wan-rate", "-1"}).exit_code, 2);
}

}  // namespace
}  // namespace tandem
