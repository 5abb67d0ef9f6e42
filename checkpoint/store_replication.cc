// CheckpointStore's replication primitives: chunk presence, chunk reads and
// writes, and committing a manifest whose chunks arrived from another store.

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <array>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/digest.h"

namespace tandem {
namespace {

// These mirror the store's layout in checkpoint_store.cc (key formats, the
// manifest format this build reads); both files must change together.
constexpr uint32_t kManifestFormatVersion = 1;
constexpr size_t kStepDigits = 20;
constexpr char kLatestPrefix[] = "latest/";
constexpr size_t kShaBytes = std::tuple_size<Sha256Digest>::value;

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

absl::Status CheckJob(const std::string& job) {
  if (job.empty()) return absl::InvalidArgumentError("checkpoint job name is empty");
  if (job.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint job name \"", job, "\" contains '/', which is not allowed"));
  }
  return absl::OkStatus();
}

// RocksDB's status as ours; `what` says what we were doing.
absl::Status FromRocks(const rocksdb::Status& s, const std::string& dir, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("checkpoint store ", dir, ": ", what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(absl::StrCat(msg, " (the disk is full)"));
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

std::string HashPrefix(const std::string& sha256) {
  return ToHex(reinterpret_cast<const uint8_t*>(sha256.data()),
               std::min<size_t>(sha256.size(), 6)) +
         "...";
}

bool HashMatches(const std::string& sha256, const char* data, size_t size) {
  const Sha256Digest digest = Sha256Of(data, size);
  return std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()) == sha256;
}

std::vector<std::string> ManifestChunks(const v1::CheckpointManifest& m) {
  std::vector<std::string> keys;
  for (const v1::TensorRecord& t : m.tensors()) {
    for (const v1::ChunkRef& c : t.chunks()) keys.push_back(c.sha256());
  }
  return keys;
}

#define TANDEM_RETURN_IF_ERROR(expr)   \
  do {                                 \
    absl::Status _status = (expr);     \
    if (!_status.ok()) return _status; \
  } while (0)

// Adds to `batch` what committing `manifest` as its job's newest checkpoint
// implies, with the same rules as Save: drop the job's checkpoints beyond the
// newest `keep` (untagged ones only; 0 keeps all) and the chunks that only
// dropped or replaced checkpoints referenced. The caller holds save_mu_.
absl::Status AddRetention(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* manifests_cf,
                          rocksdb::ColumnFamilyHandle* chunks_cf, const std::string& dir,
                          const v1::CheckpointManifest& manifest, uint32_t keep,
                          rocksdb::WriteBatch* batch) {
  const std::string& job = manifest.job();
  const uint64_t step = manifest.step();
  const rocksdb::ReadOptions read;
  struct Existing {
    uint64_t step;
    bool tagged;
    std::vector<std::string> chunks;
  };
  std::vector<Existing> existing;
  std::unordered_set<std::string> candidates;
  auto bad_manifest = [&dir](const rocksdb::Slice& key) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint store ", dir, ": manifest \"", absl::CHexEscape(key.ToString()),
        "\" does not parse; refusing to commit, since garbage collection cannot know which "
        "chunks it references"));
  };
  {
    const std::string prefix = ManifestPrefix(job);
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(read, manifests_cf));
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
    TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir, "reading the job's manifests"));
  }

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
      batch->Delete(manifests_cf, ManifestKey(job, e.step));
      for (const std::string& c : e.chunks) candidates.insert(c);
    }
  } else {
    for (const Existing& e : existing) kept.push_back(&e);
  }

  if (candidates.empty()) return absl::OkStatus();
  for (const std::string& c : ManifestChunks(manifest)) candidates.erase(c);
  for (const Existing* e : kept) {
    for (const std::string& c : e->chunks) candidates.erase(c);
  }
  const std::string own_prefix = ManifestPrefix(job);
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(read, manifests_cf));
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
  TANDEM_RETURN_IF_ERROR(FromRocks(it->status(), dir, "reading manifests"));
  for (const std::string& c : candidates) batch->Delete(chunks_cf, c);
  return absl::OkStatus();
}

absl::Status CheckKey(const std::string& sha256) {
  if (sha256.size() != kShaBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a chunk key must be a %d-byte SHA-256, got %d bytes", kShaBytes, sha256.size()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> CheckpointStore::MissingChunks(
    const std::vector<std::string>& sha256s) const {
  for (const std::string& key : sha256s) TANDEM_RETURN_IF_ERROR(CheckKey(key));
  std::vector<std::string> missing;
  std::unordered_set<std::string> seen;
  rocksdb::ReadOptions read;
  read.verify_checksums = true;
  for (const std::string& key : sha256s) {
    if (!seen.insert(key).second) continue;
    rocksdb::PinnableSlice value;
    rocksdb::Status s = db_->Get(read, chunks_cf(), key, &value);
    // A damaged chunk is as good as absent: the sender's copy replaces it.
    if (s.IsNotFound() || s.IsCorruption() ||
        (s.ok() && !HashMatches(key, value.data(), value.size()))) {
      missing.push_back(key);
      continue;
    }
    TANDEM_RETURN_IF_ERROR(
        FromRocks(s, dir_, absl::StrCat("checking whether chunk ", HashPrefix(key), " is stored")));
  }
  return missing;
}

absl::StatusOr<std::string> CheckpointStore::ReadChunk(const std::string& sha256) const {
  TANDEM_RETURN_IF_ERROR(CheckKey(sha256));
  rocksdb::ReadOptions read;
  read.verify_checksums = true;
  std::string value;
  rocksdb::Status s = db_->Get(read, chunks_cf(), sha256, &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(
        absl::StrCat("chunk ", HashPrefix(sha256), " is not in checkpoint store ", dir_));
  }
  TANDEM_RETURN_IF_ERROR(FromRocks(s, dir_, absl::StrCat("reading chunk ", HashPrefix(sha256))));
  if (!HashMatches(sha256, value.data(), value.size())) {
    return absl::DataLossError(absl::StrCat("checkpoint store ", dir_, ": chunk ",
                                            HashPrefix(sha256), " fails its SHA-256 check"));
  }
  return value;
}

absl::Status CheckpointStore::WriteChunks(
    const std::vector<std::pair<std::string, std::string>>& chunks) {
  if (options_.read_only) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write chunks: checkpoint store ", dir_, " is open read-only"));
  }
  if (chunks.empty()) return absl::OkStatus();
  // Hashing needs no lock.
  for (const auto& [key, bytes] : chunks) {
    TANDEM_RETURN_IF_ERROR(CheckKey(key));
    if (!HashMatches(key, bytes.data(), bytes.size())) {
      return absl::InvalidArgumentError(
          absl::StrFormat("chunk %s (%d bytes) does not hash to its key; nothing was written to %s",
                          HashPrefix(key), bytes.size(), dir_));
    }
  }
  rocksdb::WriteBatch batch;
  for (const auto& [key, bytes] : chunks) batch.Put(chunks_cf(), key, bytes);
  rocksdb::WriteOptions write;
  write.sync = true;
  absl::MutexLock lock(&save_mu_);
  return FromRocks(db_->Write(write, &batch), dir_,
                   absl::StrFormat("writing %d replicated chunks", chunks.size()));
}

absl::StatusOr<v1::CheckpointManifest> CheckpointStore::CommitManifest(
    const v1::CheckpointManifest& manifest, uint32_t keep) {
  const std::string& job = manifest.job();
  const uint64_t step = manifest.step();
  if (options_.read_only) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot commit job %s step %d: checkpoint store %s is open read-only", job, step, dir_));
  }
  TANDEM_RETURN_IF_ERROR(CheckJob(job));
  const std::string what = absl::StrFormat("checkpoint of job %s step %d", job, step);
  if (manifest.format_version() == 0 || manifest.format_version() > kManifestFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s has manifest format %d; this build commits formats 1 to %d", what,
                        manifest.format_version(), kManifestFormatVersion));
  }
  std::unordered_set<std::string> names;
  uint64_t total_bytes = 0;
  for (const v1::TensorRecord& t : manifest.tensors()) {
    if (t.name().empty() || !names.insert(t.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has a tensor with an empty or duplicate name (\"", t.name(), "\")"));
    }
    for (const v1::ChunkRef& c : t.chunks()) {
      if (c.sha256().size() != kShaBytes) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": tensor ", t.name(), " has a malformed chunk hash"));
      }
      total_bytes += c.size();
    }
  }
  if (total_bytes != manifest.total_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: its chunks add up to %d bytes but it says total_bytes %d", what,
                        total_bytes, manifest.total_bytes()));
  }
  std::string manifest_bytes;
  if (!manifest.SerializeToString(&manifest_bytes)) {
    return absl::InternalError(absl::StrCat("cannot serialize the manifest of ", what));
  }

  // Verification and commit under one hold of save_mu_: a concurrent Save's
  // garbage collection must not delete a chunk between its check and the
  // commit that makes the manifest reference it.
  absl::MutexLock lock(&save_mu_);
  rocksdb::ReadOptions read;
  read.verify_checksums = true;
  Sha256 state;  // StateDigest's hash, over the stored bytes
  for (const v1::TensorRecord& t : manifest.tensors()) {
    uint64_t tensor_bytes = 0;
    for (const v1::ChunkRef& c : t.chunks()) tensor_bytes += c.size();
    state.Update(t.name().data(), t.name().size());
    const uint8_t nul = 0;
    state.Update(&nul, 1);
    uint8_t size_le[8];
    for (uint8_t& b : size_le) {
      b = static_cast<uint8_t>(tensor_bytes & 0xff);
      tensor_bytes >>= 8;
    }
    state.Update(size_le, sizeof(size_le));
    for (int i = 0; i < t.chunks_size(); ++i) {
      const v1::ChunkRef& ref = t.chunks(i);
      const std::string where = absl::StrFormat("tensor %s, chunk %d of %d (%s)", t.name(), i + 1,
                                                t.chunks_size(), HashPrefix(ref.sha256()));
      rocksdb::PinnableSlice value;
      rocksdb::Status s = db_->Get(read, chunks_cf(), ref.sha256(), &value);
      if (s.IsNotFound()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot commit ", what, " in ", dir_, ": ", where, " is missing; send it first"));
      }
      TANDEM_RETURN_IF_ERROR(FromRocks(s, dir_, absl::StrCat("reading ", where)));
      if (value.size() != ref.size()) {
        return absl::DataLossError(
            absl::StrFormat("cannot commit %s in %s: %s has %d bytes, the manifest says %d", what,
                            dir_, where, value.size(), ref.size()));
      }
      if (!HashMatches(ref.sha256(), value.data(), value.size())) {
        return absl::DataLossError(absl::StrCat("cannot commit ", what, " in ", dir_, ": ", where,
                                                " fails its SHA-256 check"));
      }
      state.Update(value.data(), value.size());
    }
  }
  const std::string digest = ToHex(state.Finish());
  if (digest != manifest.state_digest()) {
    return absl::DataLossError(absl::StrCat(
        "cannot commit ", what, ": its tensors' bytes give state digest ", digest.substr(0, 12),
        "..., the manifest says \"", manifest.state_digest(), "\""));
  }

  rocksdb::WriteBatch batch;
  TANDEM_RETURN_IF_ERROR(
      AddRetention(db_.get(), manifests_cf(), chunks_cf(), dir_, manifest, keep, &batch));
  batch.Put(manifests_cf(), ManifestKey(job, step), manifest_bytes);
  batch.Put(default_cf(), LatestKey(job), absl::StrCat(step));
  rocksdb::WriteOptions write;
  write.sync = true;
  TANDEM_RETURN_IF_ERROR(
      FromRocks(db_->Write(write, &batch), dir_, absl::StrCat("committing ", what)));
  return manifest;
}

}  // namespace tandem

#undef TANDEM_RETURN_IF_ERROR
