#include "coordinator/local_train.h"

#include <unistd.h>

#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/subprocess.h"
#include "worker/worker_events.h"

namespace tandem {
namespace {

using Json = nlohmann::json;

template <typename T>
T Field(const Json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}

}  // namespace

std::optional<WorkerEvent> ParseWorkerEvent(const std::string& line) {
  const std::string prefix = kEventPrefix;
  if (line.rfind(prefix, 0) != 0) return std::nullopt;
  Json j = Json::parse(line.substr(prefix.size()), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("event")) return std::nullopt;
  WorkerEvent event;
  event.kind = Field<std::string>(j, "event", "");
  event.message = Field<std::string>(j, "message", "");
  v1::TrainingProgress& p = event.progress;
  p.set_step(Field<uint64_t>(j, "step", Field<uint64_t>(j, "steps", 0)));
  p.set_total_steps(Field<uint64_t>(j, "total_steps", 0));
  p.set_epoch(Field<uint32_t>(j, "epoch", 0));
  p.set_global_cursor(Field<uint64_t>(j, "cursor", 0));
  p.set_loss(Field<double>(j, "loss", 0));
  p.set_samples_per_s(Field<double>(j, "samples_per_s", 0));
  p.set_test_accuracy(Field<double>(j, "test_accuracy", -1));
  p.set_test_loss(Field<double>(j, "test_loss", -1));
  p.set_state_digest(Field<std::string>(j, "state_digest", ""));
  event.epochs = Field<double>(j, "epochs", 0);
  event.init_digest = Field<std::string>(j, "init_digest", "");
  if (event.kind == "start") p.set_step(Field<uint64_t>(j, "start_step", 0));
  return event;
}

std::vector<std::string> MpirunArgv(int ranks, const std::vector<std::string>& worker_argv) {
  std::vector<std::string> argv = {
      "mpirun", "-np", std::to_string(ranks), "--quiet",
      // Ranks may outnumber cores; pinning them would stack them on one core.
      "--oversubscribe", "--bind-to", "none",
      // Cross-memory attach needs ptrace rights that containers often deny.
      "--mca", "btl_vader_single_copy_mechanism", "none"};
  argv.insert(argv.end(), worker_argv.begin(), worker_argv.end());
  return argv;
}

std::vector<std::pair<std::string, std::string>> MpirunEnv() {
  std::vector<std::pair<std::string, std::string>> env = {{"OMP_NUM_THREADS", "1"}};
  if (geteuid() == 0) {
    env.emplace_back("OMPI_ALLOW_RUN_AS_ROOT", "1");
    env.emplace_back("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
  }
  return env;
}

absl::StatusOr<TrainResult> RunLocalTraining(
    const LocalTrainOptions& options, const v1::JobSpec& spec,
    const std::function<void(const WorkerEvent&)>& on_event) {
  if (spec.pools_size() != 1) {
    return absl::UnimplementedError(absl::StrFormat(
        "job %s has %d pools; this version of `tandem train` runs one pool (cross-cloud "
        "gradient exchange between pools is not in this build)",
        spec.name(), spec.pools_size()));
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> worker = {options.tandem_binary, "worker",  "--spec",
                                     options.spec_path,     "--store", options.store_dir};
  if (options.resume) worker.push_back("--resume");
  if (!options.init_file.empty()) {
    worker.push_back("--init");
    worker.push_back(options.init_file);
  }
  if (options.max_steps != 0) {
    worker.push_back("--max-steps");
    worker.push_back(std::to_string(options.max_steps));
  }
  absl::StatusOr<std::unique_ptr<Subprocess>> group =
      Subprocess::Start(MpirunArgv(static_cast<int>(spec.pools(0).workers()), worker), MpirunEnv());
  if (!group.ok()) return group.status();

  std::optional<TrainResult> result;
  std::string error;
  std::string init_digest;
  while (std::optional<std::string> line = (*group)->ReadLine()) {
    std::optional<WorkerEvent> event = ParseWorkerEvent(*line);
    if (!event.has_value()) {
      std::cout << *line << "\n";
      continue;
    }
    on_event(*event);
    if (event->kind == "error") error = event->message;
    if (event->kind == "start") init_digest = event->init_digest;
    if (event->kind == "done") {
      const v1::TrainingProgress& p = event->progress;
      result = TrainResult{};
      result->steps = p.step();
      result->epochs = event->epochs;
      result->cursor = p.global_cursor();
      result->loss = p.loss();
      result->test_accuracy = p.test_accuracy();
      result->test_loss = p.test_loss();
      result->samples_per_s = p.samples_per_s();
      result->state_digest = p.state_digest();
      result->init_digest = init_digest;
    }
  }
  absl::StatusOr<int> exit_code = (*group)->Wait();
  if (!exit_code.ok()) return exit_code.status();
  if (!error.empty()) return absl::AbortedError(error);
  if (*exit_code != 0 || !result.has_value()) {
    return absl::AbortedError(
        absl::StrFormat("the worker group of pool %s exited with status %d before finishing",
                        spec.pools(0).cloud(), *exit_code));
  }
  result->wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return *result;
}

}  // namespace tandem
