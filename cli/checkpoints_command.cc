#include <boost/program_options.hpp>
#include <ctime>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_store.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace tandem::cli {

namespace po = boost::program_options;

namespace {

constexpr char kCheckpointsUsage[] =
    R"(Usage: tandem checkpoints [--store DIR] [--job NAME] [--output text|json]

Lists the checkpoints in a store: job, step, size, time and state digest. The
store is opened read-only, so this works while a job is writing to it.

Options)";

std::string IsoTime(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

std::string HumanBytes(uint64_t bytes) {
  if (bytes >= (uint64_t{1} << 30)) return absl::StrFormat("%.1f GiB", bytes / double(1 << 30));
  if (bytes >= (uint64_t{1} << 20)) return absl::StrFormat("%.1f MiB", bytes / double(1 << 20));
  if (bytes >= 1024) return absl::StrFormat("%.1f KiB", bytes / 1024.0);
  return absl::StrFormat("%d B", bytes);
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
  bool verify = false;
  po::options_description flags(kCheckpointsUsage);
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("store", po::value(&store_dir)->default_value(DefaultStoreDir()), "checkpoint store folder")
      ("job", po::value(&job), "only this job's checkpoints")
      ("verify", po::bool_switch(&verify), "check every chunk of every checkpoint")
      ("output", po::value(&output)->default_value("text"), "text or json");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("checkpoints", args, flags, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  if (!CheckOutputFormat("checkpoints", output)) return kExitUsage;
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
