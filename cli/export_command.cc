#include <boost/program_options.hpp>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/digest.h"
#include "checkpoint/torch_file.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace tandem::cli {

namespace po = boost::program_options;

namespace {

constexpr char kExportUsage[] =
    R"(Usage: tandem export --store DIR --job NAME [--step N] -o FILE [--output text|json]

Writes the model parameters of a checkpoint to FILE as a PyTorch state_dict:
Python's torch.load(FILE) returns {parameter name: tensor}, ready for
model.load_state_dict() on the same architecture. The checkpoint is verified
on the way out. `tandem train SPEC --init FILE` starts a job from such a file.

Options)";

constexpr char kModelPrefix[] = "model.";

}  // namespace

int ExportCommand(const std::vector<std::string>& args) {
  std::string store_dir;
  std::string job;
  std::string file;
  std::string output;
  uint64_t step = 0;
  po::options_description flags(kExportUsage);
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("store", po::value(&store_dir)->default_value(DefaultStoreDir()), "checkpoint store folder")
      ("job", po::value(&job), "the job whose checkpoint to export")
      ("step", po::value(&step)->value_name("N"), "the checkpoint at step N (default: the latest)")
      ("out,o", po::value(&file)->value_name("FILE"), "the file to write")
      ("output", po::value(&output)->default_value("text"), "text or json");
  // clang-format on
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("export", args, flags, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  if (job.empty() || file.empty()) {
    std::cerr << "tandem export: --job and -o FILE are required\n";
    return kExitUsage;
  }
  if (!CheckOutputFormat("export", output)) return kExitUsage;
  std::unique_ptr<CheckpointStore> store = OpenStoreForReading("export", store_dir);
  if (store == nullptr) return kExitFailed;
  std::optional<uint64_t> wanted;
  if (vm.count("step")) wanted = step;
  absl::StatusOr<Checkpoint> checkpoint = store->Load(job, wanted);
  if (!checkpoint.ok()) {
    std::cerr << "tandem export: " << checkpoint.status().message() << "\n";
    return kExitFailed;
  }
  std::vector<TensorView> model;
  for (const StoredTensor& t : checkpoint->tensors) {
    if (t.name.rfind(kModelPrefix, 0) != 0) continue;
    model.push_back({t.name.substr(sizeof(kModelPrefix) - 1), t.dtype, t.shape, t.bytes.data(),
                     t.bytes.size()});
  }
  absl::Status written = WriteStateDict(file, model);
  if (!written.ok()) {
    std::cerr << "tandem export: " << written.message() << "\n";
    return kExitFailed;
  }
  const std::string digest = StateDigest(model);
  if (output == "json") {
    std::cout << nlohmann::json{{"job", job},
                                {"step", checkpoint->manifest.step()},
                                {"file", file},
                                {"tensors", model.size()},
                                {"model_digest", digest}}
                     .dump()
              << std::endl;
  } else {
    std::cout << absl::StrFormat("exported %d tensors of job %s at step %d to %s\n", model.size(),
                                 job, checkpoint->manifest.step(), file);
  }
  return kExitOk;
}

}  // namespace tandem::cli
