#include "worker/job_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// The source tree this test was built from (tests/CMakeLists.txt), or
// $TANDEM_SOURCE_DIR.
std::string ExamplePath(const std::string& file) {
  const char* root = std::getenv("TANDEM_SOURCE_DIR");
  return absl::StrCat(root != nullptr ? root : TANDEM_BUILT_SOURCE_DIR, "/examples/", file);
}

// The smallest valid spec; tests append the sections they exercise.
constexpr char kMinimal[] = R"(
name: tiny
model: {arch: mlp}
pools:
  - {cloud: local, workers: 2}
)";

absl::StatusOr<v1::JobSpec> Parse(const std::string& yaml) {
  return ParseJobSpec(yaml, "test.yaml");
}

// Asserts that parsing fails with InvalidArgument and that the message holds
// "FIELD: PROBLEM", so both the path and the problem are checked at once.
void ExpectInvalid(const std::string& yaml, const std::string& field, const std::string& problem) {
  absl::StatusOr<v1::JobSpec> spec = Parse(yaml);
  ASSERT_FALSE(spec.ok()) << yaml;
  EXPECT_TRUE(absl::IsInvalidArgument(spec.status())) << spec.status();
  EXPECT_THAT(std::string(spec.status().message()), StartsWith("test.yaml: "));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr(absl::StrCat(field, ": ", problem)));
}

TEST(JobSpecTest, ParsesCnnExample) {
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(ExamplePath("fashion-mnist-cnn.yaml"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name(), "fashion-mnist-cnn");
  EXPECT_EQ(spec->model().arch(), v1::MODEL_ARCH_CNN);
  EXPECT_EQ(spec->data().dataset(), "fashion-mnist");
  EXPECT_EQ(spec->data().path(), kDefaultFashionMnistPath);
  EXPECT_EQ(spec->train().epochs(), 1u);
  EXPECT_EQ(spec->train().global_batch(), 128u);
  EXPECT_EQ(spec->train().optimizer(), v1::OPTIMIZER_KIND_SGD);
  EXPECT_DOUBLE_EQ(spec->train().lr(), 0.05);
  EXPECT_DOUBLE_EQ(spec->train().momentum(), 0.9);
  EXPECT_EQ(spec->train().seed(), 1u);
  EXPECT_EQ(spec->checkpoint().every_steps(), 100u);
  EXPECT_EQ(spec->checkpoint().keep(), 3u);
  ASSERT_EQ(spec->pools_size(), 1);
  EXPECT_EQ(spec->pools(0).cloud(), "local");
  EXPECT_EQ(spec->pools(0).workers(), 2u);
  EXPECT_EQ(spec->exchange().codec(), v1::CODEC_KIND_NONE);
  EXPECT_EQ(spec->placement(), v1::PLACEMENT_EXPLICIT);
  EXPECT_EQ(TotalWorkers(*spec), 2u);
}

// What `make demo` submits: two clouds, PowerSGD rank 2 with fp16 factors,
// a cosine schedule (the setting that meets the 100x target in BENCHMARKS.md).
TEST(JobSpecTest, ParsesTwoCloudsExample) {
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(ExamplePath("fashion-mnist-two-clouds.yaml"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->pools_size(), 2);
  EXPECT_EQ(spec->pools(0).cloud(), "cloud-a");
  EXPECT_EQ(spec->pools(1).cloud(), "cloud-b");
  EXPECT_EQ(spec->train().lr_schedule(), v1::LR_SCHEDULE_COSINE);
  EXPECT_EQ(spec->exchange().codec(), v1::CODEC_KIND_POWERSGD);
  EXPECT_EQ(spec->exchange().rank(), 2u);
  EXPECT_EQ(spec->exchange().factors(), v1::FACTOR_PRECISION_FP16);
}

TEST(JobSpecTest, ParsesMlpExample) {
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(ExamplePath("fashion-mnist-mlp.yaml"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name(), "fashion-mnist-mlp");
  EXPECT_EQ(spec->model().arch(), v1::MODEL_ARCH_MLP);
  EXPECT_EQ(spec->train().optimizer(), v1::OPTIMIZER_KIND_ADAM);
  EXPECT_DOUBLE_EQ(spec->train().lr(), 0.001);
  EXPECT_DOUBLE_EQ(spec->train().adam_eps(), 1e-8);
  EXPECT_EQ(spec->exchange().codec(), v1::CODEC_KIND_NONE);
  EXPECT_EQ(TotalWorkers(*spec), 2u);
}

TEST(JobSpecTest, FillsDefaults) {
  absl::StatusOr<v1::JobSpec> spec = Parse(kMinimal);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->data().dataset(), "fashion-mnist");
  EXPECT_EQ(spec->data().path(), kDefaultFashionMnistPath);
  const v1::TrainSpec& train = spec->train();
  EXPECT_EQ(train.epochs(), 1u);
  EXPECT_EQ(train.max_steps(), 0u);
  EXPECT_EQ(train.global_batch(), 128u);
  EXPECT_EQ(train.optimizer(), v1::OPTIMIZER_KIND_SGD);
  EXPECT_DOUBLE_EQ(train.lr(), 0.05);
  EXPECT_DOUBLE_EQ(train.momentum(), 0.9);
  EXPECT_EQ(train.seed(), 1u);
  EXPECT_EQ(train.eval_every_steps(), 0u);
  EXPECT_DOUBLE_EQ(train.adam_beta1(), 0.9);
  EXPECT_DOUBLE_EQ(train.adam_beta2(), 0.999);
  EXPECT_DOUBLE_EQ(train.adam_eps(), 1e-8);
  EXPECT_DOUBLE_EQ(train.weight_decay(), 0);
  EXPECT_EQ(train.lr_schedule(), v1::LR_SCHEDULE_CONSTANT);
  EXPECT_EQ(spec->checkpoint().every_steps(), 100u);
  EXPECT_EQ(spec->checkpoint().keep(), 3u);
  EXPECT_TRUE(spec->checkpoint().async());
  const v1::ExchangeSpec& exchange = spec->exchange();
  EXPECT_EQ(exchange.codec(), v1::CODEC_KIND_NONE);
  EXPECT_EQ(exchange.rank(), 4u);
  EXPECT_EQ(exchange.factors(), v1::FACTOR_PRECISION_FP32);
  EXPECT_DOUBLE_EQ(exchange.topk_ratio(), 0.01);
  EXPECT_EQ(exchange.streams(), 4u);
  EXPECT_EQ(exchange.mode(), v1::EXCHANGE_MODE_SYNC);
  EXPECT_EQ(exchange.digest_every_steps(), 50u);
  EXPECT_EQ(spec->placement(), v1::PLACEMENT_EXPLICIT);
}

TEST(JobSpecTest, AdamDefaultsFollowTheOptimizer) {
  absl::StatusOr<v1::JobSpec> spec = Parse(absl::StrCat(kMinimal, "train: {optimizer: adam}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_DOUBLE_EQ(spec->train().lr(), 0.001);
  EXPECT_DOUBLE_EQ(spec->train().momentum(), 0.0);
}

TEST(JobSpecTest, ReadsEveryKey) {
  absl::StatusOr<v1::JobSpec> spec = Parse(R"(
name: all.keys_1
model: {arch: cnn}
data: {dataset: fashion-mnist, path: /data/fm}
train:
  epochs: 3
  max_steps: 10000000000
  global_batch: 256
  optimizer: sgd
  lr: 1e-3
  momentum: 0
  seed: 42
  eval_every_steps: 20
  adam_beta1: 0.8
  adam_beta2: 0.99
  adam_eps: 1.0e-6
  weight_decay: 5e-4
checkpoint: {every_steps: 0, keep: 1}
pools:
  - {cloud: cloud-a, workers: 3}
  - {cloud: cloud-b, workers: 5}
exchange:
  codec: powersgd
  rank: 8
  topk_ratio: 1
  streams: 2
  mode: delayed
  digest_every_steps: 7
placement: any
)");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name(), "all.keys_1");
  EXPECT_EQ(spec->data().path(), "/data/fm");
  EXPECT_EQ(spec->train().epochs(), 3u);
  EXPECT_EQ(spec->train().max_steps(), 10000000000u);
  EXPECT_EQ(spec->train().global_batch(), 256u);
  EXPECT_DOUBLE_EQ(spec->train().lr(), 1e-3);
  EXPECT_DOUBLE_EQ(spec->train().momentum(), 0.0);
  EXPECT_EQ(spec->train().seed(), 42u);
  EXPECT_EQ(spec->train().eval_every_steps(), 20u);
  EXPECT_DOUBLE_EQ(spec->train().adam_beta1(), 0.8);
  EXPECT_DOUBLE_EQ(spec->train().adam_beta2(), 0.99);
  EXPECT_DOUBLE_EQ(spec->train().adam_eps(), 1e-6);
  EXPECT_DOUBLE_EQ(spec->train().weight_decay(), 5e-4);
  EXPECT_EQ(spec->checkpoint().every_steps(), 0u);
  EXPECT_EQ(spec->checkpoint().keep(), 1u);
  EXPECT_EQ(spec->exchange().codec(), v1::CODEC_KIND_POWERSGD);
  EXPECT_EQ(spec->exchange().rank(), 8u);
  EXPECT_DOUBLE_EQ(spec->exchange().topk_ratio(), 1.0);
  EXPECT_EQ(spec->exchange().streams(), 2u);
  EXPECT_EQ(spec->exchange().mode(), v1::EXCHANGE_MODE_DELAYED);
  EXPECT_EQ(spec->exchange().digest_every_steps(), 7u);
  EXPECT_EQ(spec->placement(), v1::PLACEMENT_ANY);
  EXPECT_EQ(TotalWorkers(*spec), 8u);
}

TEST(JobSpecTest, RejectsUnknownKeyAndListsKnownOnes) {
  ExpectInvalid(
      absl::StrCat(kMinimal, "train: {learning_rate: 0.1}\n"), "train.learning_rate",
      "unknown key; known keys: epochs, max_steps, global_batch, optimizer, lr, lr_schedule, "
      "momentum, seed, eval_every_steps, adam_beta1, adam_beta2, adam_eps, weight_decay");
  ExpectInvalid(absl::StrCat(kMinimal, "trian: {}\n"), "trian", "unknown key; known keys: name,");
  ExpectInvalid(R"(
name: tiny
model: {arch: mlp}
pools:
  - {cloud: local, workers: 2, gpus: 1}
)",
                "pools[0].gpus", "unknown key; known keys: cloud, workers");
}

TEST(JobSpecTest, RejectsDuplicateKey) {
  ExpectInvalid(absl::StrCat(kMinimal, "train:\n  lr: 0.1\n  lr: 0.2\n"), "train.lr",
                "duplicate key");
}

TEST(JobSpecTest, RejectsWrongScalarType) {
  ExpectInvalid(absl::StrCat(kMinimal, "train: {epochs: abc}\n"), "train.epochs",
                "expected a non-negative integer, got \"abc\"");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {epochs: 1.5}\n"), "train.epochs",
                "expected a non-negative integer, got \"1.5\"");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {global_batch: -1}\n"), "train.global_batch",
                "expected a non-negative integer, got \"-1\"");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {epochs: \"2\"}\n"), "train.epochs",
                "expected a non-negative integer, got the string \"2\"");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {lr: fast}\n"), "train.lr",
                "expected a number, got \"fast\"");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {lr: .nan}\n"), "train.lr",
                "expected a number, got \".nan\"");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {lr: }\n"), "train.lr",
                "expected a number, got null");
  ExpectInvalid(absl::StrCat(kMinimal, "checkpoint: {async: yes please}\n"), "checkpoint.async",
                "expected true or false, got \"yes please\"");
  ExpectInvalid(absl::StrCat(kMinimal, "checkpoint: {async: \"true\"}\n"), "checkpoint.async",
                "expected true or false, got the string \"true\"");
}

TEST(JobSpecTest, ReadsBooleans) {
  absl::StatusOr<v1::JobSpec> spec = Parse(absl::StrCat(kMinimal, "checkpoint: {async: false}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_FALSE(spec->checkpoint().async());
}

TEST(JobSpecTest, RejectsWrongNodeKind) {
  ExpectInvalid(absl::StrCat(kMinimal, "train: 5\n"), "train", "expected a mapping, got \"5\"");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {epochs: [1, 2]}\n"), "train.epochs",
                "expected a non-negative integer, got a sequence");
  ExpectInvalid("name: {first: a}\nmodel: {arch: mlp}\npools: [{cloud: a, workers: 1}]\n", "name",
                "expected a string, got a mapping");
  ExpectInvalid("name: a\nmodel: {arch: mlp}\npools: {cloud: a, workers: 1}\n", "pools",
                "expected a sequence, got a mapping");
  ExpectInvalid("name: a\nmodel: {arch: mlp}\npools: [local]\n", "pools[0]",
                "expected a mapping, got \"local\"");
  ExpectInvalid("- name: a\n", "(top level)", "expected a mapping, got a sequence");
}

TEST(JobSpecTest, RejectsOutOfRange) {
  ExpectInvalid(absl::StrCat(kMinimal, "train: {global_batch: 0}\n"), "train.global_batch",
                "must be between 1 and 65536, got 0");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {global_batch: 65537}\n"), "train.global_batch",
                "must be between 1 and 65536, got 65537");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {epochs: 0}\n"), "train.epochs",
                "must be at least 1, got 0");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {epochs: 4294967296}\n"), "train.epochs",
                "must be at most 4294967295, got 4294967296");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {lr: 0}\n"), "train.lr",
                "must be greater than 0, got 0");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {lr: -1e-3}\n"), "train.lr",
                "must be greater than 0, got -0.001");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {lr: 1e999}\n"), "train.lr",
                "is too large for a number");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {momentum: 1}\n"), "train.momentum",
                "must be in [0, 1), got 1");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {weight_decay: -0.1}\n"), "train.weight_decay",
                "must be at least 0, got -0.1");
  ExpectInvalid(absl::StrCat(kMinimal, "checkpoint: {keep: 0}\n"), "checkpoint.keep",
                "must be at least 1, got 0");
  ExpectInvalid(absl::StrCat(kMinimal, "exchange: {rank: 65}\n"), "exchange.rank",
                "must be between 1 and 64, got 65");
  ExpectInvalid(absl::StrCat(kMinimal, "exchange: {topk_ratio: 0}\n"), "exchange.topk_ratio",
                "must be in (0, 1], got 0");
  ExpectInvalid(absl::StrCat(kMinimal, "exchange: {streams: 0}\n"), "exchange.streams",
                "must be between 1 and 64, got 0");
  ExpectInvalid(R"(
name: tiny
model: {arch: mlp}
pools:
  - {cloud: a, workers: 2}
  - {cloud: b, workers: 257}
)",
                "pools[1].workers", "must be between 1 and 256, got 257");
}

TEST(JobSpecTest, RejectsMissingRequiredField) {
  ExpectInvalid("model: {arch: mlp}\npools: [{cloud: a, workers: 1}]\n", "name",
                "required field is missing");
  ExpectInvalid("name: a\npools: [{cloud: a, workers: 1}]\n", "model.arch",
                "required field is missing");
  ExpectInvalid("name: a\nmodel: {arch: mlp}\n", "pools", "required field is missing");
  ExpectInvalid("name: a\nmodel: {arch: mlp}\npools: []\n", "pools", "must list at least one pool");
  ExpectInvalid("name: a\nmodel: {arch: mlp}\npools: [{cloud: a, workers: 1}, {workers: 1}]\n",
                "pools[1].cloud", "required field is missing");
  ExpectInvalid("name: a\nmodel: {arch: mlp}\npools: [{cloud: a}]\n", "pools[0].workers",
                "required field is missing");
  ExpectInvalid("", "name", "required field is missing");
}

TEST(JobSpecTest, RejectsYamlSyntaxErrorWithLineAndColumn) {
  absl::StatusOr<v1::JobSpec> spec = Parse("name: a\nmodel: {arch: mlp\npools: []\n");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(spec.status())) << spec.status();
  EXPECT_THAT(std::string(spec.status().message()), StartsWith("test.yaml: line "));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("YAML syntax error"));

  spec = Parse("name: a\ntrain: epochs: 1\n");
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()),
              HasSubstr("test.yaml: line 2, column 14: YAML syntax error: illegal map value"));
}

TEST(JobSpecTest, RejectsMoreThanOneDocument) {
  ExpectInvalid(absl::StrCat(kMinimal, "---\n", kMinimal), "(top level)",
                "expected one YAML document, got 2");
}

TEST(JobSpecTest, RejectsValueOutsideEnum) {
  ExpectInvalid("name: a\nmodel: {arch: resnet}\npools: [{cloud: a, workers: 1}]\n", "model.arch",
                "must be one of mlp, cnn; got \"resnet\"");
  ExpectInvalid(absl::StrCat(kMinimal, "exchange: {codec: zstd}\n"), "exchange.codec",
                "must be one of none, fp16, bf16, int8, topk, powersgd; got \"zstd\"");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {optimizer: SGD}\n"), "train.optimizer",
                "must be one of sgd, adam; got \"SGD\"");
  ExpectInvalid(absl::StrCat(kMinimal, "exchange: {mode: async}\n"), "exchange.mode",
                "must be one of sync, delayed; got \"async\"");
  ExpectInvalid(absl::StrCat(kMinimal, "train: {lr_schedule: step}\n"), "train.lr_schedule",
                "must be one of constant, cosine; got \"step\"");
  ExpectInvalid(absl::StrCat(kMinimal, "exchange: {factors: bf16}\n"), "exchange.factors",
                "must be one of fp32, fp16, int8; got \"bf16\"");
  ExpectInvalid(absl::StrCat(kMinimal, "placement: anywhere\n"), "placement",
                "must be one of explicit, any; got \"anywhere\"");
  ExpectInvalid(absl::StrCat(kMinimal, "data: {dataset: mnist}\n"), "data.dataset",
                "must be one of fashion-mnist; got \"mnist\"");
}

TEST(JobSpecTest, ChecksNames) {
  ExpectInvalid("name: My-Job\nmodel: {arch: mlp}\npools: [{cloud: a, workers: 1}]\n", "name",
                "must start with a lowercase letter or digit");
  ExpectInvalid("name: -job\nmodel: {arch: mlp}\npools: [{cloud: a, workers: 1}]\n", "name",
                "must start with a lowercase letter or digit");
  ExpectInvalid("name: a\nmodel: {arch: mlp}\npools: [{cloud: 'us east', workers: 1}]\n",
                "pools[0].cloud", "must start with a lowercase letter or digit");
  const std::string longest(63, 'a');
  EXPECT_TRUE(Parse(absl::StrCat("name: ", longest, "\nmodel: {arch: mlp}\n",
                                 "pools: [{cloud: a, workers: 1}]\n"))
                  .ok());
  ExpectInvalid(absl::StrCat("name: ", longest, "b\nmodel: {arch: mlp}\n",
                             "pools: [{cloud: a, workers: 1}]\n"),
                "name", "must be at most 63 characters, got 64");
}

TEST(JobSpecTest, RejectsDuplicateCloud) {
  ExpectInvalid(R"(
name: tiny
model: {arch: mlp}
pools:
  - {cloud: a, workers: 1}
  - {cloud: b, workers: 1}
  - {cloud: a, workers: 1}
)",
                "pools[2].cloud", "duplicate cloud \"a\", already used by pools[0]");
}

TEST(JobSpecTest, RejectsMoreWorkersThanGlobalBatch) {
  ExpectInvalid(R"(
name: tiny
model: {arch: mlp}
train: {global_batch: 4}
pools:
  - {cloud: a, workers: 3}
  - {cloud: b, workers: 2}
)",
                "train.global_batch", "must be at least the total number of workers (5), got 4");
}

TEST(JobSpecTest, LoadReportsMissingFile) {
  const std::string path = "/nonexistent/tandem/job.yaml";
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(path);
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::IsNotFound(spec.status())) << spec.status();
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr(path));
}

TEST(JobSpecTest, LoadRejectsDirectory) {
  // A directory opens like a file and fails only on read.
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(ExamplePath(""));
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::IsNotFound(spec.status())) << spec.status();
}

TEST(JobSpecTest, ValidateChecksABuiltSpec) {
  absl::StatusOr<v1::JobSpec> parsed = Parse(kMinimal);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(ValidateJobSpec(*parsed).ok());

  v1::JobSpec spec = *parsed;
  spec.mutable_exchange()->set_codec(v1::CODEC_KIND_UNSPECIFIED);
  absl::Status status = ValidateJobSpec(spec);
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("exchange.codec: must be one of none, fp16, bf16, int8, topk, powersgd; "
                        "got unspecified"));

  spec = *parsed;
  spec.clear_pools();
  status = ValidateJobSpec(spec);
  EXPECT_THAT(std::string(status.message()), HasSubstr("pools: must list at least one pool"));

  spec = *parsed;
  spec.mutable_train()->set_lr(std::nan(""));
  status = ValidateJobSpec(spec);
  EXPECT_THAT(std::string(status.message()), HasSubstr("train.lr: must be greater than 0"));
}

TEST(JobSpecTest, NamesEnumValuesAsYamlSpellsThem) {
  EXPECT_EQ(ModelArchName(v1::MODEL_ARCH_MLP), "mlp");
  EXPECT_EQ(ModelArchName(v1::MODEL_ARCH_CNN), "cnn");
  EXPECT_EQ(ModelArchName(v1::MODEL_ARCH_UNSPECIFIED), "unspecified");
  EXPECT_EQ(OptimizerName(v1::OPTIMIZER_KIND_SGD), "sgd");
  EXPECT_EQ(OptimizerName(v1::OPTIMIZER_KIND_ADAM), "adam");
  EXPECT_EQ(CodecName(v1::CODEC_KIND_NONE), "none");
  EXPECT_EQ(CodecName(v1::CODEC_KIND_FP16), "fp16");
  EXPECT_EQ(CodecName(v1::CODEC_KIND_BF16), "bf16");
  EXPECT_EQ(CodecName(v1::CODEC_KIND_INT8), "int8");
  EXPECT_EQ(CodecName(v1::CODEC_KIND_TOPK), "topk");
  EXPECT_EQ(CodecName(v1::CODEC_KIND_POWERSGD), "powersgd");
}

// Every name ParseJobSpec accepts comes back from the *Name function, so the
// CLI can print a spec in the spelling a user writes.
TEST(JobSpecTest, EnumNamesRoundTrip) {
  for (const char* codec : {"none", "fp16", "bf16", "int8", "topk", "powersgd"}) {
    absl::StatusOr<v1::JobSpec> spec =
        Parse(absl::StrCat(kMinimal, "exchange: {codec: ", codec, "}\n"));
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(CodecName(spec->exchange().codec()), codec);
  }
}

}  // namespace
}  // namespace tandem
