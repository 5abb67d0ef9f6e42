// Crash safety of CheckpointStore::Save: a store holding checkpoints A0 and A
// saves B (which, through retention, also drops A0). A fault is injected at
// every file operation of opening the store, saving B and closing it in turn
// (an I/O error, a full disk, a short write, a power loss), or the process is
// killed there. Reopened without faults, the store must hold either {A0, A}
// or {A, B}, with `latest` at the newer one, every chunk intact and the bytes
// exactly those saved; and B whenever Save had returned OK. Save writes B's
// chunks (flushed and synced) before it commits B, so a crash in between
// leaves chunks no manifest references; the reopening drops them, and after
// it no such chunk is left.
#include <errno.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/digest.h"
#include "tests/checkpoint/fault_injection_fs.h"
#include "tests/support/byte_tensors.h"

namespace tandem {
namespace {

using testing::Owned;
using testing::Pattern;
using testing::Views;

namespace fs = std::filesystem;

constexpr char kJob[] = "job";
constexpr uint64_t kStepA0 = 10;
constexpr uint64_t kStepA = 20;
constexpr uint64_t kStepB = 30;
constexpr uint32_t kKeep = 2;
constexpr size_t kChunkBytes = 64 << 10;  // = the store's min blob size: chunks go to blob files
// How long a forked child may take to reach its operation; generous, as the
// machine may be busy, and only a broken test ever waits this long.
constexpr std::chrono::seconds kChildDeadline(60);

// "frozen" (2 chunks) is shared by every checkpoint, so B's save skips those
// chunks and retention must keep them; "w" (4 chunks, the last one short and
// small enough to stay out of blob files) and "b" are new at every step.
std::vector<Owned> TensorsAt(uint64_t step) {
  const uint32_t seed = static_cast<uint32_t>(step);
  return {{"frozen", Pattern(2 * kChunkBytes, 1)},
          {"w", Pattern(3 * kChunkBytes + 100, seed)},
          {"b", Pattern(100, 1000 + seed)}};
}

v1::CheckpointManifest Header(uint64_t step) {
  v1::CheckpointManifest m;
  m.set_job(kJob);
  m.set_step(step);
  m.set_global_cursor(step * 64);
  return m;
}

CheckpointStoreOptions StoreOptions(std::shared_ptr<rocksdb::Env> env = nullptr) {
  CheckpointStoreOptions options;
  options.chunk_bytes = kChunkBytes;
  options.env = std::move(env);
  return options;
}

absl::StatusOr<v1::CheckpointManifest> SaveStep(CheckpointStore& store, uint64_t step) {
  const std::vector<Owned> tensors = TensorsAt(step);
  return store.Save(Header(step), Views(tensors), kKeep);
}

// Op counts at the end of each phase of opening the store, saving B, closing.
struct Phases {
  uint64_t open = 0;
  uint64_t save = 0;
  uint64_t close = 0;
  std::vector<FileOp> log;

  const char* PhaseOf(uint64_t n) const {
    return n <= open ? "open" : n <= save ? "save" : "close";
  }
  std::string Describe(uint64_t n) const {
    const FileOp& op = log.at(n - 1);
    return absl::StrCat("op ", n, " of ", close, " (", PhaseOf(n), "): ", FileOpKindName(op.kind),
                        " ", fs::path(op.path).filename().string());
  }
};

class CrashSafetyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char name[] = "/tmp/tandem_crash_safety_test_XXXXXX";
    ASSERT_NE(mkdtemp(name), nullptr) << std::strerror(errno);
    root_ = name;
    base_ = root_ + "/base";
    dir_ = root_ + "/store";
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
        CheckpointStore::Open(base_, StoreOptions(QuickEnv()));
    ASSERT_TRUE(store.ok()) << store.status();
    for (uint64_t step : {kStepA0, kStepA}) {
      absl::StatusOr<v1::CheckpointManifest> saved = SaveStep(**store, step);
      ASSERT_TRUE(saved.ok()) << saved.status();
    }
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // No faults, and no real fsyncs: what is synced is modelled, not measured.
  static std::shared_ptr<rocksdb::Env> QuickEnv() {
    return NewFaultInjectionEnv(std::make_shared<FaultInjectionFs>(/*skip_real_syncs=*/true));
  }

  // dir_ becomes a fresh copy of the store holding A0 and A.
  void ResetStore() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    ASSERT_FALSE(ec) << ec.message();
    fs::copy(base_, dir_, fs::copy_options::recursive, ec);
    ASSERT_FALSE(ec) << ec.message();
  }

  // Opens a copy of the base store through `fs`, saves B, closes; counts the
  // file operations of each phase.
  Phases CountOps(const std::shared_ptr<FaultInjectionFs>& fs, bool print_ops = false) {
    Phases phases;
    ResetStore();
    fs->Reset();
    {
      absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
          CheckpointStore::Open(dir_, StoreOptions(NewFaultInjectionEnv(fs)));
      EXPECT_TRUE(store.ok()) << store.status();
      if (!store.ok()) return phases;
      phases.open = fs->ops();
      absl::StatusOr<v1::CheckpointManifest> saved = SaveStep(**store, kStepB);
      EXPECT_TRUE(saved.ok()) << saved.status();
      phases.save = fs->ops();
    }
    phases.close = fs->ops();
    phases.log = fs->log();
    EXPECT_GT(phases.save, phases.open) << "Save did no file operation";
    std::string ops;
    for (uint64_t n = 1; n <= phases.close; ++n) absl::StrAppend(&ops, "\n  ", phases.Describe(n));
    RecordProperty("file_operations", static_cast<int>(phases.close));
    std::cout << "open+save+close of the store: " << phases.open << "+" << phases.save - phases.open
              << "+" << phases.close - phases.save << " file operations"
              << (print_ops ? ":" + ops : "") << "\n";
    return phases;
  }

  // Reopens dir_ without faults and checks it holds {A0, A} or {A, B}, intact
  // and byte for byte as saved; {A, B} if `saved_b`.
  void ExpectIntact(bool saved_b) {
    absl::StatusOr<std::unique_ptr<CheckpointStore>> opened =
        CheckpointStore::Open(dir_, StoreOptions(QuickEnv()));
    ASSERT_TRUE(opened.ok()) << opened.status();
    CheckpointStore& store = **opened;
    absl::StatusOr<uint64_t> latest = store.LatestStep(kJob);
    ASSERT_TRUE(latest.ok()) << latest.status();
    ASSERT_TRUE(*latest == kStepA || *latest == kStepB) << "latest is step " << *latest;
    if (saved_b) {
      EXPECT_EQ(*latest, kStepB) << "Save of B returned OK, yet B is not latest";
    }
    const std::vector<uint64_t> expected = *latest == kStepB
                                               ? std::vector<uint64_t>{kStepA, kStepB}
                                               : std::vector<uint64_t>{kStepA0, kStepA};

    absl::Status verified = store.Verify(kJob, *latest);
    EXPECT_TRUE(verified.ok()) << verified;
    absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = store.List(kJob);
    ASSERT_TRUE(infos.ok()) << infos.status();
    std::vector<uint64_t> steps;
    for (const v1::CheckpointInfo& info : *infos) steps.push_back(info.step());
    EXPECT_EQ(steps, expected);

    std::set<std::string> chunks;
    for (uint64_t step : expected) {
      SCOPED_TRACE(absl::StrCat("step ", step));
      EXPECT_TRUE(store.Verify(kJob, step).ok());
      absl::StatusOr<Checkpoint> loaded = store.Load(kJob, step);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      const std::vector<Owned> want = TensorsAt(step);
      ASSERT_EQ(loaded->tensors.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(loaded->tensors[i].name, want[i].name);
        EXPECT_TRUE(loaded->tensors[i].bytes == want[i].bytes) << want[i].name << " differs";
      }
      EXPECT_EQ(loaded->manifest.state_digest(), StateDigest(Views(want)));
      EXPECT_EQ(loaded->manifest.global_cursor(), step * 64);
      for (const v1::TensorRecord& t : loaded->manifest.tensors()) {
        for (const v1::ChunkRef& c : t.chunks()) chunks.insert(c.sha256());
      }
    }
    // Nothing half-saved or half-collected is left behind once the store has
    // been opened for writing, which drops the chunks of a save cut short.
    absl::StatusOr<uint64_t> stored_chunks = store.CountChunks();
    ASSERT_TRUE(stored_chunks.ok()) << stored_chunks.status();
    EXPECT_EQ(*stored_chunks, chunks.size());
  }

  // Injects `fault` at each file operation of open+save+close whose kind
  // `applies`, then checks the store as reopened without faults.
  void InjectAtEveryOperation(Fault fault, const std::function<bool(FileOpKind)>& applies,
                              const std::function<bool(const absl::Status&)>& expected_error) {
    auto fs = std::make_shared<FaultInjectionFs>(/*skip_real_syncs=*/true);
    const Phases phases = CountOps(fs, /*print_ops=*/fault == Fault::kIOError);
    ASSERT_FALSE(HasFailure());
    int exercised = 0;
    int open_failed = 0;
    int save_failed = 0;
    for (uint64_t n = 1; n <= phases.close; ++n) {
      if (!applies(phases.log[n - 1].kind)) continue;
      SCOPED_TRACE(absl::StrCat(FaultName(fault), " at ", phases.Describe(n)));
      ResetStore();
      fs->InjectAt(n, fault);
      bool saved_b = false;
      {
        absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
            CheckpointStore::Open(dir_, StoreOptions(NewFaultInjectionEnv(fs)));
        if (!store.ok()) {
          ++open_failed;
          EXPECT_LE(n, phases.open) << "Open failed after its own operations: " << store.status();
          EXPECT_TRUE(expected_error(store.status())) << store.status();
        } else {
          absl::StatusOr<v1::CheckpointManifest> saved = SaveStep(**store, kStepB);
          saved_b = saved.ok();
          if (!saved.ok()) {
            ++save_failed;
            EXPECT_TRUE(expected_error(saved.status())) << saved.status();
            EXPECT_THAT(std::string(saved.status().message()),
                        ::testing::HasSubstr("committing checkpoint of job job step 30"));
          }
          if (n > phases.open && n <= phases.save) {
            EXPECT_FALSE(saved.ok()) << "a fault in Save's own operations went unreported";
          } else if (n > phases.save) {
            EXPECT_TRUE(saved.ok()) << saved.status();
          }
        }
      }
      EXPECT_TRUE(fs->fired());
      if (fault == Fault::kPowerLoss) {
        rocksdb::IOStatus dropped = fs->DropUnsyncedData();
        ASSERT_TRUE(dropped.ok()) << dropped.ToString();
      }
      fs->Reset();
      ExpectIntact(saved_b);
      if (HasFailure()) return;  // one failure says it; the rest would repeat it
      ++exercised;
    }
    RecordProperty("injection_points", exercised);
    std::cout << FaultName(fault) << ": " << exercised << " injection points; Open failed at "
              << open_failed << ", Save failed at " << save_failed << "\n";
    EXPECT_GT(exercised, 0);
  }

  std::string root_;
  std::string base_;
  std::string dir_;
};

bool AnyKind(FileOpKind) { return true; }
bool IsInternal(const absl::Status& s) { return absl::IsInternal(s); }

TEST_F(CrashSafetyTest, IOErrorAtEveryFileOperation) {
  InjectAtEveryOperation(Fault::kIOError, AnyKind, IsInternal);
}

TEST_F(CrashSafetyTest, NoSpaceAtEveryWrite) {
  InjectAtEveryOperation(
      Fault::kNoSpace,
      [](FileOpKind kind) {
        return kind == FileOpKind::kCreate || kind == FileOpKind::kAppend ||
               kind == FileOpKind::kSync || kind == FileOpKind::kClose;
      },
      [](const absl::Status& s) {
        return absl::IsResourceExhausted(s) &&
               std::string(s.message()).find("the disk is full") != std::string::npos;
      });
}

TEST_F(CrashSafetyTest, ShortWriteAtEveryAppend) {
  InjectAtEveryOperation(
      Fault::kShortWrite, [](FileOpKind kind) { return kind == FileOpKind::kAppend; }, IsInternal);
}

TEST_F(CrashSafetyTest, PowerLossAtEveryFileOperation) {
  InjectAtEveryOperation(Fault::kPowerLoss, AnyKind, IsInternal);
}

// After a failed commit RocksDB's WAL writer must not be written again (7.8
// asserts after ENOSPC); the store refuses until reopened, and reads go on.
TEST_F(CrashSafetyTest, AfterAFailedCommitSavesFailUntilReopened) {
  auto fs = std::make_shared<FaultInjectionFs>(/*skip_real_syncs=*/true);
  const Phases phases = CountOps(fs);
  ASSERT_FALSE(HasFailure());
  int exercised = 0;
  for (Fault fault : {Fault::kIOError, Fault::kNoSpace, Fault::kShortWrite}) {
    for (uint64_t n = phases.open + 1; n <= phases.save; ++n) {
      if (fault == Fault::kShortWrite && phases.log[n - 1].kind != FileOpKind::kAppend) continue;
      SCOPED_TRACE(absl::StrCat(FaultName(fault), " at ", phases.Describe(n)));
      ResetStore();
      fs->InjectAt(n, fault);
      {
        absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
            CheckpointStore::Open(dir_, StoreOptions(NewFaultInjectionEnv(fs)));
        ASSERT_TRUE(store.ok()) << store.status();
        absl::Status failed = SaveStep(**store, kStepB).status();
        ASSERT_FALSE(failed.ok());
        EXPECT_EQ(absl::IsResourceExhausted(failed), fault == Fault::kNoSpace) << failed;
        absl::Status again = SaveStep(**store, kStepB).status();
        EXPECT_TRUE(absl::IsFailedPrecondition(again)) << again;
        EXPECT_THAT(std::string(again.message()),
                    ::testing::HasSubstr("takes no more writes after one failed"));
        EXPECT_THAT(std::string(again.message()), ::testing::HasSubstr(failed.message()));
        absl::StatusOr<Checkpoint> loaded = (*store)->Load(kJob);
        ASSERT_TRUE(loaded.ok()) << loaded.status();
        EXPECT_EQ(loaded->manifest.step(), kStepA);
      }
      fs->Reset();
      {
        absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
            CheckpointStore::Open(dir_, StoreOptions(QuickEnv()));
        ASSERT_TRUE(store.ok()) << store.status();
        absl::Status saved = SaveStep(**store, kStepB).status();
        EXPECT_TRUE(saved.ok()) << saved;
      }
      ExpectIntact(/*saved_b=*/true);
      if (HasFailure()) return;
      ++exercised;
    }
  }
  RecordProperty("injection_points", exercised);
  EXPECT_GE(exercised, 3);
}

// The distinct chunk keys of `tensors` as Save cuts them.
std::set<std::string> ChunkKeys(const std::vector<Owned>& tensors) {
  std::set<std::string> keys;
  for (const Owned& t : tensors) {
    for (size_t offset = 0; offset < t.bytes.size(); offset += kChunkBytes) {
      const Hash256 digest =
          Blake3Of(t.bytes.data() + offset, std::min(kChunkBytes, t.bytes.size() - offset));
      keys.emplace(reinterpret_cast<const char*>(digest.data()), digest.size());
    }
  }
  return keys;
}

// Power fails just before the commit of B: B's chunks are on disk, its
// manifest is not. A read-only Open (which writes nothing) still finds them;
// the next writable Open drops them, and only them.
TEST_F(CrashSafetyTest, ChunksOfASaveCutShortAreDroppedAtTheNextOpen) {
  auto fs = std::make_shared<FaultInjectionFs>(/*skip_real_syncs=*/true);
  const Phases phases = CountOps(fs);
  ASSERT_FALSE(HasFailure());
  uint64_t commit = 0;  // the last append to the WAL in Save
  for (uint64_t n = phases.open + 1; n <= phases.save; ++n) {
    const FileOp& op = phases.log[n - 1];
    if (op.kind == FileOpKind::kAppend && fs::path(op.path).extension() == ".log") commit = n;
  }
  ASSERT_GT(commit, 0u) << "Save wrote nothing to the WAL";
  ResetStore();
  fs->InjectAt(commit, Fault::kPowerLoss);
  {
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
        CheckpointStore::Open(dir_, StoreOptions(NewFaultInjectionEnv(fs)));
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_FALSE(SaveStep(**store, kStepB).ok());
  }
  ASSERT_TRUE(fs->fired());
  ASSERT_TRUE(fs->DropUnsyncedData().ok());
  fs->Reset();

  std::set<std::string> kept = ChunkKeys(TensorsAt(kStepA0));
  for (const std::string& key : ChunkKeys(TensorsAt(kStepA))) kept.insert(key);
  size_t orphans = 0;
  for (const std::string& key : ChunkKeys(TensorsAt(kStepB))) orphans += kept.count(key) == 0;
  ASSERT_GT(orphans, 0u);
  {
    CheckpointStoreOptions read_only = StoreOptions(QuickEnv());
    read_only.read_only = true;
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_, read_only);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->LatestStep(kJob).value_or(0), kStepA);
    EXPECT_EQ((*store)->CountChunks().value_or(0), kept.size() + orphans);
  }
  ExpectIntact(/*saved_b=*/false);  // counts the chunks after a writable Open
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
      CheckpointStore::Open(dir_, StoreOptions(QuickEnv()));
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->LatestStep(kJob).value_or(0), kStepA);
  EXPECT_EQ((*store)->CountChunks().value_or(0), kept.size());
  // With the orphans gone, B saves as if nothing had happened.
  EXPECT_TRUE(SaveStep(**store, kStepB).ok());
}

// What a forked child reports on its pipe.
constexpr char kFrozen = 'f';  // stopped before the operation it was given
constexpr char kSaved = 's';   // Save returned OK
constexpr char kDone = 'd';    // closed the store without reaching the operation

// In a forked child: opens the store through a FaultInjectionFs that, at
// operation `n`, reports kFrozen and blocks until killed; saves B; closes.
// Only async-signal-safe calls besides RocksDB's own; never returns.
[[noreturn]] void SaveInChild(const std::string& dir, uint64_t n, int report_fd, int release_fd) {
  auto report = [report_fd](char c) {
    if (write(report_fd, &c, 1) != 1) _exit(10);
  };
  auto fs = std::make_shared<FaultInjectionFs>(/*skip_real_syncs=*/true);
  fs->SetHook([&](uint64_t index, const FileOp&) {
    if (index != n) return;
    report(kFrozen);
    char c;
    while (read(release_fd, &c, 1) < 0 && errno == EINTR) {
    }
    _exit(11);  // the parent closed the pipe instead of killing us
  });
  {
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
        CheckpointStore::Open(dir, StoreOptions(NewFaultInjectionEnv(fs, /*own_threads=*/true)));
    if (!store.ok()) _exit(12);
    if (!SaveStep(**store, kStepB).ok()) _exit(13);
    report(kSaved);
  }
  report(kDone);
  _exit(0);
}

TEST_F(CrashSafetyTest, KillAtEveryFileOperation) {
  uint64_t total = 0;
  {
    auto fs = std::make_shared<FaultInjectionFs>(/*skip_real_syncs=*/true);
    total = CountOps(fs).close;
    ASSERT_FALSE(HasFailure());
  }
  int killed = 0;
  int saved_before_kill = 0;
  for (uint64_t n = 1; n <= total; ++n) {
    SCOPED_TRACE(absl::StrCat("kill at op ", n, " of ", total));
    ResetStore();
    int report[2];
    int release[2];
    ASSERT_EQ(pipe(report), 0) << std::strerror(errno);
    ASSERT_EQ(pipe(release), 0) << std::strerror(errno);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0) << std::strerror(errno);
    if (pid == 0) {
      close(report[0]);
      close(release[1]);
      SaveInChild(dir_, n, report[1], release[0]);
    }
    close(report[1]);
    close(release[0]);

    bool saved_b = false;
    char last = 0;
    const auto deadline = std::chrono::steady_clock::now() + kChildDeadline;
    while (last != kFrozen && last != kDone) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd pfd = {report[0], POLLIN, 0};
      const int ready = left.count() > 0 ? poll(&pfd, 1, static_cast<int>(left.count())) : 0;
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) {
        ADD_FAILURE() << "the child did not reach its operation within " << kChildDeadline.count()
                      << " s";
        break;
      }
      if (read(report[0], &last, 1) != 1) {
        ADD_FAILURE() << "the child exited without reaching its operation";
        break;
      }
      if (last == kSaved) saved_b = true;
    }
    kill(pid, SIGKILL);
    int wstatus = 0;
    EXPECT_EQ(waitpid(pid, &wstatus, 0), pid);
    close(report[0]);
    close(release[1]);
    if (HasFailure()) return;
    EXPECT_EQ(last, kFrozen) << "the child finished before operation " << n;
    EXPECT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) << "status " << wstatus;
    ExpectIntact(saved_b);
    if (HasFailure()) return;
    ++killed;
    if (saved_b) ++saved_before_kill;
  }
  RecordProperty("kill_points", killed);
  std::cout << "killed at " << killed << " operations (" << saved_before_kill
            << " after Save returned OK)\n";
  EXPECT_EQ(killed, static_cast<int>(total));
}

}  // namespace
}  // namespace tandem
