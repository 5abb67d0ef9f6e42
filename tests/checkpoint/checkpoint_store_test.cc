#include "checkpoint/checkpoint_store.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/utilities/options_util.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "checkpoint/digest.h"
#include "checkpoint/rocksdb_crc32c.h"
#include "tests/support/byte_tensors.h"

namespace tandem {
namespace {

using testing::Owned;
using testing::Pattern;
using testing::Views;

namespace fs = std::filesystem;
using ::testing::HasSubstr;

v1::CheckpointManifest Header(const std::string& job, uint64_t step,
                              std::vector<std::string> tags = {}) {
  v1::CheckpointManifest m;
  m.set_job(job);
  m.set_step(step);
  for (std::string& t : tags) m.add_tags(std::move(t));
  return m;
}

std::vector<uint64_t> Steps(const std::vector<v1::CheckpointInfo>& infos) {
  std::vector<uint64_t> steps;
  for (const v1::CheckpointInfo& i : infos) steps.push_back(i.step());
  return steps;
}

// A RocksDB opened directly, to build foreign databases and damage ours.
class RawDb {
 public:
  RawDb(const std::string& dir, const std::vector<std::string>& cfs, bool create) {
    rocksdb::DBOptions options;
    options.create_if_missing = create;
    options.create_missing_column_families = create;
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const std::string& cf : cfs) descriptors.push_back({cf, rocksdb::ColumnFamilyOptions()});
    rocksdb::DB* db = nullptr;
    status_ = rocksdb::DB::Open(options, dir, descriptors, &handles_, &db);
    db_.reset(db);
  }
  ~RawDb() {
    for (rocksdb::ColumnFamilyHandle* h : handles_) db_->DestroyColumnFamilyHandle(h);
  }
  const rocksdb::Status& status() const { return status_; }
  rocksdb::DB* db() { return db_.get(); }
  rocksdb::ColumnFamilyHandle* cf(size_t i) { return handles_.at(i); }

 private:
  rocksdb::Status status_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
};

const std::vector<std::string> kOurCfs = {"default", "manifests", "chunks"};

class CheckpointStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char name[] = "/tmp/tandem_checkpoint_test_XXXXXX";
    ASSERT_NE(mkdtemp(name), nullptr) << std::strerror(errno);
    root_ = name;
    dir_ = root_ + "/store";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  static CheckpointStoreOptions SmallChunks() {
    CheckpointStoreOptions options;
    options.chunk_bytes = 1024;
    return options;
  }

  std::unique_ptr<CheckpointStore> OpenStore(CheckpointStoreOptions options = SmallChunks()) {
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_, options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  uint64_t Chunks(const CheckpointStore& store) {
    absl::StatusOr<uint64_t> n = store.CountChunks();
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(0);
  }

  std::string root_;
  std::string dir_;
};

}  // namespace
}  // namespace tandem

// RocksDB's function and, through --wrap, its original definition.
namespace rocksdb::crc32c {
uint32_t Extend(uint32_t crc, const char* data, size_t bytes);
}  // namespace rocksdb::crc32c
extern "C" uint32_t __real__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t bytes);

namespace tandem {
namespace {

// RocksDB's CRC32C calls reach ours, which gives RocksDB's own results, so
// files stay readable by stock RocksDB tools.
TEST(RocksDbCrc32cTest, RocksDbCallsOursAndItMatchesRocksDbsOwn) {
  // RFC 3720 B.4, as in RocksDB's crc32c_test.
  char buf[32];
  std::memset(buf, 0, sizeof(buf));
  EXPECT_EQ(rocksdb::crc32c::Extend(0, buf, sizeof(buf)), 0x8a9136aau);
  std::memset(buf, 0xff, sizeof(buf));
  EXPECT_EQ(rocksdb::crc32c::Extend(0, buf, sizeof(buf)), 0x62a8ab43u);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<char>(i);
  EXPECT_EQ(rocksdb::crc32c::Extend(0, buf, sizeof(buf)), 0x46dd794eu);

  std::string data(5000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 2654435761u >> 13);
  for (size_t offset : {0, 1, 3, 7, 8}) {
    for (size_t bytes : {0, 1, 7, 8, 9, 63, 4096, 4991}) {
      const uint32_t seed = static_cast<uint32_t>(offset * 977 + bytes);
      EXPECT_EQ(rocksdb::crc32c::Extend(seed, data.data() + offset, bytes),
                __real__ZN7rocksdb6crc32c6ExtendEjPKcm(seed, data.data() + offset, bytes))
          << "offset " << offset << ", " << bytes << " bytes";
    }
  }
#if defined(__x86_64__)
  EXPECT_EQ(RocksDbCrc32cIsAccelerated(), __builtin_cpu_supports("sse4.2") != 0);
#endif
}

TEST_F(CheckpointStoreTest, SaveThenLoadRoundTrips) {
  std::vector<float> floats(100);
  for (size_t i = 0; i < floats.size(); ++i) floats[i] = 0.5f * static_cast<float>(i);
  const std::vector<Owned> owned = {{"model.w", Pattern(3000, 1)},  // 1024 + 1024 + 952
                                    {"model.b", Pattern(16, 2)},
                                    {"optim.empty", ""}};
  std::vector<TensorView> views = Views(owned);
  TensorView f;
  f.name = "model.f";
  f.dtype = v1::DTYPE_FLOAT32;
  f.shape = {10, 10};
  f.data = floats.data();
  f.bytes = floats.size() * sizeof(float);
  views.push_back(f);

  v1::CheckpointManifest header = Header("job1", 10);
  header.set_global_cursor(1234);
  header.set_epoch(2);
  auto* rng = header.add_rng();
  rng->set_name("torch.cpu");
  rng->set_state("rng-bytes");
  {
    std::unique_ptr<CheckpointStore> store = OpenStore();
    ASSERT_NE(store, nullptr);
    absl::StatusOr<v1::CheckpointManifest> saved = store->Save(header, views, 0);
    ASSERT_TRUE(saved.ok()) << saved.status();
    EXPECT_EQ(saved->format_version(), 3u);
    EXPECT_EQ(saved->total_bytes(), 3000u + 16u + 0u + 400u);
    EXPECT_EQ(saved->state_digest(), StateDigest(views));
    EXPECT_GT(saved->created_unix_ms(), 0);
    EXPECT_EQ(saved->global_cursor(), 1234u);
    ASSERT_EQ(saved->tensors_size(), 4);
    ASSERT_EQ(saved->tensors(0).chunks_size(), 3);
    EXPECT_EQ(saved->tensors(0).chunks(2).size(), 952u);
    EXPECT_EQ(saved->tensors(0).chunks(0).sha256(),
              std::string(
                  reinterpret_cast<const char*>(Blake3Of(owned[0].bytes.data(), 1024).data()), 32));
    EXPECT_EQ(saved->tensors(2).chunks_size(), 0);
    EXPECT_EQ(Chunks(*store), 3u + 1u + 1u);
  }
  // Reopened, so the bytes come from disk, not from this process's memory.
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Checkpoint> loaded = store->Load("job1");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->manifest.step(), 10u);
  EXPECT_EQ(loaded->manifest.global_cursor(), 1234u);
  EXPECT_EQ(loaded->manifest.epoch(), 2u);
  ASSERT_EQ(loaded->manifest.rng_size(), 1);
  EXPECT_EQ(loaded->manifest.rng(0).state(), "rng-bytes");
  ASSERT_EQ(loaded->tensors.size(), 4u);
  for (size_t i = 0; i < owned.size(); ++i) {
    EXPECT_EQ(loaded->tensors[i].name, owned[i].name);
    EXPECT_EQ(loaded->tensors[i].bytes, owned[i].bytes) << owned[i].name;
    EXPECT_EQ(loaded->tensors[i].dtype, v1::DTYPE_UINT8);
  }
  EXPECT_EQ(loaded->tensors[3].name, "model.f");
  EXPECT_EQ(loaded->tensors[3].dtype, v1::DTYPE_FLOAT32);
  EXPECT_EQ(loaded->tensors[3].shape, (std::vector<int64_t>{10, 10}));
  ASSERT_EQ(loaded->tensors[3].bytes.size(), 400u);
  EXPECT_EQ(std::memcmp(loaded->tensors[3].bytes.data(), floats.data(), 400), 0);

  absl::StatusOr<v1::CheckpointManifest> manifest = store->LoadManifest("job1", 10);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->state_digest(), StateDigest(views));
}

TEST_F(CheckpointStoreTest, CheckpointWithNoTensors) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Save(Header("j", 0), {}, 0).ok());
  absl::StatusOr<Checkpoint> loaded = store->Load("j");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->tensors.empty());
  EXPECT_EQ(loaded->manifest.total_bytes(), 0u);
  EXPECT_EQ(Chunks(*store), 0u);
}

TEST_F(CheckpointStoreTest, LatestMovesAndOlderStepsStayLoadable) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  for (uint64_t step : {100, 200, 300}) {
    const std::vector<Owned> owned = {{"w", Pattern(2500, step)}};
    ASSERT_TRUE(store->Save(Header("job", step), Views(owned), 0).ok());
    absl::StatusOr<uint64_t> latest = store->LatestStep("job");
    ASSERT_TRUE(latest.ok()) << latest.status();
    EXPECT_EQ(*latest, step);
  }
  absl::StatusOr<Checkpoint> latest = store->Load("job");
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->manifest.step(), 300u);
  EXPECT_EQ(latest->tensors[0].bytes, Pattern(2500, 300));

  absl::StatusOr<Checkpoint> old = store->Load("job", 100);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->manifest.step(), 100u);
  EXPECT_EQ(old->tensors[0].bytes, Pattern(2500, 100));

  absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = store->List("job");
  ASSERT_TRUE(infos.ok()) << infos.status();
  EXPECT_EQ(Steps(*infos), (std::vector<uint64_t>{100, 200, 300}));
  EXPECT_FALSE((*infos)[0].latest());
  EXPECT_FALSE((*infos)[1].latest());
  EXPECT_TRUE((*infos)[2].latest());
  EXPECT_EQ((*infos)[2].total_bytes(), 2500u);
  EXPECT_EQ((*infos)[2].state_digest(), latest->manifest.state_digest());
}

TEST_F(CheckpointStoreTest, ListSortsByJobThenStep) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  const std::vector<Owned> owned = {{"w", Pattern(10, 1)}};
  // "a-b/..." sorts before "a/..." as keys; List must still put "a" first.
  for (const char* job : {"a-b", "a", "b"}) {
    for (uint64_t step : {20, 3}) {
      ASSERT_TRUE(store->Save(Header(job, step), Views(owned), 0).ok());
    }
  }
  absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = store->List();
  ASSERT_TRUE(infos.ok()) << infos.status();
  std::vector<std::string> got;
  for (const v1::CheckpointInfo& i : *infos) {
    got.push_back(absl::StrCat(i.job(), "@", i.step(), i.latest() ? "*" : ""));
  }
  EXPECT_THAT(got, ::testing::ElementsAre("a@3*", "a@20", "a-b@3*", "a-b@20", "b@3*", "b@20"));
}

TEST_F(CheckpointStoreTest, SavingSameTensorsAgainWritesNoNewChunk) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<Owned> owned = {{"w", Pattern(4096, 7)}, {"b", Pattern(100, 8)}};
  ASSERT_TRUE(store->Save(Header("job", 1), Views(owned), 0).ok());
  const uint64_t first = Chunks(*store);
  EXPECT_EQ(first, 5u);

  ASSERT_TRUE(store->Save(Header("job", 2), Views(owned), 0).ok());
  EXPECT_EQ(Chunks(*store), first);

  owned[0].bytes[2048] ^= 1;  // only the third chunk of "w" changes
  ASSERT_TRUE(store->Save(Header("job", 3), Views(owned), 0).ok());
  EXPECT_EQ(Chunks(*store), first + 1);
  absl::StatusOr<Checkpoint> loaded = store->Load("job", 3);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tensors[0].bytes, owned[0].bytes);
}

TEST_F(CheckpointStoreTest, IdenticalChunksWithinOneCheckpointAreStoredOnce) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  const std::vector<Owned> owned = {{"zeros", std::string(4096, '\0')},
                                    {"more_zeros", std::string(1024, '\0')}};
  ASSERT_TRUE(store->Save(Header("job", 1), Views(owned), 0).ok());
  EXPECT_EQ(Chunks(*store), 1u);
  absl::StatusOr<Checkpoint> loaded = store->Load("job");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tensors[0].bytes, owned[0].bytes);
  EXPECT_EQ(loaded->tensors[1].bytes, owned[1].bytes);
}

TEST_F(CheckpointStoreTest, RetentionDropsOldManifestsAndTheirChunksButKeepsSharedOnes) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  const std::string shared = Pattern(3072, 99);  // 3 chunks in every checkpoint
  for (uint64_t step = 1; step <= 4; ++step) {
    const std::vector<Owned> owned = {{"frozen", shared}, {"moving", Pattern(1000, step)}};
    ASSERT_TRUE(store->Save(Header("job", step), Views(owned), 2).ok());
  }
  absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = store->List("job");
  ASSERT_TRUE(infos.ok()) << infos.status();
  EXPECT_EQ(Steps(*infos), (std::vector<uint64_t>{3, 4}));
  EXPECT_EQ(Chunks(*store), 3u + 2u);

  absl::StatusOr<Checkpoint> dropped = store->Load("job", 1);
  EXPECT_TRUE(absl::IsNotFound(dropped.status())) << dropped.status();
  EXPECT_THAT(std::string(dropped.status().message()), HasSubstr("it has steps: 3, 4"));
  for (uint64_t step : {3, 4}) {
    absl::StatusOr<Checkpoint> kept = store->Load("job", step);
    ASSERT_TRUE(kept.ok()) << kept.status();
    EXPECT_EQ(kept->tensors[0].bytes, shared);
    EXPECT_EQ(kept->tensors[1].bytes, Pattern(1000, step));
  }
}

TEST_F(CheckpointStoreTest, RetentionNeverDropsTaggedCheckpoints) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  for (uint64_t step = 1; step <= 5; ++step) {
    const std::vector<Owned> owned = {{"w", Pattern(1500, step)}};
    std::vector<std::string> tags;
    if (step == 1) tags = {"best"};
    ASSERT_TRUE(store->Save(Header("job", step, tags), Views(owned), 2).ok());
  }
  absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = store->List("job");
  ASSERT_TRUE(infos.ok()) << infos.status();
  EXPECT_EQ(Steps(*infos), (std::vector<uint64_t>{1, 4, 5}));
  ASSERT_EQ((*infos)[0].tags_size(), 1);
  EXPECT_EQ((*infos)[0].tags(0), "best");
  EXPECT_EQ(Chunks(*store), 3u * 2u);
  absl::StatusOr<Checkpoint> best = store->Load("job", 1);
  ASSERT_TRUE(best.ok()) << best.status();
  EXPECT_EQ(best->tensors[0].bytes, Pattern(1500, 1));
}

TEST_F(CheckpointStoreTest, KeepZeroKeepsEverything) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  for (uint64_t step = 1; step <= 4; ++step) {
    const std::vector<Owned> owned = {{"w", Pattern(10, step)}};
    ASSERT_TRUE(store->Save(Header("job", step), Views(owned), 0).ok());
  }
  absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = store->List("job");
  ASSERT_TRUE(infos.ok()) << infos.status();
  EXPECT_EQ(infos->size(), 4u);
}

TEST_F(CheckpointStoreTest, RetentionKeepsWhatARolledBackJobSavesNext) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  for (uint64_t step : {10, 11, 5}) {
    const std::vector<Owned> owned = {{"w", Pattern(10, step)}};
    ASSERT_TRUE(store->Save(Header("job", step), Views(owned), 2).ok());
  }
  absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = store->List("job");
  ASSERT_TRUE(infos.ok()) << infos.status();
  EXPECT_EQ(Steps(*infos), (std::vector<uint64_t>{5, 11}));
  absl::StatusOr<uint64_t> latest = store->LatestStep("job");
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, 5u);
}

TEST_F(CheckpointStoreTest, GarbageCollectionKeepsChunksOtherJobsReference) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  const std::string common = Pattern(1024, 42);
  const std::string only_a = Pattern(1024, 43);
  ASSERT_TRUE(store->Save(Header("a", 1), Views({{"w", common}, {"x", only_a}}), 1).ok());
  ASSERT_TRUE(store->Save(Header("b", 1), Views({{"w", common}}), 1).ok());
  EXPECT_EQ(Chunks(*store), 2u);

  // Drops a@1: `only_a` goes, `common` stays for b@1.
  ASSERT_TRUE(store->Save(Header("a", 2), Views({{"w", Pattern(1024, 44)}}), 1).ok());
  EXPECT_EQ(Chunks(*store), 2u);
  absl::StatusOr<Checkpoint> b = store->Load("b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->tensors[0].bytes, common);
  EXPECT_TRUE(absl::IsNotFound(store->Load("a", 1).status()));
}

TEST_F(CheckpointStoreTest, SavingAnExistingStepReplacesIt) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Save(Header("job", 5), Views({{"w", Pattern(2048, 1)}}), 0).ok());
  ASSERT_TRUE(store->Save(Header("job", 5), Views({{"w", Pattern(1024, 2)}}), 0).ok());
  absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = store->List("job");
  ASSERT_TRUE(infos.ok()) << infos.status();
  EXPECT_EQ(Steps(*infos), (std::vector<uint64_t>{5}));
  EXPECT_EQ(Chunks(*store), 1u);  // the replaced checkpoint's chunks are gone
  absl::StatusOr<Checkpoint> loaded = store->Load("job", 5);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tensors[0].bytes, Pattern(1024, 2));
}

class CorruptionTest : public CheckpointStoreTest {
 protected:
  // Saves job@7 and returns the key of chunk `index` of tensor "model.w".
  std::string SaveAndPickChunk(int index) {
    std::unique_ptr<CheckpointStore> store = OpenStore();
    EXPECT_NE(store, nullptr);
    if (store == nullptr) return "";
    const std::vector<Owned> owned = {{"model.b", Pattern(64, 1)}, {"model.w", Pattern(3000, 2)}};
    absl::StatusOr<v1::CheckpointManifest> saved = store->Save(Header("job", 7), Views(owned), 0);
    EXPECT_TRUE(saved.ok()) << saved.status();
    return saved.ok() ? saved->tensors(1).chunks(index).sha256() : "";
  }
};

TEST_F(CorruptionTest, FlippedByteInAChunkIsDataLossNamingTheTensor) {
  const std::string key = SaveAndPickChunk(1);
  ASSERT_EQ(key.size(), 32u);
  {
    RawDb raw(dir_, kOurCfs, /*create=*/false);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    std::string value;
    ASSERT_TRUE(raw.db()->Get(rocksdb::ReadOptions(), raw.cf(2), key, &value).ok());
    value[100] ^= 0x20;
    ASSERT_TRUE(raw.db()->Put(rocksdb::WriteOptions(), raw.cf(2), key, value).ok());
  }
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Checkpoint> loaded = store->Load("job");
  ASSERT_TRUE(absl::IsDataLoss(loaded.status())) << loaded.status();
  const std::string message(loaded.status().message());
  EXPECT_THAT(message, HasSubstr("tensor model.w"));
  EXPECT_THAT(message, HasSubstr("job job at step 7"));
  EXPECT_THAT(message, HasSubstr("chunk 2 of 3"));
  EXPECT_THAT(message, HasSubstr(ToHex(reinterpret_cast<const uint8_t*>(key.data()), 6)));
  EXPECT_THAT(message, HasSubstr("BLAKE3"));
  // The manifest alone is intact.
  EXPECT_TRUE(store->LoadManifest("job").ok());
}

TEST_F(CorruptionTest, TruncatedChunkIsDataLoss) {
  const std::string key = SaveAndPickChunk(0);
  ASSERT_EQ(key.size(), 32u);
  {
    RawDb raw(dir_, kOurCfs, /*create=*/false);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    ASSERT_TRUE(raw.db()->Put(rocksdb::WriteOptions(), raw.cf(2), key, "short").ok());
  }
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::Status status = store->Load("job").status();
  ASSERT_TRUE(absl::IsDataLoss(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("has 5 bytes, the manifest says 1024"));
}

TEST_F(CorruptionTest, MissingChunkIsDataLoss) {
  const std::string key = SaveAndPickChunk(2);
  ASSERT_EQ(key.size(), 32u);
  {
    RawDb raw(dir_, kOurCfs, /*create=*/false);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    ASSERT_TRUE(raw.db()->Delete(rocksdb::WriteOptions(), raw.cf(2), key).ok());
  }
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::Status status = store->Load("job", 7).status();
  ASSERT_TRUE(absl::IsDataLoss(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("tensor model.w, chunk 3 of 3"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("is missing"));
}

TEST_F(CorruptionTest, OfSeveralDamagedChunksTheFirstInManifestOrderIsNamed) {
  const std::string second = SaveAndPickChunk(1);
  const std::string third = SaveAndPickChunk(2);
  ASSERT_EQ(second.size(), 32u);
  ASSERT_EQ(third.size(), 32u);
  {
    RawDb raw(dir_, kOurCfs, /*create=*/false);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    ASSERT_TRUE(raw.db()->Delete(rocksdb::WriteOptions(), raw.cf(2), third).ok());
    ASSERT_TRUE(raw.db()->Put(rocksdb::WriteOptions(), raw.cf(2), second, "short").ok());
  }
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  // Chunks are read on several threads; which one finds its damage first
  // must not change the answer.
  for (int i = 0; i < 20; ++i) {
    absl::Status status = store->Load("job").status();
    ASSERT_TRUE(absl::IsDataLoss(status)) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("tensor model.w, chunk 2 of 3"));
    EXPECT_THAT(std::string(status.message()), HasSubstr("has 5 bytes, the manifest says 1024"));
    EXPECT_EQ(store->Verify("job", 7), status);
  }
}

TEST_F(CheckpointStoreTest, MissingJobOrStepIsNotFound) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::Status status = store->Load("nope").status();
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  EXPECT_EQ(status.message(), absl::StrCat("no checkpoint for job nope in ", dir_));
  EXPECT_TRUE(absl::IsNotFound(store->LatestStep("nope").status()));
  EXPECT_TRUE(absl::IsNotFound(store->LoadManifest("nope").status()));
  EXPECT_TRUE(absl::IsNotFound(store->Load("nope", 3).status()));

  ASSERT_TRUE(store->Save(Header("job", 1), Views({{"w", "x"}}), 0).ok());
  ASSERT_TRUE(store->Save(Header("job", 2), Views({{"w", "y"}}), 0).ok());
  status = store->Load("job", 9).status();
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  EXPECT_EQ(status.message(), "job job has no checkpoint at step 9; it has steps: 1, 2");

  absl::StatusOr<std::vector<v1::CheckpointInfo>> none = store->List("nope");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
}

TEST_F(CheckpointStoreTest, RejectsBadJobNamesAndTensors) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(store->Save(Header("a/b", 1), {}, 0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store->Save(Header("", 1), {}, 0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store->Load("a/b").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      store->Save(Header("j", 1), Views({{"w", "x"}, {"w", "y"}}), 0).status()));
  TensorView dangling;
  dangling.name = "w";
  dangling.bytes = 4;
  EXPECT_TRUE(absl::IsInvalidArgument(store->Save(Header("j", 1), {dangling}, 0).status()));
  EXPECT_TRUE(absl::IsNotFound(store->Load("j").status()));
}

TEST_F(CheckpointStoreTest, PlainRocksDbIsNotOurStore) {
  {
    RawDb raw(dir_, {"default"}, /*create=*/true);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    ASSERT_TRUE(raw.db()->Put(rocksdb::WriteOptions(), "someone", "else").ok());
  }
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_);
  ASSERT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  EXPECT_THAT(std::string(store.status().message()),
              HasSubstr(dir_ + " is a RocksDB database but not a tandem checkpoint store"));
  CheckpointStoreOptions read_only;
  read_only.read_only = true;
  EXPECT_TRUE(absl::IsFailedPrecondition(CheckpointStore::Open(dir_, read_only).status()));
}

TEST_F(CheckpointStoreTest, RocksDbWithOurColumnFamiliesButNoMarkerIsNotOurStore) {
  {
    RawDb raw(dir_, kOurCfs, /*create=*/true);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
    ASSERT_TRUE(raw.db()->Put(rocksdb::WriteOptions(), raw.cf(1), "x/1", "not a manifest").ok());
  }
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_);
  ASSERT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("not a tandem checkpoint store"));
}

TEST_F(CheckpointStoreTest, EmptyDatabaseLeftByAnInterruptedCreateIsTakenOver) {
  {
    RawDb raw(dir_, kOurCfs, /*create=*/true);
    ASSERT_TRUE(raw.status().ok()) << raw.status().ToString();
  }
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Save(Header("j", 1), Views({{"w", "x"}}), 0).ok());
  store.reset();
  EXPECT_NE(OpenStore(), nullptr);
}

TEST_F(CheckpointStoreTest, RefusesToCreateAStoreInAFolderWithOtherFiles) {
  fs::create_directories(dir_);
  std::ofstream(dir_ + "/notes.txt") << "my thesis\n";
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_);
  ASSERT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("no CURRENT file"));
  EXPECT_FALSE(fs::exists(dir_ + "/CURRENT"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(CheckpointStoreTest, CreatesInAnEmptyFolder) {
  fs::create_directories(dir_);
  EXPECT_NE(OpenStore(), nullptr);
}

TEST_F(CheckpointStoreTest, MissingStoreWithoutCreateIsNotFound) {
  CheckpointStoreOptions no_create;
  no_create.create_if_missing = false;
  EXPECT_TRUE(absl::IsNotFound(CheckpointStore::Open(dir_, no_create).status()));
  CheckpointStoreOptions read_only;
  read_only.read_only = true;
  EXPECT_TRUE(absl::IsNotFound(CheckpointStore::Open(dir_, read_only).status()));
  EXPECT_FALSE(fs::exists(dir_));
}

TEST_F(CheckpointStoreTest, SecondWriterInThisProcessIsUnavailable) {
  std::unique_ptr<CheckpointStore> first = OpenStore();
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::unique_ptr<CheckpointStore>> second = CheckpointStore::Open(dir_);
  ASSERT_TRUE(absl::IsUnavailable(second.status())) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("is in use by another process"));
  first.reset();
  EXPECT_NE(OpenStore(), nullptr);
}

TEST_F(CheckpointStoreTest, WriterInAnotherProcessIsUnavailable) {
  {
    std::unique_ptr<CheckpointStore> store = OpenStore();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Save(Header("job", 1), Views({{"w", "x"}}), 0).ok());
  }
  // The child takes the same fcntl lock on LOCK that RocksDB takes, using only
  // async-signal-safe calls, since this process has threads.
  int to_child[2];
  int to_parent[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(to_parent), 0);
  const std::string lock_path = dir_ + "/LOCK";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(to_child[1]);
    close(to_parent[0]);
    const int fd = open(lock_path.c_str(), O_RDWR);
    struct flock lock = {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    const char ok = fd >= 0 && fcntl(fd, F_SETLK, &lock) == 0 ? 'y' : 'n';
    if (write(to_parent[1], &ok, 1) != 1) _exit(1);
    char c;
    while (read(to_child[0], &c, 1) > 0) {
    }
    _exit(0);
  }
  close(to_child[0]);
  close(to_parent[1]);
  char ok = 'n';
  ASSERT_EQ(read(to_parent[0], &ok, 1), 1);
  ASSERT_EQ(ok, 'y');

  absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir_);
  EXPECT_TRUE(absl::IsUnavailable(store.status())) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("is in use by another process"));
  // Reading does not need the lock.
  CheckpointStoreOptions read_only;
  read_only.read_only = true;
  absl::StatusOr<std::unique_ptr<CheckpointStore>> reader = CheckpointStore::Open(dir_, read_only);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_TRUE((*reader)->Load("job").ok());

  close(to_child[1]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  close(to_parent[0]);
  EXPECT_NE(OpenStore(), nullptr);
}

TEST_F(CheckpointStoreTest, ReadOnlyOpenListsAndLoads) {
  {
    std::unique_ptr<CheckpointStore> store = OpenStore();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Save(Header("job", 1), Views({{"w", Pattern(2000, 1)}}), 0).ok());
    ASSERT_TRUE(store->Save(Header("job", 2), Views({{"w", Pattern(2000, 2)}}), 0).ok());
  }
  CheckpointStoreOptions read_only = SmallChunks();
  read_only.read_only = true;
  std::unique_ptr<CheckpointStore> reader = OpenStore(read_only);
  ASSERT_NE(reader, nullptr);
  absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = reader->List();
  ASSERT_TRUE(infos.ok()) << infos.status();
  EXPECT_EQ(Steps(*infos), (std::vector<uint64_t>{1, 2}));
  EXPECT_TRUE((*infos)[1].latest());
  absl::StatusOr<Checkpoint> loaded = reader->Load("job", 1);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tensors[0].bytes, Pattern(2000, 1));

  absl::Status status = reader->Save(Header("job", 3), {}, 0).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("read-only"));

  // A writer may open while readers are open.
  std::unique_ptr<CheckpointStore> writer = OpenStore();
  ASSERT_NE(writer, nullptr);
  EXPECT_TRUE(writer->Save(Header("job", 3), Views({{"w", "z"}}), 0).ok());
}

TEST_F(CheckpointStoreTest, ChunksLiveInUncompressedBlobFiles) {
  ASSERT_NE(OpenStore(), nullptr);
  rocksdb::ConfigOptions config;
  rocksdb::DBOptions db_options;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  ASSERT_TRUE(rocksdb::LoadLatestOptions(config, dir_, &db_options, &cfs).ok());
  auto chunks = std::find_if(cfs.begin(), cfs.end(), [](const rocksdb::ColumnFamilyDescriptor& d) {
    return d.name == "chunks";
  });
  ASSERT_NE(chunks, cfs.end());
  EXPECT_TRUE(chunks->options.enable_blob_files);
  EXPECT_EQ(chunks->options.min_blob_size, 64u << 10);
  EXPECT_EQ(chunks->options.compression, rocksdb::kNoCompression);
  EXPECT_EQ(chunks->options.blob_compression_type, rocksdb::kNoCompression);
}

// Each save that writes chunks flushes them, and a flush starts a new WAL
// file; the small commits in the other column families must not keep every
// one of them alive.
TEST_F(CheckpointStoreTest, WalFilesDoNotPileUpOverManySaves) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  constexpr int kSaves = 60;
  size_t most = 0;
  for (uint64_t step = 1; step <= kSaves; ++step) {
    ASSERT_TRUE(store->Save(Header("job", step), Views({{"w", Pattern(1024, step)}}), 2).ok());
    size_t wal_files = 0;
    for (const fs::directory_entry& e : fs::directory_iterator(dir_)) {
      wal_files += e.path().extension() == ".log";
    }
    most = std::max(most, wal_files);
  }
  EXPECT_LE(most, 20u);
  EXPECT_EQ(Chunks(*store), 2u);
}

TEST_F(CheckpointStoreTest, ConcurrentSavesAndLoadsOfSeveralJobs) {
  std::unique_ptr<CheckpointStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  const std::string shared = Pattern(2048, 1000);  // 2 chunks every job keeps using
  constexpr int kJobs = 4;
  constexpr uint64_t kSteps = 6;
  std::vector<std::thread> threads;
  std::vector<std::string> errors(kJobs);
  for (int j = 0; j < kJobs; ++j) {
    threads.emplace_back([&, j] {
      const std::string job = absl::StrCat("job", j);
      for (uint64_t step = 1; step <= kSteps; ++step) {
        const std::vector<Owned> owned = {{"shared", shared},
                                          {"own", Pattern(1024, 100 * j + step)}};
        absl::StatusOr<v1::CheckpointManifest> saved =
            store->Save(Header(job, step), Views(owned), 2);
        if (!saved.ok()) {
          errors[j] = saved.status().ToString();
          return;
        }
        absl::StatusOr<Checkpoint> loaded = store->Load(job);
        if (!loaded.ok() || loaded->manifest.state_digest() != StateDigest(Views(owned))) {
          errors[j] =
              absl::StrCat("load after save of ", job, "@", step, ": ", loaded.status().ToString());
          return;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::string& e : errors) EXPECT_EQ(e, "");
  absl::StatusOr<std::vector<v1::CheckpointInfo>> infos = store->List();
  ASSERT_TRUE(infos.ok()) << infos.status();
  EXPECT_EQ(infos->size(), kJobs * 2u);
  EXPECT_EQ(Chunks(*store), 2u + kJobs * 2u);
}

}  // namespace
}  // namespace tandem
