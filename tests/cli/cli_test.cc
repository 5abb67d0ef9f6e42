// The command line contract: help that tells the truth, exit code 2 and a
// clear message for bad flags, bad values and malformed specs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/support/run_tandem.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;
using testing::RunResult;
using testing::RunTandem;
using testing::TempDir;

TEST(CliTest, TopLevelHelpListsTheCommands) {
  RunResult run = RunTandem({"--help"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_THAT(run.out, HasSubstr("train SPEC"));
  EXPECT_THAT(run.out, HasSubstr("checkpoints"));
}

TEST(CliTest, NoCommandIsAUsageError) {
  RunResult run = RunTandem({});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("Usage: tandem COMMAND"));
}

TEST(CliTest, UnknownCommandIsAUsageError) {
  RunResult run = RunTandem({"trian"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("unknown command 'trian'"));
}

TEST(CliTest, EachCommandHasHelp) {
  for (const std::string command : {"train", "checkpoints"}) {
    RunResult run = RunTandem({command, "--help"});
    EXPECT_EQ(run.exit_code, 0) << command;
    EXPECT_THAT(run.out, HasSubstr("Usage: tandem " + command)) << command;
    EXPECT_THAT(run.out, HasSubstr("--store")) << command;
    EXPECT_THAT(run.out, HasSubstr("--output")) << command;
  }
  RunResult train = RunTandem({"train", "--help"});
  EXPECT_THAT(train.out, HasSubstr("--resume"));
  EXPECT_THAT(train.out, HasSubstr("--max-steps"));
}

TEST(CliTest, UnknownFlagIsAUsageError) {
  RunResult run = RunTandem({"train", "examples/fashion-mnist-cnn.yaml", "--epochz", "3"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("--epochz"));
}

TEST(CliTest, BadFlagValueIsAUsageError) {
  RunResult steps = RunTandem({"train", "x.yaml", "--max-steps", "many"});
  EXPECT_EQ(steps.exit_code, 2);
  EXPECT_THAT(steps.err, HasSubstr("max-steps"));
  RunResult output = RunTandem({"train", "x.yaml", "--output", "xml"});
  EXPECT_EQ(output.exit_code, 2);
  EXPECT_THAT(output.err, HasSubstr("--output must be text or json"));
  RunResult list = RunTandem({"checkpoints", "--output", "yaml"});
  EXPECT_EQ(list.exit_code, 2);
}

TEST(CliTest, MissingSpecIsAUsageError) {
  RunResult run = RunTandem({"train"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("missing SPEC"));
}

TEST(CliTest, MalformedSpecNamesTheFieldAndExitsTwo) {
  TempDir dir;
  const std::string spec = dir.Write("bad.yaml", R"(name: bad
model:
  arch: cnn
train:
  lr: -1
pools:
  - cloud: local
    workers: 2
)");
  RunResult run = RunTandem({"train", spec, "--store", dir.Join("s")});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("train.lr"));
}

TEST(CliTest, SpecFileThatDoesNotExist) {
  TempDir dir;
  RunResult run = RunTandem({"train", dir.Join("nope.yaml")});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr(dir.Join("nope.yaml")));
}

TEST(CliTest, CheckpointsOfAStoreThatDoesNotExist) {
  TempDir dir;
  RunResult run = RunTandem({"checkpoints", "--store", dir.Join("none")});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.err, HasSubstr(dir.Join("none")));
}

}  // namespace
}  // namespace tandem
