#include "worker/plan_client.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_format.h"

namespace tandem {
namespace {

// What a SyncPlan may take beyond the long poll's wait.
constexpr std::chrono::milliseconds kCallSlack{5000};
constexpr std::chrono::milliseconds kWatchWait{2000};
constexpr std::chrono::milliseconds kWatchRetry{500};

}  // namespace

PlanClient::PlanClient(const std::string& address,
                       std::shared_ptr<grpc::ChannelCredentials> credentials, std::string job_id,
                       uint32_t pool_index)
    : stub_(v1::PlanService::NewStub(grpc::CreateCustomChannel(address, credentials, [] {
        // A coordinator that restarts must be found again within a second
        // or so, not after gRPC's default backoff (which grows to minutes).
        grpc::ChannelArguments args;
        args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
        args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
        args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
        return args;
      }()))),
      job_id_(std::move(job_id)),
      pool_index_(pool_index) {}

PlanClient::~PlanClient() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  stopping_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

absl::StatusOr<v1::Plan> PlanClient::Sync(uint64_t generation, const PlanReport& report,
                                          std::chrono::milliseconds wait) {
  v1::SyncPlanRequest request;
  request.set_job_id(job_id_);
  request.set_pool_index(pool_index_);
  request.set_generation(generation);
  request.set_step(report.step);
  for (uint32_t pool : report.unreachable_pools) request.add_unreachable_pools(pool);
  request.set_unreachable_for_ms(report.unreachable_for_ms);
  request.set_loss_reason(report.reason);
  request.set_ready_to_join(report.ready_to_join);
  request.set_wait_ms(static_cast<uint32_t>(wait.count()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + wait + kCallSlack);
  v1::Plan plan;
  grpc::Status status = stub_->SyncPlan(&context, request, &plan);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrFormat("coordinator plan service: %s", status.error_message()));
  }
  return plan;
}

void PlanClient::Watch(uint64_t generation) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    watched_generation_ = std::max(watched_generation_, generation);
  }
  if (!watcher_.joinable()) watcher_ = std::thread([this] { WatchLoop(); });
}

std::optional<v1::Plan> PlanClient::Newer(uint64_t generation) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (newest_.has_value() && (newest_->generation() > generation || newest_->stop())) {
    return newest_;
  }
  return std::nullopt;
}

void PlanClient::SetStep(uint64_t step) {
  std::lock_guard<std::mutex> lock(mutex_);
  step_ = step;
}

void PlanClient::WatchLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    PlanReport report;
    report.step = step_;
    const uint64_t generation = watched_generation_;
    lock.unlock();
    absl::StatusOr<v1::Plan> plan = Sync(generation, report, kWatchWait);
    lock.lock();
    if (!plan.ok()) {
      // The coordinator is away (restarting, or unreachable): training goes
      // on with the plan it has; try again shortly.
      stopping_.wait_for(lock, kWatchRetry, [this] { return stop_; });
      continue;
    }
    if (plan->generation() > watched_generation_ || plan->stop()) {
      newest_ = std::move(*plan);
      watched_generation_ = std::max(watched_generation_, newest_->generation());
      if (newest_->stop()) {
        // Nothing newer can matter to a pool told to stop.
        stopping_.wait(lock, [this] { return stop_; });
      }
    }
  }
}

}  // namespace tandem
