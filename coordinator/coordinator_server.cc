#include "coordinator/coordinator_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/coordinator_state.h"
#include "tandem/v1/coordinator.grpc.pb.h"
#include "transport/tls.h"

namespace tandem {
namespace {

// absl and gRPC share the canonical status codes.
grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

template <typename T>
grpc::Status Answer(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return ToGrpc(result.status());
  *response = std::move(*result);
  return grpc::Status::OK;
}

// Answers a callback-API unary call at once, on the gRPC thread that read it.
grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* context, grpc::Status status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(std::move(status));
  return reactor;
}

// The RPCs that only take the state mutex briefly and never touch the disk
// (heartbeats, status reads) use the callback API: they run on the thread
// that polled them off the socket. Under the sync API each call is handed to
// a pool thread, and at 10,000 heartbeats a second that pool created and
// reaped 500-800 threads a second (coordinator_load_bench, perf stat on
// clone3); with the callback API, none. RPCs that fsync or long-poll stay
// sync so they cannot stall the callback threads.
class JobServiceImpl final
    : public v1::JobService::WithCallbackMethod_GetJob<v1::JobService::Service> {
 public:
  explicit JobServiceImpl(CoordinatorState& state) : state_(state) {}

  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request,
                                   v1::JobStatus* response) override {
    return Finish(context, Answer(state_.GetJob(request->job_id()), response));
  }
  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest*,
                        v1::ListJobsResponse* response) override {
    *response = state_.ListJobs();
    return grpc::Status::OK;
  }
  grpc::Status ListPools(grpc::ServerContext*, const v1::ListPoolsRequest*,
                         v1::ListPoolsResponse* response) override {
    *response = state_.ListPools();
    return grpc::Status::OK;
  }
  grpc::Status SubmitJob(grpc::ServerContext*, const v1::SubmitJobRequest* request,
                         v1::SubmitJobResponse* response) override {
    return Answer(state_.SubmitJob(request->spec()), response);
  }
  grpc::Status CancelJob(grpc::ServerContext*, const v1::CancelJobRequest* request,
                         v1::JobStatus* response) override {
    return Answer(state_.CancelJob(request->job_id(), request->reason()), response);
  }
  grpc::Status StreamLogs(grpc::ServerContext* context, const v1::StreamLogsRequest* request,
                          grpc::ServerWriter<v1::LogLine>* writer) override {
    return ToGrpc(state_.StreamLogs(
        request->job_id(), request->follow(),
        [writer](const v1::LogLine& line) { return writer->Write(line); },
        [context] { return context->IsCancelled(); }));
  }
  grpc::Status ListCheckpoints(grpc::ServerContext*, const v1::ListCheckpointsRequest* request,
                               v1::ListCheckpointsResponse* response) override {
    return Answer(state_.ListCheckpoints(request->job_id(), request->cloud()), response);
  }
  grpc::Status MigrateJob(grpc::ServerContext*, const v1::MigrateJobRequest* request,
                          v1::JobStatus* response) override {
    return Answer(state_.MigrateJob(request->job_id(), request->to_cloud()), response);
  }

 private:
  CoordinatorState& state_;
};

class AgentServiceImpl final
    : public v1::AgentService::WithCallbackMethod_Heartbeat<v1::AgentService::Service> {
 public:
  explicit AgentServiceImpl(CoordinatorState& state) : state_(state) {}

  grpc::Status RegisterPool(grpc::ServerContext*, const v1::RegisterPoolRequest* request,
                            v1::RegisterPoolResponse* response) override {
    return Answer(state_.RegisterPool(*request), response);
  }
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override {
    return Finish(context, Answer(state_.Heartbeat(*request), response));
  }
  grpc::Status GetAssignments(grpc::ServerContext*, const v1::GetAssignmentsRequest* request,
                              v1::GetAssignmentsResponse* response) override {
    return Answer(state_.GetAssignments(*request), response);
  }
  grpc::Status ReportPool(grpc::ServerContext*, const v1::PoolReport* request,
                          v1::PoolReportResponse*) override {
    return ToGrpc(state_.ReportPool(*request));
  }

 private:
  CoordinatorState& state_;
};

class PlanServiceImpl final : public v1::PlanService::Service {
 public:
  explicit PlanServiceImpl(CoordinatorState& state) : state_(state) {}

  grpc::Status SyncPlan(grpc::ServerContext* context, const v1::SyncPlanRequest* request,
                        v1::Plan* response) override {
    return Answer(state_.SyncPlan(*request, [context] { return context->IsCancelled(); }),
                  response);
  }

 private:
  CoordinatorState& state_;
};

}  // namespace

struct CoordinatorServer::Impl {
  std::unique_ptr<CoordinatorState> state;
  std::unique_ptr<JobServiceImpl> jobs;
  std::unique_ptr<AgentServiceImpl> agents;
  std::unique_ptr<PlanServiceImpl> plans;
  std::unique_ptr<grpc::Server> server;
  std::thread ticker;
  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  bool stopped = false;  // only Shutdown touches it
  absl::Mutex shutdown_mu;
};

CoordinatorServer::CoordinatorServer(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const CoordinatorOptions& options) {
  absl::StatusOr<std::unique_ptr<CoordinatorState>> state =
      CoordinatorState::Open(options.state_dir, options.lease_ttl_ms, options.on_event);
  if (!state.ok()) return state.status();
  auto impl = std::make_unique<Impl>();
  impl->state = std::move(*state);
  impl->jobs = std::make_unique<JobServiceImpl>(*impl->state);
  impl->agents = std::make_unique<AgentServiceImpl>(*impl->state);
  impl->plans = std::make_unique<PlanServiceImpl>(*impl->state);

  grpc::EnableDefaultHealthCheckService(true);
  int port = 0;
  grpc::ServerBuilder builder;
  ListenExclusively(builder);
  builder.AddListeningPort(options.listen,
                           options.credentials ? options.credentials
                                               : grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(impl->jobs.get());
  builder.RegisterService(impl->agents.get());
  builder.RegisterService(impl->plans.get());
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrFormat(
        "cannot listen on %s (is the address HOST:PORT, and the port free?)", options.listen));
  }
  const absl::Duration tick = absl::Milliseconds(std::max<uint32_t>(1, options.tick_ms));
  Impl* raw = impl.get();
  impl->ticker = std::thread([raw, tick] {
    absl::MutexLock lock(&raw->mu);
    while (!raw->mu.AwaitWithTimeout(absl::Condition(&raw->stopping), tick)) {
      raw->mu.Unlock();
      raw->state->Tick();
      raw->mu.Lock();
    }
  });
  return std::unique_ptr<CoordinatorServer>(new CoordinatorServer(std::move(impl), port));
}

void CoordinatorServer::Shutdown() {
  absl::MutexLock once(&impl_->shutdown_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->state->Shutdown();
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  impl_->ticker.join();
  impl_->server.reset();
  impl_->state.reset();
}

}  // namespace tandem
