#include "checkpoint/async_saver.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <iterator>
#include <string>
#include <vector>

#include "checkpoint/digest.h"

namespace tandem {
namespace {

class AsyncSaverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/tandem-async-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    auto store = CheckpointStore::Open(dir_ + "/store");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  static v1::CheckpointManifest Manifest(const std::string& job, uint64_t step) {
    v1::CheckpointManifest m;
    m.set_job(job);
    m.set_step(step);
    return m;
  }
  // A one-tensor state whose bytes live in `buffer`.
  static std::vector<TensorView> State(std::string& buffer, char fill, size_t bytes) {
    buffer.assign(bytes, fill);
    return {{"model.w", v1::DTYPE_UINT8, {static_cast<int64_t>(bytes)}, buffer.data(), bytes}};
  }

  std::string dir_;
  std::unique_ptr<CheckpointStore> store_;
};

TEST_F(AsyncSaverTest, SavesInOrderAndReportsEach) {
  AsyncSaver saver(store_.get());
  std::string state;
  saver.Submit(Manifest("job", 10), State(state, 'a', 1 << 20), 0);
  state.assign(1 << 20, 'x');  // the caller's state moves on: the save holds a copy
  saver.Submit(Manifest("job", 20), State(state, 'b', 1 << 20), 0);
  state.assign(1 << 20, 'y');
  saver.Wait();
  std::vector<AsyncSaver::Finished> finished = saver.TakeFinished();
  ASSERT_EQ(finished.size(), 2u);
  EXPECT_EQ(finished[0].step, 10u);
  EXPECT_EQ(finished[1].step, 20u);
  ASSERT_TRUE(finished[1].manifest.ok()) << finished[1].manifest.status();
  EXPECT_GE(finished[1].save_seconds, 0);
  EXPECT_TRUE(saver.TakeFinished().empty());
  auto latest = store_->Load("job");
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->manifest.step(), 20u);
  EXPECT_EQ(latest->tensors[0].bytes, std::string(1 << 20, 'b'));
  EXPECT_EQ(latest->manifest.state_digest(), finished[1].manifest->state_digest());
}

// Submit splits its copy by bytes over threads; every tensor arrives whole,
// whichever thread copied which part of it.
TEST_F(AsyncSaverTest, CopiesEveryByteOfTensorsOfOddSizes) {
  const size_t sizes[] = {1, (3 << 20) + 7, 0, 4095, (1 << 20) + 1};
  std::vector<std::string> buffers;
  std::vector<TensorView> views;
  for (size_t i = 0; i < std::size(sizes); ++i) {
    std::string& b = buffers.emplace_back(sizes[i], '\0');
    for (size_t k = 0; k < b.size(); ++k) b[k] = static_cast<char>(k * 31 + i);
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    views.push_back({"t" + std::to_string(i),
                     v1::DTYPE_UINT8,
                     {static_cast<int64_t>(sizes[i])},
                     buffers[i].data(),
                     sizes[i]});
  }
  const std::vector<std::string> want = buffers;
  AsyncSaver saver(store_.get());
  saver.Submit(Manifest("job", 1), views, 0);
  for (std::string& b : buffers) b.assign(b.size(), 'z');
  saver.Wait();
  auto latest = store_->Load("job");
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_EQ(latest->tensors.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(latest->tensors[i].bytes == want[i]) << "tensor " << i;
  }
}

// Begin leaves the copy to the saver; once WaitCopied returns, the caller's
// state may change and the checkpoint still holds the state given to Begin.
// (Were WaitCopied to return before the copy ends, the overwrite right after
// it would land in the 64 MiB being copied.)
TEST_F(AsyncSaverTest, BeginCopiesOnTheSaverAndWaitCopiedEndsTheCopy) {
  AsyncSaver saver(store_.get());
  std::string state;
  saver.Begin(Manifest("job", 1), State(state, 'a', 64 << 20), 0);
  saver.WaitCopied();
  state.assign(state.size(), 'x');
  saver.Begin(Manifest("job", 2), State(state, 'b', 64 << 20), 0);
  saver.WaitCopied();
  state.assign(state.size(), 'y');
  saver.WaitCopied();  // nothing in copy: returns at once
  saver.Wait();
  std::vector<AsyncSaver::Finished> finished = saver.TakeFinished();
  ASSERT_EQ(finished.size(), 2u);
  for (const AsyncSaver::Finished& f : finished) {
    ASSERT_TRUE(f.manifest.ok()) << f.manifest.status();
  }
  auto first = store_->Load("job", 1);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->tensors[0].bytes == std::string(64 << 20, 'a'));
  auto second = store_->Load("job", 2);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->tensors[0].bytes == std::string(64 << 20, 'b'));
}

TEST_F(AsyncSaverTest, FailedSaveIsReportedAndLaterSavesGoOn) {
  AsyncSaver saver(store_.get());
  std::string state;
  saver.Submit(Manifest("job", 1), State(state, 'a', 100), 0);
  saver.Submit(Manifest("bad/job", 2), State(state, 'b', 100), 0);  // no '/' in a job name
  saver.Submit(Manifest("job", 3), State(state, 'c', 100), 0);
  saver.Wait();
  std::vector<AsyncSaver::Finished> finished = saver.TakeFinished();
  ASSERT_EQ(finished.size(), 3u);
  EXPECT_TRUE(finished[0].manifest.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(finished[1].manifest.status()))
      << finished[1].manifest.status();
  EXPECT_TRUE(finished[2].manifest.ok());
  auto latest = store_->LatestStep("job");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, 3u);
}

TEST_F(AsyncSaverTest, DestructorFinishesTheSaveInFlight) {
  {
    AsyncSaver saver(store_.get());
    std::string state;
    saver.Submit(Manifest("job", 7), State(state, 'z', 3 << 20), 0);
  }
  auto loaded = store_->Load("job");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->manifest.step(), 7u);
  EXPECT_EQ(loaded->tensors[0].bytes, std::string(3 << 20, 'z'));
}

}  // namespace
}  // namespace tandem
