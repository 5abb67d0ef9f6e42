// The story `make demo` tells, as a test CI can afford: `tandem up` with an
// emulated WAN between two clouds, a job submitted with the CLI, cloud-a cut
// off halfway (its agent, mpirun and workers frozen with SIGSTOP, so its lease
// expires as if the cloud vanished), the job going on with cloud-b alone,
// cloud-a thawed and rejoining, and the job succeeding. Asserts what the demo
// shows: the state transitions with their reasons, exactly-once data, an
// accuracy floor and the compression of the bytes between the clouds.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tests/support/background_tandem.h"
#include "tests/support/run_tandem.h"
#include "tests/support/sample_log.h"

namespace tandem {
namespace {

using testing::BackgroundTandem;
using testing::RunResult;
using testing::RunTandem;
using testing::TempDir;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kSteps = 300;
constexpr uint32_t kBatch = 32;
constexpr uint64_t kSeed = 5;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class TwoCloudsStory : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.Join("samples"));
    up_ = std::make_unique<BackgroundTandem>(
        std::vector<std::string>{"up", "--home", dir_.Join("home"), "--insecure", "--port", "0",
                                 "--wan-port", "0", "--wan-delay", "5", "--wan-rate", "100",
                                 "--slots", "1", "--sample-log", dir_.Join("samples")},
        dir_.Join("up.log"));
    WaitFor("tandem up to be ready", std::chrono::seconds(120), [&] {
      EXPECT_FALSE(up_->Wait(std::chrono::milliseconds(0)).has_value()) << up_->Log();
      return std::filesystem::exists(dir_.Join("home/coordinator"));
    });
    std::smatch match;
    const std::string log = up_->Log();
    ASSERT_TRUE(std::regex_search(log, match, std::regex("agent cloud-a +pid ([0-9]+)"))) << log;
    agent_a_ = std::stoi(match[1]);
  }

  // cloud-a's agent and everything it started (mpirun puts each rank in a
  // process group of its own).
  void SignalCloudA(int signal) {
    for (pid_t pid : testing::ProcessTree(agent_a_)) kill(pid, signal);
  }

  void TearDown() override {
    SignalCloudA(SIGCONT);
    up_->SignalGroup(SIGINT);
    EXPECT_EQ(up_->Wait(std::chrono::seconds(60)), std::optional<int>(0)) << up_->Log();
  }

  RunResult Tandem(std::vector<std::string> args) {
    args.insert(args.end(), {"--coordinator", ReadFile(dir_.Join("home/coordinator")),
                             "--insecure"});
    while (!args.empty() && args.back().back() == '\n') args.back().pop_back();
    return RunTandem(args);
  }

  Json Status(const std::string& job) {
    RunResult run = Tandem({"status", job, "--output", "json"});
    Json j = Json::parse(run.LastLine(), nullptr, false);
    return j.is_object() ? j : Json::object();
  }

  // Polls `done` (CLI calls against the coordinator) until it holds.
  void WaitFor(const std::string& what, std::chrono::seconds deadline,
               const std::function<bool()>& done) {
    const Clock::time_point end = Clock::now() + deadline;
    while (!done()) {
      if (Clock::now() > end) {
        ADD_FAILURE() << "timed out waiting for " << what << "\n" << Logs();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }

  std::string Logs() {
    std::string all = "--- up\n" + up_->Log();
    for (const char* name : {"coordinator", "agent-cloud-a", "agent-cloud-b"}) {
      all += absl::StrFormat("--- %s\n%s", name,
                             ReadFile(dir_.Join(absl::StrFormat("home/logs/%s.log", name))));
    }
    return all;
  }

  TempDir dir_;
  std::unique_ptr<BackgroundTandem> up_;
  pid_t agent_a_ = 0;
};

bool HasReason(const Json& status, const std::string& to, const std::string& text) {
  for (const Json& e : status.value("events", Json::array())) {
    if ((to.empty() || e.value("to", "") == to) &&
        e.value("reason", "").find(text) != std::string::npos) {
      return true;
    }
  }
  return false;
}

std::vector<std::string> Reasons(const Json& status, const std::string& to) {
  std::vector<std::string> reasons;
  for (const Json& e : status.value("events", Json::array())) {
    if (e.value("to", "") == to) reasons.push_back(e.value("reason", ""));
  }
  return reasons;
}

TEST_F(TwoCloudsStory, CloudALostHalfwayTheJobGoesOnOnCloudBAndCloudARejoins) {
  const std::string spec = dir_.Write("story.yaml", absl::StrFormat(R"(name: story
model: {arch: cnn}
train: {epochs: 1, max_steps: %d, global_batch: %d, optimizer: sgd, lr: 0.05, momentum: 0.9,
        seed: %d, eval_every_steps: 100}
checkpoint: {every_steps: 50, keep: 2}
exchange: {codec: powersgd, rank: 4, digest_every_steps: 10}
pools:
  - {cloud: cloud-a, workers: 1}
  - {cloud: cloud-b, workers: 1}
)",
                                                                    kSteps, kBatch, kSeed));
  RunResult submit = Tandem({"submit", spec, "--output", "json"});
  ASSERT_EQ(submit.exit_code, 0) << submit.err;
  const std::string job = Json::parse(submit.LastLine()).value("job", "");
  ASSERT_FALSE(job.empty()) << submit.out;

  WaitFor("step 100", std::chrono::minutes(5), [&] { return Status(job).value("step", uint64_t{0}) >= 100; });
  ASSERT_GE(testing::ProcessTree(agent_a_).size(), 3u) << "the agent, mpirun and a worker";
  SignalCloudA(SIGSTOP);  // cloud-a vanishes
  WaitFor("recovery on cloud-b", std::chrono::minutes(2), [&] {
    const Json s = Status(job);
    return s.value("state", "") == "RUNNING" && s.value("last_recover_s", 0.0) > 0;
  });
  const uint64_t recovered_at = Status(job).value("step", uint64_t{0});
  WaitFor("30 steps on cloud-b alone", std::chrono::minutes(2),
          [&] { return Status(job).value("step", uint64_t{0}) >= recovered_at + 30; });
  SignalCloudA(SIGCONT);  // cloud-a is back
  WaitFor("cloud-a rejoining", std::chrono::minutes(3), [&] {
    const Json s = Status(job);
    return HasReason(s, "", "rejoins") || s.value("state", "") == "SUCCEEDED";
  });
  WaitFor("the end", std::chrono::minutes(5), [&] {
    const std::string state = Status(job).value("state", "");
    return state == "SUCCEEDED" || state == "FAILED";
  });

  const Json done = Status(job);
  ASSERT_EQ(done.value("state", ""), "SUCCEEDED") << done.dump(2) << Logs();
  EXPECT_EQ(done.value("step", uint64_t{0}), kSteps);
  EXPECT_TRUE(HasReason(done, "RECOVERING", "cloud-a lost")) << done.dump(2);
  // Exactly the loss the test caused: no healthy cloud was dropped at an
  // evaluation, a checkpoint or anywhere else.
  const std::vector<std::string> losses = Reasons(done, "RECOVERING");
  EXPECT_EQ(losses.size(), 1u) << absl::StrJoin(losses, "\n") << "\n" << done.dump(2);
  EXPECT_TRUE(HasReason(done, "RUNNING", "recovered")) << done.dump(2);
  EXPECT_TRUE(HasReason(done, "", "rejoins")) << done.dump(2);
  EXPECT_EQ(done.value("restarts", -1), 0) << "the survivors restarted instead of going on";
  EXPECT_LT(done.value("last_recover_s", 1e9), 30.0) << done.dump(2);
  EXPECT_GT(done.value("test_accuracy", 0.0), 0.75) << done.dump(2);
  EXPECT_GT(done.value("compression_ratio", 0.0), 10.0) << done.dump(2);
  EXPECT_TRUE(testing::EverySampleOnce(dir_.Join("samples"), kSteps, kBatch, kSeed));
}

}  // namespace
}  // namespace tandem
