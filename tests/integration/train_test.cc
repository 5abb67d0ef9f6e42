// `tandem train` end to end: real mpirun groups, real Fashion-MNIST, real
// RocksDB stores. These are the slow tests (label "integration").
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "checkpoint/checkpoint_store.h"
#include "coordinator/subprocess.h"
#include "tests/support/damage_store.h"
#include "tests/support/run_tandem.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;
using testing::RunResult;
using testing::RunTandem;
using testing::TempDir;
using Json = nlohmann::json;

std::string SpecYaml(const std::string& arch, int workers, int every_steps,
                     const std::string& optimizer = "sgd") {
  return absl::StrFormat(R"(name: itest-%s
model:
  arch: %s
train:
  epochs: 1
  global_batch: 64
  optimizer: %s
  lr: %s
  seed: 3
checkpoint:
  every_steps: %d
  keep: 2
pools:
  - cloud: local
    workers: %d
)",
                         arch, arch, optimizer, optimizer == "adam" ? "0.001" : "0.05", every_steps,
                         workers);
}

Json TrainJson(const std::vector<std::string>& args) {
  std::vector<std::string> all = {"train"};
  all.insert(all.end(), args.begin(), args.end());
  all.push_back("--output");
  all.push_back("json");
  RunResult run = RunTandem(all);
  EXPECT_EQ(run.exit_code, 0) << run.err << run.out;
  Json j = Json::parse(run.LastLine(), nullptr, false);
  EXPECT_TRUE(j.is_object()) << "last line is not JSON: " << run.LastLine() << "\n" << run.err;
  return j;
}

// The model tensors of the latest checkpoint in `store`.
std::vector<StoredTensor> ModelTensors(const std::string& store, const std::string& job) {
  CheckpointStoreOptions options;
  options.read_only = true;
  auto opened = CheckpointStore::Open(store, options);
  EXPECT_TRUE(opened.ok()) << opened.status();
  if (!opened.ok()) return {};
  auto checkpoint = (*opened)->Load(job);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  if (!checkpoint.ok()) return {};
  std::vector<StoredTensor> out;
  for (StoredTensor& t : checkpoint->tensors) {
    if (t.name.rfind("model.", 0) == 0) out.push_back(std::move(t));
  }
  return out;
}

double MaxAbsDifference(const std::vector<StoredTensor>& a, const std::vector<StoredTensor>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].bytes.size(), b[i].bytes.size());
    const size_t n = std::min(a[i].bytes.size(), b[i].bytes.size()) / sizeof(float);
    for (size_t k = 0; k < n; ++k) {
      float x, y;
      std::memcpy(&x, a[i].bytes.data() + k * sizeof(float), sizeof(float));
      std::memcpy(&y, b[i].bytes.data() + k * sizeof(float), sizeof(float));
      worst = std::max(worst, static_cast<double>(std::abs(x - y)));
    }
  }
  return worst;
}

TEST(TrainTest, SameSpecTwiceGivesBitwiseIdenticalState) {
  TempDir dir;
  const std::string spec = dir.Write("mlp.yaml", SpecYaml("mlp", 2, 0));
  Json first = TrainJson({spec, "--store", dir.Join("a"), "--max-steps", "25"});
  Json second = TrainJson({spec, "--store", dir.Join("b"), "--max-steps", "25"});
  EXPECT_EQ(first["steps"], 25);
  ASSERT_TRUE(first["state_digest"].is_string());
  EXPECT_EQ(first["state_digest"].get<std::string>().size(), 64u);
  EXPECT_EQ(first["state_digest"], second["state_digest"]);
  EXPECT_EQ(first["test_accuracy"], second["test_accuracy"]);
}

TEST(TrainTest, OneTwoAndFourRanksAgreeWithinFloatingPointOrder) {
  TempDir dir;
  std::vector<std::vector<StoredTensor>> models;
  std::vector<std::string> digests;
  for (int ranks : {1, 2, 4}) {
    const std::string spec =
        dir.Write(absl::StrFormat("cnn-%d.yaml", ranks), SpecYaml("cnn", ranks, 0));
    const std::string store = dir.Join(absl::StrFormat("store-%d", ranks));
    Json result = TrainJson({spec, "--store", store, "--max-steps", "8"});
    EXPECT_EQ(result["steps"], 8);
    digests.push_back(result.value("state_digest", ""));
    models.push_back(ModelTensors(store, "itest-cnn"));
  }
  // Only the order of the floating-point reduction differs between layouts.
  EXPECT_LT(MaxAbsDifference(models[0], models[1]), 1e-5);
  EXPECT_LT(MaxAbsDifference(models[0], models[2]), 1e-5);
  // ...and it does differ: the comparison above is not comparing a run with itself.
  EXPECT_NE(digests[0], digests[2]);
}

TEST(TrainTest, ResumeIsBitwiseIdenticalToAnUninterruptedRun) {
  for (const std::string optimizer : {"sgd", "adam"}) {
    SCOPED_TRACE(optimizer);
    TempDir dir;
    const std::string spec = dir.Write("mlp.yaml", SpecYaml("mlp", 2, 10, optimizer));
    Json whole = TrainJson({spec, "--store", dir.Join("whole"), "--max-steps", "60"});
    Json half = TrainJson({spec, "--store", dir.Join("split"), "--max-steps", "30"});
    EXPECT_EQ(half["steps"], 30);
    EXPECT_NE(half["state_digest"], whole["state_digest"]);
    Json resumed = TrainJson({spec, "--store", dir.Join("split"), "--max-steps", "60", "--resume"});
    EXPECT_EQ(resumed["steps"], 60);
    EXPECT_EQ(resumed["state_digest"], whole["state_digest"]);
    EXPECT_EQ(resumed["test_accuracy"], whole["test_accuracy"]);
  }
}

TEST(TrainTest, ResumeOnAnotherNumberOfRanksContinues) {
  TempDir dir;
  const std::string two = dir.Write("two.yaml", SpecYaml("mlp", 2, 10));
  const std::string three = dir.Write("three.yaml", SpecYaml("mlp", 3, 10));
  TrainJson({two, "--store", dir.Join("s"), "--max-steps", "20"});
  Json resumed = TrainJson({three, "--store", dir.Join("s"), "--max-steps", "40", "--resume"});
  EXPECT_EQ(resumed["steps"], 40);
  EXPECT_GT(resumed["test_accuracy"].get<double>(), 0.5);
}

TEST(TrainTest, OneEpochOfTheMlpLearnsFashionMnist) {
  TempDir dir;
  const std::string spec = dir.Write("mlp.yaml", SpecYaml("mlp", 2, 0, "adam"));
  Json result = TrainJson({spec, "--store", dir.Join("s")});
  EXPECT_EQ(result["steps"], 938);  // ceil(60000 / 64)
  EXPECT_DOUBLE_EQ(result["epochs"].get<double>(), 1.0);
  EXPECT_GT(result["test_accuracy"].get<double>(), 0.82);
  EXPECT_GT(result["samples_per_s"].get<double>(), 0);
  EXPECT_GT(result["wall_s"].get<double>(), 0);
  for (const char* key : {"test_loss", "samples_per_s", "wall_s", "epochs"}) {
    EXPECT_TRUE(result.contains(key)) << key;
  }
}

TEST(TrainTest, StoreWithCheckpointsNeedsResume) {
  TempDir dir;
  const std::string spec = dir.Write("mlp.yaml", SpecYaml("mlp", 1, 5));
  TrainJson({spec, "--store", dir.Join("s"), "--max-steps", "5"});
  RunResult again = RunTandem({"train", spec, "--store", dir.Join("s"), "--max-steps", "10"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.err, HasSubstr("--resume"));
  EXPECT_THAT(again.err, HasSubstr("step 5"));
}

TEST(TrainTest, CheckpointsCommandListsWhatTrainingSaved) {
  TempDir dir;
  const std::string spec = dir.Write("mlp.yaml", SpecYaml("mlp", 2, 10));
  Json result = TrainJson({spec, "--store", dir.Join("s"), "--max-steps", "35"});
  RunResult list = RunTandem(
      {"checkpoints", "--store", dir.Join("s"), "--job", "itest-mlp", "--output", "json"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  Json j = Json::parse(list.LastLine());
  std::vector<uint64_t> steps;
  for (const Json& c : j["checkpoints"]) {
    steps.push_back(c["step"].get<uint64_t>());
    EXPECT_GT(c["bytes"].get<uint64_t>(), 0u);
    EXPECT_TRUE(c.contains("time"));
  }
  // keep: 2 leaves the last two: 30 and the final 35.
  EXPECT_EQ(steps, (std::vector<uint64_t>{30, 35}));
  EXPECT_EQ(j["checkpoints"][1]["state_digest"], result["state_digest"]);
  EXPECT_EQ(j["checkpoints"][1]["latest"], true);

  RunResult text = RunTandem({"checkpoints", "--store", dir.Join("s")});
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_THAT(text.out, HasSubstr("itest-mlp"));
  EXPECT_THAT(text.out, HasSubstr("(latest)"));
}

// The async saver copies the state before training moves on: its
// checkpoints must hold exactly what a synchronous save writes.
TEST(TrainTest, AsyncAndSynchronousSavesStoreTheSameState) {
  TempDir dir;
  const std::string yaml = SpecYaml("mlp", 2, 10);
  const std::string async_spec = dir.Write("async.yaml", yaml);
  const std::string sync_spec = dir.Write(
      "sync.yaml", absl::StrReplaceAll(yaml, {{"  keep: 2\n", "  keep: 2\n  async: false\n"}}));
  TrainJson({async_spec, "--store", dir.Join("a"), "--max-steps", "30"});
  TrainJson({sync_spec, "--store", dir.Join("s"), "--max-steps", "30"});
  auto digests = [&](const std::string& store) {
    RunResult list = RunTandem({"checkpoints", "--store", store, "--output", "json"});
    EXPECT_EQ(list.exit_code, 0) << list.err;
    std::vector<std::pair<uint64_t, std::string>> out;
    const Json parsed = Json::parse(list.LastLine());
    for (const Json& c : parsed["checkpoints"]) {
      out.emplace_back(c["step"].get<uint64_t>(), c["state_digest"].get<std::string>());
    }
    return out;
  };
  const auto async_digests = digests(dir.Join("a"));
  EXPECT_EQ(async_digests.size(), 2u);  // keep: 2
  EXPECT_EQ(async_digests, digests(dir.Join("s")));
}

TEST(TrainTest, MissingDatasetFailsWithTheFileName) {
  TempDir dir;
  std::string yaml = SpecYaml("mlp", 2, 0);
  yaml =
      absl::StrReplaceAll(yaml, {{"model:", "data:\n  path: " + dir.Join("nodata") + "\nmodel:"}});
  const std::string spec = dir.Write("mlp.yaml", yaml);
  RunResult run = RunTandem({"train", spec, "--store", dir.Join("s")});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr(dir.Join("nodata") + "/train-images-idx3-ubyte.gz"));
}

// A bit flipped in the latest checkpoint: `checkpoints --verify` names it and
// fails, and a resumed job falls back to the previous checkpoint with a
// warning and still reaches the state of an uninterrupted run.
TEST(TrainTest, DamagedLatestCheckpointIsReportedAndResumeFallsBack) {
  TempDir dir;
  const std::string spec = dir.Write("mlp.yaml", SpecYaml("mlp", 2, 10));
  Json whole = TrainJson({spec, "--store", dir.Join("whole"), "--max-steps", "40"});
  TrainJson({spec, "--store", dir.Join("s"), "--max-steps", "30"});
  std::string chunk;
  {
    CheckpointStoreOptions options;
    options.read_only = true;
    auto store = CheckpointStore::Open(dir.Join("s"), options);
    ASSERT_TRUE(store.ok()) << store.status();
    auto manifest = (*store)->LoadManifest("itest-mlp");
    ASSERT_TRUE(manifest.ok()) << manifest.status();
    ASSERT_EQ(manifest->step(), 30u);
    for (const v1::TensorRecord& t : manifest->tensors()) {
      if (t.name() == "model.fc3.bias") chunk = t.chunks(0).sha256();
    }
  }
  ASSERT_EQ(chunk.size(), 32u);
  ASSERT_TRUE(testing::FlipBitOfChunk(dir.Join("s"), chunk).ok());

  RunResult verify = RunTandem({"checkpoints", "--store", dir.Join("s"), "--verify"});
  EXPECT_EQ(verify.exit_code, 1);
  EXPECT_THAT(verify.out, HasSubstr("DAMAGED"));
  EXPECT_THAT(verify.out, HasSubstr("model.fc3.bias"));
  EXPECT_THAT(verify.err, HasSubstr("latest checkpoint of a job is damaged"));

  RunResult resumed = RunTandem({"train", spec, "--store", dir.Join("s"), "--max-steps", "40",
                                 "--resume", "--output", "json"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_THAT(resumed.err, HasSubstr("falling back to step 20"));
  const Json result = Json::parse(resumed.LastLine());
  EXPECT_EQ(result["steps"], 40);
  EXPECT_EQ(result["state_digest"], whole["state_digest"]);
  // The damaged step was written again on the way: the store is whole again.
  EXPECT_EQ(RunTandem({"checkpoints", "--store", dir.Join("s"), "--verify"}).exit_code, 0);
}

// Two stores, as two clouds would have: serve-store on one, replicate from the
// other over mutual TLS, first in full and then only what changed.
TEST(TrainTest, ReplicateSendsOnlyMissingChunksOverTls) {
  TempDir dir;
  ASSERT_EQ(RunTandem({"certs", "init", dir.Join("certs")}).exit_code, 0);
  auto server =
      Subprocess::Start({testing::TandemBinary(), "serve-store", "--store", dir.Join("target"),
                         "--listen", "127.0.0.1:0", "--certs", dir.Join("certs")});
  ASSERT_TRUE(server.ok()) << server.status();
  std::optional<std::string> line = (*server)->ReadLine();
  ASSERT_TRUE(line.has_value());
  ASSERT_EQ(line->rfind("listening on ", 0), 0u) << *line;
  const std::string address = line->substr(std::strlen("listening on "));

  const std::string spec = dir.Write("mlp.yaml", SpecYaml("mlp", 1, 10));
  Json first = TrainJson({spec, "--store", dir.Join("source"), "--max-steps", "10"});
  auto replicate = [&] {
    RunResult run =
        RunTandem({"replicate", "--store", dir.Join("source"), "--job", "itest-mlp", "--to",
                   address, "--certs", dir.Join("certs"), "--timeout", "60", "--output", "json"});
    EXPECT_EQ(run.exit_code, 0) << run.err;
    return Json::parse(run.LastLine(), nullptr, false);
  };
  Json full = replicate();
  EXPECT_EQ(full["step"], 10);
  EXPECT_EQ(full["chunks_sent"], full["chunks_total"]);
  // Everything the target now holds came over the wire: the model and SGD's
  // momentum, fp32.
  EXPECT_GT(full["bytes_sent"].get<uint64_t>(), 2 * 235146 * 4 - 1);

  Json again = replicate();
  EXPECT_EQ(again["chunks_sent"], 0);
  EXPECT_EQ(again["bytes_sent"], 0);

  // A client whose certificate another CA signed is refused.
  ASSERT_EQ(RunTandem({"certs", "init", dir.Join("other")}).exit_code, 0);
  RunResult stranger =
      RunTandem({"replicate", "--store", dir.Join("source"), "--job", "itest-mlp", "--to", address,
                 "--certs", dir.Join("other"), "--timeout", "10"});
  EXPECT_EQ(stranger.exit_code, 1);

  (*server)->Kill(SIGTERM);
  auto exit_code = (*server)->Wait();
  ASSERT_TRUE(exit_code.ok());
  EXPECT_EQ(*exit_code, 0);
  RunResult list = RunTandem(
      {"checkpoints", "--store", dir.Join("target"), "--job", "itest-mlp", "--output", "json"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  const Json listed = Json::parse(list.LastLine());
  ASSERT_EQ(listed["checkpoints"].size(), 1u);
  EXPECT_EQ(listed["checkpoints"][0]["state_digest"], first["state_digest"]);
}

// Runs tests/integration/torch_interop.py with Debian's Python (which has
// torch; the python3 first on PATH may not) and returns its JSON.
Json RunPython(const std::vector<std::string>& args) {
  std::string command =
      "/usr/bin/python3 " + testing::SourceDir() + "/tests/integration/torch_interop.py";
  for (const std::string& a : args) command += " '" + a + "'";
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  std::string out;
  char buffer[4096];
  while (pipe != nullptr && fgets(buffer, sizeof(buffer), pipe) != nullptr) out += buffer;
  const int status = pipe == nullptr ? -1 : pclose(pipe);
  EXPECT_EQ(status, 0) << "python3-torch is a dependency (infra/install-deps.sh):\n" << out;
  Json j = Json::parse(out.substr(out.rfind('{') == std::string::npos ? 0 : out.rfind('{')),
                       nullptr, false);
  EXPECT_TRUE(j.is_object()) << out;
  return j;
}

// tandem -> PyTorch -> tandem: an exported checkpoint loads into PyTorch's own
// model with the same test accuracy, and a file PyTorch saves starts a job
// with exactly those parameters.
TEST(TrainTest, ExportLoadsInPyTorchAndPyTorchFilesInitAJob) {
  for (const std::string arch : {"mlp", "cnn"}) {
    SCOPED_TRACE(arch);
    TempDir dir;
    const std::string spec = dir.Write("spec.yaml", SpecYaml(arch, 2, 0));
    const std::string job = "itest-" + arch;
    Json trained = TrainJson({spec, "--store", dir.Join("s"), "--max-steps", "20"});
    RunResult exported = RunTandem({"export", "--store", dir.Join("s"), "--job", job, "-o",
                                    dir.Join("model.pt"), "--output", "json"});
    ASSERT_EQ(exported.exit_code, 0) << exported.err;
    const Json e = Json::parse(exported.LastLine());
    EXPECT_EQ(e["step"], 20);

    const Json py = RunPython({arch, dir.Join("model.pt"), dir.Join("resaved.pt"),
                               dir.Join("fresh.pt"), "/usr/share/datasets/fashion-mnist"});
    EXPECT_EQ(py["digest"], e["model_digest"]);
    EXPECT_NEAR(py["accuracy"].get<double>(), trained["test_accuracy"].get<double>(), 2e-3);

    Json resumed = TrainJson(
        {spec, "--store", dir.Join("s2"), "--max-steps", "1", "--init", dir.Join("resaved.pt")});
    EXPECT_EQ(resumed["init_digest"], e["model_digest"]);
    Json fresh = TrainJson(
        {spec, "--store", dir.Join("s3"), "--max-steps", "1", "--init", dir.Join("fresh.pt")});
    EXPECT_EQ(fresh["init_digest"], py["fresh_digest"]);
  }
}

TEST(TrainTest, InitFileOfAnotherModelIsRefused) {
  TempDir dir;
  const std::string mlp = dir.Write("mlp.yaml", SpecYaml("mlp", 1, 0));
  const std::string cnn = dir.Write("cnn.yaml", SpecYaml("cnn", 1, 0));
  TrainJson({mlp, "--store", dir.Join("s"), "--max-steps", "1"});
  ASSERT_EQ(RunTandem({"export", "--store", dir.Join("s"), "--job", "itest-mlp", "-o",
                       dir.Join("mlp.pt")})
                .exit_code,
            0);
  RunResult run = RunTandem({"train", cnn, "--store", dir.Join("c"), "--init", dir.Join("mlp.pt")});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr("has no tensor conv1.weight"));
  RunResult both = RunTandem({"train", cnn, "--resume", "--init", dir.Join("mlp.pt")});
  EXPECT_EQ(both.exit_code, 2);
}

}  // namespace
}  // namespace tandem
