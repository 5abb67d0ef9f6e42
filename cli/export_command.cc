#include <stdlib.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/digest.h"
#include "checkpoint/replication.h"
#include "checkpoint/torch_file.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace tandem::cli {

namespace po = boost::program_options;

namespace {

constexpr char kExportUsage[] =
    R"(Usage: tandem export JOB -o FILE [--step N] [--cloud CLOUD] [OPTIONS]
       tandem export --store DIR --job NAME [--step N] -o FILE [--output text|json]

Writes the model parameters of a checkpoint to FILE as a PyTorch state_dict:
Python's torch.load(FILE) returns {parameter name: tensor}, ready for
model.load_state_dict() on the same architecture. The checkpoint is verified
on the way out. `tandem train SPEC --init FILE` starts a job from such a file.

With JOB: asks the coordinator which clouds hold the job's checkpoints,
fetches the latest (or step N) from the store of a cloud that has it (the
agent's replication endpoint, over mutual TLS with --certs unless --insecure)
into a temporary store, and writes FILE from there. A cloud whose agent is
not alive is tried last. The coordinator is --coordinator, else
$TANDEM_COORDINATOR, else the address in ~/.tandem/coordinator, else
127.0.0.1:7440.

Without JOB: reads the checkpoint of --job from the local store --store.

Exit codes: 0 written; 1 no such checkpoint, it cannot be fetched or read, or
FILE cannot be written; 2 bad flags, or a JOB the coordinator does not know;
3 the coordinator cannot be reached.

Options)";

constexpr char kModelPrefix[] = "model.";

// Where the checkpoint came from, for the report.
struct Source {
  std::string description;  // "store DIR", "cloud NAME"
  std::string cloud;
  uint64_t bytes_fetched = 0;
};

// Writes the model.* tensors of `checkpoint` to `file` and reports it.
int WriteModelFile(const Checkpoint& checkpoint, const std::string& job, const std::string& file,
                   bool json, const Source& source) {
  std::vector<TensorView> model;
  for (const StoredTensor& t : checkpoint.tensors) {
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
  if (json) {
    nlohmann::json j = {{"job", job},
                        {"step", checkpoint.manifest.step()},
                        {"file", file},
                        {"tensors", model.size()},
                        {"model_digest", digest}};
    if (!source.cloud.empty()) {
      j["cloud"] = source.cloud;
      j["bytes_fetched"] = source.bytes_fetched;
    }
    std::cout << j.dump() << std::endl;
  } else {
    std::cout << absl::StrFormat("exported %d tensors of job %s at step %d to %s", model.size(),
                                 job, checkpoint.manifest.step(), file);
    if (!source.cloud.empty()) {
      std::cout << absl::StrFormat(" (from %s, %.1f MB fetched)", source.description,
                                   source.bytes_fetched / 1e6);
    }
    std::cout << "\n";
  }
  return kExitOk;
}

// A store in a fresh temporary folder, removed with it.
class TempStore {
 public:
  TempStore() {
    std::error_code error;
    std::string base = std::filesystem::temp_directory_path(error).string();
    if (error || base.empty()) base = "/tmp";
    std::string pattern = base + "/tandem-export-XXXXXX";
    if (mkdtemp(pattern.data()) != nullptr) dir_ = pattern;
  }
  ~TempStore() {
    store_.reset();
    std::error_code error;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, error);
  }
  TempStore(const TempStore&) = delete;
  TempStore& operator=(const TempStore&) = delete;

  absl::Status Open() {
    if (dir_.empty()) return absl::InternalError("cannot make a temporary folder for the copy");
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_ + "/store");
    if (!store.ok()) return store.status();
    store_ = std::move(*store);
    return absl::OkStatus();
  }
  CheckpointStore& store() { return *store_; }

 private:
  std::string dir_;
  std::unique_ptr<CheckpointStore> store_;
};

int RemoteExport(const std::string& job, const std::string& file, std::optional<uint64_t> step,
                 const std::string& cloud, double timeout_s, const ClientFlags& flags, bool json) {
  int code = kExitOk;
  std::unique_ptr<CoordinatorClient> client = CoordinatorClient::Connect("export", flags, &code);
  if (client == nullptr) return code;
  v1::ListCheckpointsRequest request;
  request.set_job_id(job);
  request.set_cloud(cloud);
  v1::ListCheckpointsResponse checkpoints;
  grpc::Status status =
      client->stub().ListCheckpoints(client->Context().get(), request, &checkpoints);
  if (!status.ok()) return client->Fail(status);
  v1::ListPoolsResponse pools;
  status = client->stub().ListPools(client->Context().get(), {}, &pools);
  if (!status.ok()) return client->Fail(status);
  std::map<std::string, v1::PoolHealth> by_cloud;
  for (const v1::PoolHealth& p : pools.pools()) by_cloud[p.pool().cloud()] = p;

  // Newest step first; at the same step, clouds whose agent is alive first.
  std::vector<v1::CheckpointInfo> candidates;
  for (const v1::CheckpointInfo& c : checkpoints.checkpoints()) {
    if (!step.has_value() || c.step() == *step) candidates.push_back(c);
  }
  auto alive = [&](const std::string& name) {
    auto it = by_cloud.find(name);
    return it != by_cloud.end() && it->second.alive();
  };
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](const v1::CheckpointInfo& a, const v1::CheckpointInfo& b) {
                     if (a.step() != b.step()) return a.step() > b.step();
                     return alive(a.cloud()) && !alive(b.cloud());
                   });
  if (candidates.empty()) {
    std::cerr << "tandem export: the coordinator knows no checkpoint of job " << job
              << (step ? absl::StrFormat(" at step %d", *step) : std::string())
              << (cloud.empty() ? "" : " in cloud " + cloud) << " (see `tandem checkpoints " << job
              << "`)\n";
    return kExitFailed;
  }
  // Only the newest step is worth fetching (or --step's): an older one would
  // silently export something else than asked.
  const uint64_t wanted = candidates.front().step();
  TempStore temp;
  if (absl::Status opened = temp.Open(); !opened.ok()) {
    std::cerr << "tandem export: " << opened.message() << "\n";
    return kExitFailed;
  }
  const auto deadline = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  std::vector<std::string> failures;
  for (const v1::CheckpointInfo& c : candidates) {
    if (c.step() != wanted) break;
    auto pool = by_cloud.find(c.cloud());
    if (pool == by_cloud.end() || pool->second.pool().replication_endpoint().empty()) {
      failures.push_back(c.cloud() + ": its agent has no replication endpoint");
      continue;
    }
    const std::string& endpoint = pool->second.pool().replication_endpoint();
    absl::StatusOr<ReplicationStats> pulled = PullCheckpoint(
        temp.store(), job, c.step(), endpoint, client->credentials(), deadline, /*keep=*/1);
    if (!pulled.ok()) {
      failures.push_back(c.cloud() + " (" + endpoint +
                         "): " + std::string(pulled.status().message()));
      continue;
    }
    absl::StatusOr<Checkpoint> checkpoint = temp.store().Load(job, c.step());
    if (!checkpoint.ok()) {
      std::cerr << "tandem export: " << checkpoint.status().message() << "\n";
      return kExitFailed;
    }
    Source source{"cloud " + c.cloud(), c.cloud(), pulled->bytes_sent};
    return WriteModelFile(*checkpoint, job, file, json, source);
  }
  std::cerr << "tandem export: cannot fetch the checkpoint of job " << job << " at step " << wanted
            << " from any cloud that holds it:\n";
  for (const std::string& f : failures) std::cerr << "  " << f << "\n";
  return kExitFailed;
}

}  // namespace

int ExportCommand(const std::vector<std::string>& args) {
  std::string store_dir;
  std::string job;
  std::string remote_job;
  std::string cloud;
  std::string file;
  std::string output;
  uint64_t step = 0;
  double timeout_s = 1800;
  ClientFlags client;
  po::options_description flags(kExportUsage);
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("store", po::value(&store_dir)->default_value(DefaultStoreDir()), "checkpoint store folder")
      ("job", po::value(&job), "the job whose checkpoint to export")
      ("step", po::value(&step)->value_name("N"), "the checkpoint at step N (default: the latest)")
      ("out,o", po::value(&file)->value_name("FILE"), "the file to write")
      ("cloud", po::value(&cloud)->value_name("CLOUD"),
       "with JOB: fetch only from this cloud's store")
      ("timeout", po::value(&timeout_s)->default_value(1800)->value_name("SECONDS"),
       "with JOB: give up when fetching the checkpoint takes longer");
  // clang-format on
  AddClientFlags(flags, &client);
  flags.add_options()("output", po::value(&output)->default_value("text"), "text or json");
  po::options_description hidden;
  hidden.add_options()("remote-job", po::value(&remote_job));
  po::positional_options_description positional;
  positional.add("remote-job", 1);
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("export", args, flags, hidden, positional, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  if (!CheckOutputFormat("export", output)) return kExitUsage;
  std::optional<uint64_t> wanted;
  if (vm.count("step")) wanted = step;
  if (!remote_job.empty()) {
    if (!vm["store"].defaulted() || !job.empty()) {
      std::cerr << "tandem export: JOB asks the coordinator; --store and --job read a local "
                   "store: give one or the other\n";
      return kExitUsage;
    }
    if (file.empty()) {
      std::cerr << "tandem export: -o FILE is required\n";
      return kExitUsage;
    }
    if (!(timeout_s > 0)) {
      std::cerr << "tandem export: --timeout must be positive\n";
      return kExitUsage;
    }
    return RemoteExport(remote_job, file, wanted, cloud, timeout_s, client, output == "json");
  }
  if (job.empty() || file.empty()) {
    std::cerr << "tandem export: JOB (from the coordinator) or --job (from --store), and -o FILE "
                 "are required\n";
    return kExitUsage;
  }
  if (!cloud.empty()) {
    std::cerr << "tandem export: --cloud needs a JOB (it picks the cloud to fetch from)\n";
    return kExitUsage;
  }
  std::unique_ptr<CheckpointStore> store = OpenStoreForReading("export", store_dir);
  if (store == nullptr) return kExitFailed;
  absl::StatusOr<Checkpoint> checkpoint = store->Load(job, wanted);
  if (!checkpoint.ok()) {
    std::cerr << "tandem export: " << checkpoint.status().message() << "\n";
    return kExitFailed;
  }
  return WriteModelFile(*checkpoint, job, file, output == "json",
                        Source{"store " + store_dir, "", 0});
}

}  // namespace tandem::cli
