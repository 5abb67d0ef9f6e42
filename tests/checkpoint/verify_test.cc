// Verify, VerifyAll and LoadLatestValid against checkpoints damaged on disk.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/utilities/options_util.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/digest.h"
#include "tests/support/byte_tensors.h"

namespace tandem {
namespace {

using testing::Owned;
using testing::Pattern;
using testing::Views;

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;

v1::CheckpointManifest Header(const std::string& job, uint64_t step) {
  v1::CheckpointManifest m;
  m.set_job(job);
  m.set_step(step);
  return m;
}

// "shared" is the same in every checkpoint; "w" differs per step.
std::vector<Owned> TensorsAt(uint64_t step) {
  return {{"shared", Pattern(2048, 1)}, {"w", Pattern(3000, 100 + static_cast<uint32_t>(step))}};
}

// The store's database opened directly with the options it persisted (so the
// chunks column family keeps its blob settings), to damage it.
class RawStore {
 public:
  explicit RawStore(const std::string& dir) {
    rocksdb::ConfigOptions config;
    rocksdb::DBOptions db_options;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    status_ = rocksdb::LoadLatestOptions(config, dir, &db_options, &cfs);
    if (!status_.ok()) return;
    rocksdb::DB* db = nullptr;
    status_ = rocksdb::DB::Open(db_options, dir, cfs, &handles_, &db);
    db_.reset(db);
    for (size_t i = 0; i < cfs.size() && status_.ok(); ++i) {
      if (cfs[i].name == "manifests") manifests_ = handles_[i];
      if (cfs[i].name == "chunks") chunks_ = handles_[i];
    }
  }
  ~RawStore() {
    for (rocksdb::ColumnFamilyHandle* h : handles_) db_->DestroyColumnFamilyHandle(h);
  }
  const rocksdb::Status& status() const { return status_; }
  rocksdb::DB* db() { return db_.get(); }
  rocksdb::ColumnFamilyHandle* manifests() { return manifests_; }
  rocksdb::ColumnFamilyHandle* chunks() { return chunks_; }

 private:
  rocksdb::Status status_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* manifests_ = nullptr;
  rocksdb::ColumnFamilyHandle* chunks_ = nullptr;
};

class VerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char name[] = "/tmp/tandem_verify_test_XXXXXX";
    ASSERT_NE(mkdtemp(name), nullptr) << std::strerror(errno);
    root_ = name;
    dir_ = root_ + "/store";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::unique_ptr<CheckpointStore> OpenStore() {
    CheckpointStoreOptions options;
    options.chunk_bytes = 1024;
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_, options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  // Saves TensorsAt(step) of `job` for each step, keeping all; returns the
  // manifests.
  std::vector<v1::CheckpointManifest> SaveSteps(const std::string& job,
                                                const std::vector<uint64_t>& steps) {
    std::unique_ptr<CheckpointStore> store = OpenStore();
    std::vector<v1::CheckpointManifest> saved;
    if (store == nullptr) return saved;
    for (uint64_t step : steps) {
      absl::StatusOr<v1::CheckpointManifest> m =
          store->Save(Header(job, step), Views(TensorsAt(step)), 0);
      EXPECT_TRUE(m.ok()) << m.status();
      if (m.ok()) saved.push_back(*m);
    }
    return saved;
  }

  // Flips one bit of the stored chunk `key`, writing it back under the same key.
  void FlipByteOfChunk(const std::string& key) {
    RawStore raw(dir_);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    std::string value;
    ASSERT_TRUE(raw.db()->Get(rocksdb::ReadOptions(), raw.chunks(), key, &value).ok());
    value[value.size() / 2] ^= 0x10;
    ASSERT_TRUE(raw.db()->Put(rocksdb::WriteOptions(), raw.chunks(), key, value).ok());
  }

  static std::string KeyOf(const v1::CheckpointManifest& m, const std::string& tensor, int chunk) {
    for (const v1::TensorRecord& t : m.tensors()) {
      if (t.name() == tensor) return t.chunks(chunk).sha256();
    }
    ADD_FAILURE() << "no tensor " << tensor;
    return "";
  }

  static std::vector<std::string> Summaries(
      const std::vector<CheckpointStore::VerifyReport>& reports) {
    std::vector<std::string> out;
    for (const CheckpointStore::VerifyReport& r : reports) {
      out.push_back(absl::StrCat(r.job, "@", r.step, r.latest ? "*" : "", " ",
                                 absl::StatusCodeToString(r.status.code())));
    }
    return out;
  }

  std::string root_;
  std::string dir_;
};

TEST_F(VerifyTest, IntactCheckpointsVerify) {
  SaveSteps("job", {1, 2, 3});
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  for (uint64_t step : {1, 2, 3}) EXPECT_TRUE(store->Verify("job", step).ok()) << step;

  absl::Status missing = store->Verify("job", 9);
  EXPECT_TRUE(absl::IsNotFound(missing)) << missing;
  EXPECT_THAT(std::string(missing.message()), HasSubstr("job job has no checkpoint at step 9"));
  EXPECT_TRUE(absl::IsNotFound(store->Verify("nope", 1)));
  EXPECT_TRUE(absl::IsInvalidArgument(store->Verify("a/b", 1)));

  absl::StatusOr<std::vector<CheckpointStore::VerifyReport>> all = store->VerifyAll();
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(Summaries(*all), ElementsAre("job@1 OK", "job@2 OK", "job@3* OK"));

  std::vector<std::string> warnings;
  absl::StatusOr<Checkpoint> loaded = store->LoadLatestValid("job", &warnings);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->manifest.step(), 3u);
  EXPECT_EQ(loaded->tensors[1].bytes, TensorsAt(3)[1].bytes);
  EXPECT_THAT(warnings, SizeIs(0));
}

TEST_F(VerifyTest, CorruptLatestFallsBackToThePreviousCheckpoint) {
  const std::vector<v1::CheckpointManifest> saved = SaveSteps("job", {1, 2, 3});
  ASSERT_EQ(saved.size(), 3u);
  const std::string bad_key = KeyOf(saved[2], "w", 1);  // only step 3 has it
  FlipByteOfChunk(bad_key);

  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<std::string> warnings;
  absl::StatusOr<Checkpoint> loaded = store->LoadLatestValid("job", &warnings);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->manifest.step(), 2u);
  ASSERT_EQ(loaded->tensors.size(), 2u);
  EXPECT_EQ(loaded->tensors[0].bytes, TensorsAt(2)[0].bytes);
  EXPECT_EQ(loaded->tensors[1].bytes, TensorsAt(2)[1].bytes);
  ASSERT_THAT(warnings, SizeIs(1));
  EXPECT_THAT(warnings[0], HasSubstr("checkpoint of job job at step 3 is corrupt ("));
  EXPECT_THAT(warnings[0], HasSubstr("tensor w, chunk 2 of 3"));
  EXPECT_THAT(warnings[0], HasSubstr("); falling back to step 2"));

  absl::Status bad = store->Verify("job", 3);
  ASSERT_TRUE(absl::IsDataLoss(bad)) << bad;
  EXPECT_THAT(std::string(bad.message()), HasSubstr("job job at step 3"));
  EXPECT_THAT(std::string(bad.message()), HasSubstr("tensor w, chunk 2 of 3"));
  EXPECT_THAT(std::string(bad.message()),
              HasSubstr(ToHex(reinterpret_cast<const uint8_t*>(bad_key.data()), 6)));
  EXPECT_THAT(std::string(bad.message()), HasSubstr("BLAKE3"));
  EXPECT_TRUE(store->Verify("job", 2).ok());
  EXPECT_TRUE(store->Verify("job", 1).ok());

  absl::StatusOr<std::vector<CheckpointStore::VerifyReport>> all = store->VerifyAll("job");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(Summaries(*all), ElementsAre("job@1 OK", "job@2 OK", "job@3* DATA_LOSS"));
  EXPECT_EQ((*all)[2].status, bad);

  // Falling back reads; it does not move `latest` or repair anything.
  EXPECT_TRUE(absl::IsDataLoss(store->Load("job").status()));
  absl::StatusOr<uint64_t> latest = store->LatestStep("job");
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, 3u);
}

TEST_F(VerifyTest, WalksBackPastSeveralCorruptCheckpoints) {
  const std::vector<v1::CheckpointManifest> saved = SaveSteps("job", {1, 2, 3});
  ASSERT_EQ(saved.size(), 3u);
  FlipByteOfChunk(KeyOf(saved[2], "w", 0));
  FlipByteOfChunk(KeyOf(saved[1], "w", 2));

  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<std::string> warnings;
  absl::StatusOr<Checkpoint> loaded = store->LoadLatestValid("job", &warnings);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->manifest.step(), 1u);
  EXPECT_EQ(loaded->tensors[1].bytes, TensorsAt(1)[1].bytes);
  ASSERT_THAT(warnings, SizeIs(2));
  EXPECT_THAT(warnings[0], HasSubstr("at step 3 is corrupt"));
  EXPECT_THAT(warnings[0], HasSubstr("falling back to step 2"));
  EXPECT_THAT(warnings[1], HasSubstr("at step 2 is corrupt"));
  EXPECT_THAT(warnings[1], HasSubstr("falling back to step 1"));

  // A null `warnings` is allowed.
  absl::StatusOr<Checkpoint> again = store->LoadLatestValid("job", nullptr);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->manifest.step(), 1u);
}

TEST_F(VerifyTest, EveryCheckpointCorruptIsDataLossListingThem) {
  const std::vector<v1::CheckpointManifest> saved = SaveSteps("job", {1, 2, 3});
  ASSERT_EQ(saved.size(), 3u);
  FlipByteOfChunk(KeyOf(saved[0], "shared", 1));  // the same chunk in all three

  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<std::string> warnings;
  absl::Status status = store->LoadLatestValid("job", &warnings).status();
  ASSERT_TRUE(absl::IsDataLoss(status)) << status;
  const std::string message(status.message());
  EXPECT_THAT(message, HasSubstr("no intact checkpoint of job job in " + dir_));
  EXPECT_THAT(message, HasSubstr("checkpoint of job job at step 3:"));
  EXPECT_THAT(message, HasSubstr("step 2:"));
  EXPECT_THAT(message, HasSubstr("step 1:"));
  EXPECT_THAT(message, HasSubstr("tensor shared, chunk 2 of 2"));
  EXPECT_THAT(warnings, SizeIs(2));  // 3 -> 2 and 2 -> 1; nothing to fall back to after 1

  absl::StatusOr<std::vector<CheckpointStore::VerifyReport>> all = store->VerifyAll();
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(Summaries(*all),
              ElementsAre("job@1 DATA_LOSS", "job@2 DATA_LOSS", "job@3* DATA_LOSS"));
}

TEST_F(VerifyTest, OnlyCheckpointCorruptIsDataLoss) {
  const std::vector<v1::CheckpointManifest> saved = SaveSteps("job", {1});
  ASSERT_EQ(saved.size(), 1u);
  FlipByteOfChunk(KeyOf(saved[0], "w", 0));
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<std::string> warnings;
  absl::Status status = store->LoadLatestValid("job", &warnings).status();
  ASSERT_TRUE(absl::IsDataLoss(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("no intact checkpoint of job job"));
  EXPECT_THAT(warnings, SizeIs(0));
}

TEST_F(VerifyTest, MissingManifestOfLatestFallsBackAndIsReported) {
  SaveSteps("job", {1, 2});
  {
    RawStore raw(dir_);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    ASSERT_TRUE(raw.db()
                    ->Delete(rocksdb::WriteOptions(), raw.manifests(),
                             absl::StrCat("job/", std::string(19, '0'), "2"))
                    .ok());
  }
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<std::string> warnings;
  absl::StatusOr<Checkpoint> loaded = store->LoadLatestValid("job", &warnings);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->manifest.step(), 1u);
  ASSERT_THAT(warnings, SizeIs(1));
  EXPECT_THAT(warnings[0], HasSubstr("step 2 is corrupt"));
  EXPECT_THAT(warnings[0], HasSubstr("its manifest is missing"));

  absl::StatusOr<std::vector<CheckpointStore::VerifyReport>> all = store->VerifyAll();
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(Summaries(*all), ElementsAre("job@1 OK", "job@2* DATA_LOSS"));
}

TEST_F(VerifyTest, NeverFallsBackToStepsAboveLatest) {
  // The job rolled back from 11 to 5; 11 belongs to the abandoned run.
  const std::vector<v1::CheckpointManifest> saved = SaveSteps("job", {3, 10, 11, 5});
  ASSERT_EQ(saved.size(), 4u);
  FlipByteOfChunk(KeyOf(saved[3], "w", 0));
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<std::string> warnings;
  absl::StatusOr<Checkpoint> loaded = store->LoadLatestValid("job", &warnings);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->manifest.step(), 3u);
  ASSERT_THAT(warnings, SizeIs(1));
  EXPECT_THAT(warnings[0], HasSubstr("at step 5 is corrupt"));
  EXPECT_THAT(warnings[0], HasSubstr("falling back to step 3"));
}

TEST_F(VerifyTest, NoCheckpointIsNotFound) {
  SaveSteps("other", {1});
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<std::string> warnings;
  absl::Status status = store->LoadLatestValid("job", &warnings).status();
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  EXPECT_THAT(warnings, SizeIs(0));
  absl::StatusOr<std::vector<CheckpointStore::VerifyReport>> none = store->VerifyAll("job");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_THAT(*none, SizeIs(0));
}

TEST_F(VerifyTest, VerifyAllCoversEveryJobOrOne) {
  SaveSteps("a", {1, 2});
  SaveSteps("a-b", {7});
  const std::vector<v1::CheckpointManifest> b = SaveSteps("b", {4});
  ASSERT_EQ(b.size(), 1u);
  FlipByteOfChunk(KeyOf(b[0], "w", 2));
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::vector<CheckpointStore::VerifyReport>> all = store->VerifyAll();
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(Summaries(*all), ElementsAre("a@1 OK", "a@2* OK", "a-b@7* OK", "b@4* DATA_LOSS"));
  absl::StatusOr<std::vector<CheckpointStore::VerifyReport>> a = store->VerifyAll("a");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_THAT(Summaries(*a), ElementsAre("a@1 OK", "a@2* OK"));
}

TEST_F(VerifyTest, VerifyChecksSizesAndMissingChunks) {
  const std::vector<v1::CheckpointManifest> saved = SaveSteps("job", {1, 2});
  ASSERT_EQ(saved.size(), 2u);
  {
    RawStore raw(dir_);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    ASSERT_TRUE(raw.db()
                    ->Put(rocksdb::WriteOptions(), raw.chunks(), KeyOf(saved[0], "w", 0), "short")
                    .ok());
    ASSERT_TRUE(
        raw.db()->Delete(rocksdb::WriteOptions(), raw.chunks(), KeyOf(saved[1], "w", 2)).ok());
  }
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::Status truncated = store->Verify("job", 1);
  ASSERT_TRUE(absl::IsDataLoss(truncated)) << truncated;
  EXPECT_THAT(std::string(truncated.message()), HasSubstr("has 5 bytes, the manifest says 1024"));
  absl::Status missing = store->Verify("job", 2);
  ASSERT_TRUE(absl::IsDataLoss(missing)) << missing;
  EXPECT_THAT(std::string(missing.message()), HasSubstr("tensor w, chunk 3 of 3"));
  EXPECT_THAT(std::string(missing.message()), HasSubstr("is missing"));
}

// With chunks of the digest's piece size the chunk keys give the state
// digest, so Verify and Load check the manifest's digest too.
TEST_F(VerifyTest, ManifestWhoseStateDigestDisagreesIsDataLoss) {
  const std::vector<Owned> tensors = {{"a", Pattern(kStateDigestPieceBytes + 10, 1)},
                                      {"b", Pattern(100, 2)}};
  v1::CheckpointManifest saved;
  {
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_);
    ASSERT_TRUE(store.ok()) << store.status();
    absl::StatusOr<v1::CheckpointManifest> m = (*store)->Save(Header("job", 1), Views(tensors), 0);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->state_digest(), StateDigest(Views(tensors)));
    EXPECT_TRUE((*store)->Verify("job", 1).ok());
    saved = *m;
  }
  {
    RawStore raw(dir_);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    v1::CheckpointManifest wrong = saved;
    wrong.set_state_digest(StateDigestV1(Views(tensors)));
    ASSERT_TRUE(raw.db()
                    ->Put(rocksdb::WriteOptions(), raw.manifests(), absl::StrFormat("job/%020d", 1),
                          wrong.SerializeAsString())
                    .ok());
  }
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  const absl::Status verified = (*store)->Verify("job", 1);
  EXPECT_EQ(verified.code(), absl::StatusCode::kDataLoss) << verified;
  EXPECT_THAT(verified.message(), HasSubstr("state digest"));
  EXPECT_EQ((*store)->Load("job").status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(VerifyTest, SavingTheSameBytesAgainRepairsACorruptChunk) {
  const std::vector<v1::CheckpointManifest> saved = SaveSteps("job", {1});
  ASSERT_EQ(saved.size(), 1u);
  FlipByteOfChunk(KeyOf(saved[0], "shared", 0));
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(absl::IsDataLoss(store->Verify("job", 1)));
  const uint64_t chunks = store->CountChunks().value_or(0);

  // Step 2 shares "shared" with step 1. Had Save trusted the stored chunk, step
  // 2 would be born corrupt; instead it rewrites it, which heals step 1 too.
  std::vector<Owned> tensors = TensorsAt(2);
  ASSERT_TRUE(store->Save(Header("job", 2), Views(tensors), 0).ok());
  EXPECT_TRUE(store->Verify("job", 2).ok());
  EXPECT_TRUE(store->Verify("job", 1).ok());
  EXPECT_EQ(store->CountChunks().value_or(0), chunks + 3);  // step 2's own "w" chunks
}

}  // namespace
}  // namespace tandem
