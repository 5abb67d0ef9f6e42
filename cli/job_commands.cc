// `tandem submit`, `status`, `list`, `logs`, `cancel` and `migrate`: the
// commands that ask the coordinator's JobService about jobs.
#include <unistd.h>

#include <atomic>
#include <boost/program_options.hpp>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_format.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/status_view.h"
#include "worker/job_spec.h"

namespace tandem::cli {

namespace po = boost::program_options;

namespace {

// Ctrl-C during --watch or -f: the job goes on, the command stops.
constexpr int kExitInterrupted = 130;

// The flags, positional JOB and client connection every command here shares.
struct Command {
  const char* name;
  std::string job;
  std::string output = "text";
  ClientFlags client;
  po::options_description flags;
  po::variables_map vm;
  bool help = false;

  Command(const char* name, const std::string& usage) : name(name), flags(usage) {
    flags.add_options()("help,h", "show this help");
  }

  // Adds the client flags and --output last, so that each command's own
  // flags come first in --help.
  void AddCommonFlags(bool with_output = true) {
    AddClientFlags(flags, &client);
    if (with_output) {
      flags.add_options()("output", po::value(&output)->default_value("text"), "text or json");
    }
  }

  // Parses; returns -1 to go on, else the exit code to return.
  int Parse(const std::vector<std::string>& args, const char* positional_name,
            bool positional_required) {
    po::options_description hidden;
    po::positional_options_description positional;
    if (positional_name != nullptr) {
      hidden.add_options()(positional_name, po::value(&job));
      positional.add(positional_name, 1);
    }
    if (!ParseFlags(name, args, flags, hidden, positional, vm, &help)) return kExitUsage;
    if (help) return kExitOk;
    if (positional_required && job.empty()) {
      std::cerr << "tandem " << name << ": missing " << positional_name << "\nRun `tandem " << name
                << " --help` for the options.\n";
      return kExitUsage;
    }
    if (!CheckOutputFormat(name, output)) return kExitUsage;
    return -1;
  }

  bool json() const { return output == "json"; }
};

constexpr char kClientNotes[] = R"(
The coordinator is --coordinator, else $TANDEM_COORDINATOR, else the address
in ~/.tandem/coordinator (written by `tandem up`), else 127.0.0.1:7440.
)";

// The exit codes every command here shares, after its own.
constexpr char kCommonExitCodes[] =
    R"(  2  bad flags, or the coordinator refused the request as invalid or
     does not know the job (its message is printed)
  3  the coordinator cannot be reached within --connect-timeout, or
     stopped answering within --rpc-timeout
  1  any other error)";

std::string Usage(const std::string& synopsis_and_text, const std::string& exit_codes) {
  return synopsis_and_text + kClientNotes + "\nExit codes:\n" + exit_codes + kCommonExitCodes +
         "\n\nOptions";
}

int GetJob(CoordinatorClient& client, const std::string& job_id, v1::JobStatus* job) {
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  grpc::Status status = client.stub().GetJob(client.Context().get(), request, job);
  return status.ok() ? kExitOk : client.Fail(status);
}

// Polls GetJob every `interval` and shows it until the job ends (exit 0 for
// SUCCEEDED, 1 otherwise) or Ctrl-C (kExitInterrupted). A coordinator that
// stops answering (a restart: it recovers its jobs) is asked again until it
// has been gone for --connect-timeout; then exit 3.
int WatchJob(CoordinatorClient& client, const char* command, const std::string& job_id, bool json,
             double interval_s) {
  InstallInterruptHandler();
  const bool terminal = isatty(STDOUT_FILENO) != 0;
  WatchView view(std::cout, terminal, json);
  const auto interval = std::chrono::milliseconds(static_cast<int64_t>(interval_s * 1000));
  bool lost = false;
  std::chrono::steady_clock::time_point lost_since;
  while (!Interrupted()) {
    v1::JobStatus job;
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    grpc::Status status = client.stub().GetJob(client.Context().get(), request, &job);
    if (Interrupted()) break;
    const bool unreachable = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                             status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                             status.error_code() == grpc::StatusCode::CANCELLED;
    if (unreachable) {
      const auto now = std::chrono::steady_clock::now();
      if (!lost) lost_since = now;
      lost = true;
      if (now - lost_since < client.connect_timeout()) {
        SleepUnlessInterrupted(interval);
        continue;
      }
    }
    if (!status.ok()) {
      view.Finish();
      return client.Fail(status);
    }
    lost = false;
    view.Update(job);
    if (IsTerminal(job.state())) {
      view.Finish();
      if (!json && !terminal) {
        std::cout << "job " << job.job_id() << " " << JobStateName(job.state()) << std::endl;
      }
      return job.state() == v1::JOB_STATE_SUCCEEDED ? kExitOk : kExitFailed;
    }
    SleepUnlessInterrupted(interval);
  }
  view.Finish();
  std::cerr << "tandem " << command << ": stopped watching; job " << job_id
            << " goes on (`tandem cancel " << job_id << "` stops it)\n";
  return kExitInterrupted;
}

}  // namespace

int SubmitCommand(const std::vector<std::string>& args) {
  Command c("submit", Usage(R"(Usage: tandem submit SPEC [OPTIONS]

Sends the job described by the YAML file SPEC (see examples/) to the
coordinator, which places its pools on the clouds' agents and starts them.
The spec is checked here first, so a malformed one names the field before
anything is sent. Prints the job's id and state (with --output json, one
object: {"job", "state", ...} as `tandem status JOB` prints it). Follow the
job with `tandem status JOB --watch`, or pass --watch here.
)",
                            R"(  0  submitted (with --watch: the job SUCCEEDED)
  1  with --watch: the job FAILED or was CANCELLED
  2  also: a malformed SPEC (the message names the field), or one the
     coordinator refuses, such as a pool on a cloud it does not know
)"));
  bool watch = false;
  double interval_s = 0.5;
  // clang-format off
  c.flags.add_options()
      ("watch", po::bool_switch(&watch), "then show the job live until it ends, as status --watch")
      ("interval", po::value(&interval_s)->default_value(0.5)->value_name("SECONDS"),
       "with --watch: how often to ask for the job's status");
  // clang-format on
  c.AddCommonFlags();
  if (int code = c.Parse(args, "spec", true); code >= 0) return code;
  if (!(interval_s > 0)) {
    std::cerr << "tandem submit: --interval must be positive\n";
    return kExitUsage;
  }
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(c.job);
  if (!spec.ok()) {
    std::cerr << "tandem submit: " << spec.status().message() << "\n";
    return kExitUsage;
  }
  int code = kExitOk;
  std::unique_ptr<CoordinatorClient> client = CoordinatorClient::Connect("submit", c.client, &code);
  if (client == nullptr) return code;
  v1::SubmitJobRequest request;
  *request.mutable_spec() = *spec;
  v1::SubmitJobResponse response;
  grpc::Status status = client->stub().SubmitJob(client->Context().get(), request, &response);
  if (!status.ok()) return client->Fail(status);
  v1::JobStatus job = response.status();
  if (job.job_id().empty()) job.set_job_id(response.job_id());
  if (c.json()) {
    nlohmann::json j = JobJson(job);
    j["job"] = response.job_id();
    std::cout << j.dump() << std::endl;
  } else {
    std::cout << "submitted job " << response.job_id() << " (" << JobStateName(job.state())
              << ")\n";
    if (!watch) {
      std::cout << "follow it with: tandem status " << response.job_id() << " --watch\n";
    }
  }
  if (!watch) return kExitOk;
  return WatchJob(*client, "submit", response.job_id(), c.json(), interval_s);
}

int StatusCommand(const std::vector<std::string>& args) {
  Command c("status", Usage(R"(Usage: tandem status [JOB] [--watch] [OPTIONS]

Without JOB: the clouds the coordinator knows (alive, slots, free slots) and
every job in short form. With JOB: its state, progress (step, loss, test
accuracy, samples/s, WAN bytes and compression ratio), plan generation,
restarts, the latest recovery's detection and recovery times, its pools and
every state change with its reason.

--watch shows JOB live until it ends: on a terminal, a block redrawn in place
(progress bar, loss, test accuracy, samples/s, WAN MB/s, compression ratio,
ETA, the state and its latest reason, the pools); otherwise a line per event
and progress every twentieth of the run; with --output json, one object per
line whenever something changed. Ctrl-C stops watching, not the job. A
coordinator that stops answering is asked again for --connect-timeout (it may
be restarting) before the command gives up with exit code 3.
)",
                            R"(  0  the status was shown (whatever the job's state); with --watch:
     the job SUCCEEDED
  1  with --watch: the job FAILED or was CANCELLED
  130 with --watch: interrupted (Ctrl-C); the job goes on
)"));
  bool watch = false;
  double interval_s = 0.5;
  // clang-format off
  c.flags.add_options()
      ("watch,w", po::bool_switch(&watch), "show JOB live until it ends")
      ("interval", po::value(&interval_s)->default_value(0.5)->value_name("SECONDS"),
       "with --watch: how often to ask for the job's status");
  // clang-format on
  c.AddCommonFlags();
  if (int code = c.Parse(args, "job", false); code >= 0) return code;
  if (watch && c.job.empty()) {
    std::cerr << "tandem status: --watch needs a JOB\n";
    return kExitUsage;
  }
  if (!(interval_s > 0)) {
    std::cerr << "tandem status: --interval must be positive\n";
    return kExitUsage;
  }
  int code = kExitOk;
  std::unique_ptr<CoordinatorClient> client = CoordinatorClient::Connect("status", c.client, &code);
  if (client == nullptr) return code;
  if (watch) return WatchJob(*client, "status", c.job, c.json(), interval_s);
  if (!c.job.empty()) {
    v1::JobStatus job;
    if (int failed = GetJob(*client, c.job, &job); failed != kExitOk) return failed;
    if (c.json()) {
      std::cout << JobJson(job).dump() << std::endl;
    } else {
      PrintJob(std::cout, job);
    }
    return kExitOk;
  }
  v1::ListPoolsResponse pools;
  grpc::Status status = client->stub().ListPools(client->Context().get(), {}, &pools);
  if (!status.ok()) return client->Fail(status);
  v1::ListJobsResponse jobs;
  status = client->stub().ListJobs(client->Context().get(), {}, &jobs);
  if (!status.ok()) return client->Fail(status);
  if (c.json()) {
    nlohmann::json clouds = nlohmann::json::array();
    for (const v1::PoolHealth& p : pools.pools()) clouds.push_back(PoolHealthJson(p));
    nlohmann::json rows = nlohmann::json::array();
    for (const v1::JobStatus& j : jobs.jobs()) rows.push_back(JobSummaryJson(j));
    std::cout << nlohmann::json{{"coordinator", client->address()},
                                {"clouds", clouds},
                                {"jobs", rows}}
                     .dump()
              << std::endl;
    return kExitOk;
  }
  std::cout << "coordinator " << client->address() << "\n\n";
  if (pools.pools_size() == 0) {
    std::cout << "no clouds registered (start an agent: tandem agent --cloud NAME)\n";
  } else {
    PrintPoolTable(std::cout, {pools.pools().begin(), pools.pools().end()});
  }
  std::cout << "\n";
  if (jobs.jobs_size() == 0) {
    std::cout << "no jobs (submit one: tandem submit SPEC)\n";
  } else {
    PrintJobTable(std::cout, {jobs.jobs().begin(), jobs.jobs().end()});
  }
  return kExitOk;
}

int ListCommand(const std::vector<std::string>& args) {
  Command c("list", Usage(R"(Usage: tandem list [OPTIONS]

Lists the coordinator's jobs, one line each: id, state, step/total, test
accuracy (- while unknown) and age. With --output json, one array of
{"job", "state", "step", "total_steps", "test_accuracy", "submitted_unix_ms",
"age_s"}.
)",
                          "  0  listed\n"));
  c.AddCommonFlags();
  if (int code = c.Parse(args, nullptr, false); code >= 0) return code;
  int code = kExitOk;
  std::unique_ptr<CoordinatorClient> client = CoordinatorClient::Connect("list", c.client, &code);
  if (client == nullptr) return code;
  v1::ListJobsResponse jobs;
  grpc::Status status = client->stub().ListJobs(client->Context().get(), {}, &jobs);
  if (!status.ok()) return client->Fail(status);
  if (c.json()) {
    nlohmann::json rows = nlohmann::json::array();
    for (const v1::JobStatus& j : jobs.jobs()) rows.push_back(JobSummaryJson(j));
    std::cout << rows.dump() << std::endl;
  } else {
    PrintJobTable(std::cout, {jobs.jobs().begin(), jobs.jobs().end()});
  }
  return kExitOk;
}

int LogsCommand(const std::vector<std::string>& args) {
  Command c("logs", Usage(R"(Usage: tandem logs JOB [-f] [OPTIONS]

Prints the log lines the job's pools reported, as `[cloud] text`; with
--output json, one {"time_unix_ms", "cloud", "text"} object per line. With
-f, keeps printing new lines until the job ends or Ctrl-C; the job's status
is checked every few seconds (each check within --rpc-timeout), so a lost
coordinator ends the command with exit code 3 rather than a silent wait.
)",
                          "  0  printed (with -f: the job ended)\n"
                          "  130 with -f: interrupted (Ctrl-C)\n"));
  bool follow = false;
  c.flags.add_options()("follow,f", po::bool_switch(&follow), "follow until the job ends");
  c.AddCommonFlags();
  if (int code = c.Parse(args, "job", true); code >= 0) return code;
  int code = kExitOk;
  std::unique_ptr<CoordinatorClient> client = CoordinatorClient::Connect("logs", c.client, &code);
  if (client == nullptr) return code;

  grpc::ClientContext context;
  if (!follow) context.set_deadline(std::chrono::system_clock::now() + client->rpc_timeout());
  v1::StreamLogsRequest request;
  request.set_job_id(c.job);
  request.set_follow(follow);

  // With -f the stream itself has no deadline; this watchdog bounds the wait
  // instead: it cancels the stream on Ctrl-C, when the coordinator stops
  // answering GetJob, or when the job has ended and the stream still has not
  // (a few seconds of grace for the last lines).
  std::mutex mu;
  std::condition_variable done_cv;
  bool done = false;
  grpc::Status watchdog_status;
  bool job_ended = false;
  std::thread watchdog;
  if (follow) {
    InstallInterruptHandler();
    watchdog = std::thread([&] {
      constexpr auto kTick = std::chrono::milliseconds(100);
      constexpr int kTicksPerCheck = 20;
      constexpr int kGraceChecks = 3;
      int tick = 0;
      int checks_since_end = 0;
      std::unique_lock<std::mutex> lock(mu);
      while (!done) {
        done_cv.wait_for(lock, kTick);
        if (done) break;
        if (Interrupted()) {
          context.TryCancel();
          break;
        }
        if (++tick % kTicksPerCheck != 0) continue;
        lock.unlock();
        v1::JobStatus job;
        v1::GetJobRequest get;
        get.set_job_id(c.job);
        grpc::Status status = client->stub().GetJob(client->Context().get(), get, &job);
        lock.lock();
        if (!status.ok()) {
          watchdog_status = status;
          context.TryCancel();
          break;
        }
        if (IsTerminal(job.state()) && ++checks_since_end > kGraceChecks) {
          job_ended = true;
          context.TryCancel();
          break;
        }
      }
    });
  }
  std::unique_ptr<grpc::ClientReader<v1::LogLine>> reader =
      client->stub().StreamLogs(&context, request);
  v1::LogLine line;
  while (reader->Read(&line)) {
    if (c.json()) {
      std::cout << nlohmann::json{{"time_unix_ms", line.time_unix_ms()},
                                  {"cloud", line.cloud()},
                                  {"text", line.text()}}
                       .dump()
                << "\n";
    } else if (line.cloud().empty()) {
      std::cout << line.text() << "\n";
    } else {
      std::cout << "[" << line.cloud() << "] " << line.text() << "\n";
    }
    if (follow) std::cout << std::flush;
  }
  grpc::Status status = reader->Finish();
  std::cout << std::flush;
  if (watchdog.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    done_cv.notify_all();
    watchdog.join();
  }
  if (Interrupted()) return kExitInterrupted;
  if (!watchdog_status.ok()) return client->Fail(watchdog_status);
  if (job_ended) return kExitOk;
  return status.ok() ? kExitOk : client->Fail(status);
}

int CancelCommand(const std::vector<std::string>& args) {
  Command c("cancel", Usage(R"(Usage: tandem cancel JOB [--reason TEXT] [OPTIONS]

Cancels the job: the coordinator stops its pools and the job ends CANCELLED
(its checkpoints stay). Prints the job's new state (with --output json, the
object `tandem status JOB` prints).
)",
                            "  0  the coordinator took the cancellation\n"
                            "  1  it refused (for example, the job has already ended)\n"));
  std::string reason;
  c.flags.add_options()("reason", po::value(&reason)->value_name("TEXT"),
                        "why, as the job's events will show it (default: by $USER)");
  c.AddCommonFlags();
  if (int code = c.Parse(args, "job", true); code >= 0) return code;
  if (reason.empty()) {
    const char* user = std::getenv("USER");
    if (user != nullptr && *user != '\0') reason = std::string("by ") + user;
  }
  int code = kExitOk;
  std::unique_ptr<CoordinatorClient> client = CoordinatorClient::Connect("cancel", c.client, &code);
  if (client == nullptr) return code;
  v1::CancelJobRequest request;
  request.set_job_id(c.job);
  request.set_reason(reason);
  v1::JobStatus job;
  grpc::Status status = client->stub().CancelJob(client->Context().get(), request, &job);
  if (!status.ok()) return client->Fail(status);
  if (c.json()) {
    std::cout << JobJson(job).dump() << std::endl;
  } else {
    std::cout << "job " << c.job << " " << JobStateName(job.state()) << "\n";
  }
  return kExitOk;
}

int MigrateCommand(const std::vector<std::string>& args) {
  Command c("migrate", Usage(R"(Usage: tandem migrate JOB --to CLOUD [OPTIONS]

Moves the job to CLOUD: its pools checkpoint at the next step boundary and
stop, the checkpoint is copied to CLOUD's store (only the chunks it lacks),
and the job resumes there. Prints the job's new state (MIGRATING while this
happens); follow it with `tandem status JOB --watch`.
)",
                             "  0  the coordinator took the migration\n"
                             "  1  it refused (for example, the job is not running)\n"));
  std::string to;
  c.flags.add_options()("to", po::value(&to)->value_name("CLOUD"), "the cloud to move the job to");
  c.AddCommonFlags();
  if (int code = c.Parse(args, "job", true); code >= 0) return code;
  if (to.empty()) {
    std::cerr << "tandem migrate: --to CLOUD is required\n";
    return kExitUsage;
  }
  int code = kExitOk;
  std::unique_ptr<CoordinatorClient> client =
      CoordinatorClient::Connect("migrate", c.client, &code);
  if (client == nullptr) return code;
  v1::MigrateJobRequest request;
  request.set_job_id(c.job);
  request.set_to_cloud(to);
  v1::JobStatus job;
  grpc::Status status = client->stub().MigrateJob(client->Context().get(), request, &job);
  if (!status.ok()) return client->Fail(status);
  if (c.json()) {
    std::cout << JobJson(job).dump() << std::endl;
  } else {
    std::cout << "job " << c.job << " " << JobStateName(job.state()) << " to " << to << "\n";
  }
  return kExitOk;
}

}  // namespace tandem::cli
