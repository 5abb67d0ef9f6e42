#include "checkpoint/checkpoint_store.h"

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/snapshot.h>
#include <rocksdb/status.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/digest.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr char kManifestsCf[] = "manifests";
constexpr char kChunksCf[] = "chunks";
constexpr char kMarkerKey[] = "tandem-store";
constexpr char kLatestPrefix[] = "latest/";
// Version of the store's layout, kept in the marker; bump on an incompatible
// change so that an older build refuses a newer store instead of misreading it.
constexpr uint32_t kStoreFormatVersion = 1;
constexpr uint32_t kManifestFormatVersion = 1;
// Chunks at least this large go to blob files, so compactions of the chunks
// column family move 32-byte keys and blob references, not tensor bytes.
constexpr uint64_t kMinBlobSize = 64 << 10;
constexpr size_t kStepDigits = 20;  // uint64 max has 20 decimal digits
constexpr size_t kStepsInMessage = 16;

#define TANDEM_RETURN_IF_ERROR(expr)   \
  do {                                 \
    absl::Status _status = (expr);     \
    if (!_status.ok()) return _status; \
  } while (0)

// Converts a RocksDB status where it enters our code; `what` says what we were
// doing, in words a user understands.
absl::Status FromRocks(const rocksdb::Status& s, const std::string& dir, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string detail = s.ToString();
  const std::string msg = absl::StrCat("checkpoint store ", dir, ": ", what, ": ", detail);
  switch (s.code()) {
    case rocksdb::Status::kNotFound:
      return absl::NotFoundError(msg);
    case rocksdb::Status::kCorruption:
      return absl::DataLossError(msg);
    case rocksdb::Status::kInvalidArgument:
      return absl::InvalidArgumentError(msg);
    case rocksdb::Status::kNotSupported:
      return absl::FailedPreconditionError(msg);
    case rocksdb::Status::kIOError:
      // RocksDB says "While lock file: DIR/LOCK: ..." when another process
      // holds the store, "lock hold by current process" when this one does.
      if (absl::StrContains(detail, "/LOCK") || absl::StrContains(detail, "lock hold by")) {
        return absl::UnavailableError(absl::StrCat(
            "checkpoint store ", dir,
            " is in use by another process (or already open in this one): RocksDB could not "
            "lock ",
            dir, "/LOCK; close the other user or open the store read-only (", detail, ")"));
      }
      if (s.IsNoSpace()) {
        return absl::ResourceExhaustedError(absl::StrCat(msg, " (the disk is full)"));
      }
      if (s.IsPathNotFound()) return absl::NotFoundError(msg);
      return absl::InternalError(msg);
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTimedOut:
    case rocksdb::Status::kTryAgain:
      return absl::UnavailableError(msg);
    case rocksdb::Status::kAborted:
      return absl::AbortedError(msg);
    case rocksdb::Status::kShutdownInProgress:
      return absl::CancelledError(msg);
    default:
      return absl::InternalError(msg);
  }
}

rocksdb::ColumnFamilyOptions ChunksCfOptions() {
  rocksdb::ColumnFamilyOptions o;
  // Raw fp32 barely compresses; savings come from deduplication.
  o.compression = rocksdb::kNoCompression;
  o.enable_blob_files = true;
  o.min_blob_size = kMinBlobSize;
  o.blob_compression_type = rocksdb::kNoCompression;
  // Reclaims the space of chunks that garbage collection deleted.
  o.enable_blob_garbage_collection = true;
  return o;
}

rocksdb::ColumnFamilyOptions CfOptionsFor(const std::string& name) {
  if (name == kChunksCf) return ChunksCfOptions();
  return rocksdb::ColumnFamilyOptions();
}

absl::Status CheckJob(const std::string& job) {
  if (job.empty()) return absl::InvalidArgumentError("checkpoint job name is empty");
  // '/' separates the job from the step in manifest keys; job "a" must not
  // see the checkpoints of job "a/b".
  if (job.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint job name \"", job, "\" contains '/', which is not allowed"));
  }
  return absl::OkStatus();
}

std::string ManifestPrefix(const std::string& job) { return job + "/"; }

std::string ManifestKey(const std::string& job, uint64_t step) {
  return absl::StrFormat("%s/%020d", job, step);
}

std::string LatestKey(const std::string& job) { return kLatestPrefix + job; }

bool ParseManifestKey(const rocksdb::Slice& key, std::string* job, uint64_t* step) {
  const absl::string_view k(key.data(), key.size());
  const size_t slash = k.rfind('/');
  if (slash == absl::string_view::npos || slash == 0 || k.size() - slash - 1 != kStepDigits) {
    return false;
  }
  const absl::string_view digits = k.substr(slash + 1);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  if (!absl::SimpleAtoi(digits, step)) return false;
  job->assign(k.data(), slash);
  return true;
}

std::string HashPrefix(const std::string& sha256) {
  const std::string hex =
      ToHex(reinterpret_cast<const uint8_t*>(sha256.data()), std::min<size_t>(sha256.size(), 6));
  return hex + "...";
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
  // Every write was synced, so a failed close loses nothing; there is no
  // caller left to tell.
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

  // Hashing is the expensive part and needs no lock.
  struct Chunk {
    std::string key;
    rocksdb::Slice bytes;
  };
  std::vector<Chunk> chunks;  // distinct, in first-use order
  std::unordered_set<std::string> chunk_keys;
  manifest.clear_tensors();
  uint64_t total_bytes = 0;
  Sha256 sha;
  for (const TensorView& t : tensors) {
    v1::TensorRecord* record = manifest.add_tensors();
    record->set_name(t.name);
    record->set_dtype(t.dtype);
    for (int64_t d : t.shape) record->add_shape(d);
    const char* data = static_cast<const char*>(t.data);
    for (size_t offset = 0; offset < t.bytes; offset += options_.chunk_bytes) {
      const size_t size = std::min(options_.chunk_bytes, t.bytes - offset);
      sha.Update(data + offset, size);
      const Sha256Digest digest = sha.Finish();
      std::string key(reinterpret_cast<const char*>(digest.data()), digest.size());
      v1::ChunkRef* ref = record->add_chunks();
      ref->set_sha256(key);
      ref->set_size(size);
      if (chunk_keys.insert(key).second) {
        chunks.push_back({std::move(key), rocksdb::Slice(data + offset, size)});
      }
    }
    total_bytes += t.bytes;
  }
  manifest.set_format_version(kManifestFormatVersion);
  manifest.set_total_bytes(total_bytes);
  manifest.set_state_digest(StateDigest(tensors));
  manifest.set_created_unix_ms(NowUnixMs());
  std::string manifest_bytes;
  if (!manifest.SerializeToString(&manifest_bytes)) {
    return absl::InternalError(
        absl::StrFormat("cannot serialize the manifest of job %s step %d", job, step));
  }

  absl::MutexLock lock(&save_mu_);
  rocksdb::WriteBatch batch;
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
  auto manifest_chunks = [](const v1::CheckpointManifest& m) {
    std::vector<std::string> keys;
    for (const v1::TensorRecord& t : m.tensors()) {
      for (const v1::ChunkRef& c : t.chunks()) keys.push_back(c.sha256());
    }
    return keys;
  };
  auto bad_manifest = [this](const rocksdb::Slice& key) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint store ", dir_, ": manifest \"", absl::CHexEscape(key.ToString()),
        "\" does not parse; refusing to save, since garbage collection cannot know which "
        "chunks it references"));
  };
  {
    const std::string prefix = ManifestPrefix(job);
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
        for (std::string& c : manifest_chunks(m)) candidates.insert(std::move(c));
      } else {
        existing.push_back({key_step, m.tags_size() > 0, manifest_chunks(m)});
      }
    }
    TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "reading the job's manifests"));
  }

  // Retention: the checkpoint being saved is the newest, whatever its step (a
  // job rolled back to an older step keeps what it saves next).
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
      batch.Delete(manifests_cf(), ManifestKey(job, e.step));
      for (const std::string& c : e.chunks) candidates.insert(c);
    }
  } else {
    for (const Existing& e : existing) kept.push_back(&e);
  }

  if (!candidates.empty()) {
    for (const std::string& c : chunk_keys) candidates.erase(c);
    for (const Existing* e : kept) {
      for (const std::string& c : e->chunks) candidates.erase(c);
    }
    const std::string own_prefix = ManifestPrefix(job);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, manifests_cf()));
    for (it->SeekToFirst(); it->Valid() && !candidates.empty(); it->Next()) {
      if (it->key().starts_with(own_prefix)) continue;
      v1::CheckpointManifest m;
      if (!m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return bad_manifest(it->key());
      }
      for (const v1::TensorRecord& t : m.tensors()) {
        for (const v1::ChunkRef& c : t.chunks()) candidates.erase(c.sha256());
      }
    }
    TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "reading manifests"));
    for (const std::string& c : candidates) batch.Delete(chunks_cf(), c);
  }

  // KeyMayExist would not help: in RocksDB 7.8 it runs the same lookup
  // (limited to cached blocks) and copies the value out.
  for (const Chunk& c : chunks) {
    rocksdb::PinnableSlice value;
    rocksdb::Status s = db_->Get(read, chunks_cf(), c.key, &value);
    // A stored chunk that is unreadable or whose bytes differ from the ones
    // that hash to its key is damaged; writing it again repairs it for every
    // checkpoint that shares it, instead of this one inheriting the damage.
    if (s.IsNotFound() || s.IsCorruption() || (s.ok() && value != c.bytes)) {
      batch.Put(chunks_cf(), c.key, c.bytes);
    } else if (!s.ok()) {
      return FromRocks(s, dir_, "checking which chunks are already stored");
    }
  }
  batch.Put(manifests_cf(), ManifestKey(job, step), manifest_bytes);
  batch.Put(default_cf(), LatestKey(job), absl::StrCat(step));

  TANDEM_RETURN_IF_ERROR(
      Commit(&batch, absl::StrFormat("committing checkpoint of job %s step %d", job, step)));
  return manifest;
}

absl::Status CheckpointStore::Commit(rocksdb::WriteBatch* batch, const std::string& what) {
  absl::MutexLock lock(&commit_mu_);
  if (!write_failure_.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": checkpoint store ", dir_, " takes no more writes after one failed (",
                     write_failure_.message(),
                     "); reopen the store, which keeps every checkpoint committed before"));
  }
  rocksdb::WriteOptions write;
  write.sync = true;
  absl::Status status = FromRocks(db_->Write(write, batch), dir_, what);
  if (!status.ok()) write_failure_ = status;
  return status;
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
  rocksdb::ReadOptions read;
  read.snapshot = snapshot;
  read.verify_checksums = true;
  if (tensors != nullptr) tensors->reserve(tensors->size() + manifest.tensors_size());
  for (const v1::TensorRecord& record : manifest.tensors()) {
    StoredTensor tensor;
    if (tensors != nullptr) {
      tensor.name = record.name();
      tensor.dtype = record.dtype();
      tensor.shape.assign(record.shape().begin(), record.shape().end());
      uint64_t bytes = 0;
      for (const v1::ChunkRef& ref : record.chunks()) bytes += ref.size();
      tensor.bytes.reserve(bytes);
    }
    for (int i = 0; i < record.chunks_size(); ++i) {
      const v1::ChunkRef& ref = record.chunks(i);
      auto damaged = [&](absl::string_view what) {
        return absl::DataLossError(absl::StrFormat(
            "checkpoint of job %s at step %d in %s is damaged: tensor %s, chunk %d of %d (%s) %s",
            manifest.job(), manifest.step(), dir_, record.name(), i + 1, record.chunks_size(),
            HashPrefix(ref.sha256()), what));
      };
      if (ref.sha256().size() != std::tuple_size<Sha256Digest>::value) {
        return damaged("has a malformed hash in the manifest");
      }
      if (intact != nullptr) {
        auto it = intact->sizes.find(ref.sha256());
        if (it != intact->sizes.end() && it->second == ref.size()) continue;
      }
      rocksdb::PinnableSlice value;
      rocksdb::Status s = db_->Get(read, chunks_cf(), ref.sha256(), &value);
      if (s.IsNotFound()) return damaged("is missing");
      if (s.IsCorruption()) {
        return damaged(absl::StrCat("cannot be read: ", s.ToString()));
      }
      TANDEM_RETURN_IF_ERROR(FromRocks(s, dir_,
                                       absl::StrFormat("reading chunk %s of tensor %s",
                                                       HashPrefix(ref.sha256()), record.name())));
      if (value.size() != ref.size()) {
        return damaged(
            absl::StrFormat("has %d bytes, the manifest says %d", value.size(), ref.size()));
      }
      const Sha256Digest digest = Sha256Of(value.data(), value.size());
      if (std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()) !=
          ref.sha256()) {
        return damaged(absl::StrCat("fails its SHA-256 check (its bytes hash to ",
                                    ToHex(digest.data(), 6), "...)"));
      }
      if (tensors != nullptr) tensor.bytes.append(value.data(), value.size());
      if (intact != nullptr) intact->sizes.emplace(ref.sha256(), ref.size());
    }
    if (tensors != nullptr) tensors->push_back(std::move(tensor));
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
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++count;
  TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir_, "counting chunks"));
  return count;
}

}  // namespace tandem

#undef TANDEM_RETURN_IF_ERROR
