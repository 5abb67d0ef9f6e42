// CheckpointStore's replication primitives: chunk presence, chunk reads and
// writes, and committing a manifest whose chunks arrived from another store.

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>
#include <rocksdb/write_batch.h>

#include <cstring>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/digest.h"
#include "checkpoint/store_internal.h"

namespace tandem {

using store_internal::CheckChunkKey;
using store_internal::CheckJob;
using store_internal::ChunkReadOptions;
using store_internal::FromRocks;
using store_internal::HashMatches;
using store_internal::HashPrefix;
using store_internal::KeyMatchesAnyFormat;
using store_internal::kKeyBytes;
using store_internal::kManifestFormatVersion;
using store_internal::PendingKey;

absl::StatusOr<std::vector<std::string>> CheckpointStore::MissingChunks(
    const std::vector<std::string>& sha256s) const {
  for (const std::string& key : sha256s) TANDEM_RETURN_IF_ERROR(CheckChunkKey(key));
  std::vector<std::string> missing;
  std::unordered_set<std::string> seen;
  const rocksdb::ReadOptions read = ChunkReadOptions();
  for (const std::string& key : sha256s) {
    if (!seen.insert(key).second) continue;
    rocksdb::PinnableSlice value;
    rocksdb::Status s = db_->Get(read, chunks_cf(), key, &value);
    // A damaged chunk is as good as absent: the sender's copy replaces it.
    if (s.IsNotFound() || s.IsCorruption() ||
        (s.ok() && !KeyMatchesAnyFormat(key, value.data(), value.size()))) {
      missing.push_back(key);
      continue;
    }
    TANDEM_RETURN_IF_ERROR(
        FromRocks(s, dir_, absl::StrCat("checking whether chunk ", HashPrefix(key), " is stored")));
  }
  return missing;
}

absl::StatusOr<std::string> CheckpointStore::ReadChunk(const std::string& sha256) const {
  TANDEM_RETURN_IF_ERROR(CheckChunkKey(sha256));
  const rocksdb::ReadOptions read = ChunkReadOptions();
  std::string value;
  rocksdb::Status s = db_->Get(read, chunks_cf(), sha256, &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(
        absl::StrCat("chunk ", HashPrefix(sha256), " is not in checkpoint store ", dir_));
  }
  TANDEM_RETURN_IF_ERROR(FromRocks(s, dir_, absl::StrCat("reading chunk ", HashPrefix(sha256))));
  if (!KeyMatchesAnyFormat(sha256, value.data(), value.size())) {
    return absl::DataLossError(absl::StrCat("checkpoint store ", dir_, ": chunk ",
                                            HashPrefix(sha256), " fails its hash check"));
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
    TANDEM_RETURN_IF_ERROR(CheckChunkKey(key));
    if (!KeyMatchesAnyFormat(key, bytes.data(), bytes.size())) {
      return absl::InvalidArgumentError(
          absl::StrFormat("chunk %s (%d bytes) does not hash to its key; nothing was written to %s",
                          HashPrefix(key), bytes.size(), dir_));
    }
  }
  // Through the WAL, synced: a push writes a chunk at a time, at the pace of
  // the network, and each one stays when the push is cut short.
  rocksdb::WriteBatch batch;
  for (const auto& [key, bytes] : chunks) {
    batch.Put(chunks_cf(), key, bytes);
    batch.Put(chunks_cf(), PendingKey(key), rocksdb::Slice());
  }
  absl::MutexLock lock(&save_mu_);
  TANDEM_RETURN_IF_ERROR(
      Commit(&batch, absl::StrFormat("writing %d replicated chunks", chunks.size())));
  for (const auto& chunk : chunks) pending_.insert(chunk.first);
  return absl::OkStatus();
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
      if (c.sha256().size() != kKeyBytes) {
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

  // Verification and commit under one hold of save_mu_: a concurrent Save's
  // garbage collection must not delete a chunk between its check and the
  // commit that makes the manifest reference it.
  absl::MutexLock lock(&save_mu_);
  const rocksdb::ReadOptions read = ChunkReadOptions();
  // The state digest by the manifest's own format's definition.
  StateDigestBuilder state(manifest.format_version());
  for (const v1::TensorRecord& t : manifest.tensors()) {
    uint64_t tensor_bytes = 0;
    for (const v1::ChunkRef& c : t.chunks()) tensor_bytes += c.size();
    state.BeginTensor(t.name(), tensor_bytes);
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
      if (!HashMatches(manifest.format_version(), ref.sha256(), value.data(), value.size())) {
        return absl::DataLossError(
            absl::StrCat("cannot commit ", what, " in ", dir_, ": ", where, " fails its ",
                         PieceHashName(manifest.format_version()), " check"));
      }
      if (state.IsPiece(value.size())) {
        Hash256 key;
        std::memcpy(key.data(), ref.sha256().data(), key.size());
        state.AddPiece(key, value.size());
      } else {
        state.AddBytes(value.data(), value.size());
      }
    }
  }
  const std::string digest = state.Finish();
  if (digest != manifest.state_digest()) {
    return absl::DataLossError(absl::StrCat(
        "cannot commit ", what, ": its tensors' bytes give state digest ", digest.substr(0, 12),
        "..., the manifest says \"", manifest.state_digest(), "\""));
  }

  return CommitCheckpoint(manifest, keep, absl::StrCat("committing ", what));
}

}  // namespace tandem
