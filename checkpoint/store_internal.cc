#include "checkpoint/store_internal.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/digest.h"

namespace tandem::store_internal {

static_assert(kKeyBytes == std::tuple_size<Hash256>::value);

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

absl::Status CheckChunkKey(const std::string& key) {
  if (key.size() != kKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("a chunk key must be a %d-byte hash, got %d bytes", kKeyBytes, key.size()));
  }
  return absl::OkStatus();
}

std::string ManifestPrefix(const std::string& job) { return job + "/"; }

std::string ManifestKey(const std::string& job, uint64_t step) {
  return absl::StrFormat("%s/%020d", job, step);
}

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

std::string LatestKey(const std::string& job) { return kLatestPrefix + job; }

std::string PendingKey(absl::string_view sha256) { return absl::StrCat(kPendingPrefix, sha256); }

std::string PendingUpperBound() {
  std::string bound = kPendingPrefix;
  ++bound.back();  // '/' + 1 = '0'
  return bound;
}

rocksdb::ReadOptions ChunkReadOptions(const rocksdb::Snapshot* snapshot) {
  rocksdb::ReadOptions read;
  read.snapshot = snapshot;
  read.verify_checksums = false;
  return read;
}

std::string HashPrefix(const std::string& sha256) {
  return ToHex(reinterpret_cast<const uint8_t*>(sha256.data()),
               std::min<size_t>(sha256.size(), 6)) +
         "...";
}

bool HashMatches(uint32_t format_version, absl::string_view key, const char* data, size_t size) {
  const Hash256 hash = PieceHashOf(format_version, data, size);
  return absl::string_view(reinterpret_cast<const char*>(hash.data()), hash.size()) == key;
}

bool KeyMatchesAnyFormat(absl::string_view key, const char* data, size_t size) {
  // The current format (BLAKE3) first: its hash is the cheaper one; then
  // SHA-256, the hash of formats 1 and 2.
  constexpr uint32_t kLastSha256Format = 2;
  return HashMatches(kManifestFormatVersion, key, data, size) ||
         HashMatches(kLastSha256Format, key, data, size);
}

std::vector<std::string> ManifestChunks(const v1::CheckpointManifest& m) {
  std::vector<std::string> keys;
  for (const v1::TensorRecord& t : m.tensors()) {
    for (const v1::ChunkRef& c : t.chunks()) keys.push_back(c.sha256());
  }
  return keys;
}

}  // namespace tandem::store_internal
