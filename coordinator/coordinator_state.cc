#include "coordinator/coordinator_state.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tandem {
namespace {

// The least time a restarted coordinator gives each known cloud to heartbeat
// again before its lease expires (2 x the ttl when that is longer).
constexpr int64_t kRecoveryGraceMs = 10000;

using v1::JobState;
using v1::PoolState;

constexpr size_t kMaxLogLines = 20000;
constexpr uint32_t kMaxRestarts = 3;
constexpr int64_t kBackoffStartMs = 2000;
constexpr int64_t kBackoffMaxMs = 30000;
constexpr uint32_t kMaxWaitMs = 60000;
constexpr int64_t kProgressWriteEveryMs = 1000;
// Long polls and log streams look at their client's cancellation this often.
constexpr absl::Duration kCancelCheck = absl::Milliseconds(250);

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

std::string StateName(JobState state) {
  return std::string(absl::StripPrefix(v1::JobState_Name(state), "JOB_STATE_"));
}

bool Terminal(JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

// The pool has (or should have) a worker group running.
bool Running(PoolState state) {
  return state == v1::POOL_STATE_LAUNCHED || state == v1::POOL_STATE_ACTIVE ||
         state == v1::POOL_STATE_JOINING;
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return true;
}

bool Contains(const std::vector<uint32_t>& v, uint32_t x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

std::string LogKey(const std::string& job_id, uint64_t seq) {
  return absl::StrFormat("log/%s/%020d", job_id, seq);
}

std::string NewLeaseId() {
  absl::BitGen gen;
  return absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(gen), absl::Uniform<uint64_t>(gen));
}

uint64_t JobNumber(const std::string& id) {
  uint64_t n = 0;
  size_t dash = id.rfind('-');
  if (dash != std::string::npos) (void)absl::SimpleAtoi(id.substr(dash + 1), &n);
  return n;
}

}  // namespace

struct CoordinatorState::Txn {
  explicit Txn(CoordinatorState* state) : state(state) { state->mu_.Lock(); }
  ~Txn() {
    if (locked) state->Commit(*this).IgnoreError();
  }
  absl::Status Commit() { return state->Commit(*this); }

  CoordinatorState* const state;
  bool locked = true;
  rocksdb::WriteBatch batch;
  bool dirty = false;
  bool sync = false;
  std::vector<Job*> touched;
  std::vector<std::pair<std::string, v1::JobEvent>> events;
};

CoordinatorState::CoordinatorState(rocksdb::DB* db, uint32_t lease_ttl_ms, EventCallback on_event)
    : db_(db), ttl_ms_(lease_ttl_ms), on_event_(std::move(on_event)) {}

CoordinatorState::~CoordinatorState() {
  Shutdown();
  delete db_;
}

absl::StatusOr<std::unique_ptr<CoordinatorState>> CoordinatorState::Open(const std::string& dir,
                                                                         uint32_t lease_ttl_ms,
                                                                         EventCallback on_event) {
  if (dir.empty()) return absl::InvalidArgumentError("state dir: empty; pass --state DIR");
  if (lease_ttl_ms == 0) return absl::InvalidArgumentError("lease ttl: must be at least 1 ms");
  rocksdb::Options options;
  options.create_if_missing = true;
  options.keep_log_file_num = 4;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, &db);
  if (!s.ok()) {
    const std::string message = s.ToString();
    if (s.IsIOError() && absl::StrContains(message, "lock")) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "state dir %s is in use by another coordinator (%s); stop it or pass another --state",
          dir, message));
    }
    return absl::UnavailableError(
        absl::StrFormat("cannot open the coordinator state in %s: %s", dir, message));
  }
  std::unique_ptr<CoordinatorState> state(
      new CoordinatorState(db, lease_ttl_ms, std::move(on_event)));
  absl::Status recovered = state->Recover();
  if (!recovered.ok()) return recovered;
  return state;
}

absl::Status CoordinatorState::Recover() {
  absl::MutexLock lock(&mu_);
  const int64_t now = NowMs();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const std::string key = it->key().ToString();
    const std::string value = it->value().ToString();
    auto corrupt = [&] {
      return absl::DataLossError(absl::StrFormat(
          "coordinator state: key %s does not parse; the state dir is damaged", key));
    };
    if (key == "meta/next_job") {
      if (!absl::SimpleAtoi(value, &next_job_)) return corrupt();
    } else if (absl::StartsWith(key, "pool/")) {
      Cloud& cloud = clouds_[key.substr(5)];
      if (!cloud.info.ParseFromString(value)) return corrupt();
      cloud.alive = true;
      cloud.last_heartbeat_ms = now;
      // Agents need time to find a restarted coordinator (their channels
      // back off while it is down); a lease lost here would stop healthy
      // pools.
      SetExpiry(cloud, now + std::max<int64_t>(2 * int64_t{ttl_ms_}, kRecoveryGraceMs));
    } else if (absl::StartsWith(key, "lease/")) {
      v1::Lease lease;
      if (!lease.ParseFromString(value)) return corrupt();
      clouds_[key.substr(6)].lease_id = lease.lease_id();
      lease_to_cloud_[lease.lease_id()] = key.substr(6);
    } else if (absl::StartsWith(key, "job/")) {
      auto& job = jobs_[key.substr(4)];
      if (job == nullptr) job = std::make_unique<Job>();
      if (!job->status.ParseFromString(value)) return corrupt();
      job->px.resize(job->status.pools_size());
    } else if (absl::StartsWith(key, "jobx/")) {
      auto& job = jobs_[key.substr(5)];
      if (job == nullptr) job = std::make_unique<Job>();
      LoadExtras(*job, value);
    } else if (absl::StartsWith(key, "ckpt/")) {
      auto& job = jobs_[key.substr(5)];
      if (job == nullptr) job = std::make_unique<Job>();
      v1::ListCheckpointsResponse list;
      if (!list.ParseFromString(value)) return corrupt();
      for (const v1::CheckpointInfo& info : list.checkpoints()) {
        job->checkpoints[info.cloud()].push_back(info);
      }
    } else if (absl::StartsWith(key, "log/")) {
      const size_t slash = key.rfind('/');
      auto& job = jobs_[key.substr(4, slash - 4)];
      if (job == nullptr) job = std::make_unique<Job>();
      uint64_t seq = 0;
      v1::LogLine line;
      if (!absl::SimpleAtoi(key.substr(slash + 1), &seq) || !line.ParseFromString(value)) {
        return corrupt();
      }
      if (job->logs.empty()) job->log_base = seq;
      job->logs.push_back(std::move(line));
    }
  }
  if (!it->status().ok()) {
    return absl::DataLossError("reading the coordinator state: " + it->status().ToString());
  }
  for (auto& [id, job] : jobs_) {
    if (job->status.job_id().empty()) {
      return absl::DataLossError(absl::StrFormat(
          "coordinator state: job %s has extras but no job/ record; the state dir is damaged", id));
    }
    job->px.resize(job->status.pools_size());
    order_.push_back(id);
  }
  std::sort(order_.begin(), order_.end(),
            [](const std::string& a, const std::string& b) { return JobNumber(a) < JobNumber(b); });
  return absl::OkStatus();
}

std::string CoordinatorState::ExtrasJson(const Job& job) const {
  nlohmann::json j;
  nlohmann::json pools = nlohmann::json::array();
  for (const PoolExtra& x : job.px) {
    pools.push_back({{"occupying", x.occupying},
                     {"stopping", x.stopping},
                     {"done_seen", x.done_seen},
                     {"resume", x.resume},
                     {"launch_generation", x.launch_generation},
                     {"backoff_ms", x.backoff_ms},
                     {"next_launch_ms", x.next_launch_ms},
                     {"joined_at_step", x.joined_at_step},
                     {"stop_reason", x.stop_reason}});
  }
  j["pools"] = pools;
  j["active"] = job.active;
  j["plan_reason"] = job.plan_reason;
  j["recovery_step"] = job.recovery_step;
  j["loss_ms"] = job.loss_ms;
  j["awaiting_recover"] = job.awaiting_recover;
  j["needs_restart"] = job.needs_restart;
  j["last_error"] = job.last_error;
  j["wait_reason"] = job.wait_reason;
  j["migrate_phase"] = job.migrate_phase;
  j["migrate_to"] = job.migrate_to;
  j["migrate_source"] = job.migrate_source;
  j["migrate_source_index"] = job.migrate_source_index;
  j["migrate_workers"] = job.migrate_workers;
  j["migrate_pools"] = job.migrate_pools;
  return j.dump();
}

void CoordinatorState::LoadExtras(Job& job, const std::string& text) const {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return;
  job.px.clear();
  for (const auto& p : j.value("pools", nlohmann::json::array())) {
    PoolExtra x;
    x.occupying = p.value("occupying", false);
    x.stopping = p.value("stopping", false);
    x.done_seen = p.value("done_seen", false);
    x.resume = p.value("resume", false);
    x.launch_generation = p.value("launch_generation", uint64_t{0});
    x.backoff_ms = p.value("backoff_ms", int64_t{0});
    x.next_launch_ms = p.value("next_launch_ms", int64_t{0});
    x.joined_at_step = p.value("joined_at_step", uint64_t{0});
    x.stop_reason = p.value("stop_reason", std::string());
    job.px.push_back(std::move(x));
  }
  job.active = j.value("active", std::vector<uint32_t>());
  job.plan_reason = j.value("plan_reason", std::string());
  job.recovery_step = j.value("recovery_step", uint64_t{0});
  job.loss_ms = j.value("loss_ms", int64_t{0});
  job.awaiting_recover = j.value("awaiting_recover", false);
  job.needs_restart = j.value("needs_restart", false);
  job.last_error = j.value("last_error", std::string());
  job.wait_reason = j.value("wait_reason", std::string());
  job.migrate_phase = j.value("migrate_phase", 0);
  job.migrate_to = j.value("migrate_to", std::string());
  job.migrate_source = j.value("migrate_source", std::string());
  job.migrate_source_index = j.value("migrate_source_index", uint32_t{0});
  job.migrate_workers = j.value("migrate_workers", uint32_t{0});
  job.migrate_pools = j.value("migrate_pools", std::vector<uint32_t>());
}

void CoordinatorState::Touch(Job& job, Txn& txn, bool sync) {
  if (std::find(txn.touched.begin(), txn.touched.end(), &job) == txn.touched.end()) {
    txn.touched.push_back(&job);
  }
  if (sync) txn.sync = true;
}

absl::Status CoordinatorState::Commit(Txn& txn) {
  const int64_t now = NowMs();
  for (Job* job : txn.touched) {
    txn.batch.Put("job/" + job->status.job_id(), job->status.SerializeAsString());
    txn.batch.Put("jobx/" + job->status.job_id(), ExtrasJson(*job));
    job->progress_dirty = false;
    job->progress_written_ms = now;
    txn.dirty = true;
  }
  txn.locked = false;
  absl::Status status;
  if (!txn.dirty) {
    mu_.Unlock();
  } else {
    // The write order is the order of the state changes: a ticket taken
    // under mu_, then the turn awaited without it, so neither this write nor
    // the wait for an earlier writer's fsync holds up heartbeats and reads.
    const uint64_t ticket = next_write_ticket_++;
    mu_.Unlock();
    write_mu_.Lock();
    while (write_turn_ != ticket) write_cv_.Wait(&write_mu_);
    rocksdb::WriteOptions options;
    options.sync = txn.sync;
    rocksdb::Status s = db_->Write(options, &txn.batch);
    ++write_turn_;
    write_cv_.SignalAll();
    write_mu_.Unlock();
    if (!s.ok()) {
      status = absl::UnavailableError("writing the coordinator state: " + s.ToString());
    }
  }
  if (on_event_) {
    for (const auto& [id, event] : txn.events) on_event_(id, event);
  }
  return status;
}

CoordinatorState::Job* CoordinatorState::FindJob(const std::string& id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second.get();
}

bool CoordinatorState::Alive(const std::string& cloud) const {
  auto it = clouds_.find(cloud);
  return it != clouds_.end() && it->second.alive;
}

uint32_t CoordinatorState::FreeSlots(const std::string& cloud) const {
  auto it = clouds_.find(cloud);
  if (it == clouds_.end()) return 0;
  int64_t free = it->second.info.slots();
  for (const auto& [id, job] : jobs_) {
    for (int i = 0; i < job->status.pools_size(); ++i) {
      if (job->px[i].occupying && job->status.pools(i).cloud() == cloud) {
        free -= job->status.pools(i).workers();
      }
    }
  }
  return static_cast<uint32_t>(std::max<int64_t>(free, 0));
}

std::string CoordinatorState::MultiPoolJobOn(const std::string& cloud,
                                             const std::string& except) const {
  for (const std::string& id : order_) {
    const Job& job = *jobs_.at(id);
    if (id == except || job.status.pools_size() < 2) continue;
    // A cancelled job's groups hold the WAN endpoint until they exit.
    for (int i = 0; i < job.status.pools_size(); ++i) {
      const v1::PoolStatus& pool = job.status.pools(i);
      if (pool.cloud() != cloud) continue;
      if (job.px[i].occupying || (!Terminal(job.status.state()) && Running(pool.state()))) {
        return id;
      }
    }
  }
  return "";
}

std::string CoordinatorState::CannotLaunch(const Job& job, uint32_t index, bool ignore_own) const {
  const v1::PoolStatus& pool = job.status.pools(index);
  auto it = clouds_.find(pool.cloud());
  if (it == clouds_.end()) {
    return absl::StrFormat("no agent has registered cloud %s", pool.cloud());
  }
  if (!it->second.alive) return absl::StrFormat("cloud %s has no live agent", pool.cloud());
  uint32_t free = FreeSlots(pool.cloud());
  if (ignore_own && job.px[index].occupying) free += pool.workers();
  if (free < pool.workers()) {
    return absl::StrFormat("cloud %s has %d of %d slots free; pool %d needs %d", pool.cloud(), free,
                           it->second.info.slots(), index, pool.workers());
  }
  if (job.status.pools_size() > 1) {
    const std::string other = MultiPoolJobOn(pool.cloud(), job.status.job_id());
    if (!other.empty()) {
      return absl::StrFormat(
          "cloud %s runs multi-pool job %s (one multi-pool job per cloud: its agent has one WAN "
          "endpoint)",
          pool.cloud(), other);
    }
  }
  return "";
}

std::string CoordinatorState::KnownClouds() const {
  if (clouds_.empty()) return "none registered yet";
  std::vector<std::string> names;
  for (const auto& [name, cloud] : clouds_) names.push_back(name);
  return "known: " + absl::StrJoin(names, ", ");
}

void CoordinatorState::AddEvent(Job& job, JobState to, const std::string& reason,
                                const std::string& cloud, Txn& txn) {
  v1::JobEvent* event = job.status.add_events();
  event->set_time_unix_ms(NowMs());
  event->set_from(job.status.state());
  event->set_to(to);
  event->set_reason(reason);
  event->set_cloud(cloud);
  event->set_step(job.status.progress().step());
  job.status.set_state(to);
  txn.events.emplace_back(job.status.job_id(), *event);
  Touch(job, txn, /*sync=*/true);
  plan_cv_.SignalAll();
  if (Terminal(to)) log_cv_.SignalAll();
}

void CoordinatorState::NewGeneration(Job& job, const std::string& reason) {
  job.status.set_generation(job.status.generation() + 1);
  job.plan_reason = reason;
  plan_cv_.SignalAll();
}

void CoordinatorState::LaunchPool(Job& job, uint32_t index, bool resume, bool joining) {
  v1::PoolStatus& pool = *job.status.mutable_pools(index);
  PoolExtra& x = job.px[index];
  pool.set_launch(pool.launch() + 1);
  pool.set_state(joining ? v1::POOL_STATE_JOINING : v1::POOL_STATE_LAUNCHED);
  pool.clear_error();
  x.occupying = true;
  x.stopping = false;
  x.done_seen = false;
  x.resume = resume;
  x.launch_generation = job.status.generation();
  x.stop_reason.clear();
  x.has_progress = false;
}

void CoordinatorState::StartJob(Job& job, Txn& txn) {
  job.status.set_generation(1);
  job.plan_reason = "start";
  job.active.clear();
  std::vector<std::string> where;
  for (int i = 0; i < job.status.pools_size(); ++i) {
    LaunchPool(job, i, /*resume=*/false, /*joining=*/false);
    job.active.push_back(i);
    where.push_back(absl::StrFormat("%s (%d workers)", job.status.pools(i).cloud(),
                                    job.status.pools(i).workers()));
  }
  job.wait_reason.clear();
  AddEvent(job, v1::JOB_STATE_STARTING, "placed on " + absl::StrJoin(where, ", "), "", txn);
}

void CoordinatorState::DropFromActive(Job& job, uint32_t index) {
  job.active.erase(std::remove(job.active.begin(), job.active.end(), index), job.active.end());
}

void CoordinatorState::LosePool(Job& job, uint32_t index, const std::string& reason,
                                int64_t loss_ms, Txn& txn) {
  v1::PoolStatus& pool = *job.status.mutable_pools(index);
  PoolExtra& x = job.px[index];
  const bool was_active = Contains(job.active, index);
  const bool was_stopping = x.stopping;
  pool.set_state(v1::POOL_STATE_LOST);
  pool.set_error(reason);
  pool.clear_waiting_for();
  x.stopping = false;
  Touch(job, txn, /*sync=*/true);
  if (Terminal(job.status.state())) return;
  job.last_error = reason;
  if (was_stopping) {
    AdvanceMigration(job, txn);
    return;
  }
  if (!was_active) return;
  DropFromActive(job, index);
  if (job.migrate_phase == kLaunched) job.migrate_phase = kNoMigration;
  if (job.active.empty()) {
    Restart(job, reason, loss_ms, txn);
    return;
  }
  const int64_t now = NowMs();
  NewGeneration(job, reason);
  job.recovery_step = job.status.progress().step();
  job.loss_ms = loss_ms;
  job.awaiting_recover = true;
  job.status.set_last_detect_s(std::max<int64_t>(0, now - loss_ms) / 1000.0);
  AddEvent(job, v1::JOB_STATE_RECOVERING, reason, pool.cloud(), txn);
}

void CoordinatorState::Restart(Job& job, const std::string& reason, int64_t loss_ms, Txn& txn) {
  job.migrate_phase = kNoMigration;
  job.active.clear();
  job.status.set_restarts(job.status.restarts() + 1);
  if (job.status.restarts() > kMaxRestarts) {
    Finish(job, v1::JOB_STATE_FAILED,
           absl::StrFormat("gave up after %d restarts from a checkpoint; last error: %s",
                           kMaxRestarts, reason),
           txn);
    return;
  }
  job.needs_restart = true;
  job.loss_ms = loss_ms;
  AddEvent(job, v1::JOB_STATE_RECOVERING,
           absl::StrFormat("no active pool left (%s); restarting from the latest checkpoint "
                           "(restart %d of %d)",
                           reason, job.status.restarts(), kMaxRestarts),
           "", txn);
  TryRestart(job, txn);
}

void CoordinatorState::TryRestart(Job& job, Txn& txn) {
  std::vector<uint32_t> launch;
  for (int i = 0; i < job.status.pools_size(); ++i) {
    if (CannotLaunch(job, i, /*ignore_own=*/true).empty()) launch.push_back(i);
  }
  for (int i = 0; i < job.status.pools_size(); ++i) {
    v1::PoolStatus& pool = *job.status.mutable_pools(i);
    if (!Contains(launch, i) && pool.state() != v1::POOL_STATE_LOST) {
      pool.set_state(v1::POOL_STATE_WAITING);
    }
  }
  Touch(job, txn, /*sync=*/true);
  if (launch.empty()) return;
  uint64_t checkpoint_step = 0;
  for (const auto& [cloud, list] : job.checkpoints) {
    for (const v1::CheckpointInfo& info : list)
      checkpoint_step = std::max(checkpoint_step, info.step());
  }
  NewGeneration(job, "restart from the latest checkpoint");
  std::vector<std::string> where;
  for (uint32_t i : launch) {
    LaunchPool(job, i, /*resume=*/true, /*joining=*/false);
    where.push_back(job.status.pools(i).cloud());
  }
  job.active = launch;
  job.needs_restart = false;
  job.awaiting_recover = true;
  job.recovery_step = checkpoint_step;
  job.status.set_last_detect_s(std::max<int64_t>(0, NowMs() - job.loss_ms) / 1000.0);
  AddEvent(job, v1::JOB_STATE_RECOVERING,
           absl::StrFormat("restarting on %s from the latest checkpoint (step %d)",
                           absl::StrJoin(where, ", "), checkpoint_step),
           "", txn);
}

void CoordinatorState::AdvanceMigration(Job& job, Txn& txn) {
  if (job.migrate_phase != kStopping) return;
  for (uint32_t i : job.migrate_pools) {
    if (job.px[i].stopping) return;
  }
  int best = -1;
  for (uint32_t i : job.migrate_pools) {
    const v1::PoolStatus& pool = job.status.pools(i);
    if (pool.state() != v1::POOL_STATE_STOPPED || !Alive(pool.cloud())) continue;
    if (best < 0 || pool.step() > job.status.pools(best).step()) best = i;
  }
  if (best < 0) {
    Restart(job,
            absl::StrFormat("migration to %s failed: no pool stopped with a checkpoint (%s)",
                            job.migrate_to, job.last_error),
            NowMs(), txn);
    return;
  }
  job.migrate_phase = kReplicating;
  job.migrate_source = job.status.pools(best).cloud();
  job.migrate_source_index = best;
  AddEvent(job, v1::JOB_STATE_MIGRATING,
           absl::StrFormat("stopped with a checkpoint at step %d on %s; copying it to %s",
                           job.status.pools(best).step(), job.migrate_source, job.migrate_to),
           job.migrate_source, txn);
}

void CoordinatorState::FinishMigration(Job& job, const v1::PoolReport& report, Txn& txn) {
  const std::string source = job.migrate_source;
  if (!report.error().empty()) {
    const std::string reason = absl::StrFormat(
        "migration to %s failed: copying the checkpoint from %s: %s; resuming on %s",
        job.migrate_to, source, report.error(), source);
    job.migrate_phase = kNoMigration;
    job.last_error = reason;
    NewGeneration(job, reason);
    for (uint32_t i : job.migrate_pools) {
      if (job.status.pools(i).state() == v1::POOL_STATE_STOPPED && CannotLaunch(job, i).empty()) {
        LaunchPool(job, i, /*resume=*/true, /*joining=*/false);
        job.active.push_back(i);
      }
    }
    std::sort(job.active.begin(), job.active.end());
    if (job.active.empty()) {
      Restart(job, reason, NowMs(), txn);
      return;
    }
    job.awaiting_recover = true;
    job.recovery_step = job.status.progress().step();
    job.loss_ms = NowMs();
    AddEvent(job, v1::JOB_STATE_RECOVERING, reason, source, txn);
    return;
  }
  const std::string target = job.migrate_to;
  const uint32_t slots = clouds_.count(target) ? clouds_.at(target).info.slots() : 0;
  const uint32_t workers = std::max<uint32_t>(1, std::min(job.migrate_workers, slots));
  uint64_t launch = 0;
  for (const v1::PoolStatus& pool : job.status.pools()) launch = std::max(launch, pool.launch());
  job.status.mutable_spec()->clear_pools();
  v1::PoolSpec* spec_pool = job.status.mutable_spec()->add_pools();
  spec_pool->set_cloud(target);
  spec_pool->set_workers(workers);
  job.status.clear_pools();
  v1::PoolStatus* pool = job.status.add_pools();
  pool->set_index(0);
  pool->set_cloud(target);
  pool->set_workers(workers);
  pool->set_launch(launch);
  job.px.assign(1, PoolExtra());
  job.status.mutable_layout()->clear_pools();
  v1::Layout::Pool* layout = job.status.mutable_layout()->add_pools();
  layout->set_cloud(target);
  layout->set_ranks(workers);
  NewGeneration(job, "migrated to " + target);
  LaunchPool(job, 0, /*resume=*/true, /*joining=*/false);
  job.active = {0};
  job.migrate_phase = kLaunched;
  job.migrate_pools.clear();
  AddEvent(job, v1::JOB_STATE_MIGRATING,
           absl::StrFormat("copied the checkpoint at step %d from %s to %s (replicated_bytes=%d); "
                           "launched %d workers on %s",
                           report.replicated_step(), source, target, report.replicated_bytes(),
                           workers, target),
           target, txn);
}

void CoordinatorState::Finish(Job& job, JobState to, const std::string& reason, Txn& txn) {
  for (int i = 0; i < job.status.pools_size(); ++i) {
    v1::PoolStatus& pool = *job.status.mutable_pools(i);
    if (Running(pool.state())) {
      pool.set_state(v1::POOL_STATE_STOPPED);
      job.px[i].stop_reason = reason;
    }
    job.px[i].stopping = false;
  }
  job.active.clear();
  job.migrate_phase = kNoMigration;
  job.needs_restart = false;
  job.status.set_finished_unix_ms(NowMs());
  AddEvent(job, to, reason, "", txn);
}

void CoordinatorState::UpdateProgress(Job& job, uint32_t index,
                                      const v1::TrainingProgress& progress, Txn& txn) {
  v1::PoolStatus& pool = *job.status.mutable_pools(index);
  PoolExtra& x = job.px[index];
  x.progress = progress;
  x.has_progress = true;
  pool.set_step(progress.step());
  if (!Contains(job.active, index)) return;
  if (pool.state() == v1::POOL_STATE_LAUNCHED) pool.set_state(v1::POOL_STATE_ACTIVE);
  const PoolExtra* best = nullptr;
  for (uint32_t a : job.active) {
    if (job.px[a].has_progress &&
        (best == nullptr || job.px[a].progress.step() > best->progress.step())) {
      best = &job.px[a];
    }
  }
  double accuracy = job.status.progress().test_accuracy();
  double test_loss = job.status.progress().test_loss();
  if (progress.test_accuracy() >= 0) {
    accuracy = progress.test_accuracy();
    test_loss = progress.test_loss();
  }
  *job.status.mutable_progress() = best->progress;
  if (job.status.progress().test_accuracy() < 0 || progress.test_accuracy() >= 0) {
    job.status.mutable_progress()->set_test_accuracy(accuracy);
    job.status.mutable_progress()->set_test_loss(test_loss);
  }
  job.progress_dirty = true;
  Touch(job, txn, /*sync=*/false);
  const int64_t now = NowMs();
  const JobState state = job.status.state();
  if (state == v1::JOB_STATE_STARTING) {
    AddEvent(job, v1::JOB_STATE_RUNNING, "training: first progress from " + pool.cloud(),
             pool.cloud(), txn);
  } else if (state == v1::JOB_STATE_RECOVERING && job.awaiting_recover &&
             progress.step() > job.recovery_step) {
    job.awaiting_recover = false;
    job.status.set_last_recover_s(std::max<int64_t>(0, now - job.loss_ms) / 1000.0);
    AddEvent(
        job, v1::JOB_STATE_RUNNING,
        absl::StrFormat("recovered: step %d completed %.1f s after the loss (detected in %.1f s)",
                        progress.step(), job.status.last_recover_s(), job.status.last_detect_s()),
        pool.cloud(), txn);
  } else if (state == v1::JOB_STATE_MIGRATING && job.migrate_phase == kLaunched) {
    job.migrate_phase = kNoMigration;
    AddEvent(job, v1::JOB_STATE_RUNNING, "migrated to " + pool.cloud(), pool.cloud(), txn);
  }
}

v1::Plan CoordinatorState::BuildPlan(const Job& job, uint32_t index) const {
  v1::Plan plan;
  plan.set_job_id(job.status.job_id());
  plan.set_generation(job.status.generation());
  for (const v1::PoolSpec& pool : job.status.spec().pools()) {
    *plan.add_pools() = pool;
    auto it = clouds_.find(pool.cloud());
    plan.add_link_addresses(it == clouds_.end() ? "" : it->second.info.wan_endpoint());
  }
  for (uint32_t a : job.active) plan.add_active_pools(a);
  plan.set_reason(job.plan_reason);
  const v1::PoolStatus& pool = job.status.pools(index);
  const PoolExtra& x = job.px[index];
  if (Terminal(job.status.state())) {
    plan.set_stop(true);
    std::string why = job.status.events_size() > 0
                          ? job.status.events(job.status.events_size() - 1).reason()
                          : "";
    plan.set_reason(absl::StrFormat("job %s is %s: %s", job.status.job_id(),
                                    StateName(job.status.state()), why));
  } else if (x.stopping) {
    plan.set_stop(true);
    plan.set_checkpoint_before_stop(true);
    plan.set_reason(x.stop_reason);
  } else if (!Contains(job.active, index) && pool.state() != v1::POOL_STATE_JOINING) {
    plan.set_stop(true);
    if (pool.state() == v1::POOL_STATE_LOST) {
      plan.set_reason("dropped: " + pool.error());
    } else if (!x.stop_reason.empty()) {
      plan.set_reason(x.stop_reason);
    } else {
      plan.set_reason(
          absl::StrFormat("pool %d is not in generation %d", index, job.status.generation()));
    }
  }
  return plan;
}

void CoordinatorState::SetExpiry(Cloud& cloud, int64_t expires_ms) {
  cloud.expires_ms = expires_ms;
  next_expiry_ms_ = std::min(next_expiry_ms_, expires_ms);
}

void CoordinatorState::ExpireLeases(Txn& txn) {
  const int64_t now = NowMs();
  // Every live lease expires at next_expiry_ms_ or later, so the scan over
  // all clouds (10,000 agents: ~0.5 ms under mu_) runs only when one may
  // have expired, not on every tick and registration.
  if (now <= next_expiry_ms_) return;
  next_expiry_ms_ = std::numeric_limits<int64_t>::max();
  for (auto& [name, cloud] : clouds_) {
    if (!cloud.alive) continue;
    if (cloud.expires_ms >= now) {
      next_expiry_ms_ = std::min(next_expiry_ms_, cloud.expires_ms);
      continue;
    }
    cloud.alive = false;
    const std::string reason =
        absl::StrFormat("%s lost: agent lease expired (last heartbeat %.1f s ago)", name,
                        (now - cloud.last_heartbeat_ms) / 1000.0);
    for (const std::string& id : order_) {
      Job& job = *jobs_.at(id);
      if (Terminal(job.status.state())) continue;
      for (int i = 0; i < job.status.pools_size(); ++i) {
        const v1::PoolStatus& pool = job.status.pools(i);
        if (pool.cloud() == name && (Running(pool.state()) || job.px[i].stopping)) {
          LosePool(job, i, reason, cloud.last_heartbeat_ms, txn);
        }
      }
      if (job.migrate_phase == kReplicating && job.migrate_source == name) {
        Restart(job, absl::StrFormat("migration to %s failed: %s", job.migrate_to, reason),
                cloud.last_heartbeat_ms, txn);
      }
    }
  }
}

void CoordinatorState::PlacePending(Txn& txn) {
  for (const std::string& id : order_) {
    Job& job = *jobs_.at(id);
    if (job.status.state() != v1::JOB_STATE_PENDING) continue;
    std::string reason;
    for (int i = 0; i < job.status.pools_size() && reason.empty(); ++i) {
      reason = CannotLaunch(job, i);
    }
    if (reason.empty()) {
      StartJob(job, txn);
    } else if (reason != job.wait_reason) {
      job.wait_reason = reason;
      AddEvent(job, v1::JOB_STATE_PENDING, "waiting: " + reason, "", txn);
    }
  }
}

void CoordinatorState::Relaunch(Txn& txn) {
  const int64_t now = NowMs();
  for (const std::string& id : order_) {
    Job& job = *jobs_.at(id);
    const JobState state = job.status.state();
    if (state != v1::JOB_STATE_RUNNING && state != v1::JOB_STATE_RECOVERING) continue;
    if (job.needs_restart) {
      TryRestart(job, txn);
      continue;
    }
    if (job.migrate_phase != kNoMigration || job.active.empty()) continue;
    for (int i = 0; i < job.status.pools_size(); ++i) {
      const v1::PoolStatus& pool = job.status.pools(i);
      if (pool.state() != v1::POOL_STATE_LOST && pool.state() != v1::POOL_STATE_WAITING) continue;
      // Its previous group must be gone first: a dropped leader that still
      // runs must keep getting stop, not the plan of a relaunch.
      if (job.px[i].occupying || now < job.px[i].next_launch_ms) continue;
      if (!CannotLaunch(job, i).empty()) continue;
      LaunchPool(job, i, /*resume=*/true, /*joining=*/true);
      AddEvent(job, state,
               absl::StrFormat("relaunching pool %d on %s to rejoin (launch %d)", i, pool.cloud(),
                               pool.launch()),
               pool.cloud(), txn);
    }
  }
}

void CoordinatorState::Reconcile(Txn& txn) {
  ExpireLeases(txn);
  PlacePending(txn);
  Relaunch(txn);
}

void CoordinatorState::Tick() {
  Txn txn(this);
  if (shutdown_) return;
  Reconcile(txn);
  const int64_t now = NowMs();
  for (auto& [id, job] : jobs_) {
    if (job->progress_dirty && now - job->progress_written_ms >= kProgressWriteEveryMs) {
      Touch(*job, txn, /*sync=*/false);
    }
  }
  txn.Commit().IgnoreError();
}

void CoordinatorState::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  plan_cv_.SignalAll();
  log_cv_.SignalAll();
}

absl::StatusOr<v1::SubmitJobResponse> CoordinatorState::SubmitJob(const v1::JobSpec& request) {
  v1::JobSpec spec = request;
  if (spec.name().empty()) spec.set_name("job");
  if (!ValidName(spec.name())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "name: \"%s\" may hold only letters, digits, '.', '_' and '-' (at most 128)", spec.name()));
  }
  if (spec.pools_size() == 0) {
    return absl::InvalidArgumentError("pools: a job needs at least one pool");
  }
  if (spec.exchange().mode() == v1::EXCHANGE_MODE_DELAYED) {
    // Failover and joins redo or hand over a step from the state before it;
    // a delayed exchange leaves an update in flight at every step boundary.
    return absl::InvalidArgumentError(
        "exchange.mode: delayed runs only under `tandem train`; jobs of a coordinator use "
        "exchange.mode: sync");
  }
  Txn txn(this);
  for (int i = 0; i < spec.pools_size(); ++i) {
    if (spec.pools(i).workers() == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("pools[%d].workers: must be at least 1", i));
    }
  }
  if (spec.placement() == v1::PLACEMENT_ANY) {
    std::set<std::string> used;
    for (int i = 0; i < spec.pools_size(); ++i) {
      const uint32_t workers = spec.pools(i).workers();
      std::string best;
      int64_t best_score = -1;
      for (const auto& [name, cloud] : clouds_) {
        if (used.count(name) || cloud.info.slots() < workers) continue;
        const uint32_t free = FreeSlots(name);
        const bool ready = cloud.alive && free >= workers &&
                           (spec.pools_size() < 2 || MultiPoolJobOn(name, "").empty());
        const int64_t score = (ready ? (int64_t{1} << 32) : 0) + free;
        if (score > best_score) {
          best = name;
          best_score = score;
        }
      }
      if (best.empty()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "pools[%d]: no registered cloud left with %d slots for placement: PLACEMENT_ANY (%s)",
            i, workers, KnownClouds()));
      }
      used.insert(best);
      spec.mutable_pools(i)->set_cloud(best);
    }
  } else {
    for (int i = 0; i < spec.pools_size(); ++i) {
      const v1::PoolSpec& pool = spec.pools(i);
      if (pool.cloud().empty()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "pools[%d].cloud: empty; name a cloud or set placement: PLACEMENT_ANY", i));
      }
      auto it = clouds_.find(pool.cloud());
      if (it == clouds_.end()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("pools[%d].cloud: no agent has registered cloud \"%s\" (%s)", i,
                            pool.cloud(), KnownClouds()));
      }
      if (pool.workers() > it->second.info.slots()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("pools[%d].workers: %d workers, but cloud %s has %d slots", i,
                            pool.workers(), pool.cloud(), it->second.info.slots()));
      }
      for (int j = 0; j < i; ++j) {
        if (spec.pools(j).cloud() == pool.cloud()) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "pools[%d].cloud: %s already holds pools[%d] of this job (one pool per cloud)", i,
              pool.cloud(), j));
        }
      }
    }
  }
  const std::string id = absl::StrCat(spec.name(), "-", next_job_);
  ++next_job_;
  txn.batch.Put("meta/next_job", std::to_string(next_job_));
  spec.set_name(id);
  auto job = std::make_unique<Job>();
  job->status.set_job_id(id);
  *job->status.mutable_spec() = spec;
  job->status.set_submitted_unix_ms(NowMs());
  job->status.mutable_progress()->set_test_accuracy(-1);
  for (int i = 0; i < spec.pools_size(); ++i) {
    v1::PoolStatus* pool = job->status.add_pools();
    pool->set_index(i);
    pool->set_cloud(spec.pools(i).cloud());
    pool->set_workers(spec.pools(i).workers());
    pool->set_state(v1::POOL_STATE_WAITING);
    v1::Layout::Pool* layout = job->status.mutable_layout()->add_pools();
    layout->set_cloud(spec.pools(i).cloud());
    layout->set_ranks(spec.pools(i).workers());
  }
  job->px.resize(spec.pools_size());
  Job& added = *job;
  jobs_[id] = std::move(job);
  order_.push_back(id);
  AddEvent(added, v1::JOB_STATE_PENDING, "submitted", "", txn);
  PlacePending(txn);
  v1::SubmitJobResponse response;
  response.set_job_id(id);
  *response.mutable_status() = added.status;
  absl::Status written = txn.Commit();
  if (!written.ok()) return written;
  return response;
}

absl::StatusOr<v1::JobStatus> CoordinatorState::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Job* job = FindJob(job_id);
  if (job == nullptr) return absl::NotFoundError(absl::StrFormat("no job \"%s\"", job_id));
  return job->status;
}

v1::ListJobsResponse CoordinatorState::ListJobs() {
  absl::MutexLock lock(&mu_);
  v1::ListJobsResponse response;
  for (const std::string& id : order_) *response.add_jobs() = jobs_.at(id)->status;
  return response;
}

absl::StatusOr<v1::JobStatus> CoordinatorState::CancelJob(const std::string& job_id,
                                                          const std::string& reason) {
  Txn txn(this);
  Job* job = FindJob(job_id);
  if (job == nullptr) return absl::NotFoundError(absl::StrFormat("no job \"%s\"", job_id));
  if (Terminal(job->status.state())) {
    return absl::FailedPreconditionError(
        absl::StrFormat("job %s is already %s", job_id, StateName(job->status.state())));
  }
  Finish(*job, v1::JOB_STATE_CANCELLED,
         reason.empty() ? "cancelled by the user" : "cancelled: " + reason, txn);
  Reconcile(txn);
  v1::JobStatus status = job->status;
  absl::Status written = txn.Commit();
  if (!written.ok()) return written;
  return status;
}

absl::StatusOr<v1::ListCheckpointsResponse> CoordinatorState::ListCheckpoints(
    const std::string& job_id, const std::string& cloud) {
  absl::MutexLock lock(&mu_);
  Job* job = FindJob(job_id);
  if (job == nullptr) return absl::NotFoundError(absl::StrFormat("no job \"%s\"", job_id));
  v1::ListCheckpointsResponse response;
  for (const auto& [name, list] : job->checkpoints) {
    if (!cloud.empty() && name != cloud) continue;
    for (const v1::CheckpointInfo& info : list) *response.add_checkpoints() = info;
  }
  return response;
}

absl::StatusOr<v1::JobStatus> CoordinatorState::MigrateJob(const std::string& job_id,
                                                           const std::string& to) {
  Txn txn(this);
  Job* job = FindJob(job_id);
  if (job == nullptr) return absl::NotFoundError(absl::StrFormat("no job \"%s\"", job_id));
  if (job->status.state() != v1::JOB_STATE_RUNNING) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "job %s is %s; only a RUNNING job can migrate", job_id, StateName(job->status.state())));
  }
  auto cloud = clouds_.find(to);
  if (cloud == clouds_.end()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("to_cloud: no agent has registered cloud \"%s\" (%s)", to, KnownClouds()));
  }
  if (!cloud->second.alive) {
    return absl::FailedPreconditionError(
        absl::StrFormat("to_cloud: cloud %s has no live agent (last heartbeat %.1f s ago)", to,
                        (NowMs() - cloud->second.last_heartbeat_ms) / 1000.0));
  }
  for (uint32_t a : job->active) {
    if (job->status.pools(a).cloud() != to) continue;
    std::vector<std::string> stopped;
    for (uint32_t other : job->active) {
      if (other == a) continue;
      job->status.mutable_pools(other)->set_state(v1::POOL_STATE_STOPPED);
      job->px[other].stop_reason = "job migrated to " + to;
      stopped.push_back(job->status.pools(other).cloud());
    }
    job->active = {a};
    NewGeneration(*job, "migrated to " + to);
    AddEvent(*job, v1::JOB_STATE_MIGRATING,
             absl::StrFormat("migrating to %s, which already runs pool %d", to, a), to, txn);
    AddEvent(*job, v1::JOB_STATE_RUNNING,
             absl::StrFormat("migrated to %s: stopped the pools on %s", to,
                             stopped.empty() ? "no other cloud" : absl::StrJoin(stopped, ", ")),
             to, txn);
    v1::JobStatus status = job->status;
    absl::Status written = txn.Commit();
    if (!written.ok()) return written;
    return status;
  }
  uint32_t total = 0;
  for (uint32_t a : job->active) total += job->status.pools(a).workers();
  const uint32_t slots = cloud->second.info.slots();
  const uint32_t need = std::min(total, slots);
  const uint32_t free = FreeSlots(to);
  if (free < need) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "to_cloud: cloud %s has %d of %d slots free; the job needs %d", to, free, slots, need));
  }
  job->migrate_phase = kStopping;
  job->migrate_to = to;
  job->migrate_pools = job->active;
  job->migrate_workers = total;
  for (uint32_t a : job->active) {
    job->px[a].stopping = true;
    job->px[a].stop_reason = absl::StrFormat("migrating to %s: checkpoint, then stop", to);
  }
  job->active.clear();
  NewGeneration(*job, "migrating to " + to);
  AddEvent(*job, v1::JOB_STATE_MIGRATING,
           absl::StrFormat("migrating to %s: every pool saves a checkpoint and stops", to), to,
           txn);
  v1::JobStatus status = job->status;
  absl::Status written = txn.Commit();
  if (!written.ok()) return written;
  return status;
}

v1::ListPoolsResponse CoordinatorState::ListPools() {
  absl::MutexLock lock(&mu_);
  v1::ListPoolsResponse response;
  for (const auto& [name, cloud] : clouds_) {
    v1::PoolHealth* health = response.add_pools();
    *health->mutable_pool() = cloud.info;
    health->set_alive(cloud.alive);
    health->set_free_slots(FreeSlots(name));
    health->set_last_heartbeat_unix_ms(cloud.last_heartbeat_ms);
  }
  return response;
}

absl::Status CoordinatorState::StreamLogs(const std::string& job_id, bool follow,
                                          const std::function<bool(const v1::LogLine&)>& write,
                                          const std::function<bool()>& cancelled) {
  uint64_t next = 0;
  while (true) {
    std::vector<v1::LogLine> lines;
    bool end = false;
    {
      absl::MutexLock lock(&mu_);
      Job* job = FindJob(job_id);
      if (job == nullptr) return absl::NotFoundError(absl::StrFormat("no job \"%s\"", job_id));
      auto stop = [&] {
        return !follow || Terminal(job->status.state()) || shutdown_ || cancelled();
      };
      next = std::max(next, job->log_base);
      while (next >= job->log_base + job->logs.size() && !stop()) {
        log_cv_.WaitWithTimeout(&mu_, kCancelCheck);
      }
      next = std::max(next, job->log_base);
      const uint64_t last = job->log_base + job->logs.size();
      for (; next < last && lines.size() < 1000; ++next) {
        lines.push_back(job->logs[next - job->log_base]);
      }
      end = next >= last && stop();
    }
    for (const v1::LogLine& line : lines) {
      if (!write(line)) return absl::OkStatus();
    }
    if (end) return absl::OkStatus();
  }
}

absl::StatusOr<v1::RegisterPoolResponse> CoordinatorState::RegisterPool(
    const v1::RegisterPoolRequest& request) {
  const v1::PoolInfo& info = request.pool();
  if (!ValidName(info.cloud())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pool.cloud: \"%s\" must be 1-128 letters, digits, '.', '_' or '-'", info.cloud()));
  }
  if (info.slots() == 0) return absl::InvalidArgumentError("pool.slots: must be at least 1");
  Txn txn(this);
  const int64_t now = NowMs();
  Cloud& cloud = clouds_[info.cloud()];
  if (!cloud.lease_id.empty()) lease_to_cloud_.erase(cloud.lease_id);
  cloud.info = info;
  cloud.lease_id = NewLeaseId();
  SetExpiry(cloud, now + ttl_ms_);
  cloud.last_heartbeat_ms = now;
  cloud.alive = true;
  lease_to_cloud_[cloud.lease_id] = info.cloud();
  v1::Lease lease;
  lease.set_lease_id(cloud.lease_id);
  lease.set_expires_unix_ms(cloud.expires_ms);
  lease.set_ttl_ms(ttl_ms_);
  txn.batch.Put("pool/" + info.cloud(), info.SerializeAsString());
  txn.batch.Put("lease/" + info.cloud(), lease.SerializeAsString());
  txn.dirty = true;
  txn.sync = true;
  for (const std::string& id : order_) {
    Job& job = *jobs_.at(id);
    for (int i = 0; i < job.status.pools_size(); ++i) {
      const v1::PoolStatus& pool = job.status.pools(i);
      if (pool.cloud() != info.cloud()) continue;
      bool listed = false;
      for (const v1::RunningPool& running : request.running()) {
        listed |= running.job_id() == id && running.pool_index() == static_cast<uint32_t>(i) &&
                  (running.launch() == 0 || running.launch() == pool.launch());
      }
      if (listed) continue;
      if (job.px[i].occupying) {
        job.px[i].occupying = false;
        Touch(job, txn, /*sync=*/true);
      }
      if (!Terminal(job.status.state()) && (Running(pool.state()) || job.px[i].stopping)) {
        LosePool(job, i,
                 absl::StrFormat("%s's agent registered again without pool %d (it restarted)",
                                 info.cloud(), i),
                 now, txn);
      }
    }
  }
  Reconcile(txn);
  v1::RegisterPoolResponse response;
  *response.mutable_lease() = lease;
  absl::Status written = txn.Commit();
  if (!written.ok()) return written;
  return response;
}

absl::StatusOr<v1::HeartbeatResponse> CoordinatorState::Heartbeat(
    const v1::HeartbeatRequest& request) {
  Txn txn(this);
  auto it = lease_to_cloud_.find(request.lease_id());
  if (it == lease_to_cloud_.end()) {
    return absl::NotFoundError(
        absl::StrFormat("unknown lease \"%s\" (the cloud registered again since); register again",
                        request.lease_id()));
  }
  if (!request.cloud().empty() && request.cloud() != it->second) {
    return absl::InvalidArgumentError(absl::StrFormat("cloud: lease %s belongs to cloud %s, not %s",
                                                      request.lease_id(), it->second,
                                                      request.cloud()));
  }
  Cloud& cloud = clouds_[it->second];
  const int64_t now = NowMs();
  SetExpiry(cloud, now + ttl_ms_);
  cloud.last_heartbeat_ms = now;
  bool changed = !cloud.alive;
  cloud.alive = true;
  // Groups the coordinator no longer assigns stop counting against the
  // cloud's slots once the agent no longer runs them.
  for (const std::string& id : order_) {
    Job& job = *jobs_.at(id);
    for (int i = 0; i < job.status.pools_size(); ++i) {
      const v1::PoolStatus& pool = job.status.pools(i);
      if (!job.px[i].occupying || pool.cloud() != it->second) continue;
      if (!Terminal(job.status.state()) && (Running(pool.state()) || job.px[i].stopping)) continue;
      bool listed = false;
      for (const v1::RunningPool& running : request.running()) {
        listed |= running.job_id() == id && running.pool_index() == static_cast<uint32_t>(i);
      }
      if (!listed) {
        job.px[i].occupying = false;
        Touch(job, txn, /*sync=*/false);
        changed = true;
      }
    }
  }
  // Lease expiry is left to the ticker: scanning every cloud on every
  // heartbeat would cost O(clouds) per heartbeat.
  if (changed) {
    PlacePending(txn);
    Relaunch(txn);
  }
  v1::HeartbeatResponse response;
  response.mutable_lease()->set_lease_id(cloud.lease_id);
  response.mutable_lease()->set_expires_unix_ms(cloud.expires_ms);
  response.mutable_lease()->set_ttl_ms(ttl_ms_);
  absl::Status written = txn.Commit();
  if (!written.ok()) return written;
  return response;
}

absl::StatusOr<v1::GetAssignmentsResponse> CoordinatorState::GetAssignments(
    const v1::GetAssignmentsRequest& request) {
  absl::MutexLock lock(&mu_);
  auto it = lease_to_cloud_.find(request.lease_id());
  if (it == lease_to_cloud_.end()) {
    return absl::NotFoundError(
        absl::StrFormat("unknown lease \"%s\"; register again", request.lease_id()));
  }
  const std::string& cloud = it->second;
  if (!request.cloud().empty() && request.cloud() != cloud) {
    return absl::InvalidArgumentError(absl::StrFormat("cloud: lease %s belongs to cloud %s, not %s",
                                                      request.lease_id(), cloud, request.cloud()));
  }
  v1::GetAssignmentsResponse response;
  for (const std::string& id : order_) {
    const Job& job = *jobs_.at(id);
    if (Terminal(job.status.state())) continue;
    auto fill = [&](v1::Assignment* a, uint32_t index) {
      a->set_job_id(id);
      *a->mutable_spec() = job.status.spec();
      *a->mutable_layout() = job.status.layout();
      a->set_pool_index(index);
      for (const v1::PoolSpec& pool : job.status.spec().pools()) {
        auto c = clouds_.find(pool.cloud());
        if (c != clouds_.end()) {
          *a->add_peers() = c->second.info;
        } else {
          a->add_peers()->set_cloud(pool.cloud());
        }
      }
      a->set_generation(job.px[index].launch_generation);
      a->set_resume(job.px[index].resume);
      a->set_launch(job.status.pools(index).launch());
    };
    for (int i = 0; i < job.status.pools_size(); ++i) {
      const v1::PoolStatus& pool = job.status.pools(i);
      if (pool.cloud() != cloud || !Running(pool.state())) continue;
      fill(response.add_assignments(), i);
    }
    if (job.migrate_phase == kReplicating && job.migrate_source == cloud) {
      v1::Assignment* a = response.add_assignments();
      fill(a, job.migrate_source_index);
      a->set_start_step(job.status.pools(job.migrate_source_index).step());
      auto target = clouds_.find(job.migrate_to);
      a->set_replicate_to(target == clouds_.end() ? ""
                                                  : target->second.info.replication_endpoint());
    }
  }
  return response;
}

absl::Status CoordinatorState::ReportPool(const v1::PoolReport& report) {
  Txn txn(this);
  Job* job = FindJob(report.job_id());
  if (job == nullptr) return absl::NotFoundError(absl::StrFormat("no job \"%s\"", report.job_id()));
  if (!report.replicated() &&
      report.pool_index() >= static_cast<uint32_t>(job->status.pools_size())) {
    return absl::InvalidArgumentError(absl::StrFormat("pool_index: job %s has %d pools, not %d",
                                                      report.job_id(), job->status.pools_size(),
                                                      report.pool_index() + 1));
  }
  const int64_t now = NowMs();
  const std::string& id = job->status.job_id();
  for (const v1::LogLine& in : report.logs()) {
    v1::LogLine line = in;
    if (line.cloud().empty()) line.set_cloud(report.cloud());
    if (line.time_unix_ms() == 0) line.set_time_unix_ms(now);
    txn.batch.Put(LogKey(id, job->log_base + job->logs.size()), line.SerializeAsString());
    job->logs.push_back(std::move(line));
    if (job->logs.size() > kMaxLogLines) {
      txn.batch.Delete(LogKey(id, job->log_base));
      job->logs.pop_front();
      ++job->log_base;
    }
    txn.dirty = true;
  }
  if (report.logs_size() > 0) log_cv_.SignalAll();
  if (report.checkpoints_size() > 0) {
    for (const v1::CheckpointInfo& in : report.checkpoints()) {
      v1::CheckpointInfo info = in;
      if (info.cloud().empty()) info.set_cloud(report.cloud());
      if (info.job().empty()) info.set_job(id);
      auto& list = job->checkpoints[info.cloud()];
      list.erase(
          std::remove_if(list.begin(), list.end(),
                         [&](const v1::CheckpointInfo& c) { return c.step() == info.step(); }),
          list.end());
      list.push_back(info);
      std::sort(list.begin(), list.end(),
                [](const v1::CheckpointInfo& a, const v1::CheckpointInfo& b) {
                  return a.step() < b.step();
                });
      const uint32_t keep = job->status.spec().checkpoint().keep();
      while (keep > 0 && list.size() > keep) list.pop_front();
      for (size_t k = 0; k < list.size(); ++k) list[k].set_latest(k + 1 == list.size());
    }
    v1::ListCheckpointsResponse all;
    for (const auto& [cloud, list] : job->checkpoints) {
      for (const v1::CheckpointInfo& info : list) *all.add_checkpoints() = info;
    }
    txn.batch.Put("ckpt/" + id, all.SerializeAsString());
    txn.dirty = true;
    txn.sync = true;
  }
  if (report.replicated()) {
    if (job->migrate_phase == kReplicating && report.cloud() == job->migrate_source) {
      FinishMigration(*job, report, txn);
    }
    Reconcile(txn);
    return txn.Commit();
  }
  const uint32_t index = report.pool_index();
  v1::PoolStatus& pool = *job->status.mutable_pools(index);
  PoolExtra& x = job->px[index];
  const bool stale = (!report.cloud().empty() && report.cloud() != pool.cloud()) ||
                     (report.launch() != 0 && report.launch() != pool.launch());
  if (stale) return txn.Commit();
  if (Terminal(job->status.state())) {
    if (report.exited() && x.occupying) {
      x.occupying = false;
      Touch(*job, txn, /*sync=*/true);
      Reconcile(txn);
    }
    return txn.Commit();
  }
  if (report.done()) x.done_seen = true;
  const std::string waiting_for =
      Running(pool.state()) && !report.exited() ? report.waiting_for() : "";
  if (pool.waiting_for() != waiting_for) {
    pool.set_waiting_for(waiting_for);
    Touch(*job, txn, /*sync=*/false);
  }
  if (report.has_progress() && Running(pool.state())) {
    UpdateProgress(*job, index, report.progress(), txn);
  }
  if (report.exited()) {
    x.occupying = false;
    Touch(*job, txn, /*sync=*/true);
    if (report.exit_code() == 0 && x.done_seen && Running(pool.state()) && !x.stopping) {
      pool.set_state(v1::POOL_STATE_DONE);
      // A pool let in to join at or after the step this one finished at has
      // nothing left to train (the others finished without it): it does not
      // hold the job open. Finishing the job stops it.
      const uint64_t finished_at = pool.step();
      bool all_done = !job->active.empty();
      for (uint32_t a : job->active) {
        const bool idle_joiner = job->px[a].joined_at_step != 0 &&
                                 job->px[a].joined_at_step >= finished_at &&
                                 job->status.pools(a).state() == v1::POOL_STATE_ACTIVE;
        all_done &= job->status.pools(a).state() == v1::POOL_STATE_DONE || idle_joiner;
      }
      if (all_done) {
        const double accuracy = job->status.progress().test_accuracy();
        Finish(*job, v1::JOB_STATE_SUCCEEDED,
               accuracy >= 0 ? absl::StrFormat("finished at step %d; test accuracy %.4f",
                                               job->status.progress().step(), accuracy)
                             : absl::StrFormat("finished at step %d; test accuracy unknown",
                                               job->status.progress().step()),
               txn);
      }
    } else if (report.exit_code() == 0 && x.stopping) {
      pool.set_state(v1::POOL_STATE_STOPPED);
      x.stopping = false;
      AdvanceMigration(*job, txn);
    } else if (Running(pool.state()) || x.stopping) {
      std::string error = report.error();
      if (error.empty()) {
        error = report.exit_code() == 0
                    ? "worker group exited with code 0 before finishing"
                    : absl::StrFormat("worker group exited with code %d", report.exit_code());
      }
      const bool was_joining = pool.state() == v1::POOL_STATE_JOINING;
      LosePool(*job, index, absl::StrFormat("%s pool %d failed: %s", pool.cloud(), index, error),
               now, txn);
      if (was_joining && report.exit_code() != 0) {
        x.backoff_ms =
            x.backoff_ms == 0 ? kBackoffStartMs : std::min(kBackoffMaxMs, 2 * x.backoff_ms);
        x.next_launch_ms = now + x.backoff_ms;
      }
    }
    Reconcile(txn);
  }
  return txn.Commit();
}

absl::StatusOr<v1::Plan> CoordinatorState::SyncPlan(const v1::SyncPlanRequest& request,
                                                    const std::function<bool()>& cancelled) {
  Job* job = nullptr;
  const uint32_t index = request.pool_index();
  {
    Txn txn(this);
    job = FindJob(request.job_id());
    if (job == nullptr) {
      return absl::NotFoundError(absl::StrFormat("no job \"%s\"", request.job_id()));
    }
    if (index >= static_cast<uint32_t>(job->status.pools_size())) {
      return absl::InvalidArgumentError(absl::StrFormat("pool_index: job %s has %d pools, not %d",
                                                        request.job_id(), job->status.pools_size(),
                                                        index + 1));
    }
    v1::PoolStatus& pool = *job->status.mutable_pools(index);
    const bool terminal = Terminal(job->status.state());
    if (request.step() > pool.step() && Running(pool.state())) pool.set_step(request.step());
    if (!terminal && pool.state() == v1::POOL_STATE_LAUNCHED && Contains(job->active, index)) {
      pool.set_state(v1::POOL_STATE_ACTIVE);
      Touch(*job, txn, /*sync=*/false);
    }
    bool answer = job->status.generation() > request.generation() || request.wait_ms() == 0;
    if (request.unreachable_pools_size() > 0) {
      answer = true;
      if (!terminal && Contains(job->active, index)) {
        const int64_t loss_ms = NowMs() - request.unreachable_for_ms();
        for (uint32_t peer : request.unreachable_pools()) {
          if (peer == index || !Contains(job->active, peer)) continue;
          // The leader's own words say which: link dead, stuck or too slow.
          const std::string reason =
              request.loss_reason().empty()
                  ? absl::StrFormat("%s's leader could not reach %s for %.1f s at step %d",
                                    pool.cloud(), job->status.pools(peer).cloud(),
                                    request.unreachable_for_ms() / 1000.0, request.step())
                  : absl::StrFormat("%s lost at step %d, as %s's leader found: %s",
                                    job->status.pools(peer).cloud(), request.step(), pool.cloud(),
                                    request.loss_reason());
          LosePool(*job, peer, reason, loss_ms, txn);
        }
      }
    }
    if (request.ready_to_join()) {
      answer = true;
      if (!terminal && pool.state() == v1::POOL_STATE_JOINING &&
          job->migrate_phase == kNoMigration) {
        pool.set_state(v1::POOL_STATE_ACTIVE);
        job->px[index].backoff_ms = 0;
        job->px[index].joined_at_step = std::max<uint64_t>(1, job->status.progress().step());
        job->active.push_back(index);
        std::sort(job->active.begin(), job->active.end());
        const std::string reason = pool.cloud() + " rejoins at the next step boundary";
        NewGeneration(*job, reason);
        AddEvent(*job, job->status.state(), reason, pool.cloud(), txn);
      }
    }
    if (answer || terminal) {
      v1::Plan plan = BuildPlan(*job, index);
      absl::Status written = txn.Commit();
      if (!written.ok()) return written;
      return plan;
    }
  }
  absl::MutexLock lock(&mu_);
  const absl::Time deadline =
      absl::Now() + absl::Milliseconds(std::min(request.wait_ms(), kMaxWaitMs));
  while (job->status.generation() <= request.generation() && !Terminal(job->status.state()) &&
         !shutdown_ && absl::Now() < deadline && !cancelled()) {
    plan_cv_.WaitWithDeadline(&mu_, std::min(deadline, absl::Now() + kCancelCheck));
  }
  return BuildPlan(*job, index);
}

}  // namespace tandem
