// coordinator_load_bench: how the coordinator answers agents' heartbeats and
// users' status reads when thousands of agents hold leases.
//
// An in-process coordinator on loopback; simulated agents (one registered
// cloud each) heartbeat at 1 Hz, spread evenly over the second, each a real
// Heartbeat RPC, through the async client API from two client threads (one
// channel and CompletionQueue each), while one more client reads a running
// job's status (GetJob) 200 times a second. Server and clients share this
// machine's cores (and whatever else runs on it: the load average is
// printed per row).
// Prints p50/p99 latencies per load and the ratio of each loaded p99 to the
// baseline p99: the grpc.health.v1 Check RPC with no load, in the same run.
// Heartbeat latency is measured from the moment the RPC was started, and its
// p99 also from the moment the heartbeat was due on the 1 Hz schedule
// ("sched"), which adds any lateness of the client.
//
//   coordinator_load_bench [--agents 1000,10000] [--seconds 5] [--dir /tmp]
//                          [--deadlock-detection 0|1]
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "coordinator/coordinator_server.h"
#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kClientThreads = 2;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// gRPC takes system_clock time points only; this one does not jump.
gpr_timespec GrpcTime(Clock::time_point t) {
  const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t - Clock::now()).count();
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(ns, GPR_TIMESPAN));
}

struct Percentiles {
  double p50 = 0;
  double p99 = 0;
  size_t n = 0;
};

Percentiles Summarize(std::vector<double> v) {
  Percentiles p;
  p.n = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  p.p50 = v[v.size() / 2];
  p.p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
  return p;
}

std::shared_ptr<grpc::Channel> Channel(int port, int id) {
  grpc::ChannelArguments args;
  args.SetInt("tandem.bench.channel", id);  // distinct args: a connection of its own
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials(), args);
}

// Sequential health Checks on an idle server.
Percentiles HealthBaseline(int port, int calls) {
  auto channel = Channel(port, 100);
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  std::vector<double> latencies;
  for (int i = 0; i < calls; ++i) {
    grpc::ClientContext context;
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1);
    const Clock::time_point start = Clock::now();
    auto call = stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request, &cq);
    call->StartCall();
    grpc::ByteBuffer response;
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    cq.Next(&tag, &ok);
    if (i >= calls / 10) latencies.push_back(Ms(Clock::now() - start));  // after a warm-up
  }
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return Summarize(latencies);
}

struct Agent {
  std::string cloud;
  std::string lease;
};

// Registers clouds bench-<from>..bench-<to-1>, a bounded number in flight.
bool RegisterAgents(int port, int from, int to, std::vector<Agent>& agents) {
  auto channel = Channel(port, 200);
  auto stub = v1::AgentService::NewStub(channel);
  struct Call {
    grpc::ClientContext context;
    v1::RegisterPoolResponse response;
    grpc::Status status;
    int index = 0;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::RegisterPoolResponse>> rpc;
  };
  grpc::CompletionQueue cq;
  int next = from;
  int in_flight = 0;
  bool ok_all = true;
  auto issue = [&] {
    auto* call = new Call;
    call->index = next++;
    v1::RegisterPoolRequest request;
    request.mutable_pool()->set_cloud("bench-" + std::to_string(call->index));
    request.mutable_pool()->set_slots(8);
    request.mutable_pool()->set_wan_endpoint("127.0.0.1:1");
    call->rpc = stub->AsyncRegisterPool(&call->context, request, &cq);
    call->rpc->Finish(&call->response, &call->status, call);
    ++in_flight;
  };
  while (next < to && in_flight < 64) issue();
  while (in_flight > 0) {
    void* tag = nullptr;
    bool ok = false;
    if (!cq.Next(&tag, &ok)) break;
    auto* call = static_cast<Call*>(tag);
    --in_flight;
    if (!call->status.ok()) {
      std::fprintf(stderr, "register: %s\n", call->status.error_message().c_str());
      ok_all = false;
    }
    agents[call->index] = {"bench-" + std::to_string(call->index), call->response.lease().lease_id()};
    delete call;
    if (next < to) issue();
  }
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return ok_all;
}

struct LoadResult {
  Percentiles heartbeat;            // from the moment the RPC was started
  Percentiles heartbeat_scheduled;  // from the moment it was due (1 Hz schedule)
  Percentiles status;
  size_t errors = 0;
};

// `agents` heartbeat at 1 Hz for warmup + seconds; latencies count for the
// heartbeats due after the warmup.
//
// Each of kClientThreads threads owns one channel (one HTTP/2 connection,
// many concurrent streams) and one CompletionQueue, and both starts its
// agents' heartbeats and takes their answers: it starts every heartbeat that
// is due, then waits on the queue until the next one is due. The wait wakes
// at millisecond granularity, so heartbeats leave in small batches, never
// more than about a millisecond late; the "scheduled" column counts that
// lateness too.
LoadResult RunLoad(int port, const std::vector<Agent>& all, int agents, const std::string& job,
                   double warmup_s, double seconds) {
  const Clock::time_point t0 = Clock::now() + std::chrono::milliseconds(50);
  const Clock::time_point measure_from =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(warmup_s));
  const Clock::time_point end =
      measure_from + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  // Every call carries a deadline, and the drain after `end` outlasts it.
  constexpr auto kCallDeadline = std::chrono::seconds(5);
  std::mutex mu;
  LoadResult result;
  std::vector<double> sent_ms;
  std::vector<double> due_ms;
  std::vector<double> status_ms;
  std::atomic<size_t> errors{0};

  struct Call {
    grpc::ClientContext context;
    v1::HeartbeatResponse response;
    grpc::Status status;
    Clock::time_point due;
    Clock::time_point sent;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::HeartbeatResponse>> rpc;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kClientThreads; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::AgentService::NewStub(Channel(port, t));
      grpc::CompletionQueue cq;
      std::vector<int> mine;
      for (int i = t; i < agents; i += kClientThreads) mine.push_back(i);
      // In Clock ticks: std::chrono::seconds(1) / n would divide whole
      // seconds, 0 for n > 1, and start every agent at once each second.
      // Threads are offset by part of a spacing so that they do not send together.
      const Clock::duration spacing =
          Clock::duration(std::chrono::seconds(1)) / std::max<size_t>(1, mine.size());
      const Clock::time_point start = t0 + spacing * t / kClientThreads;
      auto due_of = [&](size_t n) {
        return start + static_cast<int64_t>(n / mine.size()) * std::chrono::seconds(1) +
               static_cast<int64_t>(n % mine.size()) * spacing;
      };
      std::vector<double> from_sent;
      std::vector<double> from_due;
      size_t next = 0;  // heartbeats started so far
      size_t in_flight = 0;
      bool issuing = !mine.empty();
      const Clock::time_point drain_until = end + kCallDeadline + std::chrono::seconds(1);
      while (issuing || in_flight > 0) {
        const Clock::time_point now = Clock::now();
        while (issuing) {
          const Clock::time_point due = due_of(next);
          if (due >= end) {
            issuing = false;
            break;
          }
          if (due > now) break;
          auto* call = new Call;
          const Agent& agent = all[mine[next % mine.size()]];
          v1::HeartbeatRequest request;
          request.set_cloud(agent.cloud);
          request.set_lease_id(agent.lease);
          request.set_free_slots(8);
          call->due = due;
          call->context.set_deadline(GrpcTime(due + kCallDeadline));
          call->sent = Clock::now();
          call->rpc = stub->AsyncHeartbeat(&call->context, request, &cq);
          call->rpc->Finish(&call->response, &call->status, call);
          ++in_flight;
          ++next;
        }
        if (!issuing && in_flight == 0) break;
        void* tag = nullptr;
        bool ok = false;
        const grpc::CompletionQueue::NextStatus got =
            cq.AsyncNext(&tag, &ok, GrpcTime(issuing ? due_of(next) : drain_until));
        if (got == grpc::CompletionQueue::TIMEOUT) {
          if (!issuing) break;  // past every deadline: what is left is lost
          continue;
        }
        if (got == grpc::CompletionQueue::SHUTDOWN) break;
        auto* call = static_cast<Call*>(tag);
        --in_flight;
        const Clock::time_point done = Clock::now();
        if (!call->status.ok()) {
          ++errors;
        } else if (call->due >= measure_from) {
          from_sent.push_back(Ms(done - call->sent));
          from_due.push_back(Ms(done - call->due));
        }
        delete call;
      }
      errors += in_flight;
      cq.Shutdown();
      void* tag = nullptr;
      bool ok = false;
      while (cq.Next(&tag, &ok)) delete static_cast<Call*>(tag);
      std::lock_guard<std::mutex> lock(mu);
      sent_ms.insert(sent_ms.end(), from_sent.begin(), from_sent.end());
      due_ms.insert(due_ms.end(), from_due.begin(), from_due.end());
    });
  }
  threads.emplace_back([&] {
    auto stub = v1::JobService::NewStub(Channel(port, 50));
    std::vector<double> local;
    std::this_thread::sleep_until(t0);
    while (Clock::now() < end) {
      grpc::ClientContext context;
      context.set_deadline(GrpcTime(Clock::now() + kCallDeadline));
      v1::GetJobRequest request;
      request.set_job_id(job);
      v1::JobStatus status;
      const Clock::time_point start = Clock::now();
      grpc::Status s = stub->GetJob(&context, request, &status);
      if (!s.ok()) {
        ++errors;
      } else if (start >= measure_from) {
        local.push_back(Ms(Clock::now() - start));
      }
      // 200 reads a second: many users' `tandem status`, without one client
      // spinning a core of its own.
      std::this_thread::sleep_until(start + std::chrono::milliseconds(5));
    }
    std::lock_guard<std::mutex> lock(mu);
    status_ms = std::move(local);
  });
  for (std::thread& thread : threads) thread.join();
  result.heartbeat = Summarize(sent_ms);
  result.heartbeat_scheduled = Summarize(due_ms);
  result.status = Summarize(status_ms);
  result.errors = errors;
  return result;
}

// The 1-minute load average: the other processes this machine's 2 cores
// were shared with.
double LoadAverage() {
  double load = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load) != 1) load = -1;
    std::fclose(f);
  }
  return load;
}

int Main(int argc, char** argv) {
  std::vector<int> loads = {1000, 10000};
  double seconds = 5;
  std::string root = "/tmp";
  bool deadlock_detection = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--agents") {
      loads.clear();
      for (char* p = argv[i + 1]; *p;) {
        loads.push_back(static_cast<int>(std::strtol(p, &p, 10)));
        if (*p == ',') ++p;
      }
    } else if (flag == "--seconds") {
      seconds = std::strtod(argv[i + 1], nullptr);
    } else if (flag == "--dir") {
      root = argv[i + 1];
    } else if (flag == "--deadlock-detection") {
      deadlock_detection = std::string(argv[i + 1]) == "1";
    }
  }
  // As `tandem coordinator` runs (see cli/coordinator_command.cc); 1 measures
  // what abseil's debug-build lock-order checking costs.
  if (!deadlock_detection) absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::string pattern = root + "/tandem-coordinator-bench-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  CoordinatorOptions options;
  options.state_dir = pattern;
  // Long enough that agents registered for a later load stay alive meanwhile.
  options.lease_ttl_ms = 600000;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "coordinator: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  const int port = (*server)->port();

  const Percentiles baseline = HealthBaseline(port, 3000);
  std::printf("coordinator_load_bench: in-process coordinator on loopback, 1 Hz heartbeats + a GetJob loop;\n"
              "server and clients share this machine's %u cores (load average %.2f at start)\n",
              std::thread::hardware_concurrency(), LoadAverage());
  std::printf("baseline: health Check, no load: p50 %.3f ms  p99 %.3f ms  (%zu calls)\n\n",
              baseline.p50, baseline.p99, baseline.n);

  const int most = *std::max_element(loads.begin(), loads.end());
  std::vector<Agent> agents(most);
  const Clock::time_point reg_start = Clock::now();
  if (!RegisterAgents(port, 0, most, agents)) return 1;
  const double reg_s = Ms(Clock::now() - reg_start) / 1000;
  std::printf("registered %d agents in %.2f s (synced RocksDB write each)\n", most, reg_s);

  // A running two-pool job to read.
  auto jobs = v1::JobService::NewStub(Channel(port, 60));
  auto agent_stub = v1::AgentService::NewStub(Channel(port, 61));
  std::string job;
  {
    grpc::ClientContext context;
    v1::SubmitJobRequest request;
    request.mutable_spec()->set_name("bench");
    for (int i = 0; i < 2; ++i) {
      v1::PoolSpec* pool = request.mutable_spec()->add_pools();
      pool->set_cloud(agents[i].cloud);
      pool->set_workers(4);
    }
    v1::SubmitJobResponse response;
    grpc::Status s = jobs->SubmitJob(&context, request, &response);
    if (!s.ok()) {
      std::fprintf(stderr, "submit: %s\n", s.error_message().c_str());
      return 1;
    }
    job = response.job_id();
    grpc::ClientContext report_context;
    v1::PoolReport report;
    report.set_job_id(job);
    report.set_cloud(agents[0].cloud);
    report.set_launch(1);
    report.mutable_progress()->set_step(1);
    report.mutable_progress()->set_test_accuracy(-1);
    v1::PoolReportResponse ignored;
    agent_stub->ReportPool(&report_context, report, &ignored);
  }

  std::printf("\n%7s %7s %9s %9s %11s %9s %9s %9s %12s %12s %6s %5s\n", "agents", "hb/s",
              "hb p50", "hb p99", "hb p99 sched", "get p50", "get p99", "base p99", "hb p99/base",
              "get p99/base", "errors", "load");
  for (int load : loads) {
    LoadResult r = RunLoad(port, agents, load, job, /*warmup_s=*/1.0, seconds);
    std::printf("%7d %7.0f %7.3fms %7.3fms %9.3fms %7.3fms %7.3fms %7.3fms %11.1fx %11.1fx %6zu %5.2f\n",
                load, r.heartbeat.n / seconds, r.heartbeat.p50, r.heartbeat.p99,
                r.heartbeat_scheduled.p99, r.status.p50, r.status.p99, baseline.p99,
                r.heartbeat.p99 / baseline.p99, r.status.p99 / baseline.p99, r.errors,
                LoadAverage());
    std::fflush(stdout);
  }
  std::printf("\nhb: Heartbeat from the RPC's start; sched: from when it was due at 1 Hz. get: GetJob\n"
              "(200/s). load: the 1-minute load average after the row (2 cores here).\n");
  (*server)->Shutdown();
  server->reset();
  std::filesystem::remove_all(pattern);
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Main(argc, argv); }
