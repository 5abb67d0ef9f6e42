#include "coordinator/agent.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/replication.h"
#include "coordinator/local_train.h"
#include "transport/tls.h"

namespace tandem {
namespace {

constexpr std::chrono::milliseconds kRpcDeadline{5000};
// Progress lines in a job's log, at most this often (every event still
// reaches the coordinator as progress).
constexpr std::chrono::seconds kProgressLogEvery{5};

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void SetDeadline(grpc::ClientContext& context) {
  context.set_deadline(std::chrono::system_clock::now() + kRpcDeadline);
}

// What a job's log shows for one of its leader's events.
std::optional<std::string> LogText(const WorkerEvent& event) {
  const v1::TrainingProgress& p = event.progress;
  if (event.kind == "start") {
    return absl::StrFormat("start at step %d of %d", p.step(), p.total_steps());
  }
  if (event.kind == "progress") {
    return absl::StrFormat("step %d/%d loss %.4f %.0f samples/s", p.step(), p.total_steps(),
                           p.loss(), p.samples_per_s());
  }
  if (event.kind == "eval") {
    return absl::StrFormat("step %d: test accuracy %.4f, test loss %.4f (evaluated in %.1f s)",
                           p.step(), p.test_accuracy(), p.test_loss(), event.eval_s);
  }
  if (event.kind == "checkpoint") return absl::StrFormat("checkpoint at step %d", p.step());
  if (event.kind == "warning") return absl::StrCat("warning: ", event.message);
  if (event.kind == "error") return absl::StrCat("error: ", event.message);
  if (event.kind == "done") {
    return absl::StrFormat("done: %d steps, test accuracy %.4f", p.step(), p.test_accuracy());
  }
  if (event.kind == "stopped") return absl::StrFormat("stopped at step %d", p.step());
  if (event.kind == "plan") return absl::StrCat("new plan: ", event.message);
  if (event.kind == "waiting") {
    if (event.message.empty()) return absl::StrFormat("step %d: the peers delivered", p.step());
    return absl::StrCat("waiting for ", event.message);
  }
  return std::nullopt;
}

}  // namespace

struct Agent::Group {
  std::string job_id;
  uint32_t pool_index = 0;
  uint64_t launch = 0;
  uint64_t generation = 0;
  uint32_t workers = 0;
  std::unique_ptr<Subprocess> process;
  std::thread reader;
  bool exited = false;  // guarded by Agent::mutex_
  bool killed = false;  // guarded by Agent::mutex_
};

struct Agent::Copy {
  uint64_t launch = 0;
  std::thread thread;
  bool finished = false;  // guarded by Agent::mutex_
};

Agent::Agent(AgentOptions options, std::unique_ptr<Launcher> launcher)
    : options_(std::move(options)), launcher_(std::move(launcher)) {
  if (options_.wan_advertise.empty()) options_.wan_advertise = options_.wan_listen;
  if (options_.replication_advertise.empty()) {
    options_.replication_advertise = options_.replication_listen;
  }
  if (options_.work_dir.empty()) options_.work_dir = options_.store_dir + "/.agent";
}

Agent::~Agent() {
  Stop();
  if (replication_server_ != nullptr) {
    replication_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  std::map<std::string, std::unique_ptr<Group>> groups;
  std::map<std::string, std::unique_ptr<Copy>> copies;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [job, group] : groups_) {
      if (!group->exited) group->process->Kill(SIGTERM);
    }
    groups.swap(groups_);
    copies.swap(copies_);
  }
  for (auto& [job, group] : groups) {
    if (group->reader.joinable()) group->reader.join();
  }
  for (auto& [job, copy] : copies) {
    if (copy->thread.joinable()) copy->thread.join();
  }
}

void Agent::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
}

absl::Status Agent::Run() {
  if (options_.cloud.empty() || options_.coordinator.empty() || options_.store_dir.empty() ||
      options_.wan_listen.empty() || options_.slots == 0) {
    return absl::InvalidArgumentError(
        "an agent needs --cloud, --coordinator, --store, --wan-listen and --slots > 0");
  }
  std::error_code error;
  std::filesystem::create_directories(options_.work_dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrFormat("cannot create %s: %s", options_.work_dir, error.message()));
  }
  if (options_.insecure) {
    channel_credentials_ = grpc::InsecureChannelCredentials();
  } else {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
        ChannelCredentials(options_.certs_dir);
    if (!credentials.ok()) return credentials.status();
    channel_credentials_ = *credentials;
  }
  // A coordinator that restarts must be found again well within the grace
  // it gives our lease, not after gRPC's default backoff (up to minutes).
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  stub_ = v1::AgentService::NewStub(
      grpc::CreateCustomChannel(options_.coordinator, channel_credentials_, args));
  stores_service_ = std::make_unique<JobStoresService>(options_.store_dir);
  if (!options_.replication_listen.empty()) {
    std::shared_ptr<grpc::ServerCredentials> server_credentials =
        grpc::InsecureServerCredentials();
    if (!options_.insecure) {
      absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tls =
          ServerCredentials(options_.certs_dir);
      if (!tls.ok()) return tls.status();
      server_credentials = *tls;
    }
    grpc::ServerBuilder builder;
    ListenExclusively(builder);
    builder.AddListeningPort(options_.replication_listen, server_credentials);
    builder.SetMaxReceiveMessageSize(kReplicationMaxMessageBytes);
    builder.SetMaxSendMessageSize(kReplicationMaxMessageBytes);
    builder.RegisterService(stores_service_.get());
    replication_server_ = builder.BuildAndStart();
    if (replication_server_ == nullptr) {
      return absl::UnavailableError(absl::StrFormat(
          "cannot serve checkpoint replication on %s", options_.replication_listen));
    }
  }
  std::string last_error;
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    lock.unlock();
    absl::Status status = Tick();
    if (!status.ok() && std::string(status.message()) != last_error) {
      // Said once per distinct problem, not once per heartbeat.
      std::cerr << "tandem agent " << options_.cloud << ": " << status.message() << "\n";
      last_error = std::string(status.message());
    } else if (status.ok() && !last_error.empty()) {
      std::cerr << "tandem agent " << options_.cloud << ": coordinator reachable again\n";
      last_error.clear();
    }
    lock.lock();
    wake_.wait_for(lock, options_.heartbeat_interval, [this] { return stop_; });
  }
  return absl::OkStatus();
}

std::vector<v1::RunningPool> Agent::RunningPools() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<v1::RunningPool> running;
  for (const auto& [job, group] : groups_) {
    if (group->exited) continue;
    v1::RunningPool& pool = running.emplace_back();
    pool.set_job_id(job);
    pool.set_pool_index(group->pool_index);
    pool.set_launch(group->launch);
  }
  return running;
}

uint32_t Agent::FreeSlots() {
  std::lock_guard<std::mutex> lock(mutex_);
  uint32_t used = 0;
  for (const auto& [job, group] : groups_) {
    if (!group->exited) used += group->workers;
  }
  return used >= options_.slots ? 0 : options_.slots - used;
}

absl::Status Agent::Tick() {
  const std::vector<v1::RunningPool> running = RunningPools();
  if (lease_id_.empty()) {
    v1::RegisterPoolRequest request;
    v1::PoolInfo* pool = request.mutable_pool();
    pool->set_cloud(options_.cloud);
    pool->set_slots(options_.slots);
    pool->set_wan_endpoint(options_.wan_advertise);
    pool->set_replication_endpoint(options_.replication_advertise);
    for (const v1::RunningPool& r : running) *request.add_running() = r;
    v1::RegisterPoolResponse response;
    grpc::ClientContext context;
    SetDeadline(context);
    grpc::Status status = stub_->RegisterPool(&context, request, &response);
    if (!status.ok()) {
      return absl::UnavailableError(absl::StrFormat("cannot register with the coordinator at %s: %s",
                                                    options_.coordinator, status.error_message()));
    }
    lease_id_ = response.lease().lease_id();
    std::cerr << "tandem agent " << options_.cloud << ": registered with " << options_.coordinator
              << " (" << options_.slots << " slots, lease " << response.lease().ttl_ms()
              << " ms)\n";
  } else {
    v1::HeartbeatRequest request;
    request.set_lease_id(lease_id_);
    request.set_cloud(options_.cloud);
    request.set_free_slots(FreeSlots());
    for (const v1::RunningPool& r : running) *request.add_running() = r;
    v1::HeartbeatResponse response;
    grpc::ClientContext context;
    SetDeadline(context);
    grpc::Status status = stub_->Heartbeat(&context, request, &response);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      lease_id_.clear();  // the coordinator does not know us: register again
      return absl::OkStatus();
    }
    if (!status.ok()) {
      return absl::UnavailableError(absl::StrFormat("heartbeat to the coordinator at %s: %s",
                                                    options_.coordinator, status.error_message()));
    }
  }

  // Exits first: the coordinator must know a group ended before it plans.
  std::vector<v1::PoolReport> exits;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    exits.swap(unsent_exits_);
  }
  for (size_t i = 0; i < exits.size(); ++i) {
    if (!SendReport(exits[i])) {
      std::lock_guard<std::mutex> lock(mutex_);
      unsent_exits_.insert(unsent_exits_.begin(), exits.begin() + i, exits.end());
      break;
    }
  }

  v1::GetAssignmentsRequest request;
  request.set_cloud(options_.cloud);
  request.set_lease_id(lease_id_);
  v1::GetAssignmentsResponse assignments;
  grpc::ClientContext context;
  SetDeadline(context);
  grpc::Status status = stub_->GetAssignments(&context, request, &assignments);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrFormat(
        "assignments from the coordinator at %s: %s", options_.coordinator, status.error_message()));
  }
  Reconcile(assignments);
  return absl::OkStatus();
}

void Agent::Reconcile(const v1::GetAssignmentsResponse& assignments) {
  std::map<std::string, const v1::Assignment*> wanted;
  for (const v1::Assignment& a : assignments.assignments()) {
    if (a.stop()) continue;
    if (!a.replicate_to().empty()) {
      StartCopy(a);
      continue;
    }
    wanted[a.job_id()] = &a;
  }
  std::vector<const v1::Assignment*> to_start;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = groups_.begin(); it != groups_.end();) {
      Group& group = *it->second;
      auto w = wanted.find(it->first);
      const bool still_wanted = w != wanted.end() && w->second->launch() == group.launch &&
                                w->second->pool_index() == group.pool_index;
      if (!still_wanted && !group.exited && !group.killed) {
        std::cerr << "tandem agent " << options_.cloud << ": stopping job " << group.job_id
                  << " (no longer assigned here)\n";
        group.process->Kill(SIGTERM);
        group.killed = true;
      }
      if (group.exited && (w == wanted.end() || w->second->launch() > group.launch)) {
        // Done with it; a newer launch may replace it below.
        if (group.reader.joinable()) group.reader.join();
        it = groups_.erase(it);
        continue;
      }
      ++it;
    }
    for (const auto& [job, a] : wanted) {
      if (groups_.count(job) == 0) to_start.push_back(a);
    }
  }
  for (const v1::Assignment* a : to_start) {
    absl::Status status = StartGroup(*a);
    if (!status.ok()) {
      v1::PoolReport report;
      report.set_job_id(a->job_id());
      report.set_cloud(options_.cloud);
      report.set_pool_index(a->pool_index());
      report.set_launch(a->launch());
      report.set_generation(a->generation());
      report.set_exited(true);
      report.set_exit_code(1);
      report.set_error(absl::StrCat("cannot start the worker group: ", status.message()));
      std::lock_guard<std::mutex> lock(mutex_);
      unsent_exits_.push_back(std::move(report));
    }
  }
}

absl::Status Agent::StartGroup(const v1::Assignment& assignment) {
  const v1::JobSpec& spec = assignment.spec();
  if (assignment.pool_index() >= static_cast<uint32_t>(spec.pools_size())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pool %d of a job with %d pools", assignment.pool_index(), spec.pools_size()));
  }
  const uint32_t workers = spec.pools(static_cast<int>(assignment.pool_index())).workers();
  const std::string spec_path =
      absl::StrFormat("%s/%s-p%d-l%d.yaml.pb", options_.work_dir, assignment.job_id(),
                      assignment.pool_index(), assignment.launch());
  {
    std::ofstream out(spec_path, std::ios::binary | std::ios::trunc);
    if (!spec.SerializeToOstream(&out) || !out.flush()) {
      return absl::InternalError(absl::StrCat("cannot write ", spec_path));
    }
  }
  std::vector<std::string> argv = {options_.tandem_binary,
                                   "worker",
                                   "--spec",
                                   spec_path,
                                   "--store",
                                   options_.store_dir + "/" + assignment.job_id(),
                                   "--pool",
                                   std::to_string(assignment.pool_index()),
                                   "--coordinator",
                                   options_.coordinator,
                                   "--launch",
                                   std::to_string(assignment.launch()),
                                   "--link-listen",
                                   options_.wan_listen,
                                   "--exchange-timeout-ms",
                                   std::to_string(options_.exchange_timeout_ms),
                                   "--liveness-ms",
                                   std::to_string(options_.liveness_ms),
                                   "--stuck-after-ms",
                                   std::to_string(options_.stuck_after_ms),
                                   "--resume"};
  if (options_.insecure) {
    argv.push_back("--insecure");
  } else {
    argv.insert(argv.end(), {"--certs", options_.certs_dir});
  }
  if (!options_.sample_log_dir.empty()) {
    argv.insert(argv.end(), {"--sample-log", options_.sample_log_dir});
  }
  // The pool's leader opens the job's store itself.
  stores_service_->Release(assignment.job_id());
  absl::StatusOr<std::unique_ptr<Subprocess>> process =
      launcher_->Launch(static_cast<int>(workers), argv);
  if (!process.ok()) return process.status();
  auto group = std::make_unique<Group>();
  group->job_id = assignment.job_id();
  group->pool_index = assignment.pool_index();
  group->launch = assignment.launch();
  group->generation = assignment.generation();
  group->workers = workers;
  group->process = std::move(*process);
  Group* raw = group.get();
  std::cerr << "tandem agent " << options_.cloud << ": started job " << group->job_id << " pool "
            << group->pool_index << " (launch " << group->launch << ", " << workers << " ranks, "
            << launcher_->name() << ")\n";
  std::lock_guard<std::mutex> lock(mutex_);
  groups_[assignment.job_id()] = std::move(group);
  raw->reader = std::thread([this, raw] { ReadGroup(raw); });
  return absl::OkStatus();
}

void Agent::ReadGroup(Group* group) {
  v1::PoolReport base;
  base.set_job_id(group->job_id);
  base.set_cloud(options_.cloud);
  base.set_pool_index(group->pool_index);
  base.set_launch(group->launch);
  base.set_generation(group->generation);
  std::string error;
  bool done = false;
  std::string waiting_for;  // the leader's last "waiting" event
  auto last_progress_log = std::chrono::steady_clock::now() - kProgressLogEvery;
  while (std::optional<std::string> line = group->process->ReadLine()) {
    v1::PoolReport report = base;
    std::optional<WorkerEvent> event = ParseWorkerEvent(*line);
    std::optional<std::string> text = *line;
    if (event.has_value()) {
      if (event->kind == "waiting") waiting_for = event->message;
      text = LogText(*event);
      if (event->kind == "progress") {
        const auto now = std::chrono::steady_clock::now();
        if (now - last_progress_log < kProgressLogEvery) text.reset();
        if (text.has_value()) last_progress_log = now;
      }
      if (event->kind == "progress" || event->kind == "eval" || event->kind == "done" ||
          event->kind == "start" || event->kind == "stopped") {
        *report.mutable_progress() = event->progress;
      }
      if (event->kind == "checkpoint") {
        v1::CheckpointInfo* info = report.add_checkpoints();
        info->set_job(group->job_id);
        info->set_step(event->progress.step());
        info->set_state_digest(event->progress.state_digest());
        info->set_created_unix_ms(NowUnixMs());
        info->set_cloud(options_.cloud);
        info->set_latest(true);
      }
      if (event->kind == "error") error = event->message;
      if (event->kind == "done") {
        done = true;
        report.set_done(true);
      }
    }
    report.set_waiting_for(waiting_for);
    if (text.has_value()) {
      v1::LogLine* log = report.add_logs();
      log->set_time_unix_ms(NowUnixMs());
      log->set_cloud(options_.cloud);
      log->set_text(*text);
    }
    if (event.has_value() || text.has_value()) SendReport(report);
  }
  absl::StatusOr<int> exit_code = group->process->Wait();
  v1::PoolReport report = base;
  report.set_exited(true);
  report.set_exit_code(exit_code.ok() ? *exit_code : 1);
  report.set_done(done);
  if (error.empty() && (!exit_code.ok() || *exit_code != 0)) {
    error = exit_code.ok() ? absl::StrFormat("the worker group exited with status %d", *exit_code)
                           : std::string(exit_code.status().message());
  }
  report.set_error(error);
  std::cerr << "tandem agent " << options_.cloud << ": job " << group->job_id << " pool "
            << group->pool_index << " exited with status " << report.exit_code()
            << (error.empty() ? "" : ": " + error) << "\n";
  {
    std::lock_guard<std::mutex> lock(mutex_);
    group->exited = true;
    unsent_exits_.push_back(std::move(report));
  }
  wake_.notify_all();
}

bool Agent::SendReport(const v1::PoolReport& report) {
  v1::PoolReportResponse response;
  grpc::ClientContext context;
  SetDeadline(context);
  return stub_->ReportPool(&context, report, &response).ok();
}

void Agent::StartCopy(const v1::Assignment& assignment) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& copy = copies_[assignment.job_id()];
  if (copy != nullptr && copy->launch >= assignment.launch()) return;
  if (copy != nullptr && copy->thread.joinable()) copy->thread.join();
  copy = std::make_unique<Copy>();
  copy->launch = assignment.launch();
  copy->thread = std::thread([this, assignment] { RunCopy(assignment); });
}

// A migration's copy: the job's latest checkpoint from this cloud's store to
// the target cloud's agent, only the chunks it lacks.
void Agent::RunCopy(v1::Assignment assignment) {
  v1::PoolReport report;
  report.set_job_id(assignment.job_id());
  report.set_cloud(options_.cloud);
  report.set_launch(assignment.launch());
  report.set_pool_index(assignment.pool_index());
  report.set_generation(assignment.generation());
  report.set_replicated(true);
  const std::string store_dir = options_.store_dir + "/" + assignment.job_id();
  CheckpointStoreOptions store_options;
  store_options.read_only = true;
  store_options.create_if_missing = false;
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
      CheckpointStore::Open(store_dir, store_options);
  if (!store.ok()) {
    report.set_error(absl::StrCat("cannot open ", store_dir, ": ", store.status().message()));
  } else {
    std::cerr << "tandem agent " << options_.cloud << ": copying the latest checkpoint of job "
              << assignment.job_id() << " to " << assignment.replicate_to() << "\n";
    absl::StatusOr<ReplicationStats> stats =
        PushCheckpoint(**store, assignment.job_id(), std::nullopt, assignment.replicate_to(),
                       channel_credentials_, std::chrono::minutes(30),
                       assignment.spec().checkpoint().keep());
    if (!stats.ok()) {
      report.set_error(std::string(stats.status().message()));
    } else {
      report.set_replicated_bytes(stats->bytes_sent);
      report.set_replicated_step(stats->step);
      std::cerr << absl::StrFormat(
          "tandem agent %s: copied step %d of job %s: %d of %d chunks sent (%d bytes) in %.2f s\n",
          options_.cloud, stats->step, assignment.job_id(), stats->chunks_sent,
          stats->chunks_total, stats->bytes_sent, stats->seconds);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    unsent_exits_.push_back(std::move(report));
  }
  wake_.notify_all();
}

}  // namespace tandem
