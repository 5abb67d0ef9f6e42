// The commands that talk to the coordinator (submit, status, list, logs,
// cancel, migrate, checkpoints JOB, export JOB), run as the real `tandem`
// binary: against no server (exit 3 within the connect timeout), against
// servers that never answer (each deadline fires), and against a real
// CoordinatorServer on 127.0.0.1:0 with a fake agent (a gRPC client of the
// AgentService, plus a ReplicationService serving a store) standing in for a
// cloud.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "checkpoint/checkpoint_store.h"
#include "checkpoint/replication.h"
#include "coordinator/coordinator_server.h"
#include "tandem/v1/coordinator.grpc.pb.h"
#include "tests/support/background_tandem.h"
#include "tests/support/run_tandem.h"
#include "transport/tls.h"

extern char** environ;

namespace tandem {
namespace {

using ::testing::HasSubstr;
using testing::RunResult;
using testing::RunTandem;
using testing::TempDir;

constexpr char kSpec[] = R"(name: cli-test
model:
  arch: mlp
train:
  epochs: 1
  max_steps: 20
pools:
  - {cloud: cloud-a, workers: 2}
)";

// A listening TCP socket on 127.0.0.1 that never accepts: connections
// complete in the kernel, but no gRPC server ever answers on them.
class SilentListener {
 public:
  SilentListener() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(fd_, 16);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~SilentListener() { close(fd_); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// An address where nothing listens: a port the kernel gave us, released.
std::string ClosedAddress() {
  int port = 0;
  {
    SilentListener listener;
    port = std::stoi(listener.address().substr(listener.address().rfind(':') + 1));
  }
  return "127.0.0.1:" + std::to_string(port);
}

// Sets an environment variable for the life of the object.
class ScopedEnv {
 public:
  // A null `value` unsets it.
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = getenv(name);
    if (old != nullptr) old_ = old;
    had_ = old != nullptr;
    if (value == nullptr) {
      unsetenv(name);
    } else {
      setenv(name, value, 1);
    }
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// Starts `tandem ARGS` with stdout and stderr going to files; returns its pid.
pid_t SpawnTandem(std::vector<std::string> args, const std::string& out, const std::string& err) {
  args.insert(args.begin(), testing::TandemBinary());
  std::vector<char*> argp;
  for (std::string& a : args) argp.push_back(a.data());
  argp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out.c_str(), O_WRONLY | O_CREAT, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err.c_str(), O_WRONLY | O_CREAT, 0644);
  pid_t pid = 0;
  if (posix_spawn(&pid, argp[0], &actions, nullptr, argp.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Waits (at most 30 s) until the file at `path` contains `text`.
bool WaitForText(const std::string& path, const std::string& text) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (ReadAll(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// ---------------------------------------------------------------------------
// Without a coordinator.

TEST(ClientCommandsTest, UnreachableCoordinatorExitsThreeAndSaysHowToFix) {
  const std::string address = ClosedAddress();
  const auto start = std::chrono::steady_clock::now();
  RunResult run =
      RunTandem({"status", "--coordinator", address, "--insecure", "--connect-timeout", "0.5"});
  EXPECT_EQ(run.exit_code, 3) << run.err;
  EXPECT_THAT(run.err, HasSubstr("tandem status: cannot reach the coordinator at " + address));
  EXPECT_THAT(run.err, HasSubstr("--coordinator"));
  EXPECT_THAT(run.err, HasSubstr("TANDEM_COORDINATOR"));
  // The connect deadline fired rather than a wait without end.
  EXPECT_LT(SecondsSince(start), 30);
}

TEST(ClientCommandsTest, ConnectTimeoutFiresOnAServerThatNeverAnswers) {
  SilentListener silent;
  RunResult run = RunTandem(
      {"list", "--coordinator", silent.address(), "--insecure", "--connect-timeout", "0.3"});
  EXPECT_EQ(run.exit_code, 3) << run.err;
  EXPECT_THAT(run.err, HasSubstr("cannot reach the coordinator at " + silent.address()));
  // gRPC's own handshake timeout, or ours when gRPC has no error to tell.
  EXPECT_THAT(run.err, ::testing::AnyOf(HasSubstr("timed out"), HasSubstr("--connect-timeout")));
}

TEST(ClientCommandsTest, AddressComesFromTheEnvironmentThenTheFile) {
  TempDir home;
  const std::string from_file = ClosedAddress();
  std::filesystem::create_directories(home.Join(".tandem"));
  home.Write(".tandem/coordinator", from_file + "\n");
  ScopedEnv home_env("HOME", home.path().c_str());
  ScopedEnv no_env("TANDEM_COORDINATOR", nullptr);
  {
    RunResult run = RunTandem({"list", "--insecure", "--connect-timeout", "0.2"});
    EXPECT_EQ(run.exit_code, 3);
    EXPECT_THAT(run.err, HasSubstr("at " + from_file));
    EXPECT_THAT(run.err, HasSubstr(home.Join(".tandem/coordinator")));
  }
  const std::string from_env = ClosedAddress();
  ScopedEnv coordinator_env("TANDEM_COORDINATOR", from_env.c_str());
  RunResult run = RunTandem({"list", "--insecure", "--connect-timeout", "0.2"});
  EXPECT_EQ(run.exit_code, 3);
  EXPECT_THAT(run.err, HasSubstr("at " + from_env));
  EXPECT_THAT(run.err, HasSubstr("$TANDEM_COORDINATOR"));
}

TEST(ClientCommandsTest, MissingTlsMaterialIsReportedBeforeDialing) {
  TempDir dir;
  RunResult run = RunTandem({"list", "--coordinator", ClosedAddress(), "--certs", dir.Join("none"),
                             "--connect-timeout", "0.2"});
  EXPECT_EQ(run.exit_code, 3);
  EXPECT_THAT(run.err, HasSubstr("no TLS credentials"));
  EXPECT_THAT(run.err, HasSubstr("--insecure"));
}

TEST(ClientCommandsTest, MalformedSpecExitsTwoNamingTheFieldBeforeDialing) {
  TempDir dir;
  const std::string spec = dir.Write("bad.yaml", R"(name: bad
model:
  arch: cnn
train:
  lr: -1
pools:
  - {cloud: cloud-a, workers: 2}
)");
  // Nothing listens there: a spec error must win over the connection.
  RunResult run = RunTandem({"submit", spec, "--coordinator", ClosedAddress(), "--insecure"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("train.lr"));
  EXPECT_THAT(run.err, ::testing::Not(HasSubstr("cannot reach")));
}

TEST(ClientCommandsTest, BadFlagsExitTwo) {
  const std::vector<std::vector<std::string>> cases = {
      {"status", "--bogus"},
      {"status", "--watch"},
      {"status", "job", "--output", "xml"},
      {"list", "--connect-timeout", "soon"},
      {"list", "--connect-timeout", "0"},
      {"submit"},
      {"logs"},
      {"cancel"},
      {"migrate", "job-1"},
      {"checkpoints", "job-1", "--store", "/tmp/x"},
      {"export", "job-1"},
      {"status", "--coordinator", "no-port", "--insecure"},
  };
  for (const std::vector<std::string>& args : cases) {
    RunResult run = RunTandem(args);
    EXPECT_EQ(run.exit_code, 2) << ::testing::PrintToString(args) << ": " << run.err;
    EXPECT_FALSE(run.err.empty()) << ::testing::PrintToString(args);
  }
}

TEST(ClientCommandsTest, HelpTellsTheFlagsAndExitCodes) {
  for (const std::string command :
       {"submit", "status", "list", "logs", "cancel", "migrate", "checkpoints", "export"}) {
    RunResult run = RunTandem({command, "--help"});
    EXPECT_EQ(run.exit_code, 0) << command;
    EXPECT_THAT(run.out, HasSubstr("Usage: tandem " + command)) << command;
    EXPECT_THAT(run.out, HasSubstr("--coordinator")) << command;
    EXPECT_THAT(run.out, HasSubstr("--connect-timeout")) << command;
    EXPECT_THAT(run.out, HasSubstr("--insecure")) << command;
    EXPECT_THAT(run.out, HasSubstr("--output")) << command;
    EXPECT_THAT(run.out, HasSubstr("TANDEM_COORDINATOR")) << command;
    EXPECT_THAT(run.out, HasSubstr("3 ")) << command;
  }
  RunResult top = RunTandem({"--help"});
  for (const std::string command : {"submit SPEC", "status [JOB]", "list", "logs JOB", "cancel JOB",
                                    "migrate JOB", "checkpoints JOB", "export JOB"}) {
    EXPECT_THAT(top.out, HasSubstr(command));
  }
}

// A JobService whose every call waits far past any client deadline.
class StalledJobService final : public v1::JobService::Service {
 public:
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest*,
                      v1::JobStatus*) override {
    for (int i = 0; i < 300 && !context->IsCancelled(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return grpc::Status::CANCELLED;
  }
};

TEST(ClientCommandsTest, RpcTimeoutFiresOnACoordinatorThatDoesNotAnswer) {
  StalledJobService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(port, 0);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  RunResult run = RunTandem(
      {"status", "job-1", "--coordinator", address, "--insecure", "--rpc-timeout", "0.3"});
  EXPECT_EQ(run.exit_code, 3) << run.err;
  EXPECT_THAT(run.err, HasSubstr("did not answer within 0.3 s (--rpc-timeout)"));
  server->Shutdown(std::chrono::system_clock::now());
}

// ---------------------------------------------------------------------------
// Against a real coordinator.

// One cloud's agent as the coordinator sees it: registered through the
// AgentService, heartbeating, with a checkpoint store served by a
// ReplicationService (what `export JOB` pulls from).
class FakeAgent {
 public:
  FakeAgent(const std::string& coordinator, const std::string& cloud, const std::string& store_dir)
      : cloud_(cloud) {
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(store_dir);
    EXPECT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    replication_ = std::make_unique<ReplicationService>(*store_);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.SetMaxReceiveMessageSize(kReplicationMaxMessageBytes);
    builder.SetMaxSendMessageSize(kReplicationMaxMessageBytes);
    builder.RegisterService(replication_.get());
    server_ = builder.BuildAndStart();

    stub_ = v1::AgentService::NewStub(
        grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials()));
    v1::RegisterPoolRequest request;
    request.mutable_pool()->set_cloud(cloud);
    request.mutable_pool()->set_slots(4);
    request.mutable_pool()->set_wan_endpoint("127.0.0.1:1");
    request.mutable_pool()->set_replication_endpoint("127.0.0.1:" + std::to_string(port_));
    v1::RegisterPoolResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status = stub_->RegisterPool(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    lease_id_ = response.lease().lease_id();
    heartbeat_ = std::thread([this] {
      while (!stop_) {
        v1::HeartbeatRequest beat;
        beat.set_lease_id(lease_id_);
        beat.set_cloud(cloud_);
        beat.set_free_slots(4);
        v1::HeartbeatResponse ignored;
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        stub_->Heartbeat(&context, beat, &ignored);
        for (int i = 0; i < 5 && !stop_; ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      }
    });
  }

  ~FakeAgent() {
    stop_ = true;
    heartbeat_.join();
    server_->Shutdown(std::chrono::system_clock::now());
  }

  CheckpointStore& store() { return *store_; }

  // Sends the coordinator what a pool leader's agent would: log lines and
  // the checkpoints committed since the last report.
  grpc::Status Report(const std::string& job, const std::vector<std::string>& logs,
                      const std::vector<v1::CheckpointInfo>& checkpoints,
                      const v1::TrainingProgress* progress = nullptr) {
    v1::PoolReport report;
    if (progress != nullptr) *report.mutable_progress() = *progress;
    report.set_job_id(job);
    report.set_cloud(cloud_);
    report.set_pool_index(0);
    for (const std::string& text : logs) report.add_logs()->set_text(text);
    for (const v1::CheckpointInfo& c : checkpoints) *report.add_checkpoints() = c;
    v1::PoolReportResponse ignored;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub_->ReportPool(&context, report, &ignored);
  }

 private:
  std::string cloud_;
  std::unique_ptr<CheckpointStore> store_;
  std::unique_ptr<ReplicationService> replication_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<v1::AgentService::Stub> stub_;
  std::string lease_id_;
  std::atomic<bool> stop_{false};
  std::thread heartbeat_;
};

class WithCoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorOptions options;
    options.listen = "127.0.0.1:0";
    options.state_dir = dir_.Join("coordinator");
    absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    address_ = "127.0.0.1:" + std::to_string(server_->port());
    stub_ =
        v1::JobService::NewStub(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    agent_.reset();
    if (server_ != nullptr) server_->Shutdown();
  }

  void StartAgent() {
    agent_ = std::make_unique<FakeAgent>(address_, "cloud-a", dir_.Join("store-a"));
  }

  // `tandem ARGS --coordinator ADDR --insecure`.
  RunResult Tandem(std::vector<std::string> args) {
    args.insert(args.end(), {"--coordinator", address_, "--insecure"});
    return RunTandem(args);
  }

  nlohmann::json Json(const RunResult& run) {
    nlohmann::json j = nlohmann::json::parse(run.LastLine(), nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << run.out << run.err;
    return j;
  }

  // Submits kSpec; returns the job id.
  std::string Submit() {
    const std::string spec = dir_.Write("job.yaml", kSpec);
    RunResult run = Tandem({"submit", spec, "--output", "json"});
    EXPECT_EQ(run.exit_code, 0) << run.err;
    nlohmann::json j = Json(run);
    if (!j.is_object() || !j.contains("job") || !j["job"].is_string()) return "";
    return j["job"].get<std::string>();
  }

  TempDir dir_;
  std::unique_ptr<CoordinatorServer> server_;
  std::string address_;
  std::unique_ptr<v1::JobService::Stub> stub_;
  std::unique_ptr<FakeAgent> agent_;
};

TEST(ClientCommandsTlsTest, MutualTlsWithCertsAndRefusedWithout) {
  TempDir dir;
  const std::string certs = dir.Join("certs");
  ASSERT_TRUE(CreateCertificates(certs, {"localhost", "127.0.0.1"}).ok());
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = ServerCredentials(certs);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  CoordinatorOptions options;
  options.state_dir = dir.Join("coordinator");
  options.credentials = *credentials;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = "127.0.0.1:" + std::to_string((*server)->port());

  RunResult tls = RunTandem({"list", "--coordinator", address, "--certs", certs});
  EXPECT_EQ(tls.exit_code, 0) << tls.err;
  EXPECT_THAT(tls.out, HasSubstr("JOB"));

  RunResult plaintext =
      RunTandem({"list", "--coordinator", address, "--insecure", "--connect-timeout", "0.5"});
  EXPECT_EQ(plaintext.exit_code, 3);
  EXPECT_THAT(plaintext.err, HasSubstr("cannot reach the coordinator at " + address));

  // Certificates from another CA are refused in the handshake.
  const std::string other = dir.Join("other");
  ASSERT_TRUE(CreateCertificates(other, {"localhost", "127.0.0.1"}).ok());
  RunResult stranger =
      RunTandem({"list", "--coordinator", address, "--certs", other, "--connect-timeout", "0.5"});
  EXPECT_EQ(stranger.exit_code, 3);
  EXPECT_THAT(stranger.err, HasSubstr("cannot reach the coordinator at " + address));
}

TEST_F(WithCoordinatorTest, SubmitToAnUnknownCloudExitsTwoNamingTheField) {
  const std::string spec = dir_.Write("job.yaml", kSpec);
  RunResult run = Tandem({"submit", spec});
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_THAT(run.err, HasSubstr("pools[0].cloud"));
  EXPECT_THAT(run.err, HasSubstr("cloud-a"));
}

TEST_F(WithCoordinatorTest, UnknownJobExitsTwo) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"status", "unknown-job"},
           {"status", "unknown-job", "--watch"},
           {"logs", "unknown-job"},
           {"cancel", "unknown-job"},
           {"checkpoints", "unknown-job"},
           {"export", "unknown-job", "-o", "/tmp/never-written.pt"}}) {
    RunResult run = Tandem(args);
    EXPECT_EQ(run.exit_code, 2) << ::testing::PrintToString(args) << run.err;
    EXPECT_THAT(run.err, HasSubstr("no job")) << ::testing::PrintToString(args);
  }
}

TEST_F(WithCoordinatorTest, EmptyCoordinatorStatusAndList) {
  RunResult status = Tandem({"status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("no clouds registered"));
  EXPECT_THAT(status.out, HasSubstr("no jobs"));
  RunResult list = Tandem({"list", "--output", "json"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_EQ(Json(list), nlohmann::json::array());
}

TEST_F(WithCoordinatorTest, SubmitListStatusCancel) {
  StartAgent();
  const std::string job = Submit();
  ASSERT_FALSE(job.empty());

  RunResult shown = Tandem({"status", job, "--output", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  nlohmann::json status = Json(shown);
  EXPECT_EQ(status["job"], job);
  EXPECT_THAT(status["state"].get<std::string>(),
              ::testing::AnyOf("PENDING", "STARTING", "RUNNING"));
  for (const char* key :
       {"step", "total_steps", "loss", "test_accuracy", "wan_bytes_sent", "compression_ratio",
        "generation", "restarts", "last_detect_s", "last_recover_s", "pools", "events"}) {
    EXPECT_TRUE(status.contains(key)) << key;
  }
  ASSERT_EQ(status["pools"].size(), 1u);
  EXPECT_EQ(status["pools"][0]["cloud"], "cloud-a");
  EXPECT_EQ(status["pools"][0]["workers"], 2);
  EXPECT_TRUE(status["pools"][0]["state"].is_string());
  ASSERT_FALSE(status["events"].empty());
  EXPECT_EQ(status["events"][0]["to"], "PENDING");
  EXPECT_EQ(status["events"][0]["reason"], "submitted");

  RunResult list = Tandem({"list", "--output", "json"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  nlohmann::json jobs = Json(list);
  ASSERT_TRUE(jobs.is_array());
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0]["job"], job);
  RunResult list_text = Tandem({"list"});
  EXPECT_THAT(list_text.out, HasSubstr(job));

  RunResult overview = Tandem({"status", "--output", "json"});
  ASSERT_EQ(overview.exit_code, 0) << overview.err;
  nlohmann::json all = Json(overview);
  ASSERT_EQ(all["clouds"].size(), 1u);
  EXPECT_EQ(all["clouds"][0]["cloud"], "cloud-a");
  EXPECT_EQ(all["clouds"][0]["alive"], true);
  EXPECT_EQ(all["clouds"][0]["slots"], 4);
  EXPECT_EQ(all["jobs"][0]["job"], job);

  RunResult cancelled = Tandem({"cancel", job, "--reason", "test is over", "--output", "json"});
  ASSERT_EQ(cancelled.exit_code, 0) << cancelled.err;
  EXPECT_EQ(Json(cancelled)["state"], "CANCELLED");

  RunResult after = Tandem({"status", job, "--output", "json"});
  ASSERT_EQ(after.exit_code, 0) << after.err;
  nlohmann::json events = Json(after)["events"];
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["to"], "CANCELLED");
  EXPECT_THAT(events.back()["reason"].get<std::string>(), HasSubstr("test is over"));
  RunResult text = Tandem({"status", job});
  EXPECT_THAT(text.out, HasSubstr("CANCELLED"));
  EXPECT_THAT(text.out, HasSubstr("test is over"));

  // Cancelling twice is refused by the server (FAILED_PRECONDITION): exit 1.
  RunResult again = Tandem({"cancel", job});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.err, HasSubstr("already CANCELLED"));

  // Watching an ended job ends at once, with its outcome.
  RunResult watch = Tandem({"status", job, "--watch"});
  EXPECT_EQ(watch.exit_code, 1) << watch.err;
  EXPECT_THAT(watch.out, HasSubstr("CANCELLED"));
}

TEST_F(WithCoordinatorTest, WatchEndsWithTheJob) {
  StartAgent();
  const std::string job = Submit();
  ASSERT_FALSE(job.empty());
  const std::string log = dir_.Join("watch.log");
  testing::BackgroundTandem watch({"status", job, "--watch", "--interval", "0.1", "--output",
                                   "json", "--coordinator", address_, "--insecure"},
                                  log);
  // The watch has shown the running job before it is cancelled.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (watch.Log().find("\"state\"") == std::string::npos) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << watch.Log();
    ASSERT_FALSE(watch.Wait(std::chrono::milliseconds(20)).has_value()) << watch.Log();
  }
  v1::CancelJobRequest request;
  request.set_job_id(job);
  request.set_reason("from the test");
  v1::JobStatus ignored;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  ASSERT_TRUE(stub_->CancelJob(&context, request, &ignored).ok());
  EXPECT_EQ(watch.Wait(std::chrono::seconds(60)), std::optional<int>(1)) << watch.Log();
  const std::string out = watch.Log();
  // One JSON object per change: the running job's first view, then the end.
  EXPECT_GE(std::count(out.begin(), out.end(), '\n'), 2) << out;
  EXPECT_THAT(out, HasSubstr("CANCELLED"));
}

TEST_F(WithCoordinatorTest, WatchRedrawsInPlaceOnATerminal) {
  StartAgent();
  const std::string job = Submit();
  ASSERT_FALSE(job.empty());
  v1::TrainingProgress progress;
  progress.set_step(5);
  progress.set_total_steps(20);
  progress.set_loss(0.75);
  progress.set_samples_per_s(1000);
  progress.set_test_accuracy(-1);
  progress.set_wan_bytes_sent(1000000);
  progress.set_wall_s(1);
  progress.set_compression_ratio(4);
  ASSERT_TRUE(agent_->Report(job, {}, {}, &progress).ok());
  // `script` gives the command a pseudo-terminal and copies what it draws.
  const std::string command = testing::TandemBinary() + " status " + job +
                              " --watch --interval 0.1 --insecure --coordinator " + address_;
  std::future<int> scripted = std::async(std::launch::async, [&] {
    return std::system(
        ("script -qfec '" + command + "' " + dir_.Join("typescript") + " > /dev/null 2>&1")
            .c_str());
  });
  // Step 10 only once step 5 is on the screen, then the end once step 10 is.
  auto wait_for_screen = [&](const std::string& text) {
    return WaitForText(dir_.Join("typescript"), text);
  };
  ASSERT_TRUE(wait_for_screen("step 5/20"));
  progress.set_step(10);
  progress.set_wan_bytes_sent(3000000);
  progress.set_wall_s(2);
  progress.set_test_accuracy(0.5);
  ASSERT_TRUE(agent_->Report(job, {}, {}, &progress).ok());
  ASSERT_TRUE(wait_for_screen("step 10/20"));
  v1::CancelJobRequest request;
  request.set_job_id(job);
  v1::JobStatus ignored;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  ASSERT_TRUE(stub_->CancelJob(&context, request, &ignored).ok());
  ASSERT_EQ(scripted.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  const int status = scripted.get();
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);  // CANCELLED
  const std::string drawn = ReadAll(dir_.Join("typescript"));
  EXPECT_THAT(drawn, HasSubstr("\033[?25l"));  // cursor hidden while drawing
  EXPECT_THAT(drawn, HasSubstr("\033[?25h"));  // and shown again at the end
  EXPECT_THAT(drawn, HasSubstr("step 5/20 [######"));
  EXPECT_THAT(drawn, HasSubstr("step 10/20 [############"));
  EXPECT_THAT(drawn, HasSubstr("test acc 0.5000"));
  EXPECT_THAT(drawn, HasSubstr("WAN 2.00 MB/s, x4.0 compressed"));
  EXPECT_THAT(drawn, HasSubstr("ETA "));
  EXPECT_THAT(drawn, HasSubstr("\033[3F"));  // moved up over the 3 lines drawn before
  EXPECT_THAT(drawn, HasSubstr("CANCELLED"));
}

TEST_F(WithCoordinatorTest, CtrlCStopsWatchingNotTheJob) {
  StartAgent();
  const std::string job = Submit();
  ASSERT_FALSE(job.empty());
  const std::string out = dir_.Join("watch.out");
  const std::string err = dir_.Join("watch.err");
  const pid_t pid = SpawnTandem(
      {"status", job, "--watch", "--interval", "0.1", "--coordinator", address_, "--insecure"}, out,
      err);
  ASSERT_GT(pid, 0);
  // Interrupt once the first view is out, so the handler is installed.
  EXPECT_TRUE(WaitForText(out, "job " + job));
  kill(pid, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_THAT(ReadAll(err), HasSubstr("stopped watching; job " + job + " goes on"));
  RunResult after = Tandem({"status", job, "--output", "json"});
  EXPECT_THAT(Json(after)["state"].get<std::string>(), ::testing::AnyOf("PENDING", "STARTING"));
}

TEST_F(WithCoordinatorTest, WatchGivesUpOnALostCoordinator) {
  StartAgent();
  const std::string job = Submit();
  ASSERT_FALSE(job.empty());
  const std::string out = dir_.Join("watch.out");
  const std::string err = dir_.Join("watch.err");
  const pid_t pid = SpawnTandem(
      {"status", job, "--watch", "--interval", "0.1", "--output", "json", "--connect-timeout", "1",
       "--rpc-timeout", "0.5", "--coordinator", address_, "--insecure"},
      out, err);
  ASSERT_GT(pid, 0);
  EXPECT_TRUE(WaitForText(out, job));
  agent_.reset();
  server_->Shutdown();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  EXPECT_THAT(ReadAll(err), HasSubstr("tandem status: "));
  EXPECT_THAT(ReadAll(err), HasSubstr(address_));
}

TEST_F(WithCoordinatorTest, LogsFollowUntilTheJobEnds) {
  StartAgent();
  const std::string job = Submit();
  ASSERT_FALSE(job.empty());
  ASSERT_TRUE(agent_->Report(job, {"first line"}, {}).ok());
  RunResult logs = Tandem({"logs", job});
  EXPECT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_THAT(logs.out, HasSubstr("[cloud-a] first line"));

  std::future<RunResult> follow = std::async(std::launch::async, [&] {
    return Tandem({"logs", job, "-f"});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_TRUE(agent_->Report(job, {"second line"}, {}).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  v1::CancelJobRequest request;
  request.set_job_id(job);
  v1::JobStatus ignored;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  ASSERT_TRUE(stub_->CancelJob(&context, request, &ignored).ok());
  ASSERT_EQ(follow.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  RunResult run = follow.get();
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("[cloud-a] first line"));
  EXPECT_THAT(run.out, HasSubstr("[cloud-a] second line"));
}

TEST_F(WithCoordinatorTest, CheckpointsAndExportFetchFromTheCloudThatHasIt) {
  StartAgent();
  const std::string job = Submit();
  ASSERT_FALSE(job.empty());
  // The agent's store holds a checkpoint of the job, as its pool would save.
  const std::vector<float> weight = {1.5f, -2.0f, 0.25f, 4.0f};
  const std::vector<float> momentum = {0, 0, 0, 0};
  v1::CheckpointManifest manifest;
  manifest.set_job(job);
  manifest.set_step(10);
  absl::StatusOr<v1::CheckpointManifest> saved = agent_->store().Save(
      manifest,
      {{"model.fc.weight", v1::DTYPE_FLOAT32, {2, 2}, weight.data(), weight.size() * 4},
       {"optim.momentum.fc.weight",
        v1::DTYPE_FLOAT32,
        {2, 2},
        momentum.data(),
        momentum.size() * 4}},
      3);
  ASSERT_TRUE(saved.ok()) << saved.status();
  v1::CheckpointInfo info;
  info.set_step(10);
  info.set_total_bytes(saved->total_bytes());
  info.set_created_unix_ms(saved->created_unix_ms());
  info.set_state_digest(saved->state_digest());
  ASSERT_TRUE(agent_->Report(job, {}, {info}).ok());

  RunResult list = Tandem({"checkpoints", job, "--output", "json"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  nlohmann::json checkpoints = Json(list)["checkpoints"];
  ASSERT_EQ(checkpoints.size(), 1u);
  EXPECT_EQ(checkpoints[0]["cloud"], "cloud-a");
  EXPECT_EQ(checkpoints[0]["step"], 10);
  EXPECT_EQ(checkpoints[0]["state_digest"], saved->state_digest());
  RunResult text = Tandem({"checkpoints", job});
  EXPECT_THAT(text.out, HasSubstr("cloud-a"));

  const std::string file = dir_.Join("model.pt");
  RunResult exported = Tandem({"export", job, "-o", file, "--output", "json"});
  ASSERT_EQ(exported.exit_code, 0) << exported.err;
  nlohmann::json result = Json(exported);
  EXPECT_EQ(result["step"], 10);
  EXPECT_EQ(result["cloud"], "cloud-a");
  EXPECT_EQ(result["tensors"], 1);
  EXPECT_TRUE(std::filesystem::exists(file));

  // The same file as the local export of that store writes.
  const std::string local_file = dir_.Join("local.pt");
  RunResult local = RunTandem({"export", "--store", dir_.Join("store-a"), "--job", job, "-o",
                               local_file, "--output", "json"});
  ASSERT_EQ(local.exit_code, 0) << local.err;
  EXPECT_EQ(Json(local)["model_digest"], result["model_digest"]);

  RunResult missing = Tandem({"export", job, "-o", file, "--step", "99"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("no checkpoint of job " + job + " at step 99"));
}

TEST_F(WithCoordinatorTest, MigrateToAnUnknownCloudIsRefused) {
  StartAgent();
  const std::string job = Submit();
  ASSERT_FALSE(job.empty());
  RunResult run = Tandem({"migrate", job, "--to", "cloud-z"});
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.exit_code, 3);
  EXPECT_THAT(run.err, HasSubstr("tandem migrate: "));
}

}  // namespace
}  // namespace tandem
