#include <unistd.h>

#include <boost/program_options.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/progress_view.h"
#include "coordinator/local_train.h"
#include "worker/job_spec.h"

namespace tandem::cli {

namespace po = boost::program_options;

std::string DefaultStoreDir() {
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr && *home != '\0' ? home : ".") + "/.tandem/store";
}

namespace {

constexpr char kTrainUsage[] = R"(Usage: tandem train SPEC [OPTIONS]

Runs the job described by the YAML file SPEC on this machine: each pool of the
spec is one group of `tandem worker` ranks that tandem starts with mpirun.
Checkpoints go to the store every checkpoint.every_steps and at the end.
On a terminal a live progress line shows step, loss, samples/s and ETA.

Options)";

std::string SelfExecutable() {
  std::error_code error;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? "tandem" : self.string();
}

}  // namespace

int TrainCommand(const std::vector<std::string>& args) {
  std::string spec_path;
  std::string store_dir;
  std::string output;
  bool resume = false;
  std::string init_file;
  uint64_t max_steps = 0;
  po::options_description flags(kTrainUsage);
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("store", po::value(&store_dir)->default_value(DefaultStoreDir()),
       "checkpoint store folder (created if missing)")
      ("resume", po::bool_switch(&resume),
       "continue from the job's latest checkpoint in the store")
      ("init", po::value(&init_file)->value_name("FILE"),
       "start from the parameters in FILE, a PyTorch state_dict (parameter name -> tensor) "
       "as `tandem export` or Python's torch.save(model.state_dict()) writes it")
      ("max-steps", po::value(&max_steps)->default_value(0)->value_name("N"),
       "stop after N steps in all (0 = as the spec says)")
      ("output", po::value(&output)->default_value("text"),
       "text, or json: the last line of stdout is one JSON object with steps, epochs, "
       "test_accuracy, test_loss, samples_per_s, wall_s and state_digest");
  // clang-format on
  po::options_description hidden;
  hidden.add_options()("spec", po::value(&spec_path));
  po::options_description all;
  all.add(flags).add(hidden);
  po::positional_options_description positional;
  positional.add("spec", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "tandem train: " << e.what() << "\nRun `tandem train --help` for the options.\n";
    return kExitUsage;
  }
  if (vm.count("help")) {
    std::cout << flags;
    return kExitOk;
  }
  if (spec_path.empty()) {
    std::cerr << "tandem train: missing SPEC (a job spec YAML file, e.g. "
                 "examples/fashion-mnist-cnn.yaml)\n";
    return kExitUsage;
  }
  if (output != "text" && output != "json") {
    std::cerr << "tandem train: --output must be text or json, got '" << output << "'\n";
    return kExitUsage;
  }
  if (resume && !init_file.empty()) {
    std::cerr << "tandem train: --init and --resume exclude each other: a resumed job "
                 "continues from its checkpoint\n";
    return kExitUsage;
  }
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(spec_path);
  if (!spec.ok()) {
    std::cerr << "tandem train: " << spec.status().message() << "\n";
    return kExitUsage;
  }

  LocalTrainOptions options;
  options.spec_path = std::filesystem::absolute(spec_path).string();
  options.store_dir = std::filesystem::absolute(store_dir).string();
  options.resume = resume;
  if (!init_file.empty()) options.init_file = std::filesystem::absolute(init_file).string();
  options.max_steps = max_steps;
  options.tandem_binary = SelfExecutable();
  std::error_code error;
  std::filesystem::create_directories(std::filesystem::path(options.store_dir).parent_path(),
                                      error);

  // Ctrl-C reaches mpirun too (same process group), which stops the ranks;
  // we stay alive to say where the job can resume from.
  std::signal(SIGINT, SIG_IGN);
  ProgressView view(std::cerr, isatty(STDERR_FILENO) != 0, output == "json",
                    spec->train().global_batch());
  absl::StatusOr<TrainResult> result =
      RunLocalTraining(options, *spec, [&view](const WorkerEvent& e) { view.OnEvent(e); });
  view.Finish();
  if (!result.ok()) {
    std::cerr << "tandem train: job " << spec->name() << " failed: " << result.status().message()
              << "\n";
    return kExitFailed;
  }
  if (output == "json") {
    nlohmann::json j = {{"job", spec->name()},
                        {"steps", result->steps},
                        {"epochs", result->epochs},
                        {"loss", result->loss},
                        {"test_accuracy", result->test_accuracy},
                        {"test_loss", result->test_loss},
                        {"samples_per_s", result->samples_per_s},
                        {"wall_s", result->wall_s},
                        {"state_digest", result->state_digest},
                        {"store", options.store_dir}};
    if (!result->init_digest.empty()) j["init_digest"] = result->init_digest;
    std::cout << j.dump() << std::endl;
  } else {
    std::cout << absl::StrFormat(
        "job %s: %d steps (%.2f epochs) in %.1f s\n"
        "  test accuracy %.4f, test loss %.4f, last train loss %.4f\n"
        "  %.0f samples/s; state digest %s\n"
        "  checkpoints in %s (resume with --resume)\n",
        spec->name(), result->steps, result->epochs, result->wall_s, result->test_accuracy,
        result->test_loss, result->loss, result->samples_per_s, result->state_digest,
        options.store_dir);
  }
  return kExitOk;
}

}  // namespace tandem::cli
