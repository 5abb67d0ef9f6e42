// CheckpointStore: one cloud's checkpoints in a RocksDB database on local disk.
//
// Layout: column family "manifests" maps "JOB/STEP(20 digits)" to a
// CheckpointManifest; column family "chunks" maps a 32-byte hash to the
// chunk's bytes (BLAKE3 for manifest format 3, SHA-256 for formats 1 and 2) (content-addressed, so
// a chunk already present is not written again; large values live in blob files); the default
// column family holds "latest/JOB" -> step and a "tandem-store" marker that says the database is
// ours.
//
// Save writes the chunks the store lacks outside the WAL and flushes them to
// disk (synced), then commits the manifest, the move of `latest` and the
// retention deletes in one small synced WriteBatch: a crash mid-save leaves
// the previous checkpoint intact, and the chunks of a save that did not commit
// are dropped at the next writable Open, before the store serves anything.
//
// One process opens a store for writing at a time (RocksDB's lock); a second
// Open fails with a message that says the store is locked. Methods are
// thread-safe; Save hashes on helper threads while it writes, and Load and
// Verify read chunks on two threads. Every tensor chunk's hash is verified
// on Load (and Verify, LoadLatestValid), and so is the manifest's state digest
// where the chunk keys give it (format 2 or 3 with the default 4 MiB chunks; see
// digest.h). After a write fails (e.g. the disk is full) the store takes no
// more writes until reopened; reads go on.
#ifndef TANDEM_CHECKPOINT_CHECKPOINT_STORE_H_
#define TANDEM_CHECKPOINT_CHECKPOINT_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tandem/v1/checkpoint.pb.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class Env;
class Snapshot;
class Status;
class WriteBatch;
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
  // The RocksDB Env the database does its file I/O through; nullptr = the
  // default Env. For tests and tools, e.g. one that wraps the default
  // FileSystem to inject faults. It must see the same files as the local file
  // system (Open also inspects `dir` directly); the store keeps it alive.
  std::shared_ptr<rocksdb::Env> env;
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
  // Chunks that a replication push wrote and no manifest references yet are
  // not dropped.
  // InvalidArgument for an empty job, a job containing '/', or a tensor without
  // a name, with a duplicate name, or with bytes but no data;
  // FailedPrecondition on a read-only store or once a write has failed;
  // ResourceExhausted if the disk is full. A stored chunk whose bytes are
  // damaged is written again when a checkpoint uses it, which repairs it.
  absl::StatusOr<v1::CheckpointManifest> Save(v1::CheckpointManifest manifest,
                                              const std::vector<TensorView>& tensors,
                                              uint32_t keep);

  // Loads the checkpoint of `job` at `step` (nullopt = latest), verifying every
  // chunk's hash. NotFound for a missing job or step; DataLoss naming the
  // tensor and chunk if a chunk is missing or corrupt.
  absl::StatusOr<Checkpoint> Load(const std::string& job,
                                  std::optional<uint64_t> step = std::nullopt) const;

  // Reads every chunk of the checkpoint of `job` at `step` and checks its size
  // and hash as Load does, without keeping the bytes. NotFound for a missing
  // job or step; DataLoss naming the job, step, tensor and chunk that is
  // missing or corrupt (or the manifest, if that is damaged).
  absl::Status Verify(const std::string& job, uint64_t step) const;

  struct VerifyReport {
    std::string job;
    uint64_t step = 0;
    bool latest = false;  // `latest` of the job points at this step
    absl::Status status;  // what Verify(job, step) returns
  };
  // Verifies every checkpoint of `job` (of every job when empty), one report
  // per checkpoint sorted by job then step, all as of one moment. A `latest`
  // pointer whose manifest is missing gets a report with DataLoss too. The
  // call itself fails only if the store cannot be listed (as List fails).
  absl::StatusOr<std::vector<VerifyReport>> VerifyAll(const std::string& job = "") const;

  // Loads the latest checkpoint of `job`. If it is damaged (DataLoss), tries
  // the job's checkpoints at lower steps, highest first, and returns the first
  // that verifies, appending to `warnings` (may be null) one sentence per
  // checkpoint skipped. Steps above `latest` (left from before the job rolled
  // back) are never used. NotFound if the job has no checkpoint; DataLoss
  // listing every checkpoint tried if none is intact; any other error (e.g. an
  // I/O error) is returned as is, without falling back.
  absl::StatusOr<Checkpoint> LoadLatestValid(const std::string& job,
                                             std::vector<std::string>* warnings) const;

  // Reads only the manifest (no chunk verification).
  absl::StatusOr<v1::CheckpointManifest> LoadManifest(
      const std::string& job, std::optional<uint64_t> step = std::nullopt) const;

  // The step `latest` points at; NotFound if the job has no checkpoint.
  absl::StatusOr<uint64_t> LatestStep(const std::string& job) const;

  // Checkpoints of `job` (or of every job when empty), oldest first per job.
  absl::StatusOr<std::vector<v1::CheckpointInfo>> List(const std::string& job = "") const;

  // Number of chunks in the store. Walks the whole chunks column family
  // (reading every value), so it is for tests and tools, not the save path.
  // Counts chunks left by a save that did not commit until a writable Open
  // drops them.
  absl::StatusOr<uint64_t> CountChunks() const;

  const std::string& dir() const { return dir_; }

  // Replication: the primitives CheckpointReplication (checkpoint/replication.h)
  // moves a checkpoint between stores with, sending only the chunks the
  // receiver lacks. Chunk keys are 32-byte hashes of the chunk's bytes, BLAKE3
  // or (manifests of formats 1 and 2) SHA-256; InvalidArgument for any other
  // length.

  // The subset of `sha256s` this store lacks, in the given order, without
  // duplicates. A stored chunk that is unreadable or fails its hash counts
  // as missing, so that the sender's copy replaces it. Reads (and hashes) every
  // present chunk.
  absl::StatusOr<std::vector<std::string>> MissingChunks(
      const std::vector<std::string>& sha256s) const;

  // The bytes of one chunk, verified. NotFound if absent; DataLoss if they fail
  // their hash.
  absl::StatusOr<std::string> ReadChunk(const std::string& sha256) const;

  // Stores (sha256, bytes) pairs in one synced WriteBatch after checking that
  // each one's bytes hash to its key (by either hash); InvalidArgument naming the first that
  // does not, and then nothing is written. Chunks no committed manifest
  // references yet (a push cut short) stay, kept from garbage collection,
  // until a CommitManifest (or Save) references them or the store is closed:
  // the next writable Open drops them, so a push interrupted by the
  // receiver's restart sends them again. FailedPrecondition on a read-only
  // store or once a write has failed.
  absl::Status WriteChunks(const std::vector<std::pair<std::string, std::string>>& chunks);

  // Commits a manifest that another store's Save made, its chunks already
  // written with WriteChunks: checks that every chunk it names is present with
  // the recorded size and its format's hash and that the tensors' bytes give its
  // state_digest (by the definition of its format_version, see digest.h), then, in one synced
  // WriteBatch, writes the manifest as given, moves the job's `latest` to it and applies Save's
  // retention with `keep` (the committed checkpoint counts as the newest). Returns the manifest.
  // FailedPrecondition naming the first missing chunk, or on a read-only store;
  // DataLoss for a chunk of the wrong size or hash, or a state digest that does
  // not match; InvalidArgument for a malformed manifest (bad job name, empty or
  // duplicate tensor names, malformed hashes, total_bytes that disagrees with
  // the chunk sizes, unknown format_version).
  absl::StatusOr<v1::CheckpointManifest> CommitManifest(const v1::CheckpointManifest& manifest,
                                                        uint32_t keep);

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
  // Chunks (hash -> size) found intact under one snapshot; defined in the .cc.
  struct IntactChunks;
  // Reads every chunk `manifest` references under `snapshot` (on two
  // threads), checking size and hash; appends the tensors to `tensors`
  // unless it is null. Of several damaged chunks, names the first in manifest
  // order. Chunks in `intact` (may be null; only when `tensors` is null) are
  // not read again, and the ones found intact are added to it.
  absl::Status ReadChunks(const rocksdb::Snapshot* snapshot, const v1::CheckpointManifest& manifest,
                          std::vector<StoredTensor>* tensors, IntactChunks* intact) const;
  absl::StatusOr<Checkpoint> LoadUnder(const rocksdb::Snapshot* snapshot, const std::string& job,
                                       std::optional<uint64_t> step) const;
  // Adds to `batch` what committing `manifest` as its job's newest checkpoint
  // implies: drop the job's checkpoints beyond the newest `keep` (untagged
  // ones only; 0 keeps all) and the chunks that only dropped or replaced
  // checkpoints referenced, except pending ones (see pending_).
  absl::Status AddRetention(const v1::CheckpointManifest& manifest, uint32_t keep,
                            rocksdb::WriteBatch* batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(save_mu_);
  // Commits `manifest`, whose chunks are all durably stored, as its job's
  // newest checkpoint with retention `keep`: one synced WriteBatch writes it,
  // moves `latest`, applies AddRetention and deletes the pending markers of
  // the chunks it references. Save and CommitManifest end here.
  absl::StatusOr<v1::CheckpointManifest> CommitCheckpoint(const v1::CheckpointManifest& manifest,
                                                          uint32_t keep, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(save_mu_);
  // At a writable Open: drops the chunks that pending markers name and no
  // manifest references (a save or push that did not commit), then the
  // markers. Leaves them all if a manifest does not parse.
  absl::Status DropUncommittedChunks();

  // Every write to db_ after Open goes through here; `what` names it in
  // errors. Once one fails, RocksDB must not be written again (7.8 asserts in
  // its WAL writer after ENOSPC, or repeats the old error; a failed flush
  // stops the database), so every later call fails with FailedPrecondition
  // saying to reopen the store. Reads keep working.
  absl::Status GuardedWrite(const std::string& what, const std::function<rocksdb::Status()>& write);
  // Writes `batch` through the WAL, synced.
  absl::Status Commit(rocksdb::WriteBatch* batch, const std::string& what);
  // Writes `batch` (chunks and their pending markers) to the memtable only,
  // not the WAL: durable once FlushChunks has returned.
  absl::Status WriteUnlogged(rocksdb::WriteBatch* batch, const std::string& what);
  // Flushes the chunks column family and waits until its files are synced
  // and recorded in RocksDB's MANIFEST.
  absl::Status FlushChunks(const std::string& what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(save_mu_);

  std::string dir_;
  CheckpointStoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  // default, manifests, chunks, then any other column family the database
  // has (RocksDB must open them all; we never touch them).
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  // Serializes Saves, WriteChunks and CommitManifests: each one reads which
  // chunks exist and which manifests reference them, then commits; a
  // concurrent Save's garbage collection must not delete a chunk this one
  // decided it need not write.
  absl::Mutex save_mu_;
  // Chunks written since Open whose pending markers are still stored: a
  // Save's until it commits, a push's until a commit references them. Garbage
  // collection keeps them (a push may be about to commit them).
  std::unordered_set<std::string> pending_ ABSL_GUARDED_BY(save_mu_);
  // Chunk flushes since the last one that also flushed the other column
  // families, which releases the WAL files their small commits pin.
  uint32_t flushes_since_full_flush_ ABSL_GUARDED_BY(save_mu_) = 0;
  // Held across each write, so that none starts after one failed.
  absl::Mutex commit_mu_;
  absl::Status write_failure_ ABSL_GUARDED_BY(commit_mu_);
};

}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_CHECKPOINT_STORE_H_
