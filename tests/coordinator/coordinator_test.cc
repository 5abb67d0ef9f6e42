// The coordinator over real gRPC on 127.0.0.1:0 with its RocksDB in a temp
// dir, driven through the generated stubs the way agents, pool leaders and
// the CLI drive it.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <thread>

#include "coordinator/coordinator_server.h"
#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem {
namespace {

using std::chrono::milliseconds;

constexpr auto kWait = std::chrono::seconds(10);

// Keeps one agent's lease alive from a thread, as a real agent does.
class Heartbeater {
 public:
  Heartbeater(v1::AgentService::Stub* stub, std::string cloud, std::string lease)
      : thread_([this, stub, cloud, lease] {
          while (!stop_) {
            grpc::ClientContext context;
            v1::HeartbeatRequest request;
            request.set_cloud(cloud);
            request.set_lease_id(lease);
            v1::HeartbeatResponse response;
            stub->Heartbeat(&context, request, &response);
            std::this_thread::sleep_for(milliseconds(40));
          }
        }) {}
  ~Heartbeater() {
    stop_ = true;
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::map<std::string, bool> Alive(v1::JobService::Stub* jobs) {
  grpc::ClientContext context;
  v1::ListPoolsResponse pools;
  grpc::Status status = jobs->ListPools(&context, v1::ListPoolsRequest(), &pools);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::map<std::string, bool> alive;
  for (const v1::PoolHealth& pool : pools.pools()) alive[pool.pool().cloud()] = pool.alive();
  return alive;
}

// Polls ListPools until `cloud` is no longer alive or kWait passes.
bool WaitForLoss(v1::JobService::Stub* jobs, const std::string& cloud) {
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (Alive(jobs)[cloud]) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return true;
}

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/coordinator_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Start(uint32_t ttl_ms = 3000) {
    CoordinatorOptions options;
    options.state_dir = dir_;
    options.lease_ttl_ms = ttl_ms;
    options.tick_ms = 20;
    absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                   grpc::InsecureChannelCredentials());
    jobs_ = v1::JobService::NewStub(channel_);
    agents_ = v1::AgentService::NewStub(channel_);
    plans_ = v1::PlanService::NewStub(channel_);
  }

  std::string Register(const std::string& cloud, uint32_t slots = 4) {
    grpc::ClientContext context;
    v1::RegisterPoolRequest request;
    request.mutable_pool()->set_cloud(cloud);
    request.mutable_pool()->set_slots(slots);
    request.mutable_pool()->set_wan_endpoint(cloud + ".wan:9000");
    request.mutable_pool()->set_replication_endpoint(cloud + ".store:7443");
    v1::RegisterPoolResponse response;
    grpc::Status status = agents_->RegisterPool(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.lease().lease_id();
  }

  grpc::Status Heartbeat(const std::string& cloud, const std::string& lease) {
    grpc::ClientContext context;
    v1::HeartbeatRequest request;
    request.set_cloud(cloud);
    request.set_lease_id(lease);
    v1::HeartbeatResponse response;
    return agents_->Heartbeat(&context, request, &response);
  }

  v1::JobSpec Spec(std::vector<std::pair<std::string, uint32_t>> pools) {
    v1::JobSpec spec;
    spec.set_name("mnist");
    spec.mutable_checkpoint()->set_keep(2);
    for (const auto& [cloud, workers] : pools) {
      v1::PoolSpec* pool = spec.add_pools();
      pool->set_cloud(cloud);
      pool->set_workers(workers);
    }
    return spec;
  }

  grpc::Status Submit(const v1::JobSpec& spec, v1::SubmitJobResponse* response) {
    grpc::ClientContext context;
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    return jobs_->SubmitJob(&context, request, response);
  }

  std::string SubmitOk(const v1::JobSpec& spec) {
    v1::SubmitJobResponse response;
    grpc::Status status = Submit(spec, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.job_id();
  }

  v1::JobStatus Get(const std::string& job) {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id(job);
    v1::JobStatus status;
    grpc::Status s = jobs_->GetJob(&context, request, &status);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return status;
  }

  // Reads the job until `done` holds or kWait passes; returns the last read.
  v1::JobStatus WaitFor(const std::string& job,
                        const std::function<bool(const v1::JobStatus&)>& done) {
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    v1::JobStatus status = Get(job);
    while (!done(status) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(10));
      status = Get(job);
    }
    return status;
  }
  v1::JobStatus WaitForState(const std::string& job, v1::JobState state) {
    v1::JobStatus status =
        WaitFor(job, [state](const v1::JobStatus& s) { return s.state() == state; });
    EXPECT_EQ(v1::JobState_Name(status.state()), v1::JobState_Name(state));
    return status;
  }

  std::vector<v1::Assignment> Assignments(const std::string& cloud, const std::string& lease) {
    grpc::ClientContext context;
    v1::GetAssignmentsRequest request;
    request.set_cloud(cloud);
    request.set_lease_id(lease);
    v1::GetAssignmentsResponse response;
    grpc::Status status = agents_->GetAssignments(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return {response.assignments().begin(), response.assignments().end()};
  }

  grpc::Status Report(const v1::PoolReport& report) {
    grpc::ClientContext context;
    v1::PoolReportResponse response;
    return agents_->ReportPool(&context, report, &response);
  }

  void Progress(const std::string& job, const std::string& cloud, uint32_t pool, uint64_t launch,
                uint64_t step, double accuracy = -1) {
    v1::PoolReport report;
    report.set_job_id(job);
    report.set_cloud(cloud);
    report.set_pool_index(pool);
    report.set_launch(launch);
    report.mutable_progress()->set_step(step);
    report.mutable_progress()->set_test_accuracy(accuracy);
    grpc::Status status = Report(report);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }

  void Exit(const std::string& job, const std::string& cloud, uint32_t pool, uint64_t launch,
            int code, bool done = false, const std::string& error = "") {
    v1::PoolReport report;
    report.set_job_id(job);
    report.set_cloud(cloud);
    report.set_pool_index(pool);
    report.set_launch(launch);
    report.set_exited(true);
    report.set_exit_code(code);
    report.set_done(done);
    report.set_error(error);
    grpc::Status status = Report(report);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }

  grpc::Status Sync(const v1::SyncPlanRequest& request, v1::Plan* plan) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kWait);
    return plans_->SyncPlan(&context, request, plan);
  }

  // cloud-b's leader reports cloud-a unreachable at `step` (generation 1 ->
  // 2); cloud-a's group exits and the pool is relaunched to rejoin.
  void DropCloudA(const std::string& job, uint64_t step) {
    v1::SyncPlanRequest report;
    report.set_job_id(job);
    report.set_pool_index(1);
    report.set_generation(1);
    report.set_step(step);
    report.add_unreachable_pools(0);
    report.set_unreachable_for_ms(10000);
    v1::Plan plan;
    ASSERT_TRUE(Sync(report, &plan).ok());
    Exit(job, "cloud-a", 0, 1, 1, false, "dropped");
    WaitFor(job,
            [](const v1::JobStatus& s) { return s.pools(0).state() == v1::POOL_STATE_JOINING; });
  }

  // cloud-a's relaunched leader asks to join; returns the plan it gets.
  v1::Plan LetCloudAJoin(const std::string& job) {
    v1::SyncPlanRequest join;
    join.set_job_id(job);
    join.set_pool_index(0);
    join.set_generation(2);
    join.set_ready_to_join(true);
    v1::Plan plan;
    EXPECT_TRUE(Sync(join, &plan).ok());
    return plan;
  }

  v1::Plan SyncOk(const std::string& job, uint32_t pool, uint64_t generation,
                  uint32_t wait_ms = 0) {
    v1::SyncPlanRequest request;
    request.set_job_id(job);
    request.set_pool_index(pool);
    request.set_generation(generation);
    request.set_wait_ms(wait_ms);
    v1::Plan plan;
    grpc::Status status = Sync(request, &plan);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return plan;
  }

  // A two-pool job on cloud-a and cloud-b that has reached RUNNING.
  std::string RunningJob() {
    lease_a_ = Register("cloud-a");
    lease_b_ = Register("cloud-b");
    const std::string job = SubmitOk(Spec({{"cloud-a", 2}, {"cloud-b", 2}}));
    WaitForState(job, v1::JOB_STATE_STARTING);
    Progress(job, "cloud-a", 0, 1, 1);
    WaitForState(job, v1::JOB_STATE_RUNNING);
    return job;
  }

  static std::string LastReason(const v1::JobStatus& status) {
    return status.events_size() ? status.events(status.events_size() - 1).reason() : "";
  }
  static bool HasEvent(const v1::JobStatus& status, v1::JobState to, const std::string& reason) {
    for (const v1::JobEvent& event : status.events()) {
      if (event.to() == to && event.reason().find(reason) != std::string::npos) return true;
    }
    return false;
  }

  std::string dir_;
  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::AgentService::Stub> agents_;
  std::unique_ptr<v1::PlanService::Stub> plans_;
  std::string lease_a_;
  std::string lease_b_;
};

TEST_F(CoordinatorTest, HealthServiceAnswersServing) {
  Start();
  grpc::GenericStub stub(channel_);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kWait);
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1);
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));  // status: SERVING
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_F(CoordinatorTest, UnknownJobIsNotFound) {
  Start();
  grpc::ClientContext context;
  v1::GetJobRequest request;
  request.set_job_id("x");
  v1::JobStatus status;
  grpc::Status s = jobs_->GetJob(&context, request, &status);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.error_message(), "no job \"x\"");
}

TEST_F(CoordinatorTest, SubmitValidatesPoolsAgainstRegisteredClouds) {
  Start();
  Register("cloud-a");
  Register("cloud-b");
  v1::SubmitJobResponse response;
  grpc::Status s = Submit(Spec({{"cloud-a", 2}, {"cloud-x", 2}}), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(),
            "pools[1].cloud: no agent has registered cloud \"cloud-x\" (known: cloud-a, cloud-b)");
  s = Submit(Spec({{"cloud-a", 9}}), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "pools[0].workers: 9 workers, but cloud cloud-a has 4 slots");
  s = Submit(Spec({}), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "pools: a job needs at least one pool");
  v1::JobSpec delayed = Spec({{"cloud-a", 1}, {"cloud-b", 1}});
  delayed.mutable_exchange()->set_mode(v1::EXCHANGE_MODE_DELAYED);
  s = Submit(delayed, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(),
            "exchange.mode: delayed runs only under `tandem train`; jobs of a coordinator use "
            "exchange.mode: sync");
}

TEST_F(CoordinatorTest, PlacementAnyPicksCloudsWithFreeSlots) {
  Start();
  Register("cloud-a", 2);
  Register("cloud-b", 8);
  v1::JobSpec spec = Spec({{"", 4}});
  spec.set_placement(v1::PLACEMENT_ANY);
  const std::string job = SubmitOk(spec);
  v1::JobStatus status = WaitForState(job, v1::JOB_STATE_STARTING);
  EXPECT_EQ(status.spec().pools(0).cloud(), "cloud-b");
  EXPECT_EQ(status.spec().name(), job);
}

TEST_F(CoordinatorTest, PendingUntilAgentsAreAliveThenAssignedAndRunning) {
  Start(/*ttl_ms=*/300);
  std::string lease_a = Register("cloud-a");
  std::string lease_b = Register("cloud-b");
  // Let both leases expire: the clouds are known but have no live agent.
  ASSERT_TRUE(WaitForLoss(jobs_.get(), "cloud-a"));
  ASSERT_TRUE(WaitForLoss(jobs_.get(), "cloud-b"));
  const std::string job = SubmitOk(Spec({{"cloud-a", 2}, {"cloud-b", 3}}));
  EXPECT_EQ(job, "mnist-1");
  v1::JobStatus status = WaitFor(job, [](const v1::JobStatus& s) { return s.events_size() > 1; });
  EXPECT_EQ(status.state(), v1::JOB_STATE_PENDING);
  EXPECT_NE(LastReason(status).find("has no live agent"), std::string::npos) << LastReason(status);
  EXPECT_TRUE(Assignments("cloud-a", lease_a).empty());

  lease_a = Register("cloud-a");
  EXPECT_EQ(Get(job).state(), v1::JOB_STATE_PENDING);
  lease_b = Register("cloud-b");
  Heartbeater a(agents_.get(), "cloud-a", lease_a);
  Heartbeater b(agents_.get(), "cloud-b", lease_b);
  status = WaitForState(job, v1::JOB_STATE_STARTING);
  EXPECT_EQ(status.generation(), 1u);
  std::vector<v1::Assignment> assigned = Assignments("cloud-b", lease_b);
  ASSERT_EQ(assigned.size(), 1u);
  EXPECT_EQ(assigned[0].job_id(), job);
  EXPECT_EQ(assigned[0].spec().name(), job);
  EXPECT_EQ(assigned[0].pool_index(), 1u);
  EXPECT_EQ(assigned[0].launch(), 1u);
  EXPECT_EQ(assigned[0].generation(), 1u);
  EXPECT_FALSE(assigned[0].resume());
  ASSERT_EQ(assigned[0].peers_size(), 2);
  EXPECT_EQ(assigned[0].peers(0).wan_endpoint(), "cloud-a.wan:9000");

  v1::Plan plan = SyncOk(job, 1, 0);
  EXPECT_EQ(plan.generation(), 1u);
  EXPECT_EQ(plan.active_pools_size(), 2);
  EXPECT_EQ(plan.link_addresses(1), "cloud-b.wan:9000");
  EXPECT_FALSE(plan.stop());

  Progress(job, "cloud-b", 1, 1, 5);
  status = WaitForState(job, v1::JOB_STATE_RUNNING);
  EXPECT_EQ(status.progress().step(), 5u);
  EXPECT_EQ(status.pools(1).state(), v1::POOL_STATE_ACTIVE);

  grpc::ClientContext context;
  v1::ListPoolsResponse pools;
  ASSERT_TRUE(jobs_->ListPools(&context, v1::ListPoolsRequest(), &pools).ok());
  ASSERT_EQ(pools.pools_size(), 2);
  EXPECT_TRUE(pools.pools(1).alive());
  EXPECT_EQ(pools.pools(1).free_slots(), 1u);
}

TEST_F(CoordinatorTest, SecondMultiPoolJobOnACloudWaitsThenStartsAfterCancel) {
  Start();
  const std::string first = RunningJob();
  const std::string second = SubmitOk(Spec({{"cloud-a", 1}, {"cloud-b", 1}}));
  v1::JobStatus status = Get(second);
  EXPECT_EQ(status.state(), v1::JOB_STATE_PENDING);
  EXPECT_NE(LastReason(status).find("runs multi-pool job " + first), std::string::npos)
      << LastReason(status);

  grpc::ClientContext context;
  v1::CancelJobRequest cancel;
  cancel.set_job_id(first);
  cancel.set_reason("wrong learning rate");
  v1::JobStatus cancelled;
  ASSERT_TRUE(jobs_->CancelJob(&context, cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(LastReason(cancelled), "cancelled: wrong learning rate");
  for (const v1::Assignment& a : Assignments("cloud-a", lease_a_)) EXPECT_NE(a.job_id(), first);
  EXPECT_TRUE(SyncOk(first, 0, 1).stop());

  grpc::ClientContext again;
  grpc::Status s = jobs_->CancelJob(&again, cancel, &cancelled);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  // The agents stop the cancelled groups; their exits free the slots.
  Exit(first, "cloud-a", 0, 1, 143);
  EXPECT_EQ(Get(second).state(), v1::JOB_STATE_PENDING);
  ASSERT_TRUE(Heartbeat("cloud-b", lease_b_).ok());  // running: none
  WaitForState(second, v1::JOB_STATE_STARTING);
}

TEST_F(CoordinatorTest, LeaseExpiryDropsTheCloudAndItRejoinsWhenBack) {
  Start(/*ttl_ms=*/500);
  lease_a_ = Register("cloud-a");
  lease_b_ = Register("cloud-b");
  Heartbeater b(agents_.get(), "cloud-b", lease_b_);
  std::string job;
  {
    Heartbeater a(agents_.get(), "cloud-a", lease_a_);
    job = SubmitOk(Spec({{"cloud-a", 2}, {"cloud-b", 2}}));
    Progress(job, "cloud-a", 0, 1, 1);
    WaitForState(job, v1::JOB_STATE_RUNNING);
  }
  // cloud-a stops heartbeating; the leader of cloud-b long-polls for the re-plan.
  v1::Plan plan = SyncOk(job, 1, 1, /*wait_ms=*/5000);
  EXPECT_EQ(plan.generation(), 2u);
  ASSERT_EQ(plan.active_pools_size(), 1);
  EXPECT_EQ(plan.active_pools(0), 1u);
  EXPECT_FALSE(plan.stop());
  v1::JobStatus status = WaitForState(job, v1::JOB_STATE_RECOVERING);
  EXPECT_NE(LastReason(status).find("cloud-a lost: agent lease expired (last heartbeat"),
            std::string::npos)
      << LastReason(status);
  EXPECT_EQ(status.events(status.events_size() - 1).cloud(), "cloud-a");
  EXPECT_EQ(status.pools(0).state(), v1::POOL_STATE_LOST);
  EXPECT_GT(status.last_detect_s(), 0.4);
  EXPECT_TRUE(SyncOk(job, 0, 1).stop());

  Progress(job, "cloud-b", 1, 1, 2);
  status = WaitForState(job, v1::JOB_STATE_RUNNING);
  EXPECT_GE(status.last_recover_s(), status.last_detect_s());

  // The old lease is renewed by a heartbeat; cloud-a comes back without its group.
  lease_a_ = Register("cloud-a");
  Heartbeater a(agents_.get(), "cloud-a", lease_a_);
  status = WaitFor(
      job, [](const v1::JobStatus& s) { return s.pools(0).state() == v1::POOL_STATE_JOINING; });
  ASSERT_EQ(status.pools(0).state(), v1::POOL_STATE_JOINING);
  std::vector<v1::Assignment> assigned = Assignments("cloud-a", lease_a_);
  ASSERT_EQ(assigned.size(), 1u);
  EXPECT_EQ(assigned[0].launch(), 2u);
  EXPECT_TRUE(assigned[0].resume());
  EXPECT_FALSE(SyncOk(job, 0, 0).stop());

  v1::SyncPlanRequest join;
  join.set_job_id(job);
  join.set_pool_index(0);
  join.set_generation(2);
  join.set_ready_to_join(true);
  ASSERT_TRUE(Sync(join, &plan).ok());
  EXPECT_EQ(plan.generation(), 3u);
  EXPECT_EQ(plan.active_pools_size(), 2);
  EXPECT_EQ(plan.reason(), "cloud-a rejoins at the next step boundary");
  status = Get(job);
  EXPECT_EQ(status.pools(0).state(), v1::POOL_STATE_ACTIVE);
  EXPECT_TRUE(HasEvent(status, v1::JOB_STATE_RUNNING, "cloud-a rejoins at the next step boundary"));
}

// Which clouds ListPools reports alive.
// The expiry scan runs only once some lease may have expired; whichever
// lease was registered or renewed last, and after every lease has expired,
// a lease without heartbeats must still expire, and one with them must not.
TEST_F(CoordinatorTest, EveryLeaseWithoutHeartbeatsExpires) {
  Start(/*ttl_ms=*/300);
  lease_a_ = Register("cloud-a");
  {
    Heartbeater a(agents_.get(), "cloud-a", lease_a_);
    lease_b_ = Register("cloud-b");  // expires after cloud-a's first expiry
    EXPECT_TRUE(Alive(jobs_.get())["cloud-b"]);
    ASSERT_TRUE(WaitForLoss(jobs_.get(), "cloud-b"));
    // Two more leases of cloud-b registered and expired: at least two ttls
    // went by, and cloud-a's heartbeats kept its lease alive all along.
    for (int i = 0; i < 2; ++i) {
      lease_b_ = Register("cloud-b");
      ASSERT_TRUE(WaitForLoss(jobs_.get(), "cloud-b"));
      EXPECT_TRUE(Alive(jobs_.get())["cloud-a"]);
    }
  }
  ASSERT_TRUE(WaitForLoss(jobs_.get(), "cloud-a"));
  // No live lease is left; a new registration must be scanned for again.
  lease_b_ = Register("cloud-b");
  EXPECT_TRUE(Alive(jobs_.get())["cloud-b"]);
  ASSERT_TRUE(WaitForLoss(jobs_.get(), "cloud-b"));
  // A heartbeat on an expired lease revives it, and it expires again.
  ASSERT_TRUE(Heartbeat("cloud-b", lease_b_).ok());
  EXPECT_TRUE(Alive(jobs_.get())["cloud-b"]);
  ASSERT_TRUE(WaitForLoss(jobs_.get(), "cloud-b"));
}

TEST_F(CoordinatorTest, UnreachableReportDropsThePeerAndTheFirstReportWins) {
  Start();
  const std::string job = RunningJob();
  v1::SyncPlanRequest report;
  report.set_job_id(job);
  report.set_pool_index(1);
  report.set_generation(1);
  report.set_step(120);
  report.add_unreachable_pools(0);
  report.set_unreachable_for_ms(9800);
  report.set_wait_ms(5000);
  v1::Plan plan;
  ASSERT_TRUE(Sync(report, &plan).ok());
  EXPECT_FALSE(plan.stop());
  EXPECT_EQ(plan.generation(), 2u);
  ASSERT_EQ(plan.active_pools_size(), 1);
  EXPECT_EQ(plan.active_pools(0), 1u);
  v1::JobStatus status = Get(job);
  EXPECT_EQ(status.state(), v1::JOB_STATE_RECOVERING);
  EXPECT_EQ(LastReason(status), "cloud-b's leader could not reach cloud-a for 9.8 s at step 120");
  EXPECT_NEAR(status.last_detect_s(), 9.8, 0.5);

  // cloud-a's leader reports the other way round: too late, it gets stop.
  v1::SyncPlanRequest late = report;
  late.set_pool_index(0);
  late.clear_unreachable_pools();
  late.add_unreachable_pools(1);
  ASSERT_TRUE(Sync(late, &plan).ok());
  EXPECT_TRUE(plan.stop());
  EXPECT_NE(plan.reason().find("could not reach cloud-a"), std::string::npos) << plan.reason();
  EXPECT_EQ(Get(job).generation(), 2u);

  // Its group exits; cloud-a is alive, so the pool is relaunched to rejoin.
  Exit(job, "cloud-a", 0, 1, 137, false, "killed");
  status = WaitFor(
      job, [](const v1::JobStatus& s) { return s.pools(0).state() == v1::POOL_STATE_JOINING; });
  EXPECT_EQ(status.pools(0).launch(), 2u);
  v1::SyncPlanRequest join;
  join.set_job_id(job);
  join.set_pool_index(0);
  join.set_generation(2);
  join.set_ready_to_join(true);
  ASSERT_TRUE(Sync(join, &plan).ok());
  EXPECT_EQ(plan.generation(), 3u);
  EXPECT_EQ(plan.active_pools_size(), 2);
}

TEST_F(CoordinatorTest, SucceedsWhenEveryActivePoolIsDone) {
  Start();
  const std::string job = RunningJob();
  Progress(job, "cloud-a", 0, 1, 10, 0.81);
  Progress(job, "cloud-b", 1, 1, 11, -1);
  v1::JobStatus status = Get(job);
  EXPECT_EQ(status.progress().step(), 11u);
  EXPECT_DOUBLE_EQ(status.progress().test_accuracy(), 0.81);
  Exit(job, "cloud-a", 0, 1, 0, /*done=*/true);
  EXPECT_EQ(Get(job).state(), v1::JOB_STATE_RUNNING);
  Exit(job, "cloud-b", 1, 1, 0, /*done=*/true);
  status = WaitForState(job, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(LastReason(status), "finished at step 11; test accuracy 0.8100");
  EXPECT_GT(status.finished_unix_ms(), 0);
  EXPECT_EQ(status.pools(0).state(), v1::POOL_STATE_DONE);
}

// cloud-a is let in to join at the step where cloud-b then finishes: it has
// nothing left to train, and the job ends when cloud-b is done instead of
// waiting for cloud-a's join deadline.
TEST_F(CoordinatorTest, APoolLetInAtTheLastStepDoesNotHoldTheJobOpen) {
  Start();
  const std::string job = RunningJob();
  DropCloudA(job, 200);
  Progress(job, "cloud-b", 1, 1, 300, 0.83);
  ASSERT_EQ(LetCloudAJoin(job).active_pools_size(), 2);
  Exit(job, "cloud-b", 1, 1, 0, /*done=*/true);
  const v1::JobStatus status = WaitForState(job, v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(LastReason(status), "finished at step 300; test accuracy 0.8300");
}

// A pool that joined earlier and trained with the others still counts.
TEST_F(CoordinatorTest, APoolThatJoinedBeforeTheEndMustFinishToo) {
  Start();
  const std::string job = RunningJob();
  DropCloudA(job, 100);
  Progress(job, "cloud-b", 1, 1, 150);
  ASSERT_EQ(LetCloudAJoin(job).active_pools_size(), 2);
  Progress(job, "cloud-b", 1, 1, 300);
  Exit(job, "cloud-b", 1, 1, 0, /*done=*/true);
  EXPECT_EQ(Get(job).state(), v1::JOB_STATE_RUNNING);
  Progress(job, "cloud-a", 0, 2, 300);
  Exit(job, "cloud-a", 0, 2, 0, /*done=*/true);
  WaitForState(job, v1::JOB_STATE_SUCCEEDED);
}

TEST_F(CoordinatorTest, LogsAndCheckpointsAreKeptPerJob) {
  Start();
  const std::string job = RunningJob();
  v1::PoolReport report;
  report.set_job_id(job);
  report.set_cloud("cloud-a");
  report.set_pool_index(0);
  report.set_launch(1);
  report.add_logs()->set_text("step 1 loss 2.3");
  for (uint64_t step : {10, 20, 30}) {
    v1::CheckpointInfo* info = report.add_checkpoints();
    info->set_step(step);
  }
  ASSERT_TRUE(Report(report).ok());
  report.clear_logs();
  report.clear_checkpoints();
  report.set_cloud("cloud-b");
  report.set_pool_index(1);
  report.add_checkpoints()->set_step(30);
  ASSERT_TRUE(Report(report).ok());

  grpc::ClientContext context;
  v1::ListCheckpointsRequest list;
  list.set_job_id(job);
  list.set_cloud("cloud-a");
  v1::ListCheckpointsResponse checkpoints;
  ASSERT_TRUE(jobs_->ListCheckpoints(&context, list, &checkpoints).ok());
  ASSERT_EQ(checkpoints.checkpoints_size(), 2);  // keep: 2
  EXPECT_EQ(checkpoints.checkpoints(0).step(), 20u);
  EXPECT_EQ(checkpoints.checkpoints(1).cloud(), "cloud-a");
  EXPECT_TRUE(checkpoints.checkpoints(1).latest());
  grpc::ClientContext all_context;
  list.clear_cloud();
  ASSERT_TRUE(jobs_->ListCheckpoints(&all_context, list, &checkpoints).ok());
  EXPECT_EQ(checkpoints.checkpoints_size(), 3);

  // A follower sees the stored line, then new ones, and ends with the job.
  std::vector<v1::LogLine> lines;
  std::atomic<int> count{0};
  std::thread follower([&] {
    grpc::ClientContext follow_context;
    follow_context.set_deadline(std::chrono::system_clock::now() + kWait);
    v1::StreamLogsRequest request;
    request.set_job_id(job);
    request.set_follow(true);
    auto reader = jobs_->StreamLogs(&follow_context, request);
    v1::LogLine line;
    while (reader->Read(&line)) {
      lines.push_back(line);
      ++count;
    }
    EXPECT_TRUE(reader->Finish().ok());
  });
  report.clear_checkpoints();
  report.add_logs()->set_text("step 2 loss 2.1");
  ASSERT_TRUE(Report(report).ok());
  WaitFor(job, [&](const v1::JobStatus&) { return count >= 2; });
  grpc::ClientContext cancel_context;
  v1::CancelJobRequest cancel;
  cancel.set_job_id(job);
  v1::JobStatus cancelled;
  ASSERT_TRUE(jobs_->CancelJob(&cancel_context, cancel, &cancelled).ok());
  follower.join();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].text(), "step 1 loss 2.3");
  EXPECT_EQ(lines[0].cloud(), "cloud-a");
  EXPECT_EQ(lines[1].cloud(), "cloud-b");
}

TEST_F(CoordinatorTest, MigrateToACloudThatAlreadyRunsAPool) {
  Start();
  const std::string job = RunningJob();
  grpc::ClientContext context;
  v1::MigrateJobRequest request;
  request.set_job_id(job);
  request.set_to_cloud("cloud-b");
  v1::JobStatus status;
  ASSERT_TRUE(jobs_->MigrateJob(&context, request, &status).ok());
  EXPECT_EQ(status.state(), v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(HasEvent(status, v1::JOB_STATE_MIGRATING, "already runs pool 1"));
  EXPECT_TRUE(HasEvent(status, v1::JOB_STATE_RUNNING, "migrated to cloud-b"));
  EXPECT_EQ(status.pools(0).state(), v1::POOL_STATE_STOPPED);
  v1::Plan plan = SyncOk(job, 0, 1);
  EXPECT_TRUE(plan.stop());
  EXPECT_EQ(plan.active_pools_size(), 1);
  EXPECT_TRUE(Assignments("cloud-a", lease_a_).empty());
  EXPECT_EQ(Assignments("cloud-b", lease_b_).size(), 1u);
}

TEST_F(CoordinatorTest, MigrateByCheckpointAndReplication) {
  Start();
  lease_a_ = Register("cloud-a");
  lease_b_ = Register("cloud-b");
  const std::string job = SubmitOk(Spec({{"cloud-a", 3}}));
  Progress(job, "cloud-a", 0, 1, 40);
  WaitForState(job, v1::JOB_STATE_RUNNING);

  grpc::ClientContext bad_context;
  v1::MigrateJobRequest request;
  request.set_job_id(job);
  request.set_to_cloud("cloud-z");
  v1::JobStatus status;
  grpc::Status s = jobs_->MigrateJob(&bad_context, request, &status);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("cloud-z"), std::string::npos);

  grpc::ClientContext context;
  request.set_to_cloud("cloud-b");
  ASSERT_TRUE(jobs_->MigrateJob(&context, request, &status).ok());
  EXPECT_EQ(status.state(), v1::JOB_STATE_MIGRATING);
  v1::Plan plan = SyncOk(job, 0, 1);
  EXPECT_TRUE(plan.stop());
  EXPECT_TRUE(plan.checkpoint_before_stop());
  grpc::ClientContext again_context;
  s = jobs_->MigrateJob(&again_context, request, &status);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  Exit(job, "cloud-a", 0, 1, 0);
  std::vector<v1::Assignment> assigned = Assignments("cloud-a", lease_a_);
  ASSERT_EQ(assigned.size(), 1u);
  EXPECT_EQ(assigned[0].replicate_to(), "cloud-b.store:7443");
  EXPECT_EQ(assigned[0].job_id(), job);

  v1::PoolReport replicated;
  replicated.set_job_id(job);
  replicated.set_cloud("cloud-a");
  replicated.set_replicated(true);
  replicated.set_replicated_bytes(123456);
  replicated.set_replicated_step(40);
  ASSERT_TRUE(Report(replicated).ok());
  status = Get(job);
  EXPECT_EQ(status.state(), v1::JOB_STATE_MIGRATING);
  ASSERT_EQ(status.spec().pools_size(), 1);
  EXPECT_EQ(status.spec().pools(0).cloud(), "cloud-b");
  EXPECT_EQ(status.spec().pools(0).workers(), 3u);
  EXPECT_NE(LastReason(status).find("replicated_bytes=123456"), std::string::npos);
  EXPECT_TRUE(Assignments("cloud-a", lease_a_).empty());
  assigned = Assignments("cloud-b", lease_b_);
  ASSERT_EQ(assigned.size(), 1u);
  EXPECT_TRUE(assigned[0].resume());
  EXPECT_TRUE(assigned[0].replicate_to().empty());
  Progress(job, "cloud-b", 0, assigned[0].launch(), 41);
  status = WaitForState(job, v1::JOB_STATE_RUNNING);
  EXPECT_EQ(LastReason(status), "migrated to cloud-b");
}

TEST_F(CoordinatorTest, FailedCopyResumesOnTheSource) {
  Start();
  lease_a_ = Register("cloud-a");
  lease_b_ = Register("cloud-b");
  const std::string job = SubmitOk(Spec({{"cloud-a", 2}}));
  Progress(job, "cloud-a", 0, 1, 7);
  WaitForState(job, v1::JOB_STATE_RUNNING);
  grpc::ClientContext context;
  v1::MigrateJobRequest request;
  request.set_job_id(job);
  request.set_to_cloud("cloud-b");
  v1::JobStatus status;
  ASSERT_TRUE(jobs_->MigrateJob(&context, request, &status).ok());
  Exit(job, "cloud-a", 0, 1, 0);
  v1::PoolReport replicated;
  replicated.set_job_id(job);
  replicated.set_cloud("cloud-a");
  replicated.set_replicated(true);
  replicated.set_error("connection refused");
  ASSERT_TRUE(Report(replicated).ok());
  status = Get(job);
  EXPECT_EQ(status.state(), v1::JOB_STATE_RECOVERING);
  EXPECT_NE(LastReason(status).find("connection refused; resuming on cloud-a"), std::string::npos);
  std::vector<v1::Assignment> assigned = Assignments("cloud-a", lease_a_);
  ASSERT_EQ(assigned.size(), 1u);
  EXPECT_EQ(assigned[0].launch(), 2u);
  EXPECT_TRUE(assigned[0].resume());
}

TEST_F(CoordinatorTest, LosingEveryPoolRestartsFromACheckpointThenFails) {
  Start();
  lease_a_ = Register("cloud-a");
  const std::string job = SubmitOk(Spec({{"cloud-a", 2}}));
  Progress(job, "cloud-a", 0, 1, 3);
  WaitForState(job, v1::JOB_STATE_RUNNING);
  for (uint64_t launch = 1; launch <= 3; ++launch) {
    Exit(job, "cloud-a", 0, launch, 1, false, "CUDA error: out of memory");
    v1::JobStatus status = Get(job);
    EXPECT_EQ(status.state(), v1::JOB_STATE_RECOVERING);
    EXPECT_EQ(status.restarts(), launch);
    EXPECT_EQ(status.pools(0).launch(), launch + 1);
    EXPECT_EQ(status.generation(), launch + 1);
  }
  Exit(job, "cloud-a", 0, 4, 1, false, "CUDA error: out of memory");
  v1::JobStatus status = Get(job);
  EXPECT_EQ(status.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(LastReason(status).find("CUDA error: out of memory"), std::string::npos);
}

TEST_F(CoordinatorTest, RestartRecoversJobsEventsLogsAndLeases) {
  Start();
  const std::string job = RunningJob();
  v1::PoolReport report;
  report.set_job_id(job);
  report.set_cloud("cloud-a");
  report.set_pool_index(0);
  report.set_launch(1);
  report.add_logs()->set_text("hello");
  report.add_checkpoints()->set_step(1);
  ASSERT_TRUE(Report(report).ok());
  const v1::JobStatus before = Get(job);
  server_->Shutdown();
  server_.reset();

  Start();
  const v1::JobStatus after = Get(job);
  EXPECT_EQ(after.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(after.events_size(), before.events_size());
  EXPECT_EQ(after.generation(), before.generation());
  EXPECT_EQ(after.spec().name(), job);
  EXPECT_EQ(after.pools(1).launch(), 1u);
  EXPECT_TRUE(Heartbeat("cloud-a", lease_a_).ok());
  EXPECT_TRUE(Heartbeat("cloud-b", lease_b_).ok());
  grpc::Status unknown = Heartbeat("cloud-b", "no-such-lease");
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Assignments("cloud-b", lease_b_).size(), 1u);

  grpc::ClientContext context;
  v1::StreamLogsRequest logs;
  logs.set_job_id(job);
  auto reader = jobs_->StreamLogs(&context, logs);
  v1::LogLine line;
  ASSERT_TRUE(reader->Read(&line));
  EXPECT_EQ(line.text(), "hello");
  EXPECT_FALSE(reader->Read(&line));
  EXPECT_TRUE(reader->Finish().ok());
  grpc::ClientContext list_context;
  v1::ListCheckpointsRequest list;
  list.set_job_id(job);
  v1::ListCheckpointsResponse checkpoints;
  ASSERT_TRUE(jobs_->ListCheckpoints(&list_context, list, &checkpoints).ok());
  EXPECT_EQ(checkpoints.checkpoints_size(), 1);
  // The job counter survives too.
  EXPECT_EQ(SubmitOk(Spec({{"cloud-a", 1}})), "mnist-2");
}

TEST_F(CoordinatorTest, SecondCoordinatorOnTheSameStateDirFails) {
  Start();
  CoordinatorOptions options;
  options.state_dir = dir_;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> second = CoordinatorServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find(dir_ + " is in use by another coordinator"),
            std::string::npos)
      << second.status();
}

}  // namespace
}  // namespace tandem
