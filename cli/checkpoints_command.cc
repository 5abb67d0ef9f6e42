#include <boost/program_options.hpp>
#include <ctime>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_store.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/status_view.h"

namespace tandem::cli {

namespace po = boost::program_options;

namespace {

constexpr char kCheckpointsUsage[] =
    R"(Usage: tandem checkpoints JOB [--cloud CLOUD] [OPTIONS]
       tandem checkpoints [--store DIR] [--job NAME] [--verify] [--output text|json]

With JOB: asks the coordinator for the job's checkpoints in every cloud's
store (or only CLOUD's): cloud, step, size, time and state digest. The
coordinator is --coordinator, else $TANDEM_COORDINATOR, else the address in
~/.tandem/coordinator (written by `tandem up`), else 127.0.0.1:7440.

Without JOB: lists the checkpoints in a local store: job, step, size, time and
state digest. The store is opened read-only, so this works while a job is
writing to it.

Exit codes: 0 listed; 1 the store cannot be read, has no checkpoints of --job,
or (--verify) a job's latest checkpoint is damaged; 2 bad flags, or a JOB
the coordinator does not know; 3 the coordinator cannot be reached.

Options)";

int RemoteCheckpoints(const std::string& job, const std::string& cloud, const ClientFlags& flags,
                      bool json) {
  int code = kExitOk;
  std::unique_ptr<CoordinatorClient> client =
      CoordinatorClient::Connect("checkpoints", flags, &code);
  if (client == nullptr) return code;
  v1::ListCheckpointsRequest request;
  request.set_job_id(job);
  request.set_cloud(cloud);
  v1::ListCheckpointsResponse response;
  grpc::Status status = client->stub().ListCheckpoints(client->Context().get(), request, &response);
  if (!status.ok()) return client->Fail(status);
  if (json) {
    nlohmann::json rows = nlohmann::json::array();
    for (const v1::CheckpointInfo& c : response.checkpoints()) {
      rows.push_back({{"cloud", c.cloud()},
                      {"step", c.step()},
                      {"bytes", c.total_bytes()},
                      {"time", IsoTime(c.created_unix_ms())},
                      {"time_unix_ms", c.created_unix_ms()},
                      {"state_digest", c.state_digest()},
                      {"latest", c.latest()}});
    }
    std::cout << nlohmann::json{{"job", job}, {"checkpoints", rows}}.dump() << std::endl;
    return kExitOk;
  }
  if (response.checkpoints_size() == 0) {
    std::cout << "job " << job << " has no checkpoints yet"
              << (cloud.empty() ? "" : " in cloud " + cloud) << "\n";
    return kExitOk;
  }
  std::cout << absl::StrFormat("%-16s %8s %10s  %-20s  %-16s\n", "CLOUD", "STEP", "SIZE", "TIME",
                               "STATE DIGEST");
  for (const v1::CheckpointInfo& c : response.checkpoints()) {
    std::cout << absl::StrFormat("%-16s %8d %10s  %-20s  %-16s%s\n", c.cloud(), c.step(),
                                 HumanBytes(c.total_bytes()), IsoTime(c.created_unix_ms()),
                                 c.state_digest().substr(0, 16), c.latest() ? "  (latest)" : "");
  }
  return kExitOk;
}

int VerifyCheckpoints(const CheckpointStore& store, const std::string& store_dir,
                      const std::string& job, bool json) {
  absl::StatusOr<std::vector<CheckpointStore::VerifyReport>> reports = store.VerifyAll(job);
  if (!reports.ok()) {
    std::cerr << "tandem checkpoints: " << reports.status().message() << "\n";
    return kExitFailed;
  }
  if (!job.empty() && reports->empty()) {
    std::cerr << "tandem checkpoints: no checkpoints of job " << job << " in " << store_dir << "\n";
    return kExitFailed;
  }
  bool latest_bad = false;
  nlohmann::json rows = nlohmann::json::array();
  for (const CheckpointStore::VerifyReport& r : *reports) {
    latest_bad |= r.latest && !r.status.ok();
    rows.push_back({{"job", r.job},
                    {"step", r.step},
                    {"latest", r.latest},
                    {"ok", r.status.ok()},
                    {"error", std::string(r.status.message())}});
    if (!json) {
      std::cout << absl::StrFormat(
          "%-24s %8d  %s%s\n", r.job, r.step,
          r.status.ok() ? "ok" : "DAMAGED: " + std::string(r.status.message()),
          r.latest ? "  (latest)" : "");
    }
  }
  if (json) {
    std::cout << nlohmann::json{{"store", store_dir}, {"checkpoints", rows}}.dump() << std::endl;
  }
  if (latest_bad) {
    std::cerr << "tandem checkpoints: the latest checkpoint of a job is damaged\n";
    return kExitFailed;
  }
  return kExitOk;
}

}  // namespace

int CheckpointsCommand(const std::vector<std::string>& args) {
  std::string store_dir;
  std::string job;
  std::string output;
  std::string remote_job;
  std::string cloud;
  ClientFlags client;
  bool verify = false;
  po::options_description flags(kCheckpointsUsage);
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("store", po::value(&store_dir)->default_value(DefaultStoreDir()), "checkpoint store folder")
      ("job", po::value(&job), "only this job's checkpoints")
      ("verify", po::bool_switch(&verify), "check every chunk of every checkpoint")
      ("cloud", po::value(&cloud)->value_name("CLOUD"), "with JOB: only this cloud's checkpoints");
  // clang-format on
  AddClientFlags(flags, &client);
  flags.add_options()("output", po::value(&output)->default_value("text"), "text or json");
  po::options_description hidden;
  hidden.add_options()("remote-job", po::value(&remote_job));
  po::positional_options_description positional;
  positional.add("remote-job", 1);
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("checkpoints", args, flags, hidden, positional, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  if (!CheckOutputFormat("checkpoints", output)) return kExitUsage;
  if (!remote_job.empty()) {
    if (!vm["store"].defaulted() || !job.empty() || verify) {
      std::cerr << "tandem checkpoints: JOB asks the coordinator; --store, --job and --verify "
                   "read a local store: give one or the other\n";
      return kExitUsage;
    }
    return RemoteCheckpoints(remote_job, cloud, client, output == "json");
  }
  if (!cloud.empty()) {
    std::cerr << "tandem checkpoints: --cloud needs a JOB (it filters the coordinator's list)\n";
    return kExitUsage;
  }
  std::unique_ptr<CheckpointStore> store = OpenStoreForReading("checkpoints", store_dir);
  if (store == nullptr) return kExitFailed;
  if (verify) return VerifyCheckpoints(*store, store_dir, job, output == "json");
  absl::StatusOr<std::vector<v1::CheckpointInfo>> list = store->List(job);
  if (!list.ok()) {
    std::cerr << "tandem checkpoints: " << list.status().message() << "\n";
    return kExitFailed;
  }
  if (!job.empty() && list->empty()) {
    std::cerr << "tandem checkpoints: no checkpoints of job " << job << " in " << store_dir << "\n";
    return kExitFailed;
  }
  if (output == "json") {
    nlohmann::json rows = nlohmann::json::array();
    for (const v1::CheckpointInfo& c : *list) {
      rows.push_back({{"job", c.job()},
                      {"step", c.step()},
                      {"bytes", c.total_bytes()},
                      {"time", IsoTime(c.created_unix_ms())},
                      {"state_digest", c.state_digest()},
                      {"latest", c.latest()}});
    }
    std::cout << nlohmann::json{{"store", store_dir}, {"checkpoints", rows}}.dump() << std::endl;
    return kExitOk;
  }
  std::cout << absl::StrFormat("%-24s %8s %10s  %-20s  %-16s\n", "JOB", "STEP", "SIZE", "TIME",
                               "STATE DIGEST");
  for (const v1::CheckpointInfo& c : *list) {
    std::cout << absl::StrFormat("%-24s %8d %10s  %-20s  %-16s%s\n", c.job(), c.step(),
                                 HumanBytes(c.total_bytes()), IsoTime(c.created_unix_ms()),
                                 c.state_digest().substr(0, 16), c.latest() ? "  (latest)" : "");
  }
  return kExitOk;
}

}  // namespace tandem::cli
