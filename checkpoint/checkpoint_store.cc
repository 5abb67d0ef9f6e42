#include "checkpoint/checkpoint_store.h"

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/snapshot.h>
#include <rocksdb/status.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/digest.h"
#include "checkpoint/store_internal.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using store_internal::CheckJob;
using store_internal::FromRocks;
using store_internal::HashPrefix;
using store_internal::kChunksCf;
using store_internal::kKeyBytes;
using store_internal::kLatestPrefix;
using store_internal::kManifestFormatVersion;
using store_internal::kManifestsCf;
using store_internal::kMarkerKey;
using store_internal::kPendingPrefix;
using store_internal::kStoreFormatVersion;
using store_internal::LatestKey;
using store_internal::ManifestChunks;
using store_internal::ManifestKey;
using store_internal::ManifestPrefix;
using store_internal::ParseManifestKey;
using store_internal::PendingKey;

// Chunks at least this large go to blob files, so compactions of the chunks
// column family move 32-byte keys and blob references, not tensor bytes.
constexpr uint64_t kMinBlobSize = 64 << 10;
// A save's chunks fill memtables of this size; each full one is flushed in
// the background while the save hashes and writes the next, and the save
// waits for the last one only. Several, so that writes rarely stall, and two
// flush threads: a flush is CPU-bound (the blob records' CRC32C is computed in
// software by this RocksDB build). Smaller memtables would shorten that last
// wait but make more blob files, and so more compactions and more rounds of
// blob garbage collection.
constexpr size_t kChunksWriteBufferBytes = 32 << 20;
constexpr int kChunksWriteBuffers = 4;
constexpr int kFlushThreads = 2;
// Each flush adds a small L0 file (32-byte keys and blob references) and a
// blob file; compacting every 8 rather than 4 L0 files halves the rounds of
// blob garbage collection that come with compactions.
constexpr int kChunksL0CompactionTrigger = 8;
// Start writeback of flushed files every this many bytes, so that the sync at
// the end of a flush waits for little.
constexpr uint64_t kBytesPerSync = 1 << 20;
// Every this many chunk flushes, the other column families are flushed too.
// Their data (small commits) comes through the WAL, and each chunk flush
// starts a new WAL file; a WAL file is kept until every column family holding
// its data has been flushed.
constexpr uint32_t kFullFlushInterval = 16;
// Load and Verify read and hash chunks on this many threads.
constexpr int kReadThreads = 2;
// Save hashes chunks on this many threads while its own thread writes them.
constexpr int kHashThreads = 2;
constexpr size_t kStepsInMessage = 16;

rocksdb::ColumnFamilyOptions ChunksCfOptions() {
  rocksdb::ColumnFamilyOptions o;
  // Raw fp32 barely compresses; savings come from deduplication.
  o.compression = rocksdb::kNoCompression;
  o.enable_blob_files = true;
  o.min_blob_size = kMinBlobSize;
  o.blob_file_size = 256 << 20;
  o.blob_compression_type = rocksdb::kNoCompression;
  // Reclaims the space of chunks that garbage collection deleted.
  o.enable_blob_garbage_collection = true;
  o.write_buffer_size = kChunksWriteBufferBytes;
  o.max_write_buffer_number = kChunksWriteBuffers;
  o.level0_file_num_compaction_trigger = kChunksL0CompactionTrigger;
  return o;
}

rocksdb::ColumnFamilyOptions CfOptionsFor(const std::string& name) {
  if (name == kChunksCf) return ChunksCfOptions();
  return rocksdb::ColumnFamilyOptions();
}

std::string StepsText(const std::vector<uint64_t>& steps) {
  if (steps.size() <= kStepsInMessage) return absl::StrJoin(steps, ", ");
  std::vector<uint64_t> last(steps.end() - kStepsInMessage, steps.end());
  return absl::StrCat("... ", absl::StrJoin(last, ", "), " (", steps.size(), " in all)");
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Keeps RocksDB from recovering by itself from a background error (a full
// disk during a flush, say; by default it waits for free space and flushes
// again): the store takes no more writes after one failed until reopened, and
// a Save whose flush failed must say so, not race RocksDB's retry of it.
class NoAutoRecovery : public rocksdb::EventListener {
 public:
  const char* Name() const override { return "tandem.NoAutoRecovery"; }
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason reason, rocksdb::Status bg_error,
                            bool* auto_recovery) override {
    *auto_recovery = false;
  }
};

// A thread joined when it goes out of scope (say, on an early return).
class ScopedThread {
 public:
  template <typename F>
  explicit ScopedThread(F&& f) : thread_(std::forward<F>(f)) {}
  ~ScopedThread() { Join(); }
  ScopedThread(const ScopedThread&) = delete;
  ScopedThread& operator=(const ScopedThread&) = delete;
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::thread thread_;
};

// Borrowed bytes of one chunk of a tensor being saved.
struct ChunkSpan {
  const char* data;
  size_t size;
};

// Hashes chunks on kHashThreads threads of its own, in about manifest order,
// so that Save writes chunk i while later ones are being hashed. The
// destructor stops hashing and joins.
class ChunkHasher {
 public:
  explicit ChunkHasher(const std::vector<ChunkSpan>* spans)
      : spans_(spans), digests_(spans->size()), done_(spans->size(), false) {
    for (int t = 0; t < kHashThreads && static_cast<size_t>(t) < spans->size(); ++t) {
      threads_[t].emplace([this] { Run(); });
    }
  }
  ~ChunkHasher() {
    stop_.store(true, std::memory_order_relaxed);
    for (std::optional<ScopedThread>& t : threads_) t.reset();
  }
  ChunkHasher(const ChunkHasher&) = delete;
  ChunkHasher& operator=(const ChunkHasher&) = delete;

  // The key (BLAKE3) of chunk `i`, waiting until it is known.
  Hash256 Digest(size_t i) {
    absl::MutexLock lock(&mu_);
    while (!done_[i]) cv_.Wait(&mu_);
    return digests_[i];
  }

 private:
  void Run() {
    for (size_t i = next_.fetch_add(1);
         i < spans_->size() && !stop_.load(std::memory_order_relaxed); i = next_.fetch_add(1)) {
      const Hash256 digest =
          PieceHashOf(kManifestFormatVersion, (*spans_)[i].data, (*spans_)[i].size);
      absl::MutexLock lock(&mu_);
      digests_[i] = digest;
      done_[i] = true;
      cv_.SignalAll();
    }
  }

  const std::vector<ChunkSpan>* const spans_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<Hash256> digests_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> done_ ABSL_GUARDED_BY(mu_);
  std::atomic<size_t> next_{0};
  std::atomic<bool> stop_{false};
  std::optional<ScopedThread> threads_[kHashThreads];  // last: start once the members above exist
};

// The state digest of `m` from its chunk keys alone, where its format
// computes the digest over pieces that are exactly its chunks (every chunk
// but a tensor's last is kStateDigestPieceBytes); nullopt otherwise, when
// only the bytes would give it.
std::optional<std::string> DigestFromChunkKeys(const v1::CheckpointManifest& m) {
  if (m.format_version() < 2) return std::nullopt;
  StateDigestBuilder digest(m.format_version());
  for (const v1::TensorRecord& t : m.tensors()) {
    uint64_t bytes = 0;
    for (const v1::ChunkRef& c : t.chunks()) bytes += c.size();
    digest.BeginTensor(t.name(), bytes);
    for (const v1::ChunkRef& c : t.chunks()) {
      if (c.sha256().size() != kKeyBytes || !digest.IsPiece(c.size())) return std::nullopt;
      Hash256 key;
      std::memcpy(key.data(), c.sha256().data(), key.size());
      digest.AddPiece(key, c.size());
    }
  }
  return digest.Finish();
}

}  // namespace

CheckpointStore::CheckpointStore(std::string dir, CheckpointStoreOptions options)
    : dir_(std::move(dir)), options_(options) {}

CheckpointStore::~CheckpointStore() {
  if (db_ == nullptr) return;
  for (rocksdb::ColumnFamilyHandle* h : handles_) {
    // Fails only for the DB's own default handle, which Open never returns.
    db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  }
  handles_.clear();
  // Every commit was synced (and the chunks it references flushed), so a
  // failed close loses nothing; there is no caller left to tell.
  db_->Close().PermitUncheckedError();
}

absl::StatusOr<std::unique_ptr<CheckpointStore>> CheckpointStore::Open(
    const std::string& dir, const CheckpointStoreOptions& options) {
  if (dir.empty()) return absl::InvalidArgumentError("checkpoint store directory is empty");
  if (options.chunk_bytes == 0) {
    return absl::InvalidArgumentError("checkpoint store chunk_bytes must be positive");
  }

  std::error_code ec;
  const bool exists = fs::exists(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot inspect checkpoint store directory ", dir, ": ", ec.message()));
  }
  bool has_db = false;
  if (exists) {
    if (!fs::is_directory(dir, ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, " exists and is not a directory; it cannot hold a checkpoint store"));
    }
    has_db = fs::exists(fs::path(dir) / "CURRENT", ec);
    if (!has_db) {
      const bool empty = fs::is_empty(dir, ec);
      if (ec) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot list checkpoint store directory ", dir, ": ", ec.message()));
      }
      if (!empty) {
        return absl::FailedPreconditionError(absl::StrCat(
            dir,
            " is not empty and holds no RocksDB database (no CURRENT file); refusing to create a "
            "checkpoint store among other files: pick a new or empty directory"));
      }
    }
  }
  if (!has_db && (options.read_only || !options.create_if_missing)) {
    return absl::NotFoundError(absl::StrCat("no checkpoint store at ", dir));
  }

  rocksdb::DBOptions db_options;
  db_options.keep_log_file_num = 5;
  db_options.bytes_per_sync = kBytesPerSync;
  db_options.max_background_flushes = kFlushThreads;
  db_options.listeners.push_back(std::make_shared<NoAutoRecovery>());
  db_options.max_bgerror_resume_count = 0;  // nor retry after a retryable I/O error
  if (options.env != nullptr) db_options.env = options.env.get();
  std::vector<std::string> cf_names;
  if (has_db) {
    rocksdb::Status s = rocksdb::DB::ListColumnFamilies(db_options, dir, &cf_names);
    if (!s.ok()) return FromRocks(s, dir, "reading the list of column families");
    for (const char* ours : {kManifestsCf, kChunksCf}) {
      if (std::find(cf_names.begin(), cf_names.end(), ours) == cf_names.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            dir, " is a RocksDB database but not a tandem checkpoint store (it has no \"", ours,
            "\" column family)"));
      }
    }
  } else {
    db_options.create_if_missing = true;
    db_options.create_missing_column_families = true;
  }

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = {
      {rocksdb::kDefaultColumnFamilyName, CfOptionsFor(rocksdb::kDefaultColumnFamilyName)},
      {kManifestsCf, CfOptionsFor(kManifestsCf)},
      {kChunksCf, CfOptionsFor(kChunksCf)}};
  for (const std::string& name : cf_names) {
    if (name != rocksdb::kDefaultColumnFamilyName && name != kManifestsCf && name != kChunksCf) {
      descriptors.push_back({name, rocksdb::ColumnFamilyOptions()});
    }
  }

  std::unique_ptr<CheckpointStore> store(new CheckpointStore(dir, options));
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s =
      options.read_only ? rocksdb::DB::OpenForReadOnly(db_options, dir, descriptors, &handles, &raw)
                        : rocksdb::DB::Open(db_options, dir, descriptors, &handles, &raw);
  if (!s.ok()) {
    return FromRocks(s, dir,
                     has_db ? "opening the database" : "creating a new checkpoint store database");
  }
  store->db_.reset(raw);
  store->handles_ = std::move(handles);

  const rocksdb::WriteOptions sync_write = [] {
    rocksdb::WriteOptions w;
    w.sync = true;
    return w;
  }();
  const std::string marker_value = absl::StrCat(kStoreFormatVersion);
  if (!has_db) {
    s = store->db_->Put(sync_write, store->default_cf(), kMarkerKey, marker_value);
    if (!s.ok()) return FromRocks(s, dir, "writing the tandem-store marker");
    return store;
  }

  std::string marker;
  s = store->db_->Get(rocksdb::ReadOptions(), store->default_cf(), kMarkerKey, &marker);
  if (s.IsNotFound()) {
    // A store whose creation stopped between creating the column families and
    // writing the marker is still empty; take it over rather than strand it.
    bool empty = true;
    for (rocksdb::ColumnFamilyHandle* h : store->handles_) {
      std::unique_ptr<rocksdb::Iterator> it(store->db_->NewIterator(rocksdb::ReadOptions(), h));
      it->SeekToFirst();
      if (it->Valid()) empty = false;
      TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir, "checking whether the store is empty"));
    }
    if (!empty || options.read_only) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, " is a RocksDB database but not a tandem checkpoint store (no \"",
                       kMarkerKey, "\" marker)"));
    }
    s = store->db_->Put(sync_write, store->default_cf(), kMarkerKey, marker_value);
    if (!s.ok()) return FromRocks(s, dir, "writing the tandem-store marker");
    return store;
  }
  if (!s.ok()) return FromRocks(s, dir, "reading the tandem-store marker");
  uint32_t version = 0;
  if (!absl::SimpleAtoi(marker, &version) || version == 0) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " has a \"", kMarkerKey,
                                                      "\" marker that does not parse: \"",
                                                      absl::CHexEscape(marker), "\""));
  }
  if (version > kStoreFormatVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is a tandem checkpoint store of format %d, newer than this build reads (%d); "
        "use a newer tandem",
        dir, version, kStoreFormatVersion));
  }
  // Before the caller can start a save or serve a replication push, so that
  // no chunk dropped here is one that a save or push in progress relies on.
  if (!options.read_only) TANDEM_RETURN_IF_ERROR(store->DropUncommittedChunks());
  return store;
}

absl::StatusOr<v1::CheckpointManifest> CheckpointStore::Save(v1::CheckpointManifest manifest,
                                                             const std::vector<TensorView>& tensors,
                                                             uint32_t keep) {
  const std::string job = manifest.job();
  const uint64_t step = manifest.step();
  if (options_.read_only) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot save job %s step %d: checkpoint store %s is open read-only", job, step, dir_));
  }
  TANDEM_RETURN_IF_ERROR(CheckJob(job));
  std::unordered_set<std::string> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& t = tensors[i];
    if (t.name.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("tensor #%d has no name", i));
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name ", t.name, " appears twice in one checkpoint"));
    }
    if (t.data == nullptr && t.bytes > 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tensor %s has %d bytes but no data", t.name, t.bytes));
    }
  }

  std::vector<ChunkSpan> spans;  // in manifest order
  for (const TensorView& t : tensors) {
    const char* data = static_cast<const char*>(t.data);
    for (size_t offset = 0; offset < t.bytes; offset += options_.chunk_bytes) {
      spans.push_back({data + offset, std::min(options_.chunk_bytes, t.bytes - offset)});
    }
  }
  // Hashing is the expensive part: the chunk keys on helper threads, while
  // this thread writes each chunk as soon as its key is known. With chunks of
  // the state digest's piece size the keys give the state digest too;
  // otherwise it takes a pass of its own, on one more thread.
  const bool digest_from_keys = options_.chunk_bytes == kStateDigestPieceBytes;
  std::string state_digest;
  ScopedThread digest_thread([&state_digest, &tensors, digest_from_keys] {
    if (!digest_from_keys) state_digest = StateDigest(tensors);
  });
  StateDigestBuilder digest(kManifestFormatVersion);
  ChunkHasher hasher(&spans);

  const std::string what = absl::StrFormat("committing checkpoint of job %s step %d", job, step);
  absl::MutexLock lock(&save_mu_);
  manifest.clear_tensors();
  uint64_t total_bytes = 0;
  std::unordered_set<std::string> chunk_keys;
  bool wrote = false;
  size_t next = 0;
  const rocksdb::ReadOptions read = store_internal::ChunkReadOptions();
  // One batch, reused: a fresh multi-MiB buffer per chunk would fault in a
  // copy of the state's worth of new pages.
  size_t largest_chunk = 0;
  for (const ChunkSpan& span : spans) largest_chunk = std::max(largest_chunk, span.size);
  rocksdb::WriteBatch batch(largest_chunk + 2 * kKeyBytes + sizeof(kPendingPrefix) + 64);
  for (const TensorView& t : tensors) {
    v1::TensorRecord* record = manifest.add_tensors();
    record->set_name(t.name);
    record->set_dtype(t.dtype);
    for (int64_t d : t.shape) record->add_shape(d);
    if (digest_from_keys) digest.BeginTensor(t.name, t.bytes);
    for (size_t offset = 0; offset < t.bytes; offset += options_.chunk_bytes, ++next) {
      const rocksdb::Slice bytes(spans[next].data, spans[next].size);
      const Hash256 hash = hasher.Digest(next);
      if (digest_from_keys) digest.AddPiece(hash, bytes.size());
      std::string key(reinterpret_cast<const char*>(hash.data()), hash.size());
      v1::ChunkRef* ref = record->add_chunks();
      ref->set_sha256(key);
      ref->set_size(bytes.size());
      if (!chunk_keys.insert(key).second) continue;
      // A chunk the store lacks costs a lookup; one it has is read whole and
      // compared. A stored chunk that is unreadable or whose bytes differ from
      // the ones that hash to its key is damaged; writing it again repairs it
      // for every checkpoint that shares it, instead of this one inheriting
      // the damage. Only reading the bytes finds that, so no index of chunk
      // keys would spare the read (nor would KeyMayExist: in RocksDB 7.8 it
      // runs the same lookup and copies the value).
      rocksdb::PinnableSlice value;
      const rocksdb::Status s = db_->Get(read, chunks_cf(), key, &value);
      if (s.ok() && value == bytes) continue;
      if (!s.ok() && !s.IsNotFound() && !s.IsCorruption()) {
        return FromRocks(s, dir_, "checking which chunks are already stored");
      }
      value.Reset();
      // Outside the WAL (the bytes would be written twice), with its pending
      // marker in the same batch, hence in the same memtable and flush.
      const std::string marker = PendingKey(key);
      batch.Clear();
      batch.Put(chunks_cf(), key, bytes);
      batch.Put(chunks_cf(), marker, rocksdb::Slice());
      TANDEM_RETURN_IF_ERROR(WriteUnlogged(&batch, absl::StrCat(what, ": writing a chunk")));
      pending_.insert(std::move(key));
      wrote = true;
    }
    total_bytes += t.bytes;
  }
  // The chunks are on disk before the manifest that references them commits.
  if (wrote) TANDEM_RETURN_IF_ERROR(FlushChunks(absl::StrCat(what, ": flushing its chunks")));
  digest_thread.Join();
  if (digest_from_keys) state_digest = digest.Finish();
  manifest.set_format_version(kManifestFormatVersion);
  manifest.set_total_bytes(total_bytes);
  manifest.set_state_digest(state_digest);
  manifest.set_created_unix_ms(NowUnixMs());
  return CommitCheckpoint(manifest, keep, what);
}

absl::Status CheckpointStore::AddRetention(const v1::CheckpointManifest& manifest, uint32_t keep,
                                           rocksdb::WriteBatch* batch) {
  const std::string& job = manifest.job();
  const uint64_t step = manifest.step();
  const rocksdb::ReadOptions read;
  // This job's other checkpoints, and the chunks that may become unreferenced:
  // those of a checkpoint replaced at the same step or dropped by retention.
  struct Existing {
    uint64_t step;
    bool tagged;
    std::vector<std::string> chunks;
  };
  std::vector<Existing> existing;
  std::unordered_set<std::string> candidates;
  auto bad_manifest = [this](const rocksdb::Slice& key) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint store ", dir_, ": manifest \"", absl::CHexEscape(key.ToString()),
        "\" does not parse; refusing to commit, since garbage collection cannot know which "
        "chunks it references"));
  };
  const std::string prefix = ManifestPrefix(job);
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, manifests_cf()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      std::string key_job;
      uint64_t key_step = 0;
      v1::CheckpointManifest m;
      if (!ParseManifestKey(it->key(), &key_job, &key_step) || key_job != job ||
          !m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return bad_manifest(it->key());
      }
      if (key_step == step) {
        for (std::string& c : ManifestChunks(m)) candidates.insert(std::move(c));
      } else {
        existing.push_back({key_step, m.tags_size() > 0, ManifestChunks(m)});
      }
    }
    TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "reading the job's manifests"));
  }

  // The checkpoint being committed is the newest, whatever its step (a job
  // rolled back to an older step keeps what it saves next).
  std::vector<const Existing*> kept;
  if (keep > 0) {
    uint32_t slots = manifest.tags_size() > 0 ? keep : keep - 1;
    std::sort(existing.begin(), existing.end(),
              [](const Existing& a, const Existing& b) { return a.step > b.step; });
    for (const Existing& e : existing) {
      if (e.tagged || slots > 0) {
        if (!e.tagged) --slots;
        kept.push_back(&e);
        continue;
      }
      batch->Delete(manifests_cf(), ManifestKey(job, e.step));
      for (const std::string& c : e.chunks) candidates.insert(c);
    }
  } else {
    for (const Existing& e : existing) kept.push_back(&e);
  }

  for (const std::string& c : ManifestChunks(manifest)) candidates.erase(c);
  for (const Existing* e : kept) {
    for (const std::string& c : e->chunks) candidates.erase(c);
  }
  // A chunk a push wrote for a manifest still to come must stay.
  for (auto c = candidates.begin(); c != candidates.end();) {
    c = pending_.count(*c) > 0 ? candidates.erase(c) : std::next(c);
  }
  if (candidates.empty()) return absl::OkStatus();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, manifests_cf()));
  for (it->SeekToFirst(); it->Valid() && !candidates.empty(); it->Next()) {
    if (it->key().starts_with(prefix)) continue;
    v1::CheckpointManifest m;
    if (!m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return bad_manifest(it->key());
    }
    for (const v1::TensorRecord& t : m.tensors()) {
      for (const v1::ChunkRef& c : t.chunks()) candidates.erase(c.sha256());
    }
  }
  TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "reading manifests"));
  for (const std::string& c : candidates) batch->Delete(chunks_cf(), c);
  return absl::OkStatus();
}

absl::StatusOr<v1::CheckpointManifest> CheckpointStore::CommitCheckpoint(
    const v1::CheckpointManifest& manifest, uint32_t keep, const std::string& what) {
  const std::string& job = manifest.job();
  const uint64_t step = manifest.step();
  std::string manifest_bytes;
  if (!manifest.SerializeToString(&manifest_bytes)) {
    return absl::InternalError(
        absl::StrFormat("cannot serialize the manifest of job %s step %d", job, step));
  }
  rocksdb::WriteBatch batch;
  TANDEM_RETURN_IF_ERROR(AddRetention(manifest, keep, &batch));
  batch.Put(manifests_cf(), ManifestKey(job, step), manifest_bytes);
  batch.Put(default_cf(), LatestKey(job), absl::StrCat(step));
  std::unordered_set<std::string> settled;
  for (std::string& key : ManifestChunks(manifest)) {
    if (pending_.count(key) == 0) continue;
    const std::string marker = PendingKey(key);
    if (settled.insert(std::move(key)).second) batch.Delete(chunks_cf(), marker);
  }
  TANDEM_RETURN_IF_ERROR(Commit(&batch, what));
  for (const std::string& key : settled) pending_.erase(key);
  return manifest;
}

absl::Status CheckpointStore::DropUncommittedChunks() {
  std::unordered_set<std::string> pending;
  {
    const std::string bound = store_internal::PendingUpperBound();
    const rocksdb::Slice upper(bound);
    rocksdb::ReadOptions read;
    // Stops the iterator before it loads the blob of the chunk after the last
    // marker: this costs a seek, not a read of the chunks.
    read.iterate_upper_bound = &upper;
    constexpr size_t kPrefixBytes = sizeof(kPendingPrefix) - 1;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, chunks_cf()));
    for (it->Seek(kPendingPrefix); it->Valid(); it->Next()) {
      const rocksdb::Slice key = it->key();
      if (key.size() == kPrefixBytes + kKeyBytes && key.starts_with(kPendingPrefix)) {
        pending.emplace(key.data() + kPrefixBytes, kKeyBytes);
      }
    }
    TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "listing uncommitted chunks"));
  }
  if (pending.empty()) return absl::OkStatus();

  std::unordered_set<std::string> unreferenced = pending;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), manifests_cf()));
  for (it->SeekToFirst(); it->Valid() && !unreferenced.empty(); it->Next()) {
    v1::CheckpointManifest m;
    // Which chunks a damaged manifest references is unknown: keep them all
    // (Verify reports the damage).
    if (!m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::OkStatus();
    }
    for (const v1::TensorRecord& t : m.tensors()) {
      for (const v1::ChunkRef& c : t.chunks()) unreferenced.erase(c.sha256());
    }
  }
  TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "reading manifests"));
  rocksdb::WriteBatch batch;
  for (const std::string& key : pending) batch.Delete(chunks_cf(), PendingKey(key));
  for (const std::string& key : unreferenced) batch.Delete(chunks_cf(), key);
  return Commit(&batch, absl::StrFormat("dropping %d chunks that no checkpoint committed",
                                        unreferenced.size()));
}

absl::Status CheckpointStore::GuardedWrite(const std::string& what,
                                           const std::function<rocksdb::Status()>& write) {
  absl::MutexLock lock(&commit_mu_);
  if (!write_failure_.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": checkpoint store ", dir_, " takes no more writes after one failed (",
                     write_failure_.message(),
                     "); reopen the store, which keeps every checkpoint committed before"));
  }
  absl::Status status = FromRocks(write(), dir_, what);
  if (!status.ok()) write_failure_ = status;
  return status;
}

absl::Status CheckpointStore::Commit(rocksdb::WriteBatch* batch, const std::string& what) {
  rocksdb::WriteOptions write;
  write.sync = true;
  return GuardedWrite(what, [&] { return db_->Write(write, batch); });
}

absl::Status CheckpointStore::WriteUnlogged(rocksdb::WriteBatch* batch, const std::string& what) {
  rocksdb::WriteOptions write;
  write.disableWAL = true;
  return GuardedWrite(what, [&] { return db_->Write(write, batch); });
}

absl::Status CheckpointStore::FlushChunks(const std::string& what) {
  std::vector<rocksdb::ColumnFamilyHandle*> cfs = {chunks_cf()};
  if (++flushes_since_full_flush_ >= kFullFlushInterval) {
    cfs.push_back(manifests_cf());
    cfs.push_back(default_cf());
    flushes_since_full_flush_ = 0;
  }
  rocksdb::FlushOptions flush;
  flush.wait = true;
  return GuardedWrite(what, [&] { return db_->Flush(flush, cfs); });
}

absl::StatusOr<uint64_t> CheckpointStore::ReadLatest(const rocksdb::Snapshot* snapshot,
                                                     const std::string& job) const {
  rocksdb::ReadOptions read;
  read.snapshot = snapshot;
  std::string value;
  rocksdb::Status s = db_->Get(read, default_cf(), LatestKey(job), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("no checkpoint for job ", job, " in ", dir_));
  }
  TANDEM_RETURN_IF_ERROR(FromRocks(s, dir_, absl::StrCat("reading the latest step of job ", job)));
  uint64_t step = 0;
  if (!absl::SimpleAtoi(value, &step)) {
    return absl::DataLossError(absl::StrCat("checkpoint store ", dir_, ": latest step of job ", job,
                                            " does not parse: \"", absl::CHexEscape(value), "\""));
  }
  return step;
}

absl::StatusOr<std::vector<uint64_t>> CheckpointStore::ReadSteps(const rocksdb::Snapshot* snapshot,
                                                                 const std::string& job) const {
  rocksdb::ReadOptions read;
  read.snapshot = snapshot;
  const std::string prefix = ManifestPrefix(job);
  std::vector<uint64_t> steps;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, manifests_cf()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    std::string key_job;
    uint64_t step = 0;
    if (ParseManifestKey(it->key(), &key_job, &step) && key_job == job) steps.push_back(step);
  }
  TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "listing manifests"));
  return steps;
}

absl::StatusOr<v1::CheckpointManifest> CheckpointStore::ReadManifest(
    const rocksdb::Snapshot* snapshot, const std::string& job, std::optional<uint64_t> step) const {
  uint64_t at = 0;
  if (step.has_value()) {
    at = *step;
  } else {
    absl::StatusOr<uint64_t> latest = ReadLatest(snapshot, job);
    if (!latest.ok()) return latest.status();
    at = *latest;
  }
  rocksdb::ReadOptions read;
  read.snapshot = snapshot;
  std::string value;
  rocksdb::Status s = db_->Get(read, manifests_cf(), ManifestKey(job, at), &value);
  if (s.IsNotFound()) {
    if (!step.has_value()) {
      return absl::DataLossError(
          absl::StrFormat("checkpoint store %s: the latest checkpoint of job %s is step %d, but "
                          "its manifest is missing",
                          dir_, job, at));
    }
    absl::StatusOr<std::vector<uint64_t>> steps = ReadSteps(snapshot, job);
    if (!steps.ok()) return steps.status();
    if (steps->empty()) {
      return absl::NotFoundError(absl::StrCat("no checkpoint for job ", job, " in ", dir_));
    }
    return absl::NotFoundError(absl::StrFormat(
        "job %s has no checkpoint at step %d; it has steps: %s", job, at, StepsText(*steps)));
  }
  TANDEM_RETURN_IF_ERROR(
      FromRocks(s, dir_, absl::StrFormat("reading the manifest of job %s step %d", job, at)));
  v1::CheckpointManifest manifest;
  if (!manifest.ParseFromString(value) || manifest.job() != job || manifest.step() != at) {
    return absl::DataLossError(absl::StrFormat(
        "checkpoint store %s: the manifest of job %s step %d is damaged", dir_, job, at));
  }
  if (manifest.format_version() > kManifestFormatVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "checkpoint of job %s step %d in %s has manifest format %d, newer than this build "
        "reads (%d)",
        job, at, dir_, manifest.format_version(), kManifestFormatVersion));
  }
  return manifest;
}

struct CheckpointStore::IntactChunks {
  std::unordered_map<std::string, uint64_t> sizes;
};

absl::Status CheckpointStore::ReadChunks(const rocksdb::Snapshot* snapshot,
                                         const v1::CheckpointManifest& manifest,
                                         std::vector<StoredTensor>* tensors,
                                         IntactChunks* intact) const {
  // The chunks to read, in manifest order; with `tensors`, each one's place.
  struct Item {
    int tensor;
    int chunk;
    uint64_t offset;
  };
  std::vector<Item> items;
  std::vector<StoredTensor> loaded;
  IntactChunks queued;  // with `intact`: a chunk used twice is read once
  for (int t = 0; t < manifest.tensors_size(); ++t) {
    const v1::TensorRecord& record = manifest.tensors(t);
    uint64_t offset = 0;
    for (int i = 0; i < record.chunks_size(); ++i) {
      const v1::ChunkRef& ref = record.chunks(i);
      if (intact != nullptr) {
        auto done = intact->sizes.find(ref.sha256());
        if (done != intact->sizes.end() && done->second == ref.size()) continue;
        auto [it, inserted] = queued.sizes.emplace(ref.sha256(), ref.size());
        if (!inserted && it->second == ref.size()) continue;
      }
      items.push_back({t, i, offset});
      offset += ref.size();
    }
    if (tensors != nullptr) {
      StoredTensor& tensor = loaded.emplace_back();
      tensor.name = record.name();
      tensor.dtype = record.dtype();
      tensor.shape.assign(record.shape().begin(), record.shape().end());
      tensor.bytes.resize(offset);
    }
  }

  const rocksdb::ReadOptions read = store_internal::ChunkReadOptions(snapshot);
  auto read_one = [&](const Item& item, rocksdb::PinnableSlice* value) -> absl::Status {
    const v1::TensorRecord& record = manifest.tensors(item.tensor);
    const v1::ChunkRef& ref = record.chunks(item.chunk);
    auto damaged = [&](absl::string_view what) {
      return absl::DataLossError(absl::StrFormat(
          "checkpoint of job %s at step %d in %s is damaged: tensor %s, chunk %d of %d (%s) %s",
          manifest.job(), manifest.step(), dir_, record.name(), item.chunk + 1,
          record.chunks_size(), HashPrefix(ref.sha256()), what));
    };
    if (ref.sha256().size() != kKeyBytes) return damaged("has a malformed hash in the manifest");
    value->Reset();
    rocksdb::Status s = db_->Get(read, chunks_cf(), ref.sha256(), value);
    if (s.IsNotFound()) return damaged("is missing");
    if (s.IsCorruption()) return damaged(absl::StrCat("cannot be read: ", s.ToString()));
    TANDEM_RETURN_IF_ERROR(FromRocks(
        s, dir_,
        absl::StrFormat("reading chunk %s of tensor %s", HashPrefix(ref.sha256()), record.name())));
    if (value->size() != ref.size()) {
      return damaged(
          absl::StrFormat("has %d bytes, the manifest says %d", value->size(), ref.size()));
    }
    const Hash256 digest = PieceHashOf(manifest.format_version(), value->data(), value->size());
    if (std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()) !=
        ref.sha256()) {
      return damaged(absl::StrCat("fails its ", PieceHashName(manifest.format_version()),
                                  " check (its bytes hash to ", ToHex(digest.data(), 6), "...)"));
    }
    if (tensors != nullptr && value->size() > 0) {
      std::memcpy(loaded[item.tensor].bytes.data() + item.offset, value->data(), value->size());
    }
    return absl::OkStatus();
  };

  // Workers take items in order; once one fails, items after it are not
  // started, and the first failure in manifest order is the one reported.
  std::atomic<size_t> next{0};
  std::atomic<size_t> first_failure{items.size()};
  std::vector<absl::Status> failures(items.size());
  std::vector<char> verified(items.size(), 0);
  auto work = [&] {
    rocksdb::PinnableSlice value;
    for (size_t n = next.fetch_add(1); n < items.size(); n = next.fetch_add(1)) {
      if (n > first_failure.load()) return;
      absl::Status s = read_one(items[n], &value);
      if (s.ok()) {
        verified[n] = 1;
        continue;
      }
      failures[n] = std::move(s);
      size_t seen = first_failure.load();
      while (n < seen && !first_failure.compare_exchange_weak(seen, n)) {
      }
    }
  };
  {
    std::optional<ScopedThread> helpers[kReadThreads - 1];
    for (int h = 0; h + 1 < kReadThreads && static_cast<size_t>(h + 1) < items.size(); ++h) {
      helpers[h].emplace(work);
    }
    work();
  }
  if (intact != nullptr) {
    for (size_t n = 0; n < items.size(); ++n) {
      if (!verified[n]) continue;
      const v1::ChunkRef& ref = manifest.tensors(items[n].tensor).chunks(items[n].chunk);
      intact->sizes.emplace(ref.sha256(), ref.size());
    }
  }
  if (first_failure.load() < items.size()) return failures[first_failure.load()];
  // Every chunk matches its key, so the keys stand for the bytes.
  const std::optional<std::string> digest = DigestFromChunkKeys(manifest);
  if (digest.has_value() && *digest != manifest.state_digest()) {
    return absl::DataLossError(absl::StrFormat(
        "checkpoint of job %s at step %d in %s is damaged: its chunks give state digest %s..., "
        "its manifest says \"%s\"",
        manifest.job(), manifest.step(), dir_, digest->substr(0, 12), manifest.state_digest()));
  }
  if (tensors != nullptr) {
    tensors->reserve(tensors->size() + loaded.size());
    for (StoredTensor& t : loaded) tensors->push_back(std::move(t));
  }
  return absl::OkStatus();
}

absl::StatusOr<Checkpoint> CheckpointStore::LoadUnder(const rocksdb::Snapshot* snapshot,
                                                      const std::string& job,
                                                      std::optional<uint64_t> step) const {
  absl::StatusOr<v1::CheckpointManifest> manifest = ReadManifest(snapshot, job, step);
  if (!manifest.ok()) return manifest.status();
  Checkpoint checkpoint;
  TANDEM_RETURN_IF_ERROR(ReadChunks(snapshot, *manifest, &checkpoint.tensors, nullptr));
  checkpoint.manifest = *std::move(manifest);
  return checkpoint;
}

absl::StatusOr<Checkpoint> CheckpointStore::Load(const std::string& job,
                                                 std::optional<uint64_t> step) const {
  TANDEM_RETURN_IF_ERROR(CheckJob(job));
  rocksdb::ManagedSnapshot snapshot(db_.get());
  return LoadUnder(snapshot.snapshot(), job, step);
}

absl::Status CheckpointStore::Verify(const std::string& job, uint64_t step) const {
  TANDEM_RETURN_IF_ERROR(CheckJob(job));
  rocksdb::ManagedSnapshot snapshot(db_.get());
  absl::StatusOr<v1::CheckpointManifest> manifest = ReadManifest(snapshot.snapshot(), job, step);
  if (!manifest.ok()) return manifest.status();
  IntactChunks intact;  // a chunk used twice (e.g. zeros) is read once
  return ReadChunks(snapshot.snapshot(), *manifest, /*tensors=*/nullptr, &intact);
}

absl::StatusOr<std::vector<CheckpointStore::VerifyReport>> CheckpointStore::VerifyAll(
    const std::string& job) const {
  if (!job.empty()) TANDEM_RETURN_IF_ERROR(CheckJob(job));
  rocksdb::ManagedSnapshot snapshot(db_.get());
  rocksdb::ReadOptions read;
  read.snapshot = snapshot.snapshot();

  // job -> the step `latest` points at, and whether a manifest was seen there.
  std::map<std::string, std::pair<uint64_t, bool>> latest;
  {
    const std::string prefix = job.empty() ? std::string(kLatestPrefix) : LatestKey(job);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, default_cf()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      const std::string key_job = it->key().ToString().substr(sizeof(kLatestPrefix) - 1);
      if (!job.empty() && key_job != job) continue;
      absl::StatusOr<uint64_t> step = ReadLatest(snapshot.snapshot(), key_job);
      if (!step.ok()) return step.status();
      latest[key_job] = {*step, false};
    }
    TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "listing the latest checkpoints"));
  }

  // Chunks shared by several checkpoints (frozen layers) are read once.
  IntactChunks intact;
  std::vector<VerifyReport> reports;
  const std::string prefix = job.empty() ? std::string() : ManifestPrefix(job);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, manifests_cf()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    VerifyReport& report = reports.emplace_back();
    if (!ParseManifestKey(it->key(), &report.job, &report.step)) {
      return absl::DataLossError(absl::StrCat("checkpoint store ", dir_, ": manifest key \"",
                                              absl::CHexEscape(it->key().ToString()),
                                              "\" is damaged"));
    }
    auto l = latest.find(report.job);
    if (l != latest.end() && l->second.first == report.step) {
      report.latest = true;
      l->second.second = true;
    }
    absl::StatusOr<v1::CheckpointManifest> manifest =
        ReadManifest(snapshot.snapshot(), report.job, report.step);
    report.status = manifest.ok()
                        ? ReadChunks(snapshot.snapshot(), *manifest, /*tensors=*/nullptr, &intact)
                        : manifest.status();
  }
  TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "listing checkpoints"));
  for (const auto& [latest_job, step_seen] : latest) {
    if (step_seen.second) continue;
    VerifyReport& report = reports.emplace_back();
    report.job = latest_job;
    report.step = step_seen.first;
    report.latest = true;
    report.status = ReadManifest(snapshot.snapshot(), latest_job, std::nullopt).status();
  }
  std::sort(reports.begin(), reports.end(), [](const VerifyReport& a, const VerifyReport& b) {
    if (a.job != b.job) return a.job < b.job;
    return a.step < b.step;
  });
  return reports;
}

absl::StatusOr<Checkpoint> CheckpointStore::LoadLatestValid(
    const std::string& job, std::vector<std::string>* warnings) const {
  TANDEM_RETURN_IF_ERROR(CheckJob(job));
  rocksdb::ManagedSnapshot snapshot(db_.get());
  absl::StatusOr<Checkpoint> latest = LoadUnder(snapshot.snapshot(), job, std::nullopt);
  if (latest.ok() || !absl::IsDataLoss(latest.status())) return latest;

  absl::StatusOr<std::vector<uint64_t>> steps = ReadSteps(snapshot.snapshot(), job);
  if (!steps.ok()) return steps.status();
  // An unreadable `latest` pointer leaves every step a candidate.
  absl::StatusOr<uint64_t> latest_step = ReadLatest(snapshot.snapshot(), job);
  std::vector<uint64_t> candidates;
  for (auto s = steps->rbegin(); s != steps->rend(); ++s) {
    if (!latest_step.ok() || *s < *latest_step) candidates.push_back(*s);
  }
  const std::string latest_name =
      latest_step.ok() ? absl::StrFormat("checkpoint of job %s at step %d", job, *latest_step)
                       : absl::StrFormat("latest checkpoint of job %s", job);
  std::vector<std::string> failures = {absl::StrCat(latest_name, ": ", latest.status().message())};
  std::string skipped = latest_name;
  absl::Status skipped_status = latest.status();
  for (uint64_t step : candidates) {
    if (warnings != nullptr) {
      warnings->push_back(absl::StrFormat("%s is corrupt (%s); falling back to step %d", skipped,
                                          skipped_status.message(), step));
    }
    absl::StatusOr<Checkpoint> older = LoadUnder(snapshot.snapshot(), job, step);
    if (older.ok() || !absl::IsDataLoss(older.status())) return older;
    skipped = absl::StrFormat("checkpoint of job %s at step %d", job, step);
    skipped_status = older.status();
    failures.push_back(absl::StrCat("step ", step, ": ", older.status().message()));
  }
  return absl::DataLossError(absl::StrFormat("no intact checkpoint of job %s in %s; tried %s", job,
                                             dir_, absl::StrJoin(failures, "; ")));
}

absl::StatusOr<v1::CheckpointManifest> CheckpointStore::LoadManifest(
    const std::string& job, std::optional<uint64_t> step) const {
  TANDEM_RETURN_IF_ERROR(CheckJob(job));
  rocksdb::ManagedSnapshot snapshot(db_.get());
  return ReadManifest(snapshot.snapshot(), job, step);
}

absl::StatusOr<uint64_t> CheckpointStore::LatestStep(const std::string& job) const {
  TANDEM_RETURN_IF_ERROR(CheckJob(job));
  return ReadLatest(/*snapshot=*/nullptr, job);
}

absl::StatusOr<std::vector<v1::CheckpointInfo>> CheckpointStore::List(
    const std::string& job) const {
  if (!job.empty()) TANDEM_RETURN_IF_ERROR(CheckJob(job));
  rocksdb::ManagedSnapshot snapshot(db_.get());
  rocksdb::ReadOptions read;
  read.snapshot = snapshot.snapshot();
  const std::string prefix = job.empty() ? std::string() : ManifestPrefix(job);

  std::map<std::string, std::optional<uint64_t>> latest;
  std::vector<v1::CheckpointInfo> infos;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, manifests_cf()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    std::string key_job;
    uint64_t step = 0;
    v1::CheckpointManifest m;
    if (!ParseManifestKey(it->key(), &key_job, &step) ||
        !m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat("checkpoint store ", dir_, ": manifest \"",
                                              absl::CHexEscape(it->key().ToString()),
                                              "\" is damaged"));
    }
    auto [pos, inserted] = latest.try_emplace(key_job);
    if (inserted) {
      absl::StatusOr<uint64_t> l = ReadLatest(snapshot.snapshot(), key_job);
      if (l.ok()) {
        pos->second = *l;
      } else if (!absl::IsNotFound(l.status())) {
        return l.status();
      }
    }
    v1::CheckpointInfo& info = infos.emplace_back();
    info.set_job(key_job);
    info.set_step(step);
    info.set_total_bytes(m.total_bytes());
    info.set_created_unix_ms(m.created_unix_ms());
    info.set_state_digest(m.state_digest());
    info.set_latest(pos->second == step);
    *info.mutable_tags() = m.tags();
  }
  TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "listing checkpoints"));
  // Key order is not job order: "a-b/..." sorts before "a/...".
  std::sort(infos.begin(), infos.end(),
            [](const v1::CheckpointInfo& a, const v1::CheckpointInfo& b) {
              if (a.job() != b.job()) return a.job() < b.job();
              return a.step() < b.step();
            });
  return infos;
}

absl::StatusOr<uint64_t> CheckpointStore::CountChunks() const {
  uint64_t count = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), chunks_cf()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (store_internal::IsChunkKey(it->key())) ++count;  // not a pending marker
  }
  TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "counting chunks"));
  return count;
}

}  // namespace tandem
