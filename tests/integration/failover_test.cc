// The control plane with real processes: `tandem coordinator`, one
// `tandem agent` per cloud and the worker groups they start with mpirun,
// talking over gRPC on loopback. A cloud is lost by killing its agent's whole
// process group (agent, mpirun, workers) with SIGKILL, as a vanished machine
// would; the job must finish on the other cloud without losing a step, and
// every training sample must be used exactly once (the workers' sample logs).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "infra/wan_proxy/wan_proxy.h"
#include "tandem/v1/coordinator.grpc.pb.h"
#include "tests/support/background_tandem.h"
#include "tests/support/cpu_limits.h"
#include "tests/support/run_tandem.h"
#include "tests/support/sample_log.h"
#include "worker/job_spec.h"
#include "worker/sampler.h"

namespace tandem {
namespace {

using testing::BackgroundTandem;
using testing::FreeLoopbackPort;
using testing::TempDir;
using infra::WanProxy;
using infra::WanProxyOptions;
using Clock = std::chrono::steady_clock;

constexpr auto kJobDeadline = std::chrono::minutes(6);

std::string Address(int port) { return absl::StrFormat("127.0.0.1:%d", port); }

class Cluster {
 public:
  explicit Cluster(const TempDir& dir) : dir_(dir), coordinator_port_(FreeLoopbackPort()) {
    std::filesystem::create_directories(dir_.Join("samples"));
  }

  void StartCoordinator() {
    coordinator_ = std::make_unique<BackgroundTandem>(
        std::vector<std::string>{"coordinator", "--listen", Address(coordinator_port_),
                                 "--state", dir_.Join("coordinator"), "--insecure",
                                 "--lease-ttl-ms", "2000"},
        dir_.Join("coordinator.log"));
    auto channel =
        grpc::CreateChannel(Address(coordinator_port_), grpc::InsecureChannelCredentials());
    ASSERT_TRUE(channel->WaitForConnected(std::chrono::system_clock::now() +
                                          std::chrono::seconds(30)))
        << coordinator_->Log();
    jobs_ = v1::JobService::NewStub(channel);
  }

  std::string state_dir() const { return dir_.Join("coordinator"); }

  void KillCoordinator() {
    coordinator_->SignalGroup(SIGKILL);
    coordinator_->Wait(std::chrono::milliseconds(-1));
  }

  // With `behind_proxy`, other clouds reach this one's leaders through a
  // WanProxy (the emulated WAN), which the test can partition.
  void StartAgent(const std::string& cloud, int slots, bool behind_proxy = false) {
    if (wan_ports_.count(cloud) == 0) wan_ports_[cloud] = FreeLoopbackPort();
    if (replication_ports_.count(cloud) == 0) replication_ports_[cloud] = FreeLoopbackPort();
    std::string advertise = Address(wan_ports_[cloud]);
    if (behind_proxy) {
      WanProxyOptions options;
      options.target = advertise;
      absl::StatusOr<std::unique_ptr<WanProxy>> proxy = WanProxy::Start(options);
      ASSERT_TRUE(proxy.ok()) << proxy.status();
      advertise = (*proxy)->listen_address();
      proxies_[cloud] = std::move(*proxy);
    }
    agents_[cloud] = std::make_unique<BackgroundTandem>(
        std::vector<std::string>{"agent", "--cloud", cloud, "--coordinator",
                                 Address(coordinator_port_), "--store", dir_.Join(cloud),
                                 "--slots", std::to_string(slots), "--wan-listen",
                                 Address(wan_ports_[cloud]), "--wan-advertise", advertise,
                                 "--replication-listen", Address(replication_ports_[cloud]),
                                 "--insecure", "--heartbeat-ms", "500", "--exchange-timeout-ms",
                                 "5000", "--sample-log", dir_.Join("samples")},
        dir_.Join(cloud + ".log"));
  }

  pid_t AgentPid(const std::string& cloud) { return agents_[cloud]->pid(); }

  void Partition(bool on) {
    for (auto& [cloud, proxy] : proxies_) ASSERT_TRUE(proxy->SetPartitioned(on).ok());
  }

  // The cloud vanishes: its agent and every process it started.
  void KillCloud(const std::string& cloud) {
    const std::vector<pid_t> tree = testing::ProcessTree(agents_[cloud]->pid());
    EXPECT_GE(tree.size(), 3u) << "the agent, mpirun and a worker";
    agents_[cloud]->SignalTree(SIGKILL);
    agents_[cloud]->Wait(std::chrono::milliseconds(-1));
  }

  // Waits until every named cloud is registered and alive.
  void WaitForClouds(const std::vector<std::string>& clouds) {
    WaitFor("clouds registered", [&] {
      v1::ListPoolsResponse pools;
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      if (!jobs_->ListPools(&context, v1::ListPoolsRequest(), &pools).ok()) return false;
      size_t alive = 0;
      for (const v1::PoolHealth& p : pools.pools()) {
        for (const std::string& c : clouds) alive += p.alive() && p.pool().cloud() == c;
      }
      return alive == clouds.size();
    });
  }

  std::string Submit(const std::string& yaml) {
    const std::string path = dir_.Write("job.yaml", yaml);
    absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(path);
    EXPECT_TRUE(spec.ok()) << spec.status();
    v1::SubmitJobRequest request;
    *request.mutable_spec() = *spec;
    v1::SubmitJobResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status = jobs_->SubmitJob(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.job_id();
  }

  grpc::Status Migrate(const std::string& id, const std::string& cloud) {
    v1::MigrateJobRequest request;
    request.set_job_id(id);
    request.set_to_cloud(cloud);
    v1::JobStatus job;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return jobs_->MigrateJob(&context, request, &job);
  }

  v1::JobStatus Job(const std::string& id) {
    v1::GetJobRequest request;
    request.set_job_id(id);
    v1::JobStatus job;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status status = jobs_->GetJob(&context, request, &job);
    return status.ok() ? job : v1::JobStatus();
  }

  // Polls the coordinator (a cheap RPC) until `done` holds; fails the test
  // with the processes' logs at the deadline.
  void WaitFor(const std::string& what, const std::function<bool()>& done,
               std::chrono::milliseconds deadline = kJobDeadline) {
    const Clock::time_point end = Clock::now() + deadline;
    while (!done()) {
      if (Clock::now() > end) {
        ADD_FAILURE() << "timed out waiting for " << what << "\n" << Logs();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  v1::JobStatus WaitForState(const std::string& id, v1::JobState state) {
    v1::JobStatus job;
    WaitFor(v1::JobState_Name(state), [&] {
      job = Job(id);
      return job.state() == state || job.state() == v1::JOB_STATE_FAILED ||
             job.state() == v1::JOB_STATE_CANCELLED;
    });
    EXPECT_EQ(job.state(), state) << job.DebugString() << Logs();
    return job;
  }

  std::string Logs() const {
    std::string all = "--- coordinator\n" + (coordinator_ ? coordinator_->Log() : "");
    for (const auto& [cloud, agent] : agents_) all += "--- " + cloud + "\n" + agent->Log();
    return all;
  }

 private:
  const TempDir& dir_;
  const int coordinator_port_;
  std::unique_ptr<BackgroundTandem> coordinator_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::map<std::string, int> wan_ports_;
  std::map<std::string, int> replication_ports_;
  std::map<std::string, std::unique_ptr<BackgroundTandem>> agents_;
  std::map<std::string, std::unique_ptr<WanProxy>> proxies_;
};

std::string OneCloudSpec(uint64_t max_steps) {
  return absl::StrFormat(R"(name: migrating
model: {arch: cnn}
train: {epochs: 1, max_steps: %d, global_batch: 32, optimizer: sgd, lr: 0.05, seed: 7}
checkpoint: {every_steps: 50, keep: 2, async: true}
pools:
  - {cloud: cloud-a, workers: 1}
)",
                         max_steps);
}

std::string TwoCloudSpec(uint64_t max_steps, uint64_t eval_every_steps = 0) {
  return absl::StrFormat(R"(name: failover
model: {arch: cnn}
train: {epochs: 1, max_steps: %d, global_batch: 32, optimizer: sgd, lr: 0.05, seed: 7,
        eval_every_steps: %d}
checkpoint: {every_steps: 50, keep: 2, async: true}
exchange: {codec: none, digest_every_steps: 10}
pools:
  - {cloud: cloud-a, workers: 1}
  - {cloud: cloud-b, workers: 1}
)",
                         max_steps, eval_every_steps);
}

// The reasons of the job's events into `to`, one per line.
std::string Reasons(const v1::JobStatus& job, v1::JobState to) {
  std::string all;
  for (const v1::JobEvent& e : job.events()) {
    if (e.to() == to) all += e.reason() + "\n";
  }
  return all;
}

int Count(const v1::JobStatus& job, v1::JobState to) {
  int n = 0;
  for (const v1::JobEvent& e : job.events()) n += e.to() == to;
  return n;
}

bool Terminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

bool HasEvent(const v1::JobStatus& job, v1::JobState to, const std::string& text) {
  for (const v1::JobEvent& e : job.events()) {
    if (e.to() == to && e.reason().find(text) != std::string::npos) return true;
  }
  return false;
}

TEST(FailoverTest, LosingACloudMidRunTheJobSucceedsOnTheOtherWithEverySampleOnce) {
  TempDir dir;
  Cluster cluster(dir);
  cluster.StartCoordinator();
  cluster.StartAgent("cloud-a", 1);
  cluster.StartAgent("cloud-b", 1);
  cluster.WaitForClouds({"cloud-a", "cloud-b"});
  const uint64_t steps = 300;
  const std::string job = cluster.Submit(TwoCloudSpec(steps));
  ASSERT_FALSE(job.empty());
  cluster.WaitFor("step 60", [&] { return cluster.Job(job).progress().step() >= 60; });
  cluster.KillCloud("cloud-a");

  v1::JobStatus done = cluster.WaitForState(job, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.progress().step(), steps);
  EXPECT_TRUE(HasEvent(done, v1::JOB_STATE_RECOVERING, "cloud-a")) << done.DebugString();
  EXPECT_EQ(Count(done, v1::JOB_STATE_RECOVERING), 1) << Reasons(done, v1::JOB_STATE_RECOVERING);
  EXPECT_GT(done.last_recover_s(), 0) << done.DebugString();
  // Found by the lease (2 s here) or the link (4 s), whichever came first.
  EXPECT_LT(done.last_detect_s(), 6.0) << done.DebugString();
  EXPECT_EQ(done.restarts(), 0u) << "the survivors restarted instead of going on";
  EXPECT_GT(done.progress().test_accuracy(), 0.6);
  EXPECT_TRUE(testing::EverySampleOnce(dir.Join("samples"), steps, 32, 7));
}

TEST(FailoverTest, TheCoordinatorKilledMidRunTheJobCompletesWithItsHistory) {
  TempDir dir;
  Cluster cluster(dir);
  cluster.StartCoordinator();
  cluster.StartAgent("cloud-a", 1);
  cluster.StartAgent("cloud-b", 1);
  cluster.WaitForClouds({"cloud-a", "cloud-b"});
  const std::string job = cluster.Submit(TwoCloudSpec(300));
  cluster.WaitFor("step 40", [&] { return cluster.Job(job).progress().step() >= 40; });
  const v1::JobStatus before = cluster.Job(job);
  cluster.KillCoordinator();
  cluster.StartCoordinator();

  v1::JobStatus done = cluster.WaitForState(job, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.progress().step(), 300u);
  ASSERT_GE(done.events_size(), before.events_size());
  for (int i = 0; i < before.events_size(); ++i) {
    EXPECT_EQ(done.events(i).reason(), before.events(i).reason()) << "event " << i;
  }
  EXPECT_EQ(done.restarts(), 0u) << done.DebugString() << cluster.Logs();
  EXPECT_TRUE(testing::EverySampleOnce(dir.Join("samples"), 300, 32, 7));
}

TEST(FailoverTest, APartitionedCloudIsDroppedAndRejoinsWhenTheLinkHeals) {
  TempDir dir;
  Cluster cluster(dir);
  cluster.StartCoordinator();
  cluster.StartAgent("cloud-a", 1, /*behind_proxy=*/true);
  cluster.StartAgent("cloud-b", 1, /*behind_proxy=*/true);
  cluster.WaitForClouds({"cloud-a", "cloud-b"});
  const uint64_t steps = 1500;
  const std::string job = cluster.Submit(TwoCloudSpec(steps));
  cluster.WaitFor("step 40", [&] { return cluster.Job(job).progress().step() >= 40; });
  cluster.Partition(true);
  const Clock::time_point cut = Clock::now();
  // The leaders' links go silent: each reports the other once it has heard
  // nothing for the liveness window (4 s), not after an exchange deadline;
  // the first report wins and the other pool leaves.
  v1::JobStatus recovering;
  cluster.WaitFor("a pool dropped", [&] {
    recovering = cluster.Job(job);
    return HasEvent(recovering, v1::JOB_STATE_RECOVERING, "link dead");
  });
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - cut).count(), 4.0 + 3.0)
      << Reasons(recovering, v1::JOB_STATE_RECOVERING);
  EXPECT_EQ(Count(recovering, v1::JOB_STATE_RECOVERING), 1)
      << Reasons(recovering, v1::JOB_STATE_RECOVERING);
  cluster.WaitFor("the survivor going on", [&] {
    return cluster.Job(job).state() == v1::JOB_STATE_RUNNING;
  });
  cluster.Partition(false);
  v1::JobStatus rejoined;
  cluster.WaitFor("the dropped pool rejoining", [&] {
    rejoined = cluster.Job(job);
    for (const v1::JobEvent& e : rejoined.events()) {
      if (e.reason().find("rejoins") != std::string::npos) return true;
    }
    return rejoined.state() == v1::JOB_STATE_SUCCEEDED;
  });
  v1::JobStatus done = cluster.WaitForState(job, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.progress().step(), steps);
  bool rejoin_event = false;
  for (const v1::JobEvent& e : done.events()) {
    rejoin_event |= e.reason().find("rejoins") != std::string::npos;
  }
  EXPECT_TRUE(rejoin_event) << done.DebugString() << cluster.Logs();
  // Both pools finished together, on identical parameters (the leaders
  // compare digests every 10 steps and at the end; a mismatch fails the job).
  for (const v1::PoolStatus& pool : done.pools()) {
    EXPECT_EQ(pool.state(), v1::POOL_STATE_DONE) << pool.DebugString();
  }
  EXPECT_EQ(done.restarts(), 0u);
  EXPECT_TRUE(testing::EverySampleOnce(dir.Join("samples"), steps, 32, 7));
}

// A cloud whose workers are starved of CPU (a cgroup quota of 5% of one
// core) evaluates and steps many times slower than the other; its leader
// stays alive on the link, so the other cloud waits for it -- longer than the
// old 10 s exchange deadline -- and drops nothing.
TEST(FailoverTest, ACloudStarvedOfCpuIsWaitedForAndNeverDropped) {
  TempDir dir;
  Cluster cluster(dir);
  cluster.StartCoordinator();
  cluster.StartAgent("cloud-a", 1);
  cluster.StartAgent("cloud-b", 1);
  cluster.WaitForClouds({"cloud-a", "cloud-b"});
  absl::StatusOr<std::unique_ptr<testing::CpuQuota>> quota =
      testing::CpuQuota::Create("tandem-slow-cloud");
  ASSERT_TRUE(quota.ok()) << quota.status();
  const uint64_t steps = 150;
  const std::string job = cluster.Submit(TwoCloudSpec(steps, /*eval_every_steps=*/50));
  cluster.WaitFor("step 20", [&] { return cluster.Job(job).progress().step() >= 20; });
  // cloud-b's mpirun and workers, not its agent (its lease is not the point).
  for (pid_t pid : testing::ProcessTree(cluster.AgentPid("cloud-b"))) {
    if (pid == cluster.AgentPid("cloud-b")) continue;
    ASSERT_TRUE((*quota)->Add(pid).ok());
  }
  ASSERT_TRUE((*quota)->Limit(5).ok());
  // status shows cloud-a's leader waiting for the slow cloud, alive.
  int waited_s = 0;
  std::string waiting;
  cluster.WaitFor("cloud-a waiting 10 s or more for cloud-b", [&] {
    const v1::JobStatus status = cluster.Job(job);
    if (status.pools_size() < 2) return false;
    waiting = status.pools(0).waiting_for();
    const size_t at = waiting.find("(alive) for ");
    if (at != std::string::npos) waited_s = std::atoi(waiting.c_str() + at + 12);
    return waited_s >= 10 || Terminal(status.state());
  });
  EXPECT_GE(waited_s, 10) << waiting;
  EXPECT_NE(waiting.find("cloud-b"), std::string::npos) << waiting;
  ASSERT_TRUE((*quota)->Limit(0).ok());

  v1::JobStatus done = cluster.WaitForState(job, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.progress().step(), steps);
  EXPECT_EQ(Count(done, v1::JOB_STATE_RECOVERING), 0) << Reasons(done, v1::JOB_STATE_RECOVERING);
  EXPECT_EQ(done.restarts(), 0u);
  for (const v1::PoolStatus& pool : done.pools()) {
    EXPECT_EQ(pool.state(), v1::POOL_STATE_DONE) << pool.DebugString();
  }
  EXPECT_TRUE(testing::EverySampleOnce(dir.Join("samples"), steps, 32, 7));
}

// Evaluation every 50 steps while two busy loops compete for both cores:
// both clouds evaluate their shares of the test set at the same steps and
// wait for each other; neither is dropped.
TEST(FailoverTest, EvaluationUnderACpuHogOnBothCoresDropsNoCloud) {
  TempDir dir;
  Cluster cluster(dir);
  cluster.StartCoordinator();
  cluster.StartAgent("cloud-a", 1);
  cluster.StartAgent("cloud-b", 1);
  cluster.WaitForClouds({"cloud-a", "cloud-b"});
  const uint64_t steps = 200;
  const std::string job = cluster.Submit(TwoCloudSpec(steps, /*eval_every_steps=*/50));
  testing::CpuHog hog(2);
  v1::JobStatus done = cluster.WaitForState(job, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.progress().step(), steps);
  EXPECT_EQ(Count(done, v1::JOB_STATE_RECOVERING), 0) << Reasons(done, v1::JOB_STATE_RECOVERING);
  EXPECT_GT(done.progress().test_accuracy(), 0.5);
  EXPECT_EQ(done.restarts(), 0u);
}

TEST(FailoverTest, MigrateMovesARunningJobToTheOtherCloudThroughItsCheckpoint) {
  TempDir dir;
  Cluster cluster(dir);
  cluster.StartCoordinator();
  cluster.StartAgent("cloud-a", 1);
  cluster.StartAgent("cloud-b", 1);
  cluster.WaitForClouds({"cloud-a", "cloud-b"});
  const uint64_t steps = 400;
  const std::string job = cluster.Submit(OneCloudSpec(steps));
  cluster.WaitFor("step 40", [&] {
    const v1::JobStatus status = cluster.Job(job);
    return status.state() == v1::JOB_STATE_RUNNING && status.progress().step() >= 40;
  });
  const grpc::Status migrate = cluster.Migrate(job, "cloud-b");
  ASSERT_TRUE(migrate.ok()) << migrate.error_message() << cluster.Logs();

  v1::JobStatus done = cluster.WaitForState(job, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.progress().step(), steps);
  ASSERT_EQ(done.pools_size(), 1) << done.DebugString();
  EXPECT_EQ(done.pools(0).cloud(), "cloud-b");
  EXPECT_TRUE(HasEvent(done, v1::JOB_STATE_MIGRATING, "cloud-b")) << done.DebugString();
  bool copied = false;
  for (const v1::JobEvent& e : done.events()) {
    copied |= e.reason().find("bytes") != std::string::npos;
  }
  EXPECT_TRUE(copied) << done.DebugString();
  EXPECT_EQ(done.restarts(), 0u);
  // The pool on cloud-a stopped after a checkpoint; cloud-b went on from it.
  EXPECT_TRUE(testing::EverySampleOnce(dir.Join("samples"), steps, 32, 7));
}

TEST(FailoverTest, ASecondCoordinatorOnTheSameStateIsRefusedAndTheFirstLosesNothing) {
  TempDir dir;
  Cluster cluster(dir);
  cluster.StartCoordinator();
  cluster.StartAgent("cloud-a", 1);
  cluster.WaitForClouds({"cloud-a"});
  const std::string job = cluster.Submit(absl::StrFormat(R"(name: kept
model: {arch: mlp}
train: {max_steps: 5}
pools:
  - {cloud: cloud-a, workers: 1}
)"));
  ASSERT_FALSE(job.empty());
  const v1::JobStatus before = cluster.Job(job);

  testing::RunResult second = testing::RunTandem(
      {"coordinator", "--state", cluster.state_dir(), "--listen", "127.0.0.1:0", "--insecure"});
  EXPECT_EQ(second.exit_code, 1) << second.err;
  EXPECT_NE(second.err.find("in use by another coordinator"), std::string::npos) << second.err;

  const v1::JobStatus after = cluster.Job(job);
  EXPECT_EQ(after.job_id(), job);
  ASSERT_GE(after.events_size(), before.events_size());
  for (int i = 0; i < before.events_size(); ++i) {
    EXPECT_EQ(after.events(i).reason(), before.events(i).reason());
  }
}

}  // namespace
}  // namespace tandem
