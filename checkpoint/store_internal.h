// CheckpointStore's internals shared by checkpoint_store.cc and
// store_replication.cc: the database layout (column families, key formats),
// RocksDB status conversion and the checks on names and keys. Not an
// interface: nothing outside checkpoint/ includes it.
//
// Layout, besides what checkpoint_store.h says: next to each chunk written
// but not yet referenced by a committed manifest, the chunks column family
// holds a pending marker (kPendingPrefix + the chunk's key, empty value),
// written in the same WriteBatch as the chunk, so that the two reach the disk
// in the same flush (or WAL record). A commit deletes the markers of the
// chunks its manifest references; a writable Open drops every chunk a marker
// names that no manifest references, then the markers.
#ifndef TANDEM_CHECKPOINT_STORE_INTERNAL_H_
#define TANDEM_CHECKPOINT_STORE_INTERNAL_H_

#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "checkpoint/digest.h"
#include "tandem/v1/checkpoint.pb.h"

#define TANDEM_RETURN_IF_ERROR(expr)   \
  do {                                 \
    absl::Status _status = (expr);     \
    if (!_status.ok()) return _status; \
  } while (0)

namespace tandem::store_internal {

inline constexpr char kManifestsCf[] = "manifests";
inline constexpr char kChunksCf[] = "chunks";
inline constexpr char kMarkerKey[] = "tandem-store";
inline constexpr char kLatestPrefix[] = "latest/";
// Chunk keys are exactly kKeyBytes long, so a marker key never is one.
inline constexpr char kPendingPrefix[] = "tandem-pending/";
// Version of the store's layout, kept in the marker; bump on an incompatible
// change so that an older build refuses a newer store instead of misreading
// it. (Pending markers are compatible: an older build ignores them.)
inline constexpr uint32_t kStoreFormatVersion = 1;
// Manifest format 2 changed only the state digest's definition; format 3
// keys chunks by their BLAKE3 rather than their SHA-256, and hashes the state
// digest's pieces the same way (see digest.h). This build reads, verifies and
// commits formats 1 to 3 and writes 3. Chunks of every format live in one
// column family; the same bytes under SHA-256 and under BLAKE3 are two chunks.
// An older build refuses format 3 manifests, and the chunks a newer store
// sends it (they do not hash to their keys by SHA-256).
inline constexpr uint32_t kManifestFormatVersion = 3;
static_assert(kManifestFormatVersion == kStateDigestFormat);
inline constexpr size_t kKeyBytes = 32;
inline constexpr size_t kStepDigits = 20;  // uint64 max has 20 decimal digits

// Converts a RocksDB status where it enters our code; `what` says what we
// were doing, in words a user understands.
absl::Status FromRocks(const rocksdb::Status& s, const std::string& dir, absl::string_view what);

// InvalidArgument for an empty job name or one containing '/'.
absl::Status CheckJob(const std::string& job);
// InvalidArgument unless `key` is kKeyBytes long.
absl::Status CheckChunkKey(const std::string& key);

std::string ManifestPrefix(const std::string& job);
std::string ManifestKey(const std::string& job, uint64_t step);
bool ParseManifestKey(const rocksdb::Slice& key, std::string* job, uint64_t* step);
std::string LatestKey(const std::string& job);
std::string PendingKey(absl::string_view sha256);
// The first key after every pending marker, as an iterator's upper bound.
std::string PendingUpperBound();
inline bool IsChunkKey(const rocksdb::Slice& key) { return key.size() == kKeyBytes; }

// ReadOptions for reading chunk values. Their blob records' CRC32C is not
// verified: every reader checks a chunk against its key, a strong hash (or
// compares it with the bytes it should hold), which the CRC adds nothing to.
rocksdb::ReadOptions ChunkReadOptions(const rocksdb::Snapshot* snapshot = nullptr);

// The first 6 bytes of a hash in hex and "...", to name a chunk in messages.
std::string HashPrefix(const std::string& sha256);
// Whether `key` is the key of a chunk of these bytes in a manifest of format
// `format_version` (PieceHashOf: BLAKE3 from format 3, SHA-256 before).
bool HashMatches(uint32_t format_version, absl::string_view key, const char* data, size_t size);
// Whether `key` is these bytes' key under some manifest format: where a chunk
// comes without its manifest (a replica's chunk writes, a lookup by key).
bool KeyMatchesAnyFormat(absl::string_view key, const char* data, size_t size);
// The chunk keys `m` references, in manifest order, with repeats.
std::vector<std::string> ManifestChunks(const v1::CheckpointManifest& m);

}  // namespace tandem::store_internal

#endif  // TANDEM_CHECKPOINT_STORE_INTERNAL_H_
