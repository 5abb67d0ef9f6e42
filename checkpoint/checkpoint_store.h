// CheckpointStore: one cloud's checkpoints in a RocksDB database on local disk.
//
// Layout: column family "manifests" maps "JOB/STEP(20 digits)" to a
// CheckpointManifest; column family "chunks" maps a 32-byte SHA-256 to the
// chunk's bytes (content-addressed, so a chunk already present is not written
// again); the default column family holds "latest/JOB" -> step and a
// "tandem-store" marker that says the database is ours. A checkpoint commits in
// one synced WriteBatch that writes its new chunks, its manifest and moves
// `latest`, so a crash mid-save leaves the previous checkpoint intact.
//
// One process opens a store for writing at a time (RocksDB's lock); a second
// Open fails with a message that says the store is locked. Methods are
// thread-safe. Every tensor chunk's SHA-256 is verified on Load.
#ifndef TANDEM_CHECKPOINT_CHECKPOINT_STORE_H_
#define TANDEM_CHECKPOINT_CHECKPOINT_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tandem/v1/checkpoint.pb.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class Snapshot;
}  // namespace rocksdb

namespace tandem {

// Borrowed bytes of one tensor to save; `data` must stay valid during Save.
struct TensorView {
  std::string name;
  v1::DType dtype = v1::DTYPE_FLOAT32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t bytes = 0;
};

// A tensor read back from the store, its bytes verified.
struct StoredTensor {
  std::string name;
  v1::DType dtype = v1::DTYPE_FLOAT32;
  std::vector<int64_t> shape;
  std::string bytes;
};

struct Checkpoint {
  v1::CheckpointManifest manifest;
  std::vector<StoredTensor> tensors;  // in manifest order
};

struct CheckpointStoreOptions {
  size_t chunk_bytes = 4 << 20;  // tensors are cut into chunks of this size
  bool create_if_missing = true;
  bool read_only = false;
};

class CheckpointStore {
 public:
  // Opens (or creates) the store in `dir`. FailedPrecondition if `dir` holds a
  // RocksDB database that is not a tandem store or holds something else;
  // Unavailable if another process holds the store open for writing.
  static absl::StatusOr<std::unique_ptr<CheckpointStore>> Open(
      const std::string& dir, const CheckpointStoreOptions& options = {});

  ~CheckpointStore();
  CheckpointStore(const CheckpointStore&) = delete;
  CheckpointStore& operator=(const CheckpointStore&) = delete;

  // Saves a checkpoint of manifest.job() at manifest.step(). The caller fills
  // job, step, global_cursor, epoch, layout, rng, spec, tags; Save fills the
  // tensor records, total_bytes, created_unix_ms, format_version and
  // state_digest (= StateDigest(tensors)). Then drops checkpoints of the job
  // beyond the newest `keep` (untagged ones only; keep == 0 keeps all) and the
  // chunks no manifest references. Returns the committed manifest.
  // The checkpoint just saved counts as the newest even when its step is lower
  // (a job rolled back), so retention never drops what was just written; the
  // retention deletes commit in the same synced WriteBatch as the checkpoint.
  // InvalidArgument for an empty job, a job containing '/', or a tensor without
  // a name, with a duplicate name, or with bytes but no data;
  // FailedPrecondition on a read-only store.
  absl::StatusOr<v1::CheckpointManifest> Save(v1::CheckpointManifest manifest,
                                              const std::vector<TensorView>& tensors,
                                              uint32_t keep);

  // Loads the checkpoint of `job` at `step` (nullopt = latest), verifying every
  // chunk's SHA-256. NotFound for a missing job or step; DataLoss naming the
  // tensor and chunk if a chunk is missing or corrupt.
  absl::StatusOr<Checkpoint> Load(const std::string& job,
                                  std::optional<uint64_t> step = std::nullopt) const;

  // Reads only the manifest (no chunk verification).
  absl::StatusOr<v1::CheckpointManifest> LoadManifest(
      const std::string& job, std::optional<uint64_t> step = std::nullopt) const;

  // The step `latest` points at; NotFound if the job has no checkpoint.
  absl::StatusOr<uint64_t> LatestStep(const std::string& job) const;

  // Checkpoints of `job` (or of every job when empty), oldest first per job.
  absl::StatusOr<std::vector<v1::CheckpointInfo>> List(const std::string& job = "") const;

  // Number of chunks in the store. Walks the whole chunks column family
  // (reading every value), so it is for tests and tools, not the save path.
  absl::StatusOr<uint64_t> CountChunks() const;

  const std::string& dir() const { return dir_; }

 private:
  CheckpointStore(std::string dir, CheckpointStoreOptions options);

  rocksdb::ColumnFamilyHandle* default_cf() const { return handles_[0]; }
  rocksdb::ColumnFamilyHandle* manifests_cf() const { return handles_[1]; }
  rocksdb::ColumnFamilyHandle* chunks_cf() const { return handles_[2]; }

  // Reads under `snapshot` so that a manifest and its chunks are seen as of
  // one moment even while Save drops old checkpoints.
  absl::StatusOr<uint64_t> ReadLatest(const rocksdb::Snapshot* snapshot,
                                      const std::string& job) const;
  absl::StatusOr<v1::CheckpointManifest> ReadManifest(const rocksdb::Snapshot* snapshot,
                                                      const std::string& job,
                                                      std::optional<uint64_t> step) const;
  // The steps of `job` present under `snapshot`, ascending.
  absl::StatusOr<std::vector<uint64_t>> ReadSteps(const rocksdb::Snapshot* snapshot,
                                                  const std::string& job) const;

  std::string dir_;
  CheckpointStoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  // default, manifests, chunks, then any other column family the database
  // has (RocksDB must open them all; we never touch them).
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  // Serializes Saves: each one reads which chunks exist and which manifests
  // reference them, then commits; a concurrent Save's garbage collection must
  // not delete a chunk this one decided it need not write.
  absl::Mutex save_mu_;
};

}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_CHECKPOINT_STORE_H_
